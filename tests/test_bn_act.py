"""bn_act against nn.BatchNorm2d + activation (the reference) in every dtype, activation,
layout and mode: outputs, gradients for input and parameters, running statistics over
several steps; the memory-saving mode; accuracy for large means; determinism across
thread counts; the ecosystem contracts (opcheck, gradcheck, gradgradcheck, torch.compile,
autocast); and bad input."""

import numpy as np
import pytest
import torch

import aigc_fast
from aigc_fast import _activations, reference

from conftest import DTYPES, assert_close_to_float64, requires_fused

pytestmark = requires_fused
ACTS = list(_activations.ACTIVATIONS)
LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
    "strided": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),  # neither: copied
}


class Params:
    """A BatchNorm layer's parameters and buffers, cloned per run so runs compare."""

    def __init__(self, channels, seed=0, dtype=torch.float32, param_dtype=None):
        g = torch.Generator().manual_seed(seed)
        pd = param_dtype or (torch.float64 if dtype == torch.float64 else torch.float32)
        self.weight = (1 + 0.5 * torch.randn(channels, generator=g, dtype=torch.float64)).to(pd)
        self.bias = (0.3 * torch.randn(channels, generator=g, dtype=torch.float64)).to(pd)
        self.running_mean = (0.1 * torch.randn(channels, generator=g, dtype=torch.float64)).to(pd)
        self.running_var = (1 + torch.rand(channels, generator=g, dtype=torch.float64)).to(pd)
        self.num_batches_tracked = torch.tensor(3)

    def clone(self, cast=lambda t: t):
        other = Params.__new__(Params)
        for name in ("weight", "bias", "running_mean", "running_var"):
            setattr(other, name, cast(getattr(self, name)).clone())
        other.num_batches_tracked = self.num_batches_tracked.clone()
        return other


def run(fn, x, p, grad_out, *, training, cast=lambda t: t, layout=lambda t: t, steps=1, **kw):
    """steps forward/backward passes through fn; the last step's y and gradients, and the
    running statistics after all of them."""
    q = p.clone(cast)
    w, b = q.weight.requires_grad_(), q.bias.requires_grad_()
    for _ in range(steps):
        x_ = layout(cast(x)).detach().requires_grad_()
        w.grad = b.grad = None
        y = fn(x_, w, b, q.running_mean, q.running_var, training=training, num_batches_tracked=q.num_batches_tracked,
               **kw)
        y.backward(layout(cast(grad_out)))
    return (y.detach(), x_.grad, w.grad, b.grad), (q.running_mean, q.running_var, q.num_batches_tracked)


def data(shape, dtype=torch.float32, seed=1, mean=0.5, std=2.0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * std + mean).to(dtype)
    grad_out = torch.randn(shape, generator=g, dtype=torch.float64).to(dtype)
    return x, grad_out


def compare(fused, same_dtype, exact, n_per_channel, dtype):
    (fy, *fg), (frm, frv, fn) = fused
    (ry, *rg), _ = same_dtype
    (ey, *eg), (erm, erv, en) = exact
    assert_close_to_float64(fy, ry, ey)
    for f, r, e in zip(fg, rg, eg):
        # Parameter gradients are sums over the batch: allow for that many roundings.
        floor = 1.0 if f.shape == fy.shape else float(n_per_channel) ** 0.5
        assert_close_to_float64(f, r, e, rel_floor=floor, data_dtype=dtype)
    stats_tol = 1e-10 if dtype == torch.float64 else 1e-5  # float32 statistics otherwise
    torch.testing.assert_close(frm.double(), erm.double(), rtol=stats_tol, atol=stats_tol)
    torch.testing.assert_close(frv.double(), erv.double(), rtol=stats_tol, atol=stats_tol)
    assert fn.item() == en.item()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("training", [True, False])
def test_matches_reference(dtype, act, layout, training):
    shape = (4, 6, 5, 7)
    x, grad_out = data(shape, dtype)
    p = Params(shape[1], dtype=dtype)
    kw = dict(training=training, layout=LAYOUTS[layout], act=act, negative_slope=0.1)
    fused = run(aigc_fast.bn_act, x, p, grad_out, **kw)
    same_dtype = run(reference.bn_act, x, p, grad_out, **kw)
    exact = run(reference.bn_act, x, p, grad_out, cast=lambda t: t.double(), **kw)
    assert fused[0][0].dtype == dtype and fused[0][2].dtype == p.weight.dtype
    if layout == "channels_last":
        assert fused[0][0].is_contiguous(memory_format=torch.channels_last)
        assert fused[0][1].is_contiguous(memory_format=torch.channels_last)
    compare(fused, same_dtype, exact, 4 * 5 * 7, dtype)


# Shapes that take every walk: long runs (NCHW, H * W >= 512), short runs as rows (small
# maps, channels_last, 1x1 maps, 2-D and 3-D inputs), rows wider than a chunk, rows of
# 16K-32K elements (blocks of a few rows), short runs in rows past 32K (panels of channels,
# also of single elements), one channel.
SHAPES = [(2, 3, 32, 20), (8, 5, 1, 1), (16, 5), (3, 4, 9), (2, 600, 3, 3), (4, 1, 6, 6), (128, 3, 2, 2),
          (3, 1200, 4, 4), (5, 20000), (2, 2100, 4, 4), (3, 40000), (2, 33000, 1, 2)]


@pytest.mark.parametrize("shape, channels_last", [(s, False) for s in SHAPES] + [(s, True) for s in SHAPES if len(s) == 4])
@pytest.mark.parametrize("training", [True, False])
def test_shapes_float64(shape, channels_last, training):
    x, grad_out = data(shape, torch.float64, seed=5)
    p = Params(shape[1], dtype=torch.float64)
    layout = LAYOUTS["channels_last" if channels_last else "nchw"]
    fused = run(aigc_fast.bn_act, x, p, grad_out, training=training, layout=layout, act="leaky_relu", steps=2)
    ref = run(reference.bn_act, x, p, grad_out, training=training, layout=layout, act="leaky_relu", steps=2)
    for f, r in zip(fused[0] + fused[1], ref[0] + ref[1]):
        torch.testing.assert_close(f, r, rtol=1e-10, atol=1e-10)


# Rows of more than 1024 channels (or 32768 elements) with short runs are reduced in panels
# of channels, each a copy of its rows' columns: one block per panel, panels of several
# blocks and groups (copies of rows after the first), single-element and 4-element runs,
# and channels_last.
PANEL_CASES = [((4, 9000, 2, 2), "nchw"), ((600, 2048), "nchw"), ((130, 1500), "nchw"),
               ((70, 1100, 2, 2), "channels_last")]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, layout", PANEL_CASES)
def test_rows_of_many_channels_in_panels(dtype, shape, layout):
    """Every dtype, both thread counts, one result; against the reference and float64."""
    x, grad_out = data(shape, dtype)
    p = Params(shape[1], dtype=dtype)
    threads = torch.get_num_threads()
    try:
        fused = []
        for n in (1, 2):
            torch.set_num_threads(n)
            fused.append(run(aigc_fast.bn_act, x, p, grad_out, training=True, layout=LAYOUTS[layout]))
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(fused[0][0] + fused[0][1], fused[1][0] + fused[1][1]):
        assert torch.equal(a, b)
    same_dtype = run(reference.bn_act, x, p, grad_out, training=True, layout=LAYOUTS[layout])
    exact = run(reference.bn_act, x, p, grad_out, cast=lambda t: t.double(), training=True, layout=LAYOUTS[layout])
    compare(fused[0], same_dtype, exact, x.numel() // shape[1], dtype)


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_statistics_over_steps(momentum):
    """Five steps through the fused op leave the buffers where nn.BatchNorm2d leaves them."""
    bn = torch.nn.BatchNorm2d(6, momentum=momentum)
    bn.weight.data.uniform_(0.5, 1.5)
    p = Params(6)
    for name in ("weight", "bias", "running_mean", "running_var"):
        setattr(p, name, getattr(bn, name).detach().clone())
    p.num_batches_tracked = bn.num_batches_tracked.clone()
    for step in range(5):
        x, _ = data((8, 6, 4, 4), seed=10 + step, mean=step)
        aigc_fast.bn_act(x, p.weight, p.bias, p.running_mean, p.running_var, training=True, momentum=momentum,
                         act="identity", num_batches_tracked=p.num_batches_tracked)
        bn(x)
    torch.testing.assert_close(p.running_mean, bn.running_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(p.running_var, bn.running_var, rtol=1e-6, atol=1e-6)
    assert p.num_batches_tracked.item() == bn.num_batches_tracked.item() == 5
    bn.eval()
    x, _ = data((8, 6, 4, 4), seed=99)
    y = aigc_fast.bn_act(x, p.weight, p.bias, p.running_mean, p.running_var, training=False, act="identity")
    torch.testing.assert_close(y, bn(x), rtol=1e-5, atol=1e-5)


def test_running_buffers_strided_or_in_another_dtype():
    """The running update is written in place whatever the buffers' layout and dtype: a
    strided view of a larger buffer is updated through the view (the elements between
    untouched), and float64 buffers next to float32 data stay float64."""
    x, _ = data((8, 3, 4, 4), seed=3, mean=2.0)
    bn = torch.nn.BatchNorm2d(3, affine=False)
    bn(x)
    mean_storage, var_storage = torch.full((6,), 7.0), torch.full((6,), 7.0)
    running_mean, running_var = mean_storage[::2], var_storage[::2]
    running_mean.zero_()
    running_var.fill_(1.0)
    aigc_fast.bn_act(x, None, None, running_mean, running_var, training=True, act="identity")
    torch.testing.assert_close(running_mean, bn.running_mean)
    torch.testing.assert_close(running_var, bn.running_var)
    assert (mean_storage[1::2] == 7.0).all() and (var_storage[1::2] == 7.0).all()
    mean64, var64 = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    aigc_fast.bn_act(x, None, None, mean64, var64, training=True, act="identity")
    assert mean64.dtype == var64.dtype == torch.float64
    torch.testing.assert_close(mean64, bn.running_mean.double(), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(var64, bn.running_var.double(), rtol=1e-6, atol=1e-7)


def test_no_running_statistics_and_no_affine():
    x, grad_out = data((4, 3, 6, 6), torch.float64)
    for training in (True, False):  # without buffers, eval uses the batch statistics too (as F.batch_norm)
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        y1 = aigc_fast.bn_act(x1, None, None, None, None, training=training, act="tanh")
        y2 = reference.bn_act(x2, None, None, None, None, training=training, act="tanh")
        torch.testing.assert_close(y1, y2)
        y1.backward(grad_out)
        y2.backward(grad_out)
        torch.testing.assert_close(x1.grad, x2.grad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_mean_keeps_its_variance(dtype):
    """mean 1e4, std 1: E[x^2] - E[x]^2 in float32 would lose every digit of the variance."""
    x, _ = data((16, 4, 32, 32), dtype, mean=1e4, std=1.0)
    p = Params(4, dtype=dtype)
    rm, rv = p.running_mean.clone(), p.running_var.clone()
    y = aigc_fast.bn_act(x, None, None, rm, rv, training=True, momentum=1.0, act="identity")
    xd = x.double()
    mean, var = xd.mean((0, 2, 3)), xd.var((0, 2, 3))
    torch.testing.assert_close(rm.double(), mean, rtol=1e-9 if dtype == torch.float64 else 1e-7, atol=0)
    torch.testing.assert_close(rv.double(), var, rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=0)
    invstd = 1 / (xd.var((0, 2, 3), unbiased=False) + 1e-5).sqrt()
    exact = (xd - mean[None, :, None, None]) * invstd[None, :, None, None]
    torch.testing.assert_close(y.double(), exact, rtol=0, atol=1e-9 if dtype == torch.float64 else 2e-3)
    # The formula itself, apart from the float32 rounding of the mean (an ulp there is ~1e-3
    # at 1e4): x - mean first, exact for x near mean, then one rounding of the product,
    # ~3e-7. ATen's x * scale + shift rounds at 1e4 and errs by ~1.3e-3 on these data.
    _, kernel_mean, _ = torch.ops.aigc_fast.bn_act(x, None, None, None, None, None, True, 0.1, 1e-5, "identity", 0.2,
                                                   False)
    by_formula = (xd - kernel_mean.double()[None, :, None, None]) * invstd[None, :, None, None]
    torch.testing.assert_close(y.double(), by_formula, rtol=0, atol=1e-9 if dtype == torch.float64 else 2e-6)
    aten_like = (x * invstd.to(dtype)[None, :, None, None] - (mean * invstd).to(dtype)[None, :, None, None]).double()
    if dtype == torch.float32:  # (the check above would catch that formula)
        assert (aten_like - by_formula).abs().max() > 1e-4


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_a_tiny_spread_around_a_large_mean_keeps_its_variance(layout):
    """std 2e-3 at mean 1e4 (a few float32 ulps apart): the pieces' means differ by more than
    their spread, so the merge's correction term carries most of the variance."""
    x, _ = data((16, 4, 32, 32), mean=1e4, std=2e-3)
    x = LAYOUTS[layout](x)
    p = Params(4)
    rm, rv = p.running_mean.clone(), p.running_var.clone()
    aigc_fast.bn_act(x, None, None, rm, rv, training=True, momentum=1.0, act="identity")
    xd = x.double()
    torch.testing.assert_close(rm.double(), xd.mean((0, 2, 3)), rtol=1e-7, atol=0)
    torch.testing.assert_close(rv.double(), xd.var((0, 2, 3)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("act", ["identity", "leaky_relu", "tanh"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("training", [True, False])
def test_memory_efficient_mode_matches(act, layout, training):
    x, grad_out = data((4, 6, 5, 7), torch.float64, std=1.0)
    p = Params(6, dtype=torch.float64)
    kw = dict(training=training, layout=LAYOUTS[layout], act=act, negative_slope=0.1)
    lean = run(aigc_fast.bn_act, x, p, grad_out, memory_efficient=True, **kw)
    ref = run(reference.bn_act, x, p, grad_out, **kw)
    for f, r in zip(lean[0] + lean[1], ref[0] + ref[1]):
        torch.testing.assert_close(f, r, rtol=1e-9, atol=1e-9)
    x32, g32 = x.float(), grad_out.float()
    lean32 = run(aigc_fast.bn_act, x32, p.clone(lambda t: t.float()), g32, memory_efficient=True, **kw)
    exact = run(reference.bn_act, x, p, grad_out, **kw)
    for f, e in zip(lean32[0], exact[0]):
        torch.testing.assert_close(f.double(), e, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("act", ["identity", "leaky_relu"])
@pytest.mark.parametrize("training", [True, False])
def test_memory_efficient_mode_in_each_dtype_it_takes(act, dtype, training):
    """The memory-saving mode (x-hat recomputed from y) under the tolerance rule of every
    fused op, running statistics included. (tanh: float32 only, with a looser check in
    test_memory_efficient_mode_matches, since atanh magnifies y's rounding by 1 / (1 - y^2).)"""
    shape = (4, 6, 5, 7)
    x, grad_out = data(shape, dtype, std=1.0)
    p = Params(shape[1], dtype=dtype)
    kw = dict(training=training, act=act, negative_slope=0.1)
    lean = run(aigc_fast.bn_act, x, p, grad_out, memory_efficient=True, **kw)
    same_dtype = run(reference.bn_act, x, p, grad_out, **kw)
    exact = run(reference.bn_act, x, p, grad_out, cast=lambda t: t.double(), **kw)
    compare(lean, same_dtype, exact, 4 * 5 * 7, dtype)


@pytest.mark.parametrize("gamma, beta, dx_tol", [(1.0, 0.0, 1e-6), (10.0, 10.0, 0.1)])
def test_memory_efficient_tanh_as_pre_activations_saturate(gamma, beta, dx_tol):
    """docs/api.md's figures: float32 x-hat recomputed from a tanh output near +-1 loses the
    input gradient's digits (gamma = beta = 10, max |z| 52 here: 2%, normwise), but the
    weight and bias gradients, weighted by tanh's derivative, keep theirs; unsaturated
    (gamma = 1, beta = 0), dx keeps all."""
    torch.manual_seed(0)
    x, grad_out = torch.randn(16, 4, 8, 8), torch.randn(16, 4, 8, 8)
    weight, bias = torch.full((4,), gamma), torch.full((4,), beta)
    grads = {}
    for name, cast, lean in (("exact", torch.Tensor.double, False), ("lean", lambda t: t, True)):
        leaves = [cast(t).requires_grad_() for t in (x, weight, bias)]
        y = aigc_fast.bn_act(*leaves, None, None, training=True, act="tanh", memory_efficient=lean)
        grads[name] = torch.autograd.grad(y, leaves, cast(grad_out))
    errors = [((l.double() - e).norm() / e.norm()).item() for l, e in zip(grads["lean"], grads["exact"])]
    assert errors[0] < dx_tol and errors[1] < 1e-5 and errors[2] < 1e-5, errors
    if gamma == 10.0:
        assert errors[0] > 1e-3, "x-hat past saturation came back exact: update the figures of docs/api.md"


def test_memory_saving_backward_reads_a_saturated_tanh_as_the_largest_value_below_1():
    """float32 tanh outputs of exactly +-1 (saturated) and 1 - 2^-24: the backward from y alone
    takes z = atanh(y) of y clamped below 1, so every gradient is finite and matches the
    textbook formula in float64 on the same clamped y (batch_norm.h, pass 1 and 2)."""
    x, grad_out = data((4, 3, 5, 5), seed=21, std=3.0)
    w, b = torch.tensor([2.0, 3.0, 4.0]), torch.tensor([0.5, -0.25, 1.0])
    ops = torch.ops.aigc_fast
    y, mean, invstd = ops.bn_act(x, w, b, None, None, None, True, 0.1, 1e-5, "tanh", 0.2, True)
    y = y.clone()
    y.view(-1)[:4] = torch.tensor([1.0, -1.0, 1 - 2.0**-24, -(1 - 2.0**-24)])
    assert (y.abs() == 1).sum() > 2  # and saturated by the data too
    dx, dw, db = ops.bn_act_backward(grad_out, y, None, w, b, mean, invstd, True, "tanh", 0.2, [True, True, True])

    per_channel = lambda t: t.double()[None, :, None, None]  # noqa: E731
    yd, g, n = y.double(), grad_out.double(), x.numel() / x.shape[1]
    dz = g * (1 - yd * yd)
    u = yd.clamp(-(1 - 2.0**-24), 1 - 2.0**-24).atanh() - per_channel(b)  # z - beta = gamma * xhat
    dbeta = dz.sum((0, 2, 3))
    dgamma = (dz * u).sum((0, 2, 3)) / w.double()
    a, b_, c = w.double() * invstd.double(), -dgamma / w.double() / n, -dbeta / n
    dx_exact = per_channel(a) * ((dz + per_channel(c)) + per_channel(b_) * u)
    for got, exact in ((dx, dx_exact), (dw, dgamma), (db, dbeta)):
        assert got.isfinite().all()
        torch.testing.assert_close(got.double(), exact, rtol=1e-5, atol=1e-5 * float(exact.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_memory_efficient_tanh_is_refused_in_16_bit(dtype):
    """atanh of a 16-bit tanh output has too few bits left to recompute x-hat from."""
    x, grad_out = data((4, 6, 5, 7), dtype, std=1.0)
    with pytest.raises(ValueError, match="memory"):
        run(aigc_fast.bn_act, x, Params(6, dtype=dtype), grad_out, memory_efficient=True, training=True, act="tanh")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_identity_output_may_be_modified_in_place(training, layout):
    """nn.BatchNorm2d keeps no output, so a residual `out += skip` after it is fine; with
    act="identity" the fused op keeps none either (its derivative needs no y), in every
    mode but the memory-saving one, whose only saved tensor is y."""
    x, grad = data((4, 3, 5, 5))
    skip = torch.randn_like(x)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    results = []
    for impl in ("fused", "reference"):
        p = Params(3)
        x_, w, b = x.clone().requires_grad_(), p.weight.requires_grad_(), p.bias.requires_grad_()
        y = aigc_fast.bn_act(x_, w, b, p.running_mean, p.running_var, training=training, act="identity", impl=impl)
        y += skip
        y.backward(grad)
        results.append((y, x_.grad, w.grad, b.grad))
    for fused, ref in zip(*results):
        torch.testing.assert_close(fused, ref)
    p = Params(3)
    y = aigc_fast.bn_act(x.clone().requires_grad_(), p.weight, p.bias, None, None, training=True, act="identity",
                         memory_efficient=True)
    y += skip
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward(grad)


def test_memory_efficient_mode_keeps_only_the_output():
    x, _ = data((4, 8, 16, 16))
    p = Params(8)
    for memory_efficient, expected in ((False, 2), (True, 1)):
        saved = []
        x_ = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = aigc_fast.bn_act(x_, p.weight, p.bias, None, None, training=True, act="leaky_relu",
                                 memory_efficient=memory_efficient)
        big = [t for t in saved if t.numel() == x.numel()]
        assert len(big) == expected
        assert any(t.untyped_storage().data_ptr() == y.untyped_storage().data_ptr() for t in big)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("act", ["relu", "leaky_relu"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_gradient_at_the_kink_is_the_outputs(dtype, act, layout):
    """For relu and leaky_relu the backward reads no y: it recomputes z from x. Its
    derivative must still be the one the output gives, also where a positive z rounds to an
    output of 0: half the smallest subnormal of a 16-bit type is a tie, rounded to even."""
    tiny = 2.0 ** {torch.bfloat16: -133, torch.float16: -24, torch.float32: -149}[dtype]  # smallest subnormal
    # Eval with mean 0, variance 4, eps 0, gamma 1, beta 0: z = x / 2, exactly.
    values = torch.tensor([tiny, 3 * tiny, 5 * tiny, 2 * tiny, -tiny, 0.0, 1.0, -1.0], dtype=torch.float64)
    x = LAYOUTS[layout](values.repeat(4).reshape(2, 2, 2, 4).to(dtype))
    kw = dict(training=False, eps=0.0, act=act, negative_slope=0.25)
    outputs = []
    for fn in (aigc_fast.bn_act, reference.bn_act):
        x_ = x.clone().requires_grad_()
        y = fn(x_, torch.ones(2), torch.zeros(2), torch.zeros(2), torch.full((2,), 4.0), **kw)
        y.backward(torch.ones_like(y))
        outputs.append((y.detach(), x_.grad))
    (y, grad), (ref_y, ref_grad) = outputs
    assert torch.equal(y, ref_y)
    slope = 0.0 if act == "relu" else 0.25
    expected = torch.where(y > 0, 1.0, slope) * 0.5  # act'(z) from the output, times gamma * invstd
    assert torch.equal(grad.double(), expected.double()) and torch.equal(ref_grad, grad)
    if dtype != torch.float32:  # the tie: tiny / 2 rounded to an output of 0, so act' is the slope
        assert (y.flatten(1)[:, 0] == 0).all() and (grad.flatten(1)[:, 0] == 0.5 * slope).all()


def test_deterministic_across_thread_counts():
    x, grad_out = data((32, 16, 24, 24))
    p = Params(16)
    results = []
    threads = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            for layout in ("nchw", "channels_last"):
                out, stats = run(aigc_fast.bn_act, x, p, grad_out, training=True, layout=LAYOUTS[layout])
                results.append((n, layout, out + stats))
    finally:
        torch.set_num_threads(threads)
    by_layout = {}
    for n, layout, tensors in results:
        by_layout.setdefault(layout, []).append(tensors)
    for runs in by_layout.values():
        for a, b in zip(*runs):
            assert torch.equal(a, b)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("training", [True, False])
def test_gradcheck(act, training):
    x, _ = data((3, 2, 3, 2), torch.float64, seed=7)
    p = Params(2, dtype=torch.float64)
    fn = lambda t, w, b: aigc_fast.bn_act(t, w, b, p.running_mean.clone(), p.running_var.clone(),  # noqa: E731
                                          training=training, act=act, negative_slope=0.3)
    assert torch.autograd.gradcheck(fn, (x.requires_grad_(), p.weight.requires_grad_(), p.bias.requires_grad_()))


@pytest.mark.parametrize("act", ["leaky_relu", "tanh", "sigmoid"])
def test_second_derivatives(act):
    x, _ = data((3, 2, 3, 2), torch.float64, seed=8)
    p = Params(2, dtype=torch.float64)
    fn = lambda t, w, b: aigc_fast.bn_act(t, w, b, None, None, training=True, act=act, negative_slope=0.3)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x.requires_grad_(), p.weight.requires_grad_(), p.bias.requires_grad_()))
    y = aigc_fast.bn_act(x, p.weight, p.bias, None, None, training=True, act="tanh", memory_efficient=True)
    with pytest.raises(RuntimeError, match="first derivatives only"):
        torch.autograd.grad(y.sum(), x, create_graph=True)[0].sum().backward()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gradients_under_create_graph_are_computed_in_float32(dtype):
    """A gradient penalty through a 16-bit discriminator takes the differentiable backward:
    it computes in float32 as the kernels do, so its first derivatives match theirs (in
    bf16 it had lost the weight gradient's third digit)."""
    x, g = data((8, 4, 6, 6), dtype, seed=10)
    p = Params(4)
    grads = {}
    for create_graph in (False, True):
        leaves = (x.clone().requires_grad_(), p.weight.clone().requires_grad_(), p.bias.clone().requires_grad_())
        y = aigc_fast.bn_act(*leaves, None, None, training=True, act="leaky_relu")
        grads[create_graph] = torch.autograd.grad(y, leaves, g, create_graph=create_graph)
    for kernel, differentiable in zip(grads[False], grads[True]):
        assert differentiable.dtype == kernel.dtype
        tol = 1e-5 if kernel.dtype == torch.float32 else 2e-2  # float32 sums in both; x's grad rounds to 16 bits
        torch.testing.assert_close(differentiable, kernel, rtol=tol, atol=tol)


@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("training", [True, False])
def test_first_derivatives_under_create_graph_are_the_kernels(act, training):
    """The differentiable backward (taken under create_graph) is a second implementation of
    the same gradients: in float64 it agrees with the kernel's to rounding."""
    x, g = data((6, 3, 5, 4), torch.float64, seed=11)
    p = Params(3, dtype=torch.float64)
    grads = {}
    for create_graph in (False, True):
        q = p.clone()
        leaves = (x.clone().requires_grad_(), q.weight.requires_grad_(), q.bias.requires_grad_())
        y = aigc_fast.bn_act(*leaves, q.running_mean, q.running_var, training=training, act=act)
        grads[create_graph] = torch.autograd.grad(y, leaves, g, create_graph=create_graph)
    for kernel, differentiable in zip(grads[False], grads[True]):
        torch.testing.assert_close(differentiable, kernel, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape", [(3, 2, 3, 2), (5, 3)])
def test_the_raw_ops_batch_statistics_are_differentiable(shape):
    """The raw op also returns the batch mean and invstd (the Python function drops them):
    their gradients reach x, to first and second order, and in eval (running statistics)
    they pass none."""
    x, _ = data(shape, torch.float64, seed=9)
    p = Params(shape[1], dtype=torch.float64)

    def raw(t, w, b, training=True, memory_efficient=False):
        stats = (p.running_mean.clone(), p.running_var.clone()) if not training else (None, None)
        return torch.ops.aigc_fast.bn_act(t, w, b, *stats, None, training, 0.1, 1e-5, "tanh", 0.0, memory_efficient)

    leaves = (x.requires_grad_(), p.weight.requires_grad_(), p.bias.requires_grad_())
    assert torch.autograd.gradcheck(raw, leaves)
    assert torch.autograd.gradgradcheck(raw, leaves)
    _, mean, invstd = raw(*leaves)
    (g,) = torch.autograd.grad(mean.sum() + invstd.sum(), x)
    dims = [d for d in range(x.dim()) if d != 1]
    expected_mean, expected_var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    expected = torch.autograd.grad((expected_mean.sum() + (expected_var + 1e-5).rsqrt().sum()), x)[0]
    torch.testing.assert_close(g, expected)
    _, mean, invstd = raw(*leaves, training=False)
    assert torch.autograd.grad(mean.sum() + invstd.sum(), x, allow_unused=True, materialize_grads=True)[0].eq(0).all()
    _, mean, _ = raw(*leaves, memory_efficient=True)
    with pytest.raises(RuntimeError, match="batch statistics it returns need memory_efficient=False"):
        mean.sum().backward()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    x, grad_out = data((2, 3, 4, 5), dtype)
    p = Params(3, dtype=dtype)
    ops = torch.ops.aigc_fast
    w, b = p.weight.requires_grad_(), p.bias.requires_grad_()
    torch.library.opcheck(ops.bn_act, (x.requires_grad_(), w, b, p.running_mean, p.running_var,
                                       p.num_batches_tracked, True, 0.1, 1e-5, "relu", 0.2, False))
    torch.library.opcheck(ops.bn_act, (x.detach().to(memory_format=torch.channels_last).requires_grad_(), w, b,
                                       p.running_mean, p.running_var, None, False, None, 1e-5, "leaky_relu", 0.2,
                                       True))
    y, mean, invstd = ops.bn_act(x.detach(), w.detach(), b.detach(), None, None, None, True, 0.1, 1e-5,
                                 "leaky_relu", 0.2, False)
    for x_saved in (x.detach(), None):
        torch.library.opcheck(ops.bn_act_backward, (grad_out, y, x_saved, w.detach(), b.detach(), mean, invstd, True,
                                                    "leaky_relu", 0.2, [True, True, True]))
    torch.library.opcheck(ops.bn_act_backward, (grad_out, y, x.detach(), None, None, mean, invstd, False,
                                                "leaky_relu", 0.2, [True, False, False]))
    # Gradients not asked for are empty in the math dtype (as the fake kernel says), even next
    # to parameters of another dtype.
    torch.library.opcheck(ops.bn_act_backward, (grad_out, y, x.detach(), w.detach(), b.detach(), mean, invstd, True,
                                                "leaky_relu", 0.2, [True, False, True]))


def test_opcheck_of_the_backward_with_float64_parameters_beside_float32_data():
    """The parameter gradients come back in the parameters' dtype, in the kernel as in its fake."""
    x, grad_out = data((2, 3, 4, 5))
    p = Params(3, dtype=torch.float32, param_dtype=torch.float64)
    ops = torch.ops.aigc_fast
    y, mean, invstd = ops.bn_act(x, p.weight, p.bias, None, None, None, True, 0.1, 1e-5, "leaky_relu", 0.2, False)
    for mask in ([True, True, True], [False, True, True], [True, False, True]):
        torch.library.opcheck(ops.bn_act_backward, (grad_out, y, x, p.weight, p.bias, mean, invstd, True,
                                                    "leaky_relu", 0.2, mask))


@pytest.mark.parametrize("fn", [aigc_fast.bn_act, reference.bn_act], ids=["fused", "reference"])
def test_eval_without_running_statistics_leaves_the_counter_alone(fn):
    """Only a training step with running statistics counts a batch (as nn.BatchNorm2d)."""
    x, _ = data((4, 3, 2, 2))
    counter = torch.tensor(7)
    fn(x, None, None, None, None, training=False, act="relu", num_batches_tracked=counter)
    assert counter.item() == 7
    p = Params(3)
    fn(x, None, None, p.running_mean, p.running_var, training=True, act="relu", num_batches_tracked=counter)
    assert counter.item() == 8


def test_torch_compile_fullgraph():
    x, grad_out = data((4, 6, 8, 8))
    ps = [Params(6), Params(6)]

    def block(t, p):
        return aigc_fast.bn_act(t, p.weight, p.bias, p.running_mean, p.running_var, training=True,
                                num_batches_tracked=p.num_batches_tracked, act="relu")

    outs = []
    for p, fn in zip(ps, (torch.compile(block, fullgraph=True), block)):
        p.weight.requires_grad_()
        x_ = x.clone().requires_grad_()
        y = fn(x_, p)
        y.backward(grad_out)
        outs.append((y, x_.grad, p.weight.grad, p.running_mean, p.running_var, p.num_batches_tracked))
    for c, e in zip(*outs):
        torch.testing.assert_close(c, e)


def test_autocast_bf16():
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    p = Params(8)
    x = torch.randn(4, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = aigc_fast.bn_act(h, p.weight.requires_grad_(), p.bias, p.running_mean, p.running_var, training=True)
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    ref = reference.bn_act(h.float(), p.weight, p.bias, None, None, training=True)
    torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert p.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    assert p.running_mean.dtype == torch.float32


def test_nan_stays_in_its_channel():
    """Output and running statistics alike, as nn.BatchNorm2d: the NaN channel's running
    variance turns NaN too (a clamp of the variance must not make it 0)."""
    x, _ = data((4, 3, 5, 5))
    x[1, 1, 2, 2] = float("nan")
    p, q = Params(3), Params(3)
    y = aigc_fast.bn_act(x, None, None, p.running_mean, p.running_var, training=True, act="identity")
    torch.nn.functional.batch_norm(x, q.running_mean, q.running_var, training=True)
    assert torch.isnan(y[:, 1]).all() and torch.isfinite(y[:, [0, 2]]).all()
    for fused, eager in ((p.running_mean, q.running_mean), (p.running_var, q.running_var)):
        assert torch.isnan(fused[1]) and torch.isnan(eager[1])
        torch.testing.assert_close(fused[[0, 2]], eager[[0, 2]])


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_eval_with_a_zero_variance_and_eps_0_gives_the_limit(layout):
    """1/sqrt(0 + 0) is inf: (x - mean) * inf is +-inf off the mean (NaN at it), where ATen's
    x * scale + shift gives NaN above the mean (inf - inf). docs/api.md, bn_act."""
    x, _ = data((2, 3, 4, 4))
    x = x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x
    mean = torch.tensor([0.5, -1.0, 0.0])
    x[0, :, 0, 0] = mean  # an element at the mean
    y = aigc_fast.bn_act(x, None, None, mean, torch.zeros(3), training=False, eps=0.0, act="identity")
    expected = (x - mean.view(1, 3, 1, 1)) * float("inf")
    torch.testing.assert_close(y, expected, equal_nan=True, rtol=0, atol=0)
    assert torch.isnan(y[0, :, 0, 0]).all() and torch.isinf(y).sum() == y.numel() - 3


@pytest.mark.parametrize("act", ["identity", "relu", "leaky_relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_eval_gradients_at_inf_and_nan_are_atens(act, layout):
    """With running statistics dx = dz * gamma * invstd does not depend on x, so an inf or NaN
    element of x, or a NaN running mean, must not turn its channel's dx into NaN (0 * inf);
    a NaN output passes its gradient on through relu, as ATen's threshold_backward does."""
    x, g = data((3, 4, 2, 2), dtype=torch.float64)
    x[0, 1, 0, 0], x[1, 2, 1, 1], x[2, 3, 0, 1] = float("inf"), float("-inf"), float("nan")
    p = Params(4, dtype=torch.float64)
    p.running_mean[0] = float("nan")

    def eager(x, weight, bias, running_mean, running_var, **_):
        return _activations.apply(act, torch.nn.functional.batch_norm(x, running_mean, running_var, weight, bias), 0.2)

    fused = run(aigc_fast.bn_act, x, p, g, training=False, layout=LAYOUTS[layout], act=act)
    expected = run(eager, x, p, g, training=False, layout=LAYOUTS[layout])
    for f, e in zip(fused[0], expected[0]):
        torch.testing.assert_close(f, e, equal_nan=True)
    if act in ("identity", "relu", "leaky_relu"):  # (tanh and sigmoid read act' from a NaN output: NaN)
        assert torch.isfinite(fused[0][1]).all()


@pytest.mark.parametrize("shape, layout", [((4, 2, 2), "nchw"), ((4, 2), "nchw"), ((4, 2, 3, 3), "nchw"),
                                           ((64, 2, 3, 3), "nchw"), ((2, 2, 32, 32), "nchw"),
                                           ((64, 2, 3, 3), "channels_last"), ((4, 2, 32, 32), "channels_last")])
def test_statistics_that_overflow_float32_sums_are_exact(shape, layout):
    """Finite data whose float32 sums overflow (|x| ~ 1e38, squares past 3.4e38) gets its
    statistics in float64 (as ATen's CPU BatchNorm accumulates them): a finite,
    right-signed running mean and the exact outputs, where the float sums had given -inf and
    NaN. (ATen's outputs are 0 there: its float32 invstd of the infinite variance is 0.)
    Every walk: short runs as rows, long runs, channels_last rows."""
    x = torch.zeros(shape)
    x[0, 0].view(-1)[0] = 2e38
    x = LAYOUTS[layout](x)
    p = Params(2)
    y = aigc_fast.bn_act(x, None, None, p.running_mean, p.running_var, training=True, act="identity")
    x64 = x.double().transpose(0, 1).reshape(2, -1)
    mean, var = x64.mean(1), x64.var(1, unbiased=False)
    expected = ((x.double() - mean.view(1, 2, *[1] * (x.dim() - 2))) / (var + 1e-5).sqrt().view(1, 2, *[1] * (x.dim() - 2)))
    torch.testing.assert_close(y.double(), expected, rtol=1e-5, atol=1e-5)
    assert p.running_mean[0] > 0 and torch.isfinite(p.running_mean).all()
    assert torch.isinf(p.running_var[0])  # the unbiased variance itself is past float32's range, as in ATen


@pytest.mark.parametrize("at", [(0, 1, 0, 0), (2, 1, 1, 3)], ids=["first", "inside"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_an_infinite_input_gives_atens_statistics(layout, at):
    """An infinite mean and a NaN variance for that channel, as ATen (also where the inf is
    the channel's first element, the tiles' shift); the others untouched."""
    x, _ = data((8, 3, 4, 4))
    x[at] = float("inf")
    p, q = Params(3), Params(3)
    aigc_fast.bn_act(LAYOUTS[layout](x), None, None, p.running_mean, p.running_var, training=True)
    torch.nn.functional.batch_norm(x, q.running_mean, q.running_var, training=True)
    assert torch.isposinf(p.running_mean[1]) and torch.isposinf(q.running_mean[1])
    assert torch.isnan(p.running_var[1]) and torch.isnan(q.running_var[1])
    torch.testing.assert_close(p.running_mean[[0, 2]], q.running_mean[[0, 2]])
    torch.testing.assert_close(p.running_var[[0, 2]], q.running_var[[0, 2]])


def test_the_reference_takes_what_the_fused_op_takes():
    """Parameters and statistics in any float dtype, beside any x (ATen's batch_norm wants
    x's, or float32 beside a 16-bit x): the reference twin converts, updating in place."""
    x, g = data((4, 3, 2, 2))
    for param_dtype in (torch.float64, torch.float16, torch.bfloat16):
        p = Params(3, param_dtype=param_dtype)
        fused = run(aigc_fast.bn_act, x, p, g, training=True)
        ref = run(reference.bn_act, x, p, g, training=True)
        for f, r in zip(fused[0] + fused[1], ref[0] + ref[1]):
            assert f.dtype == r.dtype
            # float32 math on both sides; a 16-bit result may differ by its last rounding.
            tol = 2 * torch.finfo(f.dtype).eps if f.dtype in (torch.float16, torch.bfloat16) else 1e-5
            torch.testing.assert_close(f, r, rtol=tol, atol=tol)


def test_compile_fullgraph_with_changing_eps_and_momentum():
    """Python floats that change between calls are symbolic under torch.compile: checked
    without a graph break."""
    fn = torch.compile(lambda t, rm, rv, eps, m: aigc_fast.bn_act(t, None, None, rm, rv, training=True, eps=eps,
                                                                  momentum=m), fullgraph=True)
    x, _ = data((4, 3, 2, 2))
    for eps, momentum in ((1e-5, 0.1), (1e-3, 0.2), (1e-2, 0.3)):
        p, q = Params(3), Params(3)
        y = fn(x, p.running_mean, p.running_var, eps, momentum)
        expected = reference.bn_act(x, None, None, q.running_mean, q.running_var, training=True, eps=eps,
                                    momentum=momentum)
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(p.running_mean, q.running_mean)
    # Symbolic, a NaN momentum passes the Python check: the C++ op refuses it when the graph
    # runs, before it writes the running statistics.
    p = Params(3)
    before = p.running_mean.clone()
    with pytest.raises(RuntimeError, match="momentum must be finite, got nan"):
        fn(x, p.running_mean, p.running_var, 1e-5, float("nan"))
    assert torch.equal(p.running_mean, before)


def test_running_statistics_that_require_grad_run_under_no_grad():
    """As ATen's batch_norm: refused with grad mode on (above), run under no_grad (a model
    whose buffers were made Parameters, sampled or evaluated)."""
    x, _ = data((4, 3, 2, 2))
    for training in (True, False):
        p, q = Params(3), Params(3)
        with torch.no_grad():
            p.running_mean.requires_grad_()
            y = aigc_fast.bn_act(x, None, None, p.running_mean, p.running_var, training=training)
        expected = reference.bn_act(x, None, None, q.running_mean, q.running_var, training=training)
        torch.testing.assert_close(y, expected)
        torch.testing.assert_close(p.running_mean.detach(), q.running_mean)


def test_an_expanded_running_statistic_is_refused_before_anything_is_updated():
    x, _ = data((4, 3, 2, 2))
    counter = torch.tensor(0)
    with pytest.raises(RuntimeError, match="running_mean is updated in place, one value per channel, so it cannot "
                                           "be an expanded tensor"):
        aigc_fast.bn_act(x, None, None, torch.zeros(1).expand(3), torch.ones(3), training=True,
                         num_batches_tracked=counter)
    assert counter.item() == 0
    # In eval the buffers are only read, so a broadcast one works (as in nn.BatchNorm2d).
    y = aigc_fast.bn_act(x, None, None, torch.zeros(1).expand(3), torch.ones(1).expand(3), training=False)
    torch.testing.assert_close(y, reference.bn_act(x, None, None, torch.zeros(3), torch.ones(3), training=False))


def test_flags_take_numpy_bools_and_0_or_1():
    x, _ = data((4, 3, 2, 2))
    expected = aigc_fast.bn_act(x, None, None, None, None, training=True, act="leaky_relu")
    for training in (np.bool_(True), 1):
        y = aigc_fast.bn_act(x, None, None, None, None, training=training, act="leaky_relu", memory_efficient=0)
        torch.testing.assert_close(y, expected)


def test_vmap_runs_the_reference_and_the_raw_op_says_so():
    x = torch.randn(3, 4, 5)
    y = torch.func.vmap(lambda t: aigc_fast.bn_act(t, None, None, None, None, training=True))(x)
    expected = torch.stack([aigc_fast.bn_act(t, None, None, None, None, training=True) for t in x])
    torch.testing.assert_close(y, expected)
    with pytest.raises(RuntimeError, match="impl='fused' was requested on cpu, but torch.func transforms"):
        torch.func.vmap(lambda t: aigc_fast.bn_act(t, None, None, None, None, training=True, impl="fused"))(x)
    raw = torch.ops.aigc_fast.bn_act  # no batching rule: the message points at the function
    with pytest.raises(RuntimeError, match=r"torch.ops.aigc_fast.bn_act does not support torch.vmap .* Call aigc_fast.bn_act"):
        torch.func.vmap(lambda t: raw(t, None, None, None, None, None, True, 0.1, 1e-5, "relu", 0.2, False))(x)


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3, 4, 4), torch.ones(4), None, None, None, training=True), ValueError,
         r"weight must have shape \[3\] \(one value per channel of x, x.shape\[1\]\), got \[4\]"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3, 4, 4), None, None, None, None, training=True, act="gelu"),
         ValueError, "act must be one of"),
        (lambda: aigc_fast.bn_act(torch.zeros(1, 3, 1, 1), None, None, None, None, training=True), ValueError,
         "Expected more than 1 value per channel when normalizing with the batch's statistics"),
        (lambda: aigc_fast.bn_act(torch.zeros(1, 3, 1, 1), None, None, None, None, training=False), ValueError,
         r"batch's statistics \(training, or no running statistics\)"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, eps=0.0), ValueError,
         "eps must be positive with batch statistics, got 0.0"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, eps=float("nan")),
         ValueError, "eps must be finite, got nan"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, eps=None), TypeError,
         "eps must be a number, got NoneType"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, momentum="0.1"), TypeError,
         "momentum must be a number, got str"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, act="leaky_relu",
                                  negative_slope=float("nan")), ValueError, "negative_slope must be finite"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training=True, negative_slope="0.2"),
         TypeError, "negative_slope must be a number, got str"),
        (lambda: aigc_fast.bn_act(torch.ones(4, 2), None, None, None, None, training="yes"), TypeError,
         "training must be True or False, got .yes."),
        (lambda: aigc_fast.bn_act(torch.zeros(6), None, None, None, None, training=True), ValueError,
         r"\[N, C, ...\]"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3, dtype=torch.int64), None, None, None, None, training=True),
         TypeError, "x must be float16"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), None, training=True), ValueError,
         "both be given or both be None"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(4), torch.ones(4), training=True),
         ValueError, r"running_mean must have shape \[3\] \(one value per channel of x, x.shape\[1\]\), got \[4\]"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3, dtype=torch.int64), torch.ones(3),
                                  training=True), TypeError, "running_mean must be float16"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3), training=True,
                                  momentum=None), ValueError, "needs num_batches_tracked"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, None, None, training=True, memory_efficient=True),
         ValueError, "needs an invertible activation"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3, dtype=torch.bfloat16), None, None, None, None, training=True,
                                  act="tanh", memory_efficient=True), ValueError, "float32 or float64 output"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), torch.ones(3, device="meta"), None, None, None, training=True),
         ValueError, "weight must be on the same device as x"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3), training=True,
                                  num_batches_tracked=torch.tensor(0, device="meta")),
         ValueError, "num_batches_tracked must be on the same device as x"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3), training=True,
                                  num_batches_tracked=torch.tensor(True)), TypeError,
         "num_batches_tracked must be a one-element int64 tensor"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3), training=True,
                                  num_batches_tracked=torch.zeros(3, dtype=torch.int64)), TypeError,
         "one-element int64 tensor"),
        # A narrower counter wraps: uint8 at 255 went to 0, and momentum=None's 1 / count made NaN statistics.
        (lambda: aigc_fast.bn_act(torch.randn(4, 3), None, None, torch.zeros(3), torch.ones(3), training=True,
                                  momentum=None, num_batches_tracked=torch.tensor(255, dtype=torch.uint8)), TypeError,
         r"one-element int64 tensor .*got torch.uint8"),
        # torch.ops directly: one meta argument sends the call to the fake kernel, which says so.
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3),
                                            torch.tensor(0, device="meta"), True, None, 1e-5, "relu", 0.2, False),
         ValueError, "num_batches_tracked must be on the same device as x"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), torch.ones(4), None, None, None, None, True, 0.1,
                                            1e-5, "relu", 0.2, False), RuntimeError, r"weight must have shape \[3\]"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(1, 3), None, None, None, None, None, True, 0.1, 1e-5,
                                            "relu", 0.2, False), RuntimeError, "more than 1 value per channel"),
        # The raw op checks what the Python function does (it had read an empty counter's memory).
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3),
                                            torch.zeros(0, dtype=torch.int64), True, None, 1e-5, "relu", 0.2, False),
         RuntimeError, "num_batches_tracked must be a one-element int64 tensor"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3),
                                            torch.tensor(0, dtype=torch.int32), True, None, 1e-5, "relu", 0.2, False),
         RuntimeError, "one-element int64 tensor, got Int"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, None, None, None, True, 0.1, 0.0,
                                            "relu", 0.2, False), RuntimeError, "eps must be positive with batch"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, None, None, None, True, 0.1, 1e-5,
                                            "relu", 0.2, True), RuntimeError, "needs an invertible activation"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3, dtype=torch.bfloat16), None, None, None, None, None,
                                            True, 0.1, 1e-5, "tanh", 0.2, True), RuntimeError,
         "tanh needs a float32 or float64 output"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3), None, True,
                                            float("nan"), 1e-5, "relu", 0.2, False), RuntimeError,
         "momentum must be finite, got nan"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3), None, None, None, None, None, True, 0.1,
                                            float("inf"), "relu", 0.2, False), RuntimeError, "eps must be finite"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3, requires_grad=True), torch.ones(3),
                                  training=True), RuntimeError, "running_mean is a buffer .* must not require grad"),
        (lambda: aigc_fast.bn_act(torch.zeros(2, 3), None, None, torch.zeros(3), torch.ones(3, requires_grad=True),
                                  training=False), RuntimeError, "running_var is a buffer .* must not require grad"),
        # A meta argument sends the call to the fake kernel, which checks as the op does.
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3, device="meta"), torch.ones(4, device="meta"), None,
                                            None, None, None, True, 0.1, 1e-5, "relu", 0.2, False), ValueError,
         r"weight must have shape \[3\]"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(2, 3, dtype=torch.int64, device="meta"), None, None, None,
                                            None, None, True, 0.1, 1e-5, "relu", 0.2, False), TypeError,
         "x must be float16"),
        # An empty x: the public function sends it to the reference; the op and its fake refuse it.
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(0, 3, device="meta"), None, None, None, None, None, True,
                                            0.1, 1e-5, "relu", 0.2, False), ValueError, "bn_act needs a non-empty x"),
        (lambda: torch.ops.aigc_fast.bn_act(torch.zeros(0, 3), None, None, None, None, None, True,
                                            0.1, 1e-5, "relu", 0.2, False), RuntimeError, "bn_act needs a non-empty x"),
        # The backward's per-channel vectors are checked against y, and the message says so.
        (lambda: torch.ops.aigc_fast.bn_act_backward(torch.ones(2, 3), torch.ones(2, 3), None, None, None,
                                                     torch.zeros(4), torch.ones(3), True, "relu", 0.2,
                                                     [True, False, False]), RuntimeError,
         r"mean must have shape \[3\] \(one value per channel of y, y.shape\[1\]\)"),
    ],
)
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_bias_without_weight_and_strided_parameters():
    """Gradients reach a bias given without a weight; strided parameter vectors are read by
    value, not as if they were dense."""
    x, grad_out = data((4, 3, 5, 5), torch.float64)
    for running in (False, True):
        b1 = torch.randn(6, dtype=torch.float64)[::2].clone().requires_grad_()
        b2 = b1.detach().clone().requires_grad_()
        stats = (torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)) if running else (None, None)
        y1 = aigc_fast.bn_act(x, None, b1, *[s if s is None else s.clone() for s in stats], training=True, act="tanh")
        y2 = reference.bn_act(x, None, b2, *[s if s is None else s.clone() for s in stats], training=True, act="tanh")
        y1.backward(grad_out)
        y2.backward(grad_out)
        torch.testing.assert_close(y1, y2)
        torch.testing.assert_close(b1.grad, b2.grad)
    strided_weight = torch.randn(6, dtype=torch.float64)[::2]
    strided_bias = torch.randn(6, dtype=torch.float64)[1::2]
    for memory_efficient in (False, True):
        x_ = x.clone().requires_grad_()
        y = aigc_fast.bn_act(x_, strided_weight, strided_bias, None, None, training=True, act="leaky_relu",
                             memory_efficient=memory_efficient)
        torch.testing.assert_close(y, reference.bn_act(x, strided_weight.contiguous(), strided_bias.contiguous(),
                                                       None, None, training=True, act="leaky_relu"))
        y.backward(grad_out)
        x2 = x.clone().requires_grad_()
        reference.bn_act(x2, strided_weight, strided_bias, None, None, training=True, act="leaky_relu").backward(grad_out)
        torch.testing.assert_close(x_.grad, x2.grad)


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_an_empty_batch_behaves_as_torch_batchnorm(training, layout):
    """As nn.BatchNorm2d + ReLU: an empty output, running statistics
    untouched, num_batches_tracked counted in training; the blocks pass it through too."""
    memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.zeros(0, 3, 4, 4).to(memory_format=memory_format).requires_grad_()
    bn = torch.nn.BatchNorm2d(3).train(training)
    mean, var, count = torch.zeros(3), torch.ones(3), torch.tensor(0)
    y = aigc_fast.bn_act(x, bn.weight, bn.bias, mean, var, training=training, num_batches_tracked=count)
    expected = torch.relu(bn(x))
    assert y.shape == expected.shape
    assert torch.equal(mean, bn.running_mean) and torch.equal(var, bn.running_var)
    assert int(count) == int(bn.num_batches_tracked)
    y.sum().backward()
    assert x.grad.shape == x.shape
    block = aigc_fast.nn.ConvBlock(3, 4, 4, 2, 1).train(training)
    assert block(torch.zeros(0, 3, 8, 8)).shape == (0, 4, 4, 4)


def test_float_settings_given_as_one_element_tensors_work_on_both_paths():
    """momentum, eps and negative_slope may be one-element tensors (as a schedule keeps
    them); both implementations get the checked float (the reference had the raw tensor)."""
    x, _ = data((4, 3, 5, 5))
    results = []
    for impl in ("fused", "reference"):
        p = Params(3)
        y = aigc_fast.bn_act(x, p.weight, p.bias, p.running_mean, p.running_var, training=True,
                             momentum=torch.tensor([0.3]), eps=torch.tensor(1e-3), act="leaky_relu",
                             negative_slope=torch.tensor([0.1]), impl=impl)
        z = aigc_fast.bias_act(x, p.bias, "leaky_relu", negative_slope=torch.tensor([0.1]), impl=impl)
        results.append((y, z, p.running_mean, p.running_var))
    for fused, ref in zip(*results):
        torch.testing.assert_close(fused, ref)


@pytest.mark.skipif(not hasattr(torch, "_lazy_clone"), reason="needs torch's copy-on-write lazy clones")
def test_running_statistics_that_share_copy_on_write_storage_are_copied_before_the_update():
    """A lazy clone shares its storage until written: the in-place update of the running
    statistics must give the clone its own copy (as ATen's in-place ops do), not write
    into the tensor it was cloned from."""
    x, _ = data((4, 3, 5, 5))
    source_mean, source_var = torch.zeros(3), torch.ones(3)
    running_mean, running_var = torch._lazy_clone(source_mean), torch._lazy_clone(source_var)
    p = Params(3)
    p.running_mean, p.running_var = torch.zeros(3), torch.ones(3)
    aigc_fast.bn_act(x, None, None, running_mean, running_var, training=True)
    aigc_fast.bn_act(x, None, None, p.running_mean, p.running_var, training=True)
    assert torch.equal(source_mean, torch.zeros(3)) and torch.equal(source_var, torch.ones(3))
    assert torch.equal(running_mean, p.running_mean) and torch.equal(running_var, p.running_var)


@pytest.mark.parametrize("shape, strides", [((4, 1, 6, 6), (36, 1, 6, 1)), ((4, 3, 1, 1), (3, 1, 3, 3))])
def test_ambiguous_layouts_get_the_strides_aten_gives(shape, strides):
    """As bias_act's (test_bias_act.py): a [B, 1, H, W] or [B, C, 1, 1] channels_last input
    gives the strides torch.relu gives, in the kernel and its fake alike."""
    x = torch.empty_strided(shape, strides).normal_(generator=torch.Generator().manual_seed(0))
    p = Params(shape[1])
    y = aigc_fast.bn_act(x, p.weight, p.bias, p.running_mean, p.running_var, training=True)
    assert y.stride() == torch.relu(x).stride() != x.stride()
    torch.library.opcheck(torch.ops.aigc_fast.bn_act, (x.requires_grad_(), p.weight.requires_grad_(), p.bias,
                                                         p.running_mean, p.running_var, None, True, 0.1, 1e-5, "relu",
                                                         0.2, False))
