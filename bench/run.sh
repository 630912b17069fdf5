#!/usr/bin/env bash
# The benchmark run behind the README's tables: every op suite and the training-step suite
# on this machine, into OUT: ops.json/.md/.csv/.png and steps.csv/.md/.png.
#
#   bash bench/run.sh [OUT]          (default OUT: bench-results; needs the bench extra)
#
# About 15 minutes on a 2-core CPU; leave the machine otherwise idle while it runs.
# Every op case, the batch-128 conv blocks included (an empty -k expression selects all).
set -euo pipefail
OUT=${1:-bench-results}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)  # relative to the caller, before the cd below
cd "$(dirname "$0")/.."
aigc-fast bench --ops --ops-filter "" --breakdown --providers fused,eager,compile,fused+compile --repeats 7 --out "$OUT"
