#!/usr/bin/env bash
# One call for a fresh CUDA machine that has PyTorch, nvcc and ninja but maybe no internet:
# builds aigc_fast from this checkout for the visible GPU's architecture, runs the CUDA
# tests (and compute-sanitizer memcheck on a small subset when the tool is there), runs
# the CUDA rows of the op and training-step benchmarks and the per-op profile (host ATen
# calls, kernels and their time: bench/profile_ops.py), and prints compact tables last.
#
#   bash bench/gpu_check.sh LOG_DIR        (full logs and benchmark JSON go to LOG_DIR)
#
# Budget: aimed at 8 minutes on one H200 (build ~2-3 on 16 cores, tests ~1, memcheck
# <= 2, each op suite <= 1.5, the step suites <= 4.5). Every stage after the build has
# its own timeout, so a stage that hangs cannot eat the rest; if every one ran to its
# limit the total would be ~16 minutes. On an H200 (2026-11-29) it took 4 minutes. The exit
# status names the first failure: 2 no GPU or pytest, 3 build, 4 tests, 5 memcheck,
# 6 benchmarks, 7 no pytest-benchmark.
set -uo pipefail
LOG=${1:?usage: bash bench/gpu_check.sh LOG_DIR}
mkdir -p "$LOG" && LOG=$(cd "$LOG" && pwd)  # relative to the caller, before the cd below
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
# -P: no source folder on sys.path, so the installed package (with its kernels) is tested.
PYTEST="$PY -P -m pytest -q -p no:cacheprovider"
status=0
fail() { [ "$status" = 0 ] && status=$1; }  # the first failure decides the exit status
step() { echo "== $1 ($(date +%T))"; }

step "machine"
$PY - <<'EOF' | tee "$LOG/machine.txt"
import torch, pytest  # pytest is needed too
assert torch.cuda.is_available(), "no visible CUDA GPU: run this on a GPU machine"
print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
print("torch", torch.__version__, "cuda", torch.version.cuda)
EOF
[ "${PIPESTATUS[0]}" = 0 ] || exit 2
ARCH=$($PY -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')

step "build for sm_${ARCH/./} (log: $LOG/build.log)"
if ! TORCH_CUDA_ARCH_LIST=$ARCH AIGC_FAST_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} \
    $PY -m pip install --no-build-isolation --no-deps --no-index --force-reinstall . >"$LOG/build.log" 2>&1; then
  tail -30 "$LOG/build.log"
  exit 3
fi
(cd "$LOG" && $PY -c 'import aigc_fast; aigc_fast.info()') | tee "$LOG/info.txt"

step "CUDA tests (log: $LOG/tests.log)"
AIGC_FAST_REQUIRE_EXTENSION=1 $PYTEST tests/test_cuda.py tests/test_cuda_losses.py tests/test_cuda_bias_act.py \
  tests/test_cuda_bn_act.py >"$LOG/tests.log" 2>&1 || fail 4
tail -5 "$LOG/tests.log"

if command -v compute-sanitizer >/dev/null 2>&1; then
  step "compute-sanitizer memcheck, small subset (log: $LOG/memcheck.log)"
  # float32 (dtype0), bce: every kernel of the losses once; the compile test is too slow here.
  AIGC_FAST_REQUIRE_EXTENSION=1 timeout 120 compute-sanitizer --tool memcheck --error-exitcode 9 \
    $PYTEST tests/test_cuda_losses.py tests/test_cuda.py tests/test_cuda_bias_act.py tests/test_cuda_bn_act.py \
    -k "dtype0 and not compile and not graph and not strided" >"$LOG/memcheck.log" 2>&1
  rc=$?
  [ $rc = 124 ] && echo "memcheck ran out of time (120 s): see $LOG/memcheck.log"
  [ $rc = 0 ] || fail 5
  tail -3 "$LOG/memcheck.log"
else
  echo "compute-sanitizer not found: memcheck skipped" | tee "$LOG/memcheck.log"
fi

step "CUDA benchmarks (log: $LOG/bench.log)"
if $PY -c 'import pytest_benchmark' 2>/dev/null; then
  for suite in reparameterize losses bias_act blocks; do
    # pytest-benchmark writes its JSON at the end: a suite cut off by timeout leaves none.
    # (blocks: batch 64, no torch.compile rows: compiling each shape would not fit the budget)
    timeout 90 $PYTEST "bench/test_bench_$suite.py" -k "cuda and not noise_source and not b128 and not compile" \
      --benchmark-json="$LOG/$suite-cuda.json" >>"$LOG/bench.log" 2>&1 || fail 6
  done
  # Whole training steps: fused vs eager in every setting, and torch.compile for the DCGAN
  # 64x64 goal (>= 1.3x eager, not slower than compile) in the default bf16 channels_last.
  timeout 120 $PYTEST bench/test_bench_steps.py -k "cuda and not compile" \
    --benchmark-json="$LOG/steps-cuda.json" >>"$LOG/bench.log" 2>&1 || fail 6
  timeout 150 $PYTEST bench/test_bench_steps.py -k "cuda and dcgan64 and bf16 and channels_last" \
    --benchmark-json="$LOG/steps-compile-cuda.json" >>"$LOG/bench.log" 2>&1 || fail 6
  # Host cost against kernel time per op, fused and eager (bench/profile_ops.py).
  timeout 90 $PY bench/profile_ops.py --device cuda >"$LOG/profile.md" 2>>"$LOG/bench.log" || fail 6
  step "results"
  tee -a "$LOG/tables.md" <"$LOG/profile.md"
  for suite in reparameterize losses bias_act blocks steps steps-compile; do
    [ -f "$LOG/$suite-cuda.json" ] && $PY bench/report.py "$LOG/$suite-cuda.json" --memory peak | tee -a "$LOG/tables.md"
  done
else
  echo "pytest-benchmark is not installed: benchmarks skipped (pip install pytest-benchmark)"
  fail 7
fi
echo "== done, exit status $status (logs in $LOG)"
exit $status
