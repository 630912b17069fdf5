#!/usr/bin/env bash
# The README's quick start, timed: the MNIST DCGAN and conv VAE trained and evaluated with
# the README's own commands, into OUT:
#   OUT/runs/mnist-{gan,vae}/   the runs themselves (checkpoints, samples, eval/)
#   OUT/quickstart.md           each command's wall time, the runs' last epoch records and
#                               their evaluation tables: the source of the README's figures
#
#   bash bench/quickstart.sh OUT      (needs the data extra; about 3 minutes on a 2-core CPU)
#
# Leave the machine otherwise idle while it runs: the times are the point.
set -euo pipefail
OUT=${1:?usage: bash bench/quickstart.sh OUT}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
RUNS=$OUT/runs
[ ! -e "$RUNS" ] || { echo "$RUNS exists: give a new OUT" >&2; exit 2; }
REPORT=$OUT/quickstart.md

timed() {  # timed COMMAND...: runs it, appends the command and its wall time to the report
  local start=$SECONDS
  "$@"
  echo "| \`${*/#$OUT\//}\` | $((SECONDS - start)) s |" >>"$REPORT"
}

{
  echo "# The README's quick start, timed ($(date -u +%Y-%m-%d), $(date -u +%H:%M) UTC)"
  echo
  echo '```'
  aigc-fast info
  echo '```'
  echo
  echo "| command | wall time |"
  echo "|---|---:|"
} >"$REPORT"
timed aigc-fast train gan --data mnist --epochs 20 --batch-size 64 --ngf 32 --ndf 32 --out-dir "$RUNS/mnist-gan"
timed aigc-fast evaluate "$RUNS/mnist-gan"
timed aigc-fast train vae --data mnist --epochs 20 --out-dir "$RUNS/mnist-vae"
timed aigc-fast evaluate "$RUNS/mnist-vae"

for run in mnist-gan mnist-vae; do
  {
    echo
    echo "## $run"
    echo
    echo "config.json:"
    echo '```json'
    cat "$RUNS/$run/config.json"
    echo
    echo '```'
    echo "Last epoch (epochs.jsonl):"
    echo '```json'
    tail -n 1 "$RUNS/$run/epochs.jsonl"
    echo '```'
    echo
    cat "$RUNS/$run/eval/metrics.md"
  } >>"$REPORT"
done
echo "written to $REPORT"
