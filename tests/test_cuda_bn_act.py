"""CUDA bn_act and conv blocks (run only where a GPU is visible): the same results as the
CPU kernels (one header of math; the reductions differ in order, so gradients of the
parameters agree to rounding), running statistics, the memory-saving mode, every layout,
and a whole converted DCGAN on the GPU against the plain model."""

import copy

import pytest
import torch

import aigc_fast
from aigc_fast import _activations, reference
from aigc_fast.nn import convert

from conftest import DTYPES, requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]

LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
}


def step(device, x, grad, params, layout, **kw):
    # Copies on every device: x.to("cpu") would be x itself, and the CPU run would then mark
    # the caller's tensors as requiring grad (and update its running statistics in place).
    xd = LAYOUTS[layout](x.to(device, copy=True)).requires_grad_()
    w, b, rm, rv = (p.to(device, copy=True) for p in params)
    w.requires_grad_()
    b.requires_grad_()
    y = aigc_fast.bn_act(xd, w, b, rm, rv, **kw)
    y.backward(LAYOUTS[layout](grad.to(device)))
    return [t.cpu() for t in (y.detach(), xd.grad, w.grad, b.grad, rm, rv)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", list(_activations.ACTIVATIONS))
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_cuda_matches_cpu(dtype, act, layout, training):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(4, 5, 9, 7, generator=g) * 3 + 1).to(dtype)
    grad = torch.randn(x.shape, generator=g).to(dtype)
    pd = torch.float64 if dtype == torch.float64 else torch.float32
    params = [torch.rand(5, generator=g).to(pd) + 0.5, torch.randn(5, generator=g).to(pd),
              torch.randn(5, generator=g).to(pd), torch.rand(5, generator=g).to(pd) + 0.5]
    cpu, gpu = (step(d, x, grad, params, layout, training=training, act=act) for d in ("cpu", "cuda"))
    tol = {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2)
    for c, u in zip(cpu, gpu):
        torch.testing.assert_close(u, c, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["identity", "leaky_relu", "tanh"])
def test_cuda_memory_efficient_mode(act):
    x = torch.randn(8, 6, 5, 5, dtype=torch.float64)
    grad = torch.randn_like(x)
    params = [torch.rand(6, dtype=torch.float64) + 0.5, torch.randn(6, dtype=torch.float64),
              torch.zeros(6, dtype=torch.float64), torch.ones(6, dtype=torch.float64)]
    lean = step("cuda", x, grad, params, "nchw", training=True, act=act, memory_efficient=True)
    full = step("cpu", x, grad, params, "nchw", training=True, act=act)
    for a, b in zip(lean, full):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_cuda_large_mean_and_compile():
    x = torch.randn(16, 4, 32, 32, device="cuda") + 1e4
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    aigc_fast.bn_act(x, None, None, rm, rv, training=True, momentum=1.0, act="identity")
    torch.testing.assert_close(rv.double().cpu(), x.double().var((0, 2, 3)).cpu(), rtol=1e-4, atol=0)
    fn = torch.compile(lambda t: aigc_fast.bn_act(t, None, None, None, None, training=True, act="relu"), fullgraph=True)
    torch.testing.assert_close(fn(x - 1e4), reference.bn_act(x - 1e4, None, None, None, None, training=True),
                               rtol=1e-4, atol=1e-4)


def test_cuda_converted_dcgan_matches_the_original():
    from test_blocks import dcgan

    torch.manual_seed(0)
    original = dcgan().cuda()
    converted = convert(copy.deepcopy(original))
    for model in (original, converted):
        model.zero_grad()
    z = torch.randn(8, 16, 1, 1, device="cuda")
    outs = []
    # cuDNN runs float32 convolutions in TF32 by default and matrix multiplies in full float32:
    # the converted projection block (a matrix multiply) would then differ from the original
    # conv-transpose by TF32's rounding (~1e-3), which says nothing about the conversion.
    with torch.backends.cudnn.flags(enabled=True, allow_tf32=False):
        for model in (converted, original):
            logits = model["D"](model["G"](z))
            logits.square().mean().backward()
            outs.append([logits.detach()] + [p.grad for p in model.parameters()] + list(model.buffers()))
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_counter_on_another_device_is_refused():
    """The C++ op refuses what its fake kernel refuses, so eager and torch.compile agree."""
    x = torch.randn(4, 3, 5, 5, device="cuda")
    stats = torch.zeros(3, device="cuda"), torch.ones(3, device="cuda")
    with pytest.raises(RuntimeError, match="num_batches_tracked must be on the same device as x"):
        torch.ops.aigc_fast.bn_act(x, None, None, *stats, torch.tensor(0), True, None, 1e-5, "relu", 0.2, False)
