"""Shared pieces of the benchmark suites: providers, timing hygiene, memory accounting."""

import collections
import os
import platform
import subprocess
import time

import pytest
import torch

import aigc_fast
from aigc_fast import benchmark as benchmark_lib
from aigc_fast._info import cpu_vector_isa


@pytest.fixture(scope="session", autouse=True)
def strict_compile():
    with benchmark_lib.compile_strictly():
        yield


@pytest.fixture(autouse=True)
def deadline():
    """AIGC_FAST_BENCH_DEADLINE (a Unix time): cases that would start after it are skipped,
    so a suite on a time budget (bench/gpu_check.sh) ends normally and pytest-benchmark
    writes the JSON of every case that ran; one stopped by `timeout` writes none."""
    limit = os.environ.get("AIGC_FAST_BENCH_DEADLINE")
    if limit and time.time() > float(limit):
        pytest.skip("past AIGC_FAST_BENCH_DEADLINE")
    yield


@pytest.fixture(autouse=True)
def fresh_compile_cache():
    """Each case compiles its own variants: the suites build one compiled function per op
    and call it at every size, and the variants of all earlier cases would otherwise count
    towards dynamo's recompile limit (see aigc_fast.benchmark.compile_strictly)."""
    torch.compiler.reset()
    yield


def _case(item):
    """An item's case: its test function and every parameter but the provider."""
    callspec = getattr(item, "callspec", None)
    params = {} if callspec is None else callspec.params
    return (str(item.path), item.originalname,
            tuple((name, repr(value)) for name, value in params.items() if name != "provider"))


@pytest.hookimpl(trylast=True)  # after -k and -m have deselected: the order of what runs
def pytest_collection_modifyitems(items):
    """Runs the providers of one case back to back. Parametrized in declaration order, the
    suites would time every fused case first and every eager case minutes later, so a busy
    or idle spell of a shared machine would land on one provider's column: the 2026-11-30
    suite put the G 64->3 b128 block at 0.6x eager, and the same block timed alternately
    with eager is 1.0x (bench/NOTES.md, "Benchmark order"). Every other case of a suite on
    a device runs its providers in reverse order, so that none always runs first (after
    the previous case's floors, into an allocator in their state) or last."""
    cases = {}
    for item in items:
        cases.setdefault(_case(item), []).append(item)
    seen = collections.Counter()
    ordered = []
    for (path, function, params), case in cases.items():
        stream = (path, function, dict(params).get("device"))  # (device varies fastest in the suites)
        ordered += case if seen[stream] % 2 == 0 else case[::-1]
        seen[stream] += 1
    items[:] = ordered


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["torch"] = torch.__version__
    machine_info["threads"] = torch.get_num_threads()
    machine_info["gpu"] = torch.cuda.get_device_name() if torch.cuda.is_available() else None
    machine_info["cpu_model"] = machine_info.get("cpu", {}).get("brand_raw") or platform.processor()
    machine_info["cpu_isa"] = cpu_vector_isa()
    machine_info["aigc_fast"] = aigc_fast.__version__  # as the step rows record them
    machine_info["kernels"] = ",".join(aigc_fast._extension.compiled_backends()) or "none"
    machine_info["commit"] = _commit()  # the version string covers many builds


def _commit():
    """The checkout's commit, with "+changes" when its files differ from it; None outside git."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return commit + ("+changes" if dirty else "")


def devices():
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def skip_gpu_only(device, size, gpu_sizes):
    """Skips the suite's GPU-only sizes on the CPU. At the CPU suites' sizes (<= 16 MiB a
    tensor) an H200 does a fused op's memory work in 20-60 us, under the ~0.14 ms of host
    work per forward+backward (bench/results/gpu-h200.md), so no kernel can show its
    bandwidth there. The GPU-only sizes move gigabytes per call: ~1 ms of device time that
    the host's work overlaps, which is what "share of copy bandwidth at large sizes" needs."""
    if device == "cpu" and size in gpu_sizes:
        pytest.skip("a GPU-only size (bandwidth at scale)")


def synchronized(fn, device):
    """Timing a CUDA op means waiting for it.

    The suites' steps return nothing: pytest-benchmark holds a round's return value while
    the next round runs, so returned outputs would keep the allocator from reusing their
    memory and every round would page-fault fresh buffers in (up to +50% at 4M elements)."""
    if device != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    return run


def saved_for_backward_bytes(fn, *inputs):
    """Bytes autograd keeps between forward and backward beyond the tensors the caller holds
    anyway (the inputs and the outputs): the memory a fused op is meant to save. Exact, and
    the same on every device, unlike a CPU allocator's high-water mark."""
    saved = {}

    def pack(t):
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*inputs)
    outputs = out if isinstance(out, tuple) else (out,)
    held = {t.untyped_storage().data_ptr() for t in (*inputs, *outputs)}
    return sum(n for ptr, n in saved.items() if ptr not in held)


def eager_act(act, v, negative_slope=0.2):
    """The activation as DCGAN code applies it to a fresh tensor: ReLU(inplace=True) and
    LeakyReLU(0.2, inplace=True) write in place, Tanh and Sigmoid (no inplace flag) do not.
    The eager baselines run this, not aigc_fast.reference's out-of-place table: a baseline
    with an extra allocation per activation had flattered the fused ops, by up to 1.6x where
    the activation is large enough for its fresh pages to cost (bench/NOTES.md, 2026-12-02)."""
    if act == "relu":
        return torch.relu_(v)
    if act == "leaky_relu":
        return torch.nn.functional.leaky_relu_(v, negative_slope)
    return aigc_fast.reference.bias_act(v, None, act)


def nbytes(*tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def copy_floor(moved, device):
    """The memory floor no implementation can beat: copying `moved` bytes (reading half,
    writing half) into a buffer allocated and touched beforehand. Returns the step. The
    report turns its time into this machine's copy bandwidth at that size and sets each
    fused op's own bytes per second against it. Not a clone: a clone's time at these sizes
    is mostly the allocator's (glibc maps blocks of 16-32 MiB fresh, page faults and all,
    depending on what was freed before), which measured 3.6-18 GB/s for the same bytes."""
    source = torch.ones(max(1, moved // 8), device=device)  # float32: moved / 2 bytes
    target = torch.empty_like(source)

    def step():
        target.copy_(source)

    step()
    return step


def op_step(run, pass_, leaves):
    """One timed call of an op. `run()` calls it and returns (outputs, their gradients) for
    torch.autograd.backward. "fwd": run under no_grad; "fwd+bwd": the leaves' gradients reset
    first (as zero_grad(set_to_none=True) does in a training step), then run and backward."""
    if pass_ == "fwd":
        def step():
            with torch.no_grad():
                run()
    else:
        def step():
            for t in leaves:
                t.grad = None
            outputs, grads = run()
            torch.autograd.backward(outputs, grads)
    return step


def peak_memory(step, device, leaves=()):
    """{"cpu_peak_bytes" or "cuda_peak_bytes": the peak of one call of `step` beyond what was
    held before it (aigc_fast.benchmark.peak_bytes)}, with the leaves' gradients freed
    before (not during) the call, on both devices alike: a gradient the previous round left
    would otherwise count in the baseline and be freed and reused inside the step."""
    for t in leaves:
        t.grad = None
    key = "cuda_peak_bytes" if device == "cuda" else "cpu_peak_bytes"
    return {key: benchmark_lib.peak_bytes(step, device)}
