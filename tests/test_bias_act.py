"""bias_act against its reference in every dtype, activation and memory format, plus the
ecosystem contracts (opcheck, gradcheck, torch.compile, autocast), accuracy of the float32
tanh/sigmoid, what autograd keeps, and bad input."""

import pytest
import torch

import aigc_fast
from aigc_fast import _activations, reference

from conftest import DTYPES, assert_close_to_float64, requires_fused

pytestmark = requires_fused
ACTS = list(_activations.ACTIVATIONS)


def inputs(shape=(4, 6, 5, 7), dtype=torch.float32, seed=0, bias_dtype=None):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=g, dtype=torch.float64) * 2).to(dtype)
    bias = torch.randn(shape[1] if len(shape) > 1 else 1, generator=g, dtype=torch.float64).to(bias_dtype or dtype)
    return x, bias


def run(fn, x, bias, grad_out, cast=lambda t: t, layout=lambda t: t):
    x_ = layout(cast(x)).detach().requires_grad_()
    b_ = None if bias is None else cast(bias).detach().requires_grad_()
    y = fn(x_, b_)
    y.backward(layout(cast(grad_out)))
    return y.detach(), x_.grad, None if b_ is None else b_.grad


LAYOUTS = {
    "nchw": lambda t: t,
    "channels_last": lambda t: t.to(memory_format=torch.channels_last),
    "strided": lambda t: t.transpose(2, 3).contiguous().transpose(2, 3),  # neither: copied
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_reference(dtype, act, layout):
    x, bias = inputs(dtype=dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype)
    fused_fn = lambda t, b: aigc_fast.bias_act(t, b, act)  # noqa: E731
    ref_fn = lambda t, b: reference.bias_act(t, b, act)  # noqa: E731
    fused = run(fused_fn, x, bias, grad_out, layout=LAYOUTS[layout])
    same_dtype = run(ref_fn, x, bias, grad_out, layout=LAYOUTS[layout])
    exact = run(ref_fn, x, bias, grad_out, cast=lambda t: t.double(), layout=LAYOUTS[layout])
    assert fused[0].dtype == dtype
    if layout == "channels_last":
        assert fused[0].is_contiguous(memory_format=torch.channels_last)
        assert fused[1].is_contiguous(memory_format=torch.channels_last)
    for f, r, e in zip(fused, same_dtype, exact):
        # The bias gradient sums 140 values per channel: allow for that many roundings.
        floor = 1.0 if f.shape != bias.shape else 10.0
        assert_close_to_float64(f, r, e, rel_floor=floor)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("slope", [0.0, 0.01, 0.3, 1.5])  # (negative: refused, tested below)
def test_leaky_relu_slopes_match_reference(slope, dtype):
    """The slope reaches the kernels (forward and backward) as given, not as the default."""
    x, bias = inputs(dtype=dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64).to(dtype)
    fused = run(lambda t, b: aigc_fast.bias_act(t, b, "leaky_relu", negative_slope=slope), x, bias, grad_out)
    ref_fn = lambda t, b: reference.bias_act(t, b, "leaky_relu", negative_slope=slope)  # noqa: E731
    same_dtype = run(ref_fn, x, bias, grad_out)
    exact = run(ref_fn, x, bias, grad_out, cast=lambda t: t.double())
    for f, r, e in zip(fused, same_dtype, exact):
        assert_close_to_float64(f, r, e, rel_floor=1.0 if f.shape != bias.shape else 10.0)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", [(3, 5), (2, 4, 1, 1), (1, 3, 17, 19), (2, 1, 4), (5,), ()])
def test_shapes_and_no_bias(act, shape):  # 0-d and 1-d: no bias, so dim=1 is not used
    x, bias = inputs(shape, dtype=torch.float64, seed=2)
    grad_out = torch.randn(shape, dtype=torch.float64)
    for b in (None, bias) if len(shape) > 1 else (None,):
        fused = run(lambda t, c: aigc_fast.bias_act(t, c, act), x, b, grad_out)
        ref = run(lambda t, c: reference.bias_act(t, c, act), x, b, grad_out)
        for f, r in zip(fused, ref):
            if r is not None:
                torch.testing.assert_close(f, r, rtol=1e-12, atol=1e-12)


def test_other_dim_and_one_dimensional_bias_input():
    x, _ = inputs((3, 4, 5), dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    torch.testing.assert_close(aigc_fast.bias_act(x, bias, "tanh", dim=2), reference.bias_act(x, bias, "tanh", dim=2))
    torch.testing.assert_close(aigc_fast.bias_act(x, bias, "tanh", dim=-1), aigc_fast.bias_act(x, bias, "tanh", dim=2))
    v, b = torch.randn(6, dtype=torch.float64, requires_grad=True), torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v, b: aigc_fast.bias_act(v, b, "sigmoid", dim=0), (v, b))


def test_mixed_dtypes_under_autocast():
    conv = torch.nn.Conv2d(3, 8, 3, bias=False)
    bias = torch.nn.Parameter(torch.randn(8))  # float32 parameter next to bf16 activations
    x = torch.randn(2, 3, 9, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = conv(x)
        y = aigc_fast.bias_act(h, bias, "leaky_relu")
    assert h.dtype == torch.bfloat16 and y.dtype == torch.bfloat16
    # One float32 add and activation, then one rounding: eager's float32 result, rounded.
    assert torch.equal(y, reference.bias_act(h.float(), bias, "leaky_relu").to(torch.bfloat16))
    y.float().sum().backward()
    assert bias.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()
    # The bias gradient sums the unrounded dz (1 or 0.2 per element), not bf16's 0.2002.
    slope = torch.tensor(0.2, dtype=torch.float32).double()
    expected = torch.where(y.double() > 0, 1.0, slope).sum((0, 2, 3))
    torch.testing.assert_close(bias.grad.double(), expected, rtol=2e-6, atol=0)


@pytest.mark.parametrize("act", ACTS)
def test_gradcheck(act):
    x, bias = inputs((2, 3, 4, 2), dtype=torch.float64, seed=3)
    x = x + 0.05  # keep relu kinks away from the finite-difference step
    assert torch.autograd.gradcheck(lambda t, b: aigc_fast.bias_act(t, b, act, negative_slope=0.3),
                                    (x.requires_grad_(), bias.requires_grad_()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    x, bias = inputs((2, 3, 4, 5), dtype=dtype)
    ops = torch.ops.aigc_fast
    torch.library.opcheck(ops.bias_act, (x.requires_grad_(), bias.requires_grad_(), 1, "tanh", 0.2))
    torch.library.opcheck(ops.bias_act, (x.detach().to(memory_format=torch.channels_last).requires_grad_(), None, 1,
                                         "leaky_relu", 0.2))
    y = aigc_fast.bias_act(x.detach(), bias.detach(), "sigmoid")
    torch.library.opcheck(ops.bias_act_backward, (torch.ones_like(y), y, 1, "sigmoid", 0.2, bias.dtype))
    torch.library.opcheck(ops.bias_act_backward, (torch.ones_like(y), y, 1, "tanh", 0.2, None))
    # A negative dim counts from the end, in the op as in its fake kernel and the wrapper.
    torch.library.opcheck(ops.bias_act, (x.detach().requires_grad_(), bias.detach().requires_grad_(), -3, "tanh", 0.2))
    torch.library.opcheck(ops.bias_act_backward, (torch.ones_like(y), y, -3, "sigmoid", 0.2, bias.dtype))
    # A float32 bias beside 16-bit data (autocast's case): its gradient is float32, in the fake too.
    y16 = aigc_fast.bias_act(x.detach().bfloat16(), None, "sigmoid")
    torch.library.opcheck(ops.bias_act_backward, (torch.ones_like(y16), y16, 1, "sigmoid", 0.2, torch.float32))


def test_torch_compile_fullgraph():
    x, bias = inputs((2, 4, 6, 6))

    def block(t, b):
        return aigc_fast.bias_act(t * 2, b, "leaky_relu").sum() + aigc_fast.bias_act(t, None, "tanh").square().sum()

    leaves = [t.clone().requires_grad_() for t in (x, bias)]
    twins = [t.clone().requires_grad_() for t in (x, bias)]
    out_c = torch.compile(block, fullgraph=True)(*leaves)
    out_e = block(*twins)
    out_c.backward()
    out_e.backward()
    torch.testing.assert_close(out_c, out_e)
    for c, e in zip(leaves, twins):
        torch.testing.assert_close(c.grad, e.grad)


def test_autograd_keeps_only_the_output():
    x, bias = inputs((4, 8, 16, 16))
    x.requires_grad_()
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = aigc_fast.bias_act(x, bias, "tanh")
    kept = [t for t in saved if t.numel() == x.numel()]
    assert len(kept) == 1 and kept[0].untyped_storage().data_ptr() == y.untyped_storage().data_ptr()


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_identity_without_a_bias_returns_a_new_tensor(impl):
    """Both implementations alike: writing into y never writes into x (the reference is what
    runs under torch.func, so switching must not change aliasing)."""
    x = torch.randn(2, 3, 4, 4).to(memory_format=torch.channels_last)
    y = aigc_fast.bias_act(x, None, "identity", impl=impl)
    assert y.data_ptr() != x.data_ptr() and y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, x, rtol=0, atol=0)


@pytest.mark.parametrize("create_graph", [False, True])
def test_identity_keeps_nothing_so_its_output_may_be_modified_in_place(create_graph):
    """x + bias needs no y for its gradient: a residual `out += skip` after it works, as
    after plain PyTorch's add."""
    x, bias = inputs((4, 8, 6, 6))
    skip, grad = torch.randn_like(x), torch.randn_like(x)
    results = []
    for impl in ("fused", "reference"):
        x_, b_ = x.clone().requires_grad_(), bias.clone().requires_grad_()
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            y = aigc_fast.bias_act(x_, b_, "identity", impl=impl)
        assert impl == "reference" or saved == []
        y += skip
        grads = torch.autograd.grad(y, (x_, b_), grad, create_graph=create_graph)
        results.append((y, *grads))
    for fused, ref in zip(*results):
        torch.testing.assert_close(fused, ref)


def test_float32_tanh_and_sigmoid_accuracy():
    v = torch.cat([torch.linspace(-20, 20, 200_001), torch.linspace(-1e-3, 1e-3, 10_001), torch.tensor([1e4, -1e4])])
    for act, exact in (("tanh", torch.tanh), ("sigmoid", torch.sigmoid)):
        got = aigc_fast.bias_act(v, None, act).double()
        want = exact(v.double())
        rel = ((got - want).abs() / want.abs().clamp_min(1e-30)).max().item()
        assert rel < 3 * 2.0**-24 * 2, (act, rel)  # a few float32 ulp


def test_nan_propagates():
    x = torch.tensor([[1.0, float("nan"), -2.0]])
    for act in ACTS:
        y = aigc_fast.bias_act(x, None, act)
        assert torch.isnan(y[0, 1]) and torch.isfinite(y[0, [0, 2]]).all(), act


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(4)), ValueError, r"bias must have shape \[3\] \(x.shape\[1\]\), got \[4\]"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), None, "gelu"), ValueError, "act must be one of 'identity', 'relu', 'leaky_relu', 'tanh', 'sigmoid', got 'gelu'"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3, dtype=torch.int32)), TypeError, "x must be float16"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(3, device="meta")), ValueError, "bias must be on the same device as x"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), None, "leaky_relu", negative_slope=-0.1), ValueError, "negative_slope must be >= 0"),
        (lambda: aigc_fast.bias_act(torch.zeros(3), torch.zeros(3), dim=1), ValueError, r"dim must index a dimension of x \(1-d\), got 1"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(3), dim=1.0), TypeError, "dim must be an int, got float"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), None, "leaky_relu", negative_slope=float("nan")), ValueError, "negative_slope must be finite, got nan"),
        (lambda: aigc_fast.bias_act(torch.zeros(2, 3), None, "leaky_relu", negative_slope=None), TypeError, "negative_slope must be a number, got NoneType"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(4), 1, "relu", 0.2), RuntimeError, r"bias must have shape \[3\]"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), torch.zeros(3), -3, "relu", 0.2), RuntimeError, r"dim must index a dimension of x \(2-d\), got -3"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), None, 1, "gelu", 0.2), RuntimeError, "act must be one of"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), None, 1, "leaky_relu", float("inf")), RuntimeError, "negative_slope must be finite, got inf"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3), None, 1, "leaky_relu", 1e39), RuntimeError, "negative_slope must fit in float32"),
        (lambda: torch.ops.aigc_fast.bias_act_backward(torch.ones(2, 3), torch.ones(2, 3), 1, "relu", 0.2, torch.int64), RuntimeError, "bias_dtype must be float16"),
        # A meta argument sends the call to the fake kernel, which checks as the op does.
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3, device="meta"), None, 1, "gelu", 0.2), ValueError, "act must be one of"),
        (lambda: torch.ops.aigc_fast.bias_act(torch.zeros(2, 3, device="meta"), torch.zeros(4, device="meta"), 1, "relu", 0.2), ValueError, r"bias must have shape \[3\]"),
    ],
)
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_every_table_entry_is_a_kernel():
    x = torch.randn(3, 4)
    for act in _activations.ACTIVATIONS:
        torch.testing.assert_close(aigc_fast.bias_act(x, None, act), reference.bias_act(x, None, act))


@pytest.mark.parametrize("act", ["leaky_relu", "tanh", "sigmoid"])
def test_second_derivatives_for_gradient_penalties(act):
    """R1 / WGAN-GP differentiate a discriminator's input gradient: through bias_act the
    second derivatives must be right (the backward switches to differentiable ops)."""
    x, bias = inputs((2, 3, 4, 4), dtype=torch.float64, seed=4)
    x = x + 0.05
    fn = lambda t, b: aigc_fast.bias_act(t, b, act, negative_slope=0.3)  # noqa: E731
    assert torch.autograd.gradgradcheck(fn, (x.requires_grad_(), bias.requires_grad_()))


def test_wide_rows_and_one_dimensional_bias_gradient():
    v = torch.randn(10_000, dtype=torch.float64)  # one row wider than a chunk (inner 1)
    b = torch.randn(10_000, dtype=torch.float64)
    torch.testing.assert_close(aigc_fast.bias_act(v, b, "sigmoid", dim=0), reference.bias_act(v, b, "sigmoid", dim=0))
    w = torch.randn(3, 9_000, dtype=torch.float32)
    c = torch.randn(9_000)
    torch.testing.assert_close(aigc_fast.bias_act(w, c, "tanh"), reference.bias_act(w, c, "tanh"))
    xs, bs = v[:6].clone().requires_grad_(), b[:6].clone().requires_grad_()
    gx, gb = torch.autograd.grad(aigc_fast.bias_act(xs, bs, "sigmoid", dim=0).sum(), [xs, bs], create_graph=True)
    assert gx.data_ptr() != gb.data_ptr()  # nor do the differentiable backward's
    y = aigc_fast.bias_act(v[:6], b[:6], "sigmoid", dim=0)  # the op's outputs never alias
    torch.library.opcheck(torch.ops.aigc_fast.bias_act_backward, (torch.ones_like(y), y, 0, "sigmoid", 0.2, b.dtype))


def test_negative_zero_is_kept():
    z = torch.tensor([-0.0, 0.0])
    for act in ("identity", "tanh", "leaky_relu"):
        y = aigc_fast.bias_act(z, None, act)
        assert torch.equal(torch.signbit(y), torch.signbit(reference.bias_act(z, None, act))), act


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_16_bit_outputs_round_as_torch_does(dtype, layout):
    """A 16-bit x plus a float32 bias is one float32 add, then one rounding to x's type: the
    kernels' own vectorized rounding must give torch's bits for every value. Every channel
    holds all 2^16 bit patterns of the type, and the channels' biases make ties (half an
    ulp of 1), plain rounding, overflow to inf (past the largest finite value) and inexact
    subnormals (half the smallest subnormal)."""
    info = torch.finfo(dtype)
    x = torch.arange(2**16, dtype=torch.int32).to(torch.int16).view(dtype).reshape(1, 1, 256, 256).repeat(2, 5, 1, 1)
    x = LAYOUTS[layout](x.contiguous())
    bias = torch.tensor([0.0, info.eps / 2, -info.eps * 0.7, info.max / 64, info.smallest_normal * info.eps / 2])
    y = aigc_fast.bias_act(x, bias, "identity")
    exact = x.double() + bias.double()[:, None, None]
    expected = (x.float() + bias[:, None, None]).to(dtype)
    assert expected.isinf().logical_and(x.isfinite()).any()  # the cases the docstring names occur
    assert (expected.double() != exact).logical_and(expected.abs() < info.smallest_normal).any()
    nan = expected.isnan()
    assert torch.equal(y.isnan(), nan)  # NaN bits differ inside torch itself
    assert torch.equal(y.view(torch.int16)[~nan], expected.view(torch.int16)[~nan])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64])
@pytest.mark.parametrize("shape, layout, dim", [
    ((16, 32, 14, 14), "channels_last", 1),  # short rows: a pattern of whole rows
    ((64, 3, 32, 32), "channels_last", 1),   # three channels (a generator's RGB layer), many groups
    ((16, 32, 14, 14), "nchw", 1),           # runs of one channel
    ((8, 1024, 7, 7), "nchw", 1),            # short runs in rows too long for a pattern
    ((4, 20000), "nchw", 1),                 # rows longer than a chunk
    ((4, 3000, 3), "nchw", 1),               # a pattern longer than a chunk, 3 elements a channel
    ((40, 1, 30, 30), "nchw", 1),            # one channel
    ((4, 5, 3000, 3), "nchw", 2),
    ((3000,), "nchw", 0),                    # a 1-d y: each element is its own channel
    ((2, 150000), "nchw", 1),                # more channels than a group sums: dz for the vendor sum
    ((150000,), "nchw", 0),
])
def test_bias_gradient_sums_unrounded_dz_in_a_fixed_order(dtype, shape, layout, dim):
    """On the CPU the bias gradient is the per-channel sum of dz = grad_y * act'(y) taken in
    the pass that writes grad_x, before dz is rounded to a 16-bit grad_x: close to a float64
    sum (summing the rounded grad_x is off by ~2^-9 per term), and the same bits for 1 and
    2 threads. Beyond what the pass can sum (more than 128K channels or elements a row),
    the unrounded dz goes to the vendor's sum."""
    g = torch.Generator().manual_seed(0)
    x, _ = inputs(shape, dtype)
    cast = LAYOUTS[layout] if len(shape) == 4 else (lambda t: t)
    x = cast(x)
    y = aigc_fast.bias_act(x, torch.randn(shape[dim], generator=g), "leaky_relu", dim=dim)
    grad_y = cast(torch.randn(shape, generator=g).to(dtype))
    results = []
    for threads in (1, 2):
        with_threads = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            results.append(torch.ops.aigc_fast.bias_act_backward(grad_y, y, dim, "leaky_relu", 0.2, torch.float32))
        finally:
            torch.set_num_threads(with_threads)
    (grad_x, sums), (grad_x_2, sums_2) = results
    if y[0].numel() < 128 * 1024:  # summed by the pass (else ATen's sum, whose order may follow the threads)
        assert torch.equal(sums, sums_2)
    assert torch.equal(grad_x, grad_x_2)
    math_type = torch.float64 if dtype == torch.float64 else torch.float32
    slope = torch.where(y > 0, torch.ones_like(y, dtype=math_type), torch.full_like(y, 0.2, dtype=math_type))
    dz = grad_y.to(math_type) * slope  # as the kernel computes it
    assert torch.equal(grad_x, dz.to(dtype))  # the map itself is unchanged by the sums
    exact = dz.double().sum([d for d in range(len(shape)) if d != dim]) if len(shape) > 1 else dz.double()
    torch.testing.assert_close(sums.double(), exact, rtol=2e-6, atol=2e-6 * exact.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_bias_gradient_under_create_graph_sums_unrounded_dz_too(dtype):
    """The differentiable backward (create_graph=True, for gradient penalties) computes as
    the kernels do: dz in float32, grad_x its rounding, the bias gradient its sum."""
    x, _ = inputs((8, 6, 5, 7), dtype)
    bias = torch.randn(6, dtype=torch.float32)
    grad_y = torch.randn(x.shape).to(dtype)
    grads = []
    for create_graph in (False, True):
        xr, br = x.clone().requires_grad_(), bias.clone().requires_grad_()
        grads.append(torch.autograd.grad(aigc_fast.bias_act(xr, br, "tanh"), (xr, br), grad_y,
                                         create_graph=create_graph))
    (gx, gb), (gx_graph, gb_graph) = grads
    ulp = 2 ** -7 if dtype == torch.bfloat16 else 1e-6  # the same products, a rounding apart at most
    torch.testing.assert_close(gx_graph.float(), gx.float(), rtol=ulp, atol=1e-6)
    torch.testing.assert_close(gb_graph, gb, rtol=1e-5, atol=1e-5)  # float32 sums, not of the rounded grad_x


@pytest.mark.parametrize("act", ACTS)
def test_gradient_at_a_nan_output_is_atens(act):
    """relu passes the gradient of a NaN output on (ATen's threshold_backward), leaky_relu
    scales it by the slope: a NaN in the activations is not hidden in the backward."""
    x = torch.tensor([[1.0, float("nan"), -2.0], [0.5, 3.0, float("inf")]], requires_grad=True)
    bias = torch.tensor([0.0, 0.0, float("nan")], requires_grad=True)
    x_ref, bias_ref = (t.detach().clone().requires_grad_() for t in (x, bias))
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    aigc_fast.bias_act(x, bias, act).backward(g)
    _activations.apply(act, x_ref + bias_ref, 0.2).backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, equal_nan=True)
    torch.testing.assert_close(bias.grad, bias_ref.grad, equal_nan=True)


def test_compile_fullgraph_with_a_changing_slope():
    """A Python float argument that changes between calls becomes a symbolic float under
    torch.compile: the argument checks must pass it without breaking the graph."""
    fn = torch.compile(lambda t, s: aigc_fast.bias_act(t, None, "leaky_relu", negative_slope=s), fullgraph=True)
    x = torch.randn(4, 3)
    for slope in (0.1, 0.2, 0.3):
        torch.testing.assert_close(fn(x, slope), torch.nn.functional.leaky_relu(x, slope))


# A [B, 1, H, W] conv output in channels_last, and a [B, C, 1, 1] one: strides that read
# as both NCHW and channels_last.
AMBIGUOUS = [((4, 1, 6, 6), (36, 1, 6, 1)), ((4, 3, 1, 1), (3, 1, 3, 3))]


@pytest.mark.parametrize("shape, strides", AMBIGUOUS)
def test_ambiguous_layouts_get_the_strides_aten_gives(shape, strides):
    """The output gets torch.tanh's strides, not the input's (torch.compile guards on
    strides: a D fed a fused G's images and real ones compiled twice), from the kernel and
    the fake kernel alike (opcheck compares them)."""
    x = torch.empty_strided(shape, strides).normal_(generator=torch.Generator().manual_seed(0))
    bias = torch.randn(shape[1])
    assert aigc_fast.bias_act(x, bias, "tanh").stride() == torch.tanh(x).stride() != x.stride()
    assert aigc_fast.bias_act(x, None, "identity").stride() == torch.tanh(x).stride()
    torch.library.opcheck(torch.ops.aigc_fast.bias_act, (x.requires_grad_(), bias.requires_grad_(), 1, "tanh", 0.2))
