#!/usr/bin/env bash
# The benchmark runs behind the tables of docs/benchmarks.md, on this machine, into OUT:
#   OUT/ops.{json,md,csv,png}   every op suite (the batch-128 conv blocks included)
#   OUT/steps.{csv,md,png}      the 28x28 training steps, fp32 and bf16, NCHW and channels_last,
#                               every CPU provider, with the profile breakdown
#   OUT/64x64/steps.*           the 64x64 training steps, same settings, 5 rounds
#   OUT/conv-bound.md           the 28x28 default steps' convolution time, and a conv-transpose alone
#
#   bash bench/run.sh [OUT]          (default OUT: bench-results; needs the bench extra)
#
# Well over 15 minutes on a 2-core CPU; leave the machine otherwise idle while it runs.
# PYTHON: the interpreter with aigc_fast, for the scripts (default python3).
# (The 28x28 table of docs/benchmarks.md is the middle of three such runs' medians.)
set -euo pipefail
OUT=${1:-bench-results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # relative to the caller, before the cd below
cd "$(dirname "$0")/.."
PROVIDERS=fused,eager,compile,fused+compile
rc=0  # a failing op case still leaves the rest, and the 64x64 run goes ahead
aigc-fast bench --ops --ops-filter "" --breakdown --workloads dcgan28,vae28 --precision fp32,bf16 \
  --providers "$PROVIDERS" --repeats 7 --out "$OUT" || rc=$?
aigc-fast bench --workloads dcgan64,vae64 --precision fp32,bf16 --providers "$PROVIDERS" --repeats 5 \
  --out "$OUT/64x64" || rc=$?
"${PYTHON:-python3}" bench/conv_bound.py >"$OUT/conv-bound.md" || rc=$?  # the steps' convolutions against the 2x
exit $rc
