"""Conv blocks at DCGAN shapes, forward+backward: the fused block (vendor convolution +
one bn_act / bias_act pass) against the plain nn.Sequential in eager mode and under
torch.compile, NCHW and channels_last; plus the parts, for the breakdown: the convolution
alone ("conv only", the part we do not own) and the part after it alone ("post": bn_act
vs eager BatchNorm2d + activation on the conv's output, with "copy" of as many bytes as
bn_act's kernels read and write as the memory floor). A discriminator block measures the memory-saving mode.

    pytest bench/test_bench_blocks.py --benchmark-json=blocks.json
    python bench/report.py blocks.json --memory peak
"""

import contextlib
import copy

import pytest
import torch
from torch import nn

import aigc_fast
from aigc_fast.nn import ConvBlock, ConvTransposeBlock

from conftest import (copy_floor, devices, eager_act, nbytes, peak_memory, saved_for_backward_bytes, skip_gpu_only,
                      synchronized)

# name: (in_ch, out_ch, kernel, stride, padding, input side, norm, act) of a generator block.
BLOCKS = {
    "G 100->512 1->4": (100, 512, 4, 1, 0, 1, "batch", "relu"),
    "G 512->256 4->8": (512, 256, 4, 2, 1, 4, "batch", "relu"),
    "G 256->128 8->16": (256, 128, 4, 2, 1, 8, "batch", "relu"),
    "G 128->64 16->32": (128, 64, 4, 2, 1, 16, "batch", "relu"),
    "G 64->3 32->64 tanh": (64, 3, 4, 2, 1, 32, None, "tanh"),
    "MNIST 100->256 1->7": (100, 256, 7, 1, 0, 1, "batch", "relu"),
    "MNIST 256->128 7->14": (256, 128, 4, 2, 1, 7, "batch", "relu"),
    "MNIST 128->1 14->28 tanh": (128, 1, 4, 2, 1, 14, None, "tanh"),
}
BATCHES = [64, 128]


def block_and_twin(spec):
    in_ch, out_ch, k, s, p, _, norm, act = spec
    torch.manual_seed(0)
    block = ConvTransposeBlock(in_ch, out_ch, k, s, p, norm=norm, act=act)
    twin = nn.Sequential(*[copy.deepcopy(m) for m in block])
    for module in twin:  # eager as DCGAN code writes it: ReLU(inplace=True) (conftest.eager_act)
        if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
            module.inplace = True
    return block, twin


def inputs(spec, batch, memory_format, device):
    in_ch, side = spec[0], spec[5]
    x = torch.randn(batch, in_ch, side, side, device=device).to(memory_format=memory_format)
    return x


def train_step(model, x, grad, *, fused=False):
    """Forward+backward of model on x. fused: under use_impl("fused"), which raises where
    the kernels cannot run (as the other suites' impl="fused" does), instead of the blocks'
    silent fall back to the reference ops, which would be timed under the name "fused"."""
    def step():
        with aigc_fast.use_impl("fused") if fused else contextlib.nullcontext():
            model.zero_grad(set_to_none=True)
            x.grad = None
            y = model(x)
            y.backward(grad)

    return step


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("name", BLOCKS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("provider", ["fused", "eager", "compile", "conv only"])
def test_block(benchmark, device, batch, name, layout, provider):
    spec = BLOCKS[name]
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    block, twin = block_and_twin(spec)
    block, twin = (m.to(device).to(memory_format=memory_format) for m in (block, twin))
    model = {"fused": block, "eager": twin, "compile": torch.compile(twin, dynamic=False), "conv only": twin[0]}[provider]
    x = inputs(spec, batch, memory_format, device).requires_grad_()
    with torch.no_grad():
        grad = torch.randn_like(model(x))
    step = train_step(model, x, grad, fused=provider == "fused")
    step()  # compile / warm up
    benchmark.group = f"block {name} b{batch} {layout} {device}"
    benchmark.extra_info.update(op="block", provider=provider, size=f"{name} b{batch} {layout}", device=device,
                                numel=grad.numel(), pass_="fwd+bwd")
    benchmark.pedantic(synchronized(step, device), rounds=5, warmup_rounds=1, iterations=1)
    if provider in ("fused", "eager"):
        benchmark.extra_info.update(peak_memory(step, device, (x, *model.parameters())))


POST_PROVIDERS = {
    "fused": lambda h, bn, act: aigc_fast.bn_act(h, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                                                 training=True, act=act, num_batches_tracked=bn.num_batches_tracked,
                                                 impl="fused"),
    # nn.BatchNorm2d then the activation as DCGAN's modules apply it (ReLU(inplace=True)).
    "eager": lambda h, bn, act: eager_act(act, bn(h)),
}


def conv_output(name):
    """(channels, side, act) of a BatchNorm block's convolution output."""
    _, out_ch, k, s, p, side, _, act = BLOCKS[name]
    return out_ch, (side - 1) * s - 2 * p + k, act


POST_SHAPES = {name: conv_output(name) for name, spec in BLOCKS.items() if spec[6] == "batch"}
GPU_POST_SHAPES = {"G 128->64 64->128": (64, 128, "relu")}  # 256 MiB at batch 64 (conftest.skip_gpu_only)
ALL_POST_SHAPES = {**POST_SHAPES, **GPU_POST_SHAPES}


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("batch", BATCHES, ids=lambda b: f"b{b}")
@pytest.mark.parametrize("name", ALL_POST_SHAPES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("provider", [*POST_PROVIDERS, "copy"])
def test_post(benchmark, device, batch, name, layout, provider):
    """The part after the convolution alone: BatchNorm2d (training) + ReLU, forward+backward."""
    skip_gpu_only(device, name, GPU_POST_SHAPES)
    out_ch, out_side, act = ALL_POST_SHAPES[name]
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    h = torch.randn(batch, out_ch, out_side, out_side, device=device).to(memory_format=memory_format)
    h.requires_grad_()
    grad = torch.randn_like(h)
    bn = nn.BatchNorm2d(out_ch).to(device)
    # Activation-sized streams bn_act moves: statistics 1, normalize 2, the backward's sums 2
    # and the input gradient 3 on the CPU, whose backward reads no y for relu and leaky_relu;
    # sums 3 and input gradient 4 on CUDA, whose kernels still read y (docs/api.md, "bn_act").
    moved = (8 if device == "cpu" else 10) * nbytes(h)
    if provider == "copy":
        step = copy_floor(moved, device)
    else:
        def step():
            h.grad = bn.weight.grad = bn.bias.grad = None
            y = POST_PROVIDERS[provider](h, bn, act)
            y.backward(grad)
    step()
    benchmark.group = f"post {name} b{batch} {layout} {device}"
    benchmark.extra_info.update(op="post (BatchNorm2d + ReLU)", provider=provider, size=f"{name} b{batch} {layout}",
                                device=device, numel=h.numel(), pass_="fwd+bwd",
                                bytes_moved=moved if provider in ("fused", "copy") else None)
    benchmark.pedantic(synchronized(step, device), rounds=10, warmup_rounds=2, iterations=1)


@pytest.mark.parametrize("device", devices())
@pytest.mark.parametrize("memory_efficient", [False, True])
def test_memory_saving_mode(benchmark, device, memory_efficient):
    """A discriminator block (leaky ReLU, invertible): what autograd keeps, and the time."""
    torch.manual_seed(0)
    block = ConvBlock(128, 256, memory_efficient=memory_efficient).to(device)
    x = torch.randn(64, 128, 16, 16, device=device, requires_grad=True)
    post_input = torch.randn(64, 256, 8, 8, device=device, requires_grad=True)
    bn = block[1]
    # h * 1: bn_act's input is an intermediate (as the conv output is in a block), so what
    # autograd keeps of it counts; the scalar multiply itself keeps nothing.
    kept = saved_for_backward_bytes(
        lambda h: aigc_fast.bn_act(h * 1, bn.weight, bn.bias, None, None, training=True, act="leaky_relu",
                                   memory_efficient=memory_efficient, impl="fused"), post_input)
    step = train_step(block, x, torch.randn(64, 256, 8, 8, device=device), fused=True)
    step()
    benchmark.group = f"memory-saving mode D 128->256 16->8 b64 {device}"
    benchmark.extra_info.update(op="memory-saving mode", provider="memory_efficient" if memory_efficient else "fused",
                                size="D 128->256 16->8 b64", device=device, saved_for_backward_bytes=kept,
                                pass_="fwd+bwd")
    benchmark.pedantic(synchronized(step, device), rounds=10, warmup_rounds=2, iterations=1)
