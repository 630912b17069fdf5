"""Whole training steps (forward, losses, backward, optimizer steps; D and G for a GAN),
through the package's own trainers, per workload, provider and setting: fused, eager
(the reference backend), torch.compile of the reference, fused + compile; fp32 and bf16;
NCHW and channels_last. Extra info: images/s and the step's peak memory (allocator
events on the CPU, max_memory_allocated on CUDA).

    pytest bench/test_bench_steps.py -k "dcgan28 or vae28" --benchmark-json=bench/results/steps-cpu.json
    python bench/report.py bench/results/steps-cpu.json --memory peak

The CPU default skips the slowest cases (64x64 workloads, bf16 on a CPU without native
bf16): select them with -k, or set AIGC_FAST_BENCH_ALL=1.
"""

import os

import pytest
import torch

import aigc_fast
from aigc_fast import benchmark as steps

from conftest import devices, synchronized

ALL = os.environ.get("AIGC_FAST_BENCH_ALL") == "1"
NATIVE_BF16 = aigc_fast.info(print_report=False)["cpu_native_bf16"]


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("provider", list(steps.PROVIDERS))
@pytest.mark.parametrize("workload", list(steps.WORKLOADS))
@pytest.mark.parametrize("device", devices())
def test_step(benchmark, device, workload, provider, precision, layout):
    if device == "cpu" and not ALL and (workload.endswith("64") or (precision == "bf16" and not NATIVE_BF16)):
        pytest.skip("slow on this CPU (AIGC_FAST_BENCH_ALL=1 runs it)")
    if device != "cuda" and provider.endswith("+graph"):
        pytest.skip("CUDA graphs run on a GPU only")
    torch.manual_seed(0)
    step, batch = steps.make_step(workload, provider, precision=precision, channels_last=layout == "channels_last",
                                  device=device)
    run = synchronized(step, device)
    for _ in range(3 if "compile" in provider else 2):  # compilation, caches, allocator warm-up
        run()
    benchmark.extra_info.update(op=f"step {workload}", provider=provider, device=device, pass_=f"{precision} {layout}",
                                size=f"batch {batch}")
    benchmark.extra_info[f"{device}_peak_bytes"] = steps.peak_bytes(step, device)
    benchmark.pedantic(run, rounds=5, iterations=1)
    if benchmark.stats:  # (None under --benchmark-disable)
        benchmark.extra_info["images_per_s"] = batch / benchmark.stats.stats.median
