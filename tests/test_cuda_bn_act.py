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
GPU = "cuda"  # a name, so the tests can be dry-run with GPU = "cpu" where no GPU is visible

LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
}


def step(device, x, grad, params, layout, *, param_grads=True, num_batches_tracked=None, **kw):
    # Copies on every device: x.to("cpu") would be x itself, and the CPU run would then mark
    # the caller's tensors as requiring grad (and update its running statistics in place).
    xd = LAYOUTS[layout](x.to(device, copy=True)).requires_grad_()
    w, b, rm, rv = (p.to(device, copy=True) for p in params)
    w.requires_grad_(param_grads)
    b.requires_grad_(param_grads)
    counter = None if num_batches_tracked is None else num_batches_tracked.to(device, copy=True)
    y = aigc_fast.bn_act(xd, w, b, rm, rv, num_batches_tracked=counter, **kw)
    y.backward(LAYOUTS[layout](grad.to(device)))
    out = [y.detach(), xd.grad, w.grad, b.grad, rm, rv] + ([] if counter is None else [counter])
    return [None if t is None else t.cpu() for t in out]


def assert_same(gpu, cpu, tol):
    assert len(gpu) == len(cpu)
    for u, c in zip(gpu, cpu):
        if c is None:
            assert u is None
        else:
            torch.testing.assert_close(u, c, rtol=tol, atol=tol)


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
    cpu, gpu = (step(d, x, grad, params, layout, training=training, act=act) for d in ("cpu", GPU))
    assert_same(gpu, cpu, {torch.float64: 1e-12, torch.float32: 1e-5}.get(dtype, 2e-2))


# Shapes that take the kernels' other paths: several merge blocks (more than 256 channels),
# several splits of a channel (more than 16384 values), and the short rows of many channels
# that the CPU reduces in panels (2-D [N, C], or channels_last with small maps).
LARGE_SHAPES = {
    "300 channels": ((16, 300, 3, 3), "nchw"),
    "65536 values per channel": ((64, 4, 32, 32), "nchw"),
    "2-d, 4096 channels": ((128, 4096), "nchw"),
    "channels_last 512@4x4": ((64, 512, 4, 4), "channels_last"),
    "channels_last 65536 rows": ((64, 40, 32, 32), "channels_last"),
    # past 2^23 elements channels_last takes the row kernels (bn_act.cu: kRowKernelsFrom)
    "channels_last 2^21 rows, row kernels": ((33, 4, 256, 256), "channels_last"),
}


@pytest.mark.parametrize("shape, layout", LARGE_SHAPES.values(), ids=list(LARGE_SHAPES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("training", [True, False])
def test_cuda_matches_cpu_at_large_shapes(shape, layout, dtype, training):
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(shape, generator=g) * 2 + 3).to(dtype)
    grad = torch.randn(shape, generator=g).to(dtype)
    c = shape[1]
    params = [torch.rand(c, generator=g) + 0.5, torch.randn(c, generator=g),
              torch.randn(c, generator=g), torch.rand(c, generator=g) + 0.5]
    # The sums run in another order on each device: float32 rounding over up to 65536 terms.
    cpu, gpu = (step(d, x, grad, params, layout, training=training, act="leaky_relu") for d in ("cpu", GPU))
    assert_same(gpu, cpu, 1e-4 if dtype == torch.float32 else 2e-2)


@pytest.mark.parametrize("training", [True, False])
def test_cuda_cumulative_average_and_input_gradient_only(training):
    """momentum=None reads num_batches_tracked on the device; without parameter gradients
    the backward takes its input-gradient-only branch."""
    g = torch.Generator().manual_seed(2)
    x, grad = torch.randn(8, 6, 5, 5, generator=g, dtype=torch.float64), torch.randn(8, 6, 5, 5, generator=g, dtype=torch.float64)
    params = [torch.rand(6, generator=g, dtype=torch.float64) + 0.5, torch.randn(6, generator=g, dtype=torch.float64),
              torch.randn(6, generator=g, dtype=torch.float64), torch.rand(6, generator=g, dtype=torch.float64) + 0.5]
    kw = dict(training=training, momentum=None, num_batches_tracked=torch.tensor(3), param_grads=False, act="tanh")
    cpu, gpu = (step(d, x, grad, params, "nchw", **kw) for d in ("cpu", GPU))
    assert_same(gpu, cpu, 1e-12)


def test_cuda_half_model():
    """A model moved to float16 whole (model.half()): float16 input, parameters and running
    buffers; the statistics still run in float32."""
    g = torch.Generator().manual_seed(3)
    x, grad = torch.randn(8, 6, 5, 5, generator=g).half(), torch.randn(8, 6, 5, 5, generator=g).half()
    params = [(torch.rand(6, generator=g) + 0.5).half(), torch.randn(6, generator=g).half(),
              torch.randn(6, generator=g).half(), (torch.rand(6, generator=g) + 0.5).half()]
    cpu, gpu = (step(d, x, grad, params, "channels_last", training=True, act="relu") for d in ("cpu", GPU))
    assert_same(gpu, cpu, 2e-2)


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


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_large_mean_and_compile(layout):
    x = LAYOUTS[layout](torch.randn(16, 4, 32, 32, device="cuda") + 1e4)
    rm, rv = torch.zeros(4, device="cuda"), torch.ones(4, device="cuda")
    aigc_fast.bn_act(x, None, None, rm, rv, training=True, momentum=1.0, act="identity")
    torch.testing.assert_close(rv.double().cpu(), x.double().var((0, 2, 3)).cpu(), rtol=1e-4, atol=0)
    fn = torch.compile(lambda t: aigc_fast.bn_act(t, None, None, None, None, training=True, act="relu"), fullgraph=True)
    torch.testing.assert_close(fn(x - 1e4), reference.bn_act(x - 1e4, None, None, None, None, training=True),
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_cuda_statistics_that_overflow_float32_sums_are_the_cpus(layout):
    """Finite data whose float32 tile sums overflow: the same float64 fallback as the CPU's
    (the shared exact_channel_moments), so finite outputs and a right-signed running mean."""
    x = torch.zeros(64, 3, 6, 6)
    x[0, 1, 0, 0] = 2e38
    grad = torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    params = [torch.ones(3), torch.zeros(3), torch.zeros(3), torch.ones(3)]
    cpu, gpu = (step(d, x, grad, params, layout, training=True, act="identity") for d in ("cpu", GPU))
    assert torch.isfinite(gpu[0]).all() and gpu[4][1] > 0
    assert_same(gpu, cpu, 1e-5)


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
