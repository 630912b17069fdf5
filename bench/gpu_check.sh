#!/usr/bin/env bash
# One call for a fresh CUDA machine that has PyTorch and nvcc but maybe no internet:
# checks what it has, builds aigc_fast from this checkout for the visible GPU's
# architecture, runs the CUDA tests (and compute-sanitizer memcheck on a small subset when
# the tool is there), the CUDA rows of the training-step and op benchmarks, the per-op
# profile (host ATen calls, kernels and their time: bench/profile_ops.py), the kernels of
# one training step (bench/profile_step.py) and
# torch.compile on the DCGAN 64x64 goal, and prints every table again last, then one line
# per stage.
#
#   bash bench/gpu_check.sh LOG_DIR        (full logs and benchmark JSON go to LOG_DIR)
#
# A shorter check (a rerun after a fix): GPU_CHECK_MEMCHECK=0 skips compute-sanitizer,
# GPU_CHECK_SUITES names the op suites to run (default "reparameterize losses bias_act
# blocks"), GPU_CHECK_COMPILE=0 skips the torch.compile steps.
#
# Budget: GPU_CHECK_BUDGET seconds (default 450) for everything, so it ends inside 8
# minutes with the tables printed. Each stage's timeout is the smaller of its own limit
# and what is left; a stage that would start with too little left is skipped and says
# so. Benchmark suites also get a soft deadline (AIGC_FAST_BENCH_DEADLINE, bench/conftest.py)
# before their hard timeout, so a suite that runs long still writes the JSON of the cases
# it timed, and each suite's table is printed as soon as it ends. On an H200 (2026-11-29)
# the whole check took 4 minutes. The exit status names the first failure: 2 no GPU, no
# numpy or setuptools (nothing can build or import), or no usable log folder; 3 build,
# 4 tests, 5 memcheck, 6 benchmarks, 7 no pytest or pytest-benchmark (what needs no pytest
# still runs).
set -uo pipefail
LOG=${1:?usage: bash bench/gpu_check.sh LOG_DIR}
mkdir -p "$LOG" && LOG=$(cd "$LOG" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
# Everything runs from LOG_DIR: `python -m pytest` puts its working folder on sys.path, and
# from the source folder it would import the uncompiled source instead of the installed
# package (python -P avoids that only from Python 3.11 on).
cd "$LOG" || { echo "gpu_check: cannot use $LOG as the log folder" >&2; exit 2; }
# A reused folder must not report an earlier run's numbers (only what this script writes goes).
rm -rf ./*-cuda.json steps-cli tables.md profile.md profile-step.md ./*.log machine.txt info.txt summary.txt
PYTEST=("$PY" -m pytest -q -p no:cacheprovider)
END=$((SECONDS + ${GPU_CHECK_BUDGET:-450}))
RESERVE=15  # seconds kept for the tables at the end
status=0
summary=()
fail() { [ "$status" = 0 ] && status=$1; }  # the first failure decides the exit status
step() { echo "== $1 ($(date +%T), $((END - SECONDS)) s left)"; }
note() { summary+=("$1"); echo "-- $1"; echo "$1" >>summary.txt; }  # summary.txt: the stage lines, in LOG
# budget LIMIT: prints the seconds a stage may take (LIMIT, or what is left), or fails
# when fewer than 20 would be left.
budget() {
  local left=$((END - SECONDS - RESERVE))
  [ "$left" -lt 20 ] && return 1
  echo $((left < $1 ? left : $1))
}
report() {  # report NAME: the suite's table, now and in tables.md
  [ -f "$1-cuda.json" ] && "$PY" "$REPO/bench/report.py" "$1-cuda.json" --memory peak | tee -a tables.md
}
# bench_suite NAME LIMIT MARGIN FILE -k EXPR: one pytest-benchmark run into NAME-cuda.json
# (log: NAME.log). No case starts in the last MARGIN seconds of its time: longer than its
# slowest case, or `timeout` would stop the run before pytest-benchmark writes anything.
bench_suite() {
  local name=$1 margin=$3 t rc
  if ! t=$(budget "$2") || [ "$t" -le $((margin + 10)) ]; then note "$name: skipped (out of time)"; return; fi
  AIGC_FAST_REQUIRE_EXTENSION=1 AIGC_FAST_BENCH_DEADLINE=$(($(date +%s) + t - margin)) timeout "$t" \
    "${PYTEST[@]}" "$REPO/$4" "${@:5}" --benchmark-json="$name-cuda.json" >"$name.log" 2>&1
  rc=$?
  # pytest's summary line: how many cases ran, and how many the deadline skipped.
  if [ $rc = 0 ]; then note "$name: $(tail -1 "$name.log")"
  elif [ $rc = 124 ]; then note "$name: cut off at ${t} s (see $name.log)"; fail 6
  else note "$name: FAILED (pytest exit $rc): $(tail -1 "$name.log")"; fail 6; fi
  report "$name"
}

step "machine"
"$PY" - <<'EOF' | tee machine.txt
import importlib.util, os, platform, shutil, subprocess, sys
import torch
print("python", platform.python_version(), "torch", torch.__version__, "cuda", torch.version.cuda)
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name(), "capability", torch.cuda.get_device_capability())
else:
    print("gpu: NONE VISIBLE")
for module in ("numpy", "setuptools", "wheel", "ninja", "pytest", "pytest_benchmark", "matplotlib"):
    print(f"{module}: {'yes' if importlib.util.find_spec(module) else 'MISSING'}")
from torch.utils.cpp_extension import CUDA_HOME
nvcc = shutil.which("nvcc") or (CUDA_HOME and os.path.join(CUDA_HOME, "bin", "nvcc"))
if nvcc and os.path.exists(nvcc):
    print("nvcc", nvcc, subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1])
else:
    print("nvcc: MISSING")
EOF
"$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null || { echo "no visible CUDA GPU: run this on a GPU machine"; exit 2; }
"$PY" -c 'import numpy' 2>/dev/null || { echo "numpy is missing, and aigc_fast needs it: install numpy first"; exit 2; }
# The build runs with --no-build-isolation --no-index (no internet): its backend must be here already.
"$PY" - <<'PY' 2>/dev/null || { echo "setuptools (>= 70.1, or older with wheel) is missing, and the offline build needs it: install it first"; exit 2; }
import importlib.metadata, importlib.util
version = tuple(int(p) for p in importlib.metadata.version("setuptools").split(".")[:2])
assert version >= (70, 1) or (version >= (64, 0) and importlib.util.find_spec("wheel"))
PY
"$PY" -c 'import ninja' 2>/dev/null || echo "ninja is missing: the build compiles one file at a time (slower)"
HAVE_PYTEST=0; "$PY" -c 'import pytest' 2>/dev/null && HAVE_PYTEST=1
HAVE_BENCH=0; "$PY" -c 'import pytest_benchmark' 2>/dev/null && HAVE_BENCH=1
ARCH=$("$PY" -c 'import torch; print("%d.%d" % torch.cuda.get_device_capability())')
SANITIZER=$(command -v compute-sanitizer || true)
if [ -z "$SANITIZER" ]; then
  CUDA_ROOT=$("$PY" -c 'from torch.utils.cpp_extension import CUDA_HOME; print(CUDA_HOME or "")')
  for candidate in "$CUDA_ROOT/bin/compute-sanitizer" "$CUDA_ROOT/compute-sanitizer/compute-sanitizer" \
      /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [ -x "$candidate" ] && { SANITIZER=$candidate; break; }
  done
fi

step "build for sm_${ARCH/./} (log: $LOG/build.log)"
t=$(budget 300) || t=60
if ! (cd "$REPO" && TORCH_CUDA_ARCH_LIST=$ARCH AIGC_FAST_CUDA=1 MAX_JOBS=${MAX_JOBS:-16} PIP_BREAK_SYSTEM_PACKAGES=1 \
    timeout "$t" "$PY" -m pip install --no-build-isolation --no-deps --no-index --force-reinstall .) \
    >build.log 2>&1; then
  tail -30 build.log
  echo "build failed (or ran past ${t} s): nothing to test"
  exit 3
fi
note "build: ok"
"$PY" -c 'import aigc_fast; aigc_fast.info()' | tee info.txt

if [ "$HAVE_PYTEST" = 1 ]; then
  step "CUDA tests (log: $LOG/tests.log)"
  if t=$(budget 150); then
    AIGC_FAST_REQUIRE_EXTENSION=1 timeout "$t" "${PYTEST[@]}" "$REPO"/tests/test_cuda.py \
      "$REPO"/tests/test_cuda_losses.py "$REPO"/tests/test_cuda_bias_act.py "$REPO"/tests/test_cuda_bn_act.py \
      "$REPO"/tests/test_cuda_edges.py "$REPO"/tests/test_cuda_train.py >tests.log 2>&1
    rc=$?
    tail -5 tests.log
    if [ $rc = 0 ]; then note "tests: $(tail -1 tests.log)"; else note "tests: FAILED (exit $rc): $(tail -1 tests.log)"; fail 4; fi
  else
    note "tests: skipped (out of time)"
  fi

  if [ "${GPU_CHECK_MEMCHECK:-1}" = 0 ]; then
    note "memcheck: skipped (GPU_CHECK_MEMCHECK=0)"
  elif [ -z "$SANITIZER" ]; then
    note "memcheck: skipped (compute-sanitizer not found in PATH or under CUDA_HOME)"
  elif ! t=$(budget 120); then
    note "memcheck: skipped (out of time)"
  else
    step "compute-sanitizer memcheck, small subset (log: $LOG/memcheck.log)"
    # float32 (dtype0): every kernel once; the compile test is too slow here. PyTorch's
    # caching allocator is off, or an access past a tensor's end inside a cached block
    # would go unseen.
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 AIGC_FAST_REQUIRE_EXTENSION=1 timeout "$t" \
      "$SANITIZER" --tool memcheck --error-exitcode 9 "${PYTEST[@]}" "$REPO"/tests/test_cuda_losses.py \
      "$REPO"/tests/test_cuda.py "$REPO"/tests/test_cuda_bias_act.py "$REPO"/tests/test_cuda_bn_act.py \
      -k "dtype0 and not compile and not graph and not strided" >memcheck.log 2>&1
    rc=$?
    tail -3 memcheck.log
    case $rc in
      0) note "memcheck: 0 errors ($(tail -1 memcheck.log))" ;;
      124) note "memcheck: cut off at ${t} s"; fail 5 ;;
      *) note "memcheck: FAILED (exit $rc, see memcheck.log)"; fail 5 ;;
    esac
  fi
else
  note "tests and memcheck: skipped (pytest is missing)"
  fail 7
fi

step "CUDA benchmarks (logs: $LOG/<suite>.log)"
if [ "$HAVE_BENCH" = 1 ]; then
  # Whole training steps first (the goal: DCGAN 64x64 >= 1.3x eager), fused vs eager in
  # every setting; then the op suites (the goal: >= 85% of copy bandwidth at large sizes;
  # blocks at batch 64 without compile rows, which would not fit).
  bench_suite steps 150 20 bench/test_bench_steps.py -k "cuda and not compile"
  for suite in ${GPU_CHECK_SUITES:-reparameterize losses bias_act blocks}; do
    bench_suite "$suite" 90 15 "bench/test_bench_$suite.py" -k "cuda and not noise_source and not b128 and not compile"
  done
else
  # pytest-benchmark missing: the step benchmark through the CLI (no op suites).
  if t=$(budget 150); then
    AIGC_FAST_REQUIRE_EXTENSION=1 timeout "$t" "$PY" -m aigc_fast bench --device cuda --workloads dcgan28,dcgan64,vae28,vae64 \
      --providers fused,eager --precision fp32,bf16 --out steps-cli >steps.log 2>&1 && note "steps (CLI): ok" \
      || { note "steps (CLI): failed or cut off (see steps.log)"; fail 6; }
    [ -f steps-cli/steps.md ] && tee -a tables.md <steps-cli/steps.md
  fi
  note "op suites: skipped (pytest-benchmark is missing)"
  fail 7
fi
# Host cost against kernel time per op, fused and eager (no pytest needed).
if t=$(budget 90); then
  if AIGC_FAST_REQUIRE_EXTENSION=1 timeout "$t" "$PY" "$REPO/bench/profile_ops.py" --device cuda >profile.md 2>profile.log; then
    note "profile: ok"
  else
    note "profile: failed or cut off (see profile.log)"; fail 6
  fi
  tee -a tables.md <profile.md
else
  note "profile: skipped (out of time)"
fi
# The same for one whole training step, fused against eager: which kernels a step's time goes to.
if t=$(budget 60); then
  if AIGC_FAST_REQUIRE_EXTENSION=1 timeout "$t" "$PY" "$REPO/bench/profile_step.py" --device cuda \
      --providers fused,eager,fused+graph >profile-step.md 2>profile-step.log; then
    note "step profile: ok"
  else
    note "step profile: failed or cut off (see profile-step.log)"; fail 6
  fi
  tee -a tables.md <profile-step.md
else
  note "step profile: skipped (out of time)"
fi
if [ "$HAVE_BENCH" = 1 ] && [ "${GPU_CHECK_COMPILE:-1}" != 0 ]; then
  # torch.compile for the DCGAN 64x64 goal (not slower than compile) in the default bf16
  # channels_last, one provider per run: compiling is the slowest part of the check.
  bench_suite steps-compile 120 100 bench/test_bench_steps.py \
    -k "cuda and dcgan64 and bf16 and channels_last and compile and not fused"
  bench_suite steps-fused-compile 100 80 bench/test_bench_steps.py \
    -k "cuda and dcgan64 and bf16 and channels_last and fused and compile"
fi

step "results"
[ -f tables.md ] && cat tables.md
echo
echo "== stages"
printf '%s\n' "${summary[@]}"
echo "== done, exit status $status (logs in $LOG)"
exit $status
