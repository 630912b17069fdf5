"""bias_act at the shapes of a DCGAN's blocks without BatchNorm: the generator's final
activation (64x64x3 and MNIST 28x28x1 images, tanh) and the discriminator's first layer
(64 channels at 32x32, leaky ReLU), NCHW and channels_last; fused vs eager (the activation
in place where DCGAN's modules do it: conftest.eager_act) vs torch.compile(reference), plus
"copy" (as many bytes as the fused kernels read and write, copied: the memory floor).

    pytest bench/test_bench_bias_act.py --benchmark-json=bias_act.json
    python bench/report.py bias_act.json --memory peak
"""

import pytest
import torch

import aigc_fast
from aigc_fast import reference

from conftest import copy_floor, devices, eager_act, nbytes, op_step, peak_memory, skip_gpu_only, synchronized

# name: (activation shape, act); batch 128, as DCGAN trains.
SHAPES = {
    "G out 3x64x64 tanh": ((128, 3, 64, 64), "tanh"),
    "G out 1x28x28 tanh": ((128, 1, 28, 28), "tanh"),
    "D in 64x32x32 leaky": ((128, 64, 32, 32), "leaky_relu"),
}
GPU_SHAPES = {"D in 64x128x128 leaky": ((128, 64, 128, 128), "leaky_relu")}  # 512 MiB (conftest.skip_gpu_only)
ALL_SHAPES = {**SHAPES, **GPU_SHAPES}
_compiled = torch.compile(reference.bias_act, dynamic=False)
PROVIDERS = {
    "fused": lambda x, b, act: aigc_fast.bias_act(x, b, act, impl="fused"),
    # The bias as an op of its own (a conv with a bias adds it in its own kernel), then the
    # activation in place where DCGAN's modules do it (LeakyReLU(0.2, inplace=True)).
    "eager": lambda x, b, act: eager_act(act, x + b[:, None, None]),
    "compile": lambda x, b, act: _compiled(x, b, act),
}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("size", ALL_SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("provider", [*PROVIDERS, "copy"])
@pytest.mark.parametrize("pass_", ["fwd", "fwd+bwd"])
def test_bias_act(benchmark, device, size, layout, provider, pass_):
    if provider == "copy" and pass_ == "fwd":
        pytest.skip("the floor is listed once, with forward+backward")
    skip_gpu_only(device, size, GPU_SHAPES)
    shape, act = ALL_SHAPES[size]
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.randn(shape, device=device).to(memory_format=memory_format).requires_grad_(pass_ == "fwd+bwd")
    bias = torch.randn(shape[1], device=device, requires_grad=pass_ == "fwd+bwd")
    grad = torch.randn(shape, device=device).to(memory_format=memory_format)
    # The fused kernels read x and write y; the backward reads grad and y and writes grad_x:
    # 2 activations forward, 5 forward+backward on the CPU, which sums the bias gradient in
    # that pass; on CUDA the vendor's sum reads the (float32) grad_x once more, 6.
    moved = nbytes(x) * (2 if pass_ == "fwd" else 5 if device == "cpu" else 6)
    if provider == "copy":
        step = copy_floor(moved, device)
    else:
        step = op_step(lambda: (PROVIDERS[provider](x, bias, act), grad), pass_, (x, bias))
    step()  # compile / warm up
    benchmark.group = f"bias_act {pass_} {size} {layout} {device}"
    benchmark.extra_info.update(op="bias_act", provider=provider, size=f"{size} {layout}", numel=x.numel(),
                                pass_=pass_, device=device,
                                bytes_moved=moved if provider in ("fused", "copy") else None)
    benchmark.pedantic(synchronized(step, device), rounds=30, warmup_rounds=3, iterations=1)
    if pass_ == "fwd+bwd" and provider != "copy":
        benchmark.extra_info.update(peak_memory(step, device, (x, bias)))
