"""The fused reparameterization op against its reference, in every dtype, plus the
ecosystem contracts: opcheck, gradcheck, torch.compile, autocast, bad input."""

import math

import pytest
import torch

import aigc_fast
from aigc_fast.reference import reparameterize as ref_reparameterize

from conftest import DTYPES, assert_close_to_float64, requires_fused

pytestmark = requires_fused
op = lambda: torch.ops.aigc_fast.reparameterize  # noqa: E731  (resolved after loading)


def inputs(shape, dtype, seed=0, spread=1.0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(shape, generator=g, dtype=torch.float64) * 2
    logvar = torch.randn(shape, generator=g, dtype=torch.float64) * spread
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    return mu.to(dtype), logvar.to(dtype), eps.to(dtype)


def exact(mu, logvar, eps):
    mu, logvar, eps = mu.double(), logvar.double(), eps.double()
    return mu + torch.exp(0.5 * logvar) * eps


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 64), (3, 5, 7), (1,), (4099,), (2, 5000)])
def test_forward_matches_reference(dtype, shape):
    mu, logvar, eps = inputs(shape, dtype)
    z = aigc_fast.reparameterize(mu, logvar, eps=eps)
    assert z.dtype == dtype and z.shape == mu.shape
    assert_close_to_float64(z, ref_reparameterize(mu, logvar, eps=eps), exact(mu, logvar, eps))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(128, 64), (3, 5, 7), (5,), (2, 5000)])
def test_kl_matches_reference(dtype, shape):
    mu, logvar, eps = inputs(shape, dtype, seed=1)
    z, kl = aigc_fast.reparameterize(mu, logvar, eps=eps, return_kl=True)
    kl_exact = ref_reparameterize(mu.double(), logvar.double(), eps=eps.double(), return_kl=True)[1]
    assert kl.shape == (shape[0],)
    assert kl.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    rtol = 1e-12 if dtype == torch.float64 else 1e-5
    torch.testing.assert_close(kl.double(), kl_exact, rtol=rtol, atol=rtol * shape[-1])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_kl", [False, True])
def test_gradients_match_reference(dtype, with_kl):
    mu, logvar, eps = inputs((64, 33), dtype, seed=2, spread=0.5)
    g = torch.randn(64, 33, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gk = torch.randn(64, generator=torch.Generator().manual_seed(4), dtype=torch.float64)

    def grads(fn, cast):
        leaves = [cast(t).detach().requires_grad_() for t in (mu, logvar, eps)]
        out = fn(*leaves)
        z, kl = out if with_kl else (out, None)
        loss = (z.double() * g).sum() + ((kl.double() * gk).sum() if with_kl else 0)
        loss.backward()
        return [t.grad for t in leaves]

    fused = grads(lambda m, l, e: aigc_fast.reparameterize(m, l, eps=e, return_kl=with_kl), lambda t: t)
    same_dtype = grads(lambda m, l, e: ref_reparameterize(m, l, eps=e, return_kl=with_kl), lambda t: t)
    exact_grads = grads(lambda m, l, e: ref_reparameterize(m, l, eps=e, return_kl=with_kl), lambda t: t.double())
    for f, r, x in zip(fused, same_dtype, exact_grads):
        assert f.dtype == dtype
        assert_close_to_float64(f, r, x)


@pytest.mark.parametrize("used", ["z", "kl"])
def test_gradients_through_one_output(used):
    """With return_kl=True, a loss on z alone or on the KL alone (the other output's
    gradient never formed) gets the reference's gradients."""
    mu, logvar, eps = inputs((16, 9), torch.float64, seed=5, spread=0.5)
    weights = torch.randn(16, 9, generator=torch.Generator().manual_seed(6), dtype=torch.float64)

    def grads(fn):
        leaves = [t.detach().clone().requires_grad_() for t in (mu, logvar)]
        z, kl = fn(*leaves, eps=eps, return_kl=True)
        ((z * weights).sum() if used == "z" else (kl * weights[:, 0]).sum()).backward()
        return [t.grad for t in leaves]

    for fused, ref in zip(grads(aigc_fast.reparameterize), grads(ref_reparameterize)):
        torch.testing.assert_close(fused, ref)


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("dtype, huge", [(torch.float32, 178.0), (torch.float64, 1500.0), (torch.bfloat16, 200.0)])
def test_the_kl_alone_where_std_overflows(dtype, huge, create_graph):
    """A loss on the KL alone leaves z's term out of the backward: a zero gradient for z
    times an overflowing std would be NaN, where the reference's dlogvar is the KL's inf.
    The eval path of nn.Reparameterize(return_kl=True) is this case."""
    def grads(fn, **kw):
        mu = torch.zeros(2, 3, dtype=dtype, requires_grad=True)
        logvar = torch.tensor([[0.5, huge, -1.0]] * 2, dtype=dtype, requires_grad=True)
        _, kl = fn(mu, logvar, return_kl=True, **kw)
        return torch.autograd.grad(kl.sum(), (mu, logvar), create_graph=create_graph)

    fused, reference = grads(aigc_fast.reparameterize), grads(ref_reparameterize, eps=torch.randn(2, 3, dtype=dtype))
    assert torch.isinf(fused[1][:, 1]).all()
    for f, r in zip(fused, reference):
        torch.testing.assert_close(f, r)
    module = aigc_fast.nn.Reparameterize(return_kl=True).eval()
    mu, logvar = torch.zeros(2, 3, dtype=dtype, requires_grad=True), torch.full((2, 3), huge, dtype=dtype, requires_grad=True)
    module(mu, logvar)[1].sum().backward()
    assert torch.isinf(logvar.grad).all() and not mu.grad.isnan().any()


@pytest.mark.parametrize("create_graph", [False, True])
@pytest.mark.parametrize("explicit_eps", [False, True])
def test_z_alone_where_mu_is_infinite(explicit_eps, create_graph):
    """The KL returned but unused adds no term to dmu: 0 * an infinite mu would be NaN where
    the reference, whose graph has no KL gradient, gives dmu = g."""
    def grads(fn, **kw):
        mu = torch.tensor([[math.inf, 1.0, -math.inf]], requires_grad=True)
        logvar = torch.zeros(1, 3, requires_grad=True)
        z, _ = fn(mu, logvar, return_kl=True, **kw)
        return torch.autograd.grad(z, mu, torch.tensor([[2.0, -1.0, 3.0]]), create_graph=create_graph)[0]

    eps = torch.randn(1, 3)
    fused = grads(aigc_fast.reparameterize, **({"eps": eps} if explicit_eps else {}))
    torch.testing.assert_close(fused, grads(ref_reparameterize, eps=eps))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_rng_backward_uses_forward_noise(dtype):
    """Without eps, dlogvar must equal g * eps * std / 2 with the very eps of the forward
    (recovered here as (z - mu) / std in float64, from a float32 run)."""
    mu, logvar, _ = inputs((256, 16), torch.float64, seed=5, spread=0.3)
    seed = torch.tensor([1234, 0])
    mu_, lv_ = mu.to(dtype).requires_grad_(), logvar.to(dtype).requires_grad_()
    z, _ = torch.ops.aigc_fast.reparameterize(mu_, lv_, None, seed, False)
    z.backward(torch.ones_like(z))
    noise, _ = torch.ops.aigc_fast.reparameterize(
        torch.zeros_like(mu), torch.zeros_like(mu), None, seed, False
    )  # mu = 0, std = 1: z is the noise itself
    std = torch.exp(0.5 * lv_.detach().double())
    expected = 0.5 * noise * std
    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    torch.testing.assert_close(lv_.grad.double(), expected, rtol=tol, atol=tol)
    assert torch.equal(mu_.grad, torch.ones_like(mu_))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
@pytest.mark.parametrize("with_kl", [False, True])
def test_z_modified_in_place_before_backward(with_kl, dtype):
    """Eager's mu + std * eps keeps no z, so z.mul_(t) or z.clamp_() before backward works
    there; here too: a modified z is not used, the noise is regenerated from the seed. The
    gradients equal those of the same sample scaled out of place; and a second backward
    through a retained graph gives them again."""
    mu, logvar, _ = inputs((64, 40), dtype, seed=6, spread=0.5)
    g = torch.randn(64, 40, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)

    def grads(in_place: bool, backwards: int = 1):
        mu_, lv_ = mu.clone().requires_grad_(), logvar.clone().requires_grad_()
        torch.manual_seed(11)
        out = aigc_fast.reparameterize(mu_, lv_, return_kl=with_kl)
        z = out[0] if with_kl else out
        z = z.mul_(3.0) if in_place else z * 3.0
        loss = (z * g).sum() + (out[1].sum() if with_kl else 0)
        for i in range(backwards):
            mu_.grad = lv_.grad = None
            loss.backward(retain_graph=i + 1 < backwards)
        return mu_.grad, lv_.grad

    tol = {torch.float32: 1e-5, torch.float64: 1e-12, torch.bfloat16: 0.0}[dtype]  # z - mu vs regenerated
    for expected, got in zip(grads(in_place=False), grads(in_place=True)):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)
    for expected, got in zip(grads(in_place=False), grads(in_place=False, backwards=2)):
        torch.testing.assert_close(got, expected, rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_backward_through_a_retained_graph_is_reentrant(dtype):
    """Every backward through a retained graph reads the same kept z, so repeated backwards
    give bit-identical gradients (z - mu and the regenerated noise differ in the last bits,
    which gradcheck's reentrancy check, at nondet_tol=0, would catch), and the last one, without
    retain_graph, lets go of z."""
    mu, logvar = (t.requires_grad_() for t in inputs((33, 65), dtype, seed=12)[:2])
    z = aigc_fast.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(5))
    loss = (z * torch.linspace(-2, 3, z.numel(), dtype=dtype).view_as(z)).sum()
    storage = z.untyped_storage()
    uses = torch._C._storage_Use_Count(storage._cdata)
    grads = [torch.autograd.grad(loss, (mu, logvar), retain_graph=True) for _ in range(2)]
    assert torch._C._storage_Use_Count(storage._cdata) == uses
    grads.append(torch.autograd.grad(loss, (mu, logvar)))
    assert torch._C._storage_Use_Count(storage._cdata) == uses - 1
    for again in grads[1:]:
        for first, got in zip(grads[0], again):
            assert torch.equal(first, got)


@pytest.mark.parametrize("check", [torch.autograd.gradcheck, torch.autograd.gradgradcheck],
                         ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("seed", range(4))
def test_gradcheck_of_drawn_noise_with_random_inputs(seed, check):
    """gradcheck (reentrancy checked bit for bit) passes for any inputs, not only lucky ones."""
    mu, logvar = (t.requires_grad_() for t in inputs((3, 4), torch.float64, seed=20 + seed)[:2])
    fn = lambda m, l: aigc_fast.reparameterize(  # noqa: E731
        m, l, generator=torch.Generator().manual_seed(seed), return_kl=True)
    assert check(fn, (mu, logvar))


def test_a_graph_kept_after_backward_does_not_keep_z():
    """z is kept for the backward outside save_for_backward, which the engine would free
    after it: the backward lets go of it itself, so a loss kept for logging does not pin z."""
    mu, logvar = (t.requires_grad_() for t in inputs((8, 4), torch.float32)[:2])
    z = aigc_fast.reparameterize(mu, logvar)
    loss = (z * 2).sum()
    storage = z.untyped_storage()
    before = torch._C._storage_Use_Count(storage._cdata)
    loss.backward()
    assert torch._C._storage_Use_Count(storage._cdata) == before - 1


@pytest.mark.parametrize("dtype, far", [(torch.float32, 1e4), (torch.float64, 1e12)])
def test_backward_regenerates_the_noise_where_z_minus_mu_would_lose_it(dtype, far):
    """z - mu is exact up to the rounding of z, half an ulp of |z|: against std that is all
    of it once |mu| / std nears 2^24 (float32). There, and only there, the backward uses the
    seed's noise: dlogvar = g eps std / 2 to float32 precision at |mu| / std = 2e8 (it was 0)."""
    n = 5000  # three tiles; the far elements interleaved with ordinary ones
    mu = torch.full((n,), far, dtype=torch.float64)
    logvar = torch.full((n,), -20.0, dtype=torch.float64)
    mu[::2], logvar[::2] = 0.5, 0.3
    mu[:2048] = 0.5  # a tile with no far element: z - mu only
    logvar[:2048] = 0.3
    seed = torch.tensor([4321, 7])
    mu_, lv_ = mu.to(dtype).requires_grad_(), logvar.to(dtype).requires_grad_()
    z, _ = torch.ops.aigc_fast.reparameterize(mu_, lv_, None, seed, False)
    z.backward(torch.ones_like(z))
    noise, _ = torch.ops.aigc_fast.reparameterize(torch.zeros_like(mu), torch.zeros_like(mu), None, seed, False)
    expected = 0.5 * noise * torch.exp(0.5 * logvar)
    rtol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(lv_.grad.double(), expected, rtol=rtol, atol=rtol * 1e-3)
    far_elements = mu != 0.5
    assert far_elements.sum() > 1000 and (lv_.grad[far_elements] != 0).all()


def test_one_far_element_leaves_its_neighbours_gradients_alone():
    """Whether dlogvar takes z - mu or the regenerated noise is decided per element: one
    far mu in a tile changes nothing else's bits."""
    g = torch.Generator().manual_seed(5)
    mu, logvar, grad = (torch.randn(1000, generator=g) for _ in range(3))
    dlogvar = []
    for first in (0.5, 1e6):
        m, lv = mu.clone(), logvar.clone().requires_grad_()
        m[0] = first
        aigc_fast.reparameterize(m, lv, generator=torch.Generator().manual_seed(13)).backward(grad)
        dlogvar.append(lv.grad)
    assert torch.equal(dlogvar[0][1:], dlogvar[1][1:])
    assert dlogvar[1][0].isfinite() and dlogvar[1][0] != 0


@pytest.mark.parametrize("dtype, bound", [(torch.float32, 2.0**-16), (torch.float64, 2.0**-45)])
def test_dlogvar_error_bound_over_every_ratio_of_mu_to_std(dtype, bound):
    """docs/api.md, "Backward": dlogvar's error stays within 2^-16 (float32) / 2^-45 (float64) of
    its scale |g| std / 2 whether it comes from z - mu or from the regenerated noise, at
    every |mu| / std from 1 to 2^60 (float64 allowed 2^-16 until the cut-off moved)."""
    n = 20000
    logvar = torch.linspace(0.0, -83.0, n, dtype=torch.float64)  # |mu| / std from 1 to ~2^60
    mu = torch.ones(n, dtype=torch.float64)
    mu[1::2] = -1.0
    seed = torch.tensor([99, 3])
    mu_, lv_ = mu.to(dtype).requires_grad_(), logvar.to(dtype).requires_grad_()
    z, _ = torch.ops.aigc_fast.reparameterize(mu_, lv_, None, seed, False)
    z.backward(torch.ones_like(z))
    noise, _ = torch.ops.aigc_fast.reparameterize(torch.zeros_like(mu), torch.zeros_like(mu), None, seed, False)
    scale = 0.5 * torch.exp(0.5 * lv_.detach().double())
    error = (lv_.grad.double() - scale * noise) / scale
    assert error.abs().max() <= bound, error.abs().max()


CHECKS = [torch.autograd.gradcheck, torch.autograd.gradgradcheck]


@pytest.mark.parametrize("check", CHECKS, ids=["gradcheck", "gradgradcheck"])
def test_gradcheck_explicit_eps(check):
    mu, logvar, eps = (t.requires_grad_() for t in inputs((6, 5), torch.float64, seed=6))
    fn = lambda m, l, e: aigc_fast.reparameterize(m, l, eps=e, return_kl=True)  # noqa: E731
    assert check(fn, (mu, logvar, eps))


@pytest.mark.parametrize("check", CHECKS, ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("with_kl", [False, True])
def test_gradcheck_with_rng_and_fixed_seed(with_kl, check):
    mu, logvar, _ = (t.requires_grad_() for t in inputs((7, 9), torch.float64, seed=7))
    seed = torch.tensor([99, 5])
    fn = lambda m, l: op()(m, l, None, seed, with_kl)  # noqa: E731
    assert check(fn, (mu, logvar))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_second_derivatives_of_drawn_noise_match_the_formula(dtype):
    # d2(sum z^2)/dlogvar2 with z = mu + std eps is std^2 eps^2 / 2 + z std eps / 2: the
    # noise of the create_graph path must be the forward's, not z - mu's rounding.
    mu, logvar, _ = (t.requires_grad_() for t in inputs((64, 33), dtype, seed=10))
    z = aigc_fast.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))
    (g,) = torch.autograd.grad(z.float().square().sum(), logvar, create_graph=True)
    (h,) = torch.autograd.grad(g.float().sum(), logvar)
    eps = aigc_fast.reparameterize(torch.zeros_like(mu), torch.zeros_like(logvar),
                                   generator=torch.Generator().manual_seed(3)).double()
    std = (0.5 * logvar.double()).exp()
    expected = (std.square() * eps.square() / 2 + z.double() * std * eps / 2).detach()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(h.double(), expected, rtol=tol, atol=tol * float(expected.abs().max()))


@pytest.mark.parametrize("source", ["eps", "seed"])
def test_first_derivatives_under_create_graph_are_the_kernels(source):
    """The differentiable backward (taken under create_graph) gives the kernel's gradients of z
    and the KL, to float64 rounding."""
    mu, logvar, eps = inputs((9, 7), torch.float64, seed=12)
    wz, wk = torch.randn(9, 7, dtype=torch.float64), torch.randn(9, dtype=torch.float64)
    grads = {}
    for create_graph in (False, True):
        leaves = [mu.clone().requires_grad_(), logvar.clone().requires_grad_()]
        if source == "eps":
            leaves.append(eps.clone().requires_grad_())
            z, kl = aigc_fast.reparameterize(*leaves[:2], eps=leaves[2], return_kl=True)
        else:
            z, kl = aigc_fast.reparameterize(*leaves, generator=torch.Generator().manual_seed(4), return_kl=True)
        grads[create_graph] = torch.autograd.grad((z * wz).sum() + (kl * wk).sum(), leaves, create_graph=create_graph)
    for kernel, differentiable in zip(grads[False], grads[True]):
        torch.testing.assert_close(differentiable, kernel, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    mu, logvar, eps = (t.requires_grad_() for t in inputs((8, 12), dtype, seed=8))
    torch.library.opcheck(op(), (mu, logvar, None, torch.tensor([3, 0]), True))
    torch.library.opcheck(op(), (mu, logvar, eps, None, False))
    g = torch.randn(8, 12, dtype=dtype)
    torch.library.opcheck(
        torch.ops.aigc_fast.reparameterize_backward,
        (g, torch.ones(8, dtype=torch.float64 if dtype == torch.float64 else torch.float32),
         mu.detach(), logvar.detach(), eps.detach(), None, None, [True, True, True]),
    )


def test_torch_compile_fullgraph_draws_fresh_noise():
    mu, logvar, _ = inputs((32, 8), torch.float32, seed=9)

    @torch.compile(fullgraph=True, backend="inductor")
    def sample(m, l):
        z, kl = aigc_fast.reparameterize(m, l, return_kl=True)
        return z * 2, kl.sum()

    torch.manual_seed(5)
    z1, kl1 = sample(mu, logvar)
    z2, kl2 = sample(mu, logvar)
    assert not torch.equal(z1, z2)
    torch.testing.assert_close(kl1, kl2)
    torch.testing.assert_close(kl1, ref_reparameterize(mu, logvar, return_kl=True)[1].sum())
    # The same draws as eager code for the same seed (docs/api.md, reparameterize), value for value.
    torch.manual_seed(5)
    assert torch.equal(z1, aigc_fast.reparameterize(mu, logvar) * 2)
    assert torch.equal(z2, aigc_fast.reparameterize(mu, logvar) * 2)


def test_compiled_noise_after_another_random_op_matches_eager_with_fallback_random():
    """As docs/api.md says: inductor seeds the random ops it generates from the default
    generator when the graph starts, which moves the op's draw (on torch 2.14 the z then
    differs); fallback_random keeps eager's order, and the same z."""
    mu, logvar, _ = inputs((32, 8), torch.float32, seed=9)

    def sample(m, l):
        return torch.randn(3), aigc_fast.reparameterize(m, l)

    torch.manual_seed(6)
    eager = sample(mu, logvar)
    compiled = torch.compile(sample, fullgraph=True, options={"fallback_random": True})
    torch.manual_seed(6)
    got = compiled(mu, logvar)
    assert torch.equal(got[0], eager[0]) and torch.equal(got[1], eager[1])


def test_torch_compile_backward():
    mu, logvar, eps = (t.requires_grad_() for t in inputs((16, 4), torch.float32, seed=10))

    @torch.compile(fullgraph=True)
    def loss(m, l, e):
        z, kl = aigc_fast.reparameterize(m, l, eps=e, return_kl=True)
        return (z.square().sum() + kl.sum())

    loss(mu, logvar, eps).backward()
    compiled = [t.grad.clone() for t in (mu, logvar, eps)]
    for t in (mu, logvar, eps):
        t.grad = None
    z, kl = ref_reparameterize(mu, logvar, eps=eps, return_kl=True)
    (z.square().sum() + kl.sum()).backward()
    for c, t in zip(compiled, (mu, logvar, eps)):
        torch.testing.assert_close(c, t.grad, rtol=1e-5, atol=1e-5)


def test_a_compiled_function_returning_z_and_kl_differentiates_as_eager():
    """Both outputs leave the graph and the loss is built outside it, on both or on the KL
    alone: the compiled backward regenerates the forward's noise, as eager's does."""
    sample = torch.compile(lambda m, l: aigc_fast.reparameterize(m, l, return_kl=True), fullgraph=True)
    results = []
    for fn in (sample, lambda m, l: aigc_fast.reparameterize(m, l, return_kl=True)):
        mu, logvar, _ = (t.requires_grad_() for t in inputs((16, 8), torch.float32, seed=11))
        torch.manual_seed(5)
        z, kl = fn(mu, logvar)
        (z.square().sum() + kl.sum()).backward()
        kl_only = torch.autograd.grad(fn(mu, logvar)[1].sum(), (mu, logvar))
        results.append((z, kl, mu.grad, logvar.grad, *kl_only))
    for compiled, eager in zip(*results):
        torch.testing.assert_close(compiled, eager)


def test_autocast_bf16():
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        h = linear(x)
        mu, logvar = h[:, :4], h[:, 4:]
        z, kl = aigc_fast.reparameterize(mu, logvar, return_kl=True)
    assert z.dtype == torch.bfloat16 and kl.dtype == torch.float32
    (z.float().sum() + kl.sum()).backward()
    assert torch.isfinite(linear.weight.grad).all()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compile"])
@pytest.mark.parametrize("other", ["logvar", "eps"])
def test_autocast_promotes_differing_dtypes_as_eager_does(other, compiled):
    """A Linear's bf16 mu under autocast beside a float32 logvar (a learned parameter) or
    float32 eps (torch.randn): eager's formula promotes them to float32, and so does the op;
    outside autocast a mismatch stays an error."""
    linear = torch.nn.Linear(16, 8)
    x = torch.randn(4, 16)
    _, logvar32, eps32 = inputs((4, 8), torch.float32)

    def sample(mu, lv, eps):
        return aigc_fast.reparameterize(mu, lv, eps=eps, return_kl=True)

    run = torch.compile(sample, fullgraph=True) if compiled else sample
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mu = linear(x)
        lv = logvar32 if other == "logvar" else 0.5 * mu.detach()  # float32, or bf16 as mu
        z, kl = run(mu, lv, eps32)
    assert mu.dtype == torch.bfloat16 and z.dtype == torch.float32
    z_expected, kl_expected = ref_reparameterize(mu.float(), lv.float(), eps=eps32, return_kl=True)
    torch.testing.assert_close(z, z_expected)
    torch.testing.assert_close(kl, kl_expected)
    z.sum().backward()
    assert linear.weight.grad is not None
    with pytest.raises(TypeError, match=f"{other} must have the same dtype as mu"):
        aigc_fast.reparameterize(mu, lv, eps=eps32)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_meta_tensors_give_shapes(impl):
    """Meta tensors (shape inference, a model built on the meta device) pass through: the
    autocast check must not ask about the meta device, which torch.is_autocast_enabled refuses."""
    mu = torch.randn(4, 8, device="meta")
    z, kl = aigc_fast.reparameterize(mu, torch.randn(4, 8, device="meta"), return_kl=True, impl=impl)
    assert z.device.type == "meta" and z.shape == (4, 8) and kl.shape == (4,)


def test_seed_reproduces_and_calls_differ():
    mu, logvar, _ = inputs((64, 64), torch.float32)
    torch.manual_seed(0)
    a = aigc_fast.reparameterize(mu, logvar)
    b = aigc_fast.reparameterize(mu, logvar)
    torch.manual_seed(0)
    c = aigc_fast.reparameterize(mu, logvar)
    assert torch.equal(a, c) and not torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    assert torch.equal(aigc_fast.reparameterize(mu, logvar, generator=g1),
                       aigc_fast.reparameterize(mu, logvar, generator=g2))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])  # z - mu, and regenerated noise
@pytest.mark.parametrize("with_kl", [False, True])
@pytest.mark.parametrize("frozen", ["mu", "logvar", "eps"])
def test_an_inference_mode_input_beside_one_that_takes_a_gradient(frozen, with_kl, dtype):
    """A tensor made under torch.inference_mode cannot be saved for backward, and eager's
    mu + exp(logvar / 2) * eps does not save mu or logvar: the op must work there too, with
    the gradients of the tensors that take one."""
    mu, logvar, eps = inputs((16, 8), dtype)
    ordinary = {"mu": mu, "logvar": logvar, "eps": eps}
    with torch.inference_mode():
        frozen_copy = ordinary[frozen].clone()

    def gradients(frozen_tensor):
        leaves = {name: ordinary[name].clone().requires_grad_() for name in ("mu", "logvar") if name != frozen}
        t = {**ordinary, "eps": eps if frozen == "eps" else None, **leaves, frozen: frozen_tensor}
        torch.manual_seed(3)
        z, kl = aigc_fast.reparameterize(t["mu"], t["logvar"], eps=t["eps"], return_kl=True)
        (z.float().square().sum() + (kl.sum() if with_kl else 0)).backward()
        return [z] + [leaf.grad for leaf in leaves.values()]

    for got, expected in zip(gradients(frozen_copy), gradients(ordinary[frozen])):
        assert torch.equal(got, expected)


def test_noncontiguous_inputs():
    mu, logvar, eps = inputs((40, 30), torch.float32)
    mu_t, lv_t, eps_t = mu.t(), logvar.t(), eps.t()
    assert not mu_t.is_contiguous()
    z, kl = aigc_fast.reparameterize(mu_t, lv_t, eps=eps_t, return_kl=True)
    z_ref, kl_ref = ref_reparameterize(mu_t, lv_t, eps=eps_t, return_kl=True)
    torch.testing.assert_close(z, z_ref)
    torch.testing.assert_close(kl, kl_ref)
    # Noise belongs to the logical element, not to the memory layout.
    seed = torch.tensor([11, 0])
    torch.testing.assert_close(op()(mu_t, lv_t, None, seed, False)[0],
                               op()(mu_t.contiguous(), lv_t.contiguous(), None, seed, False)[0], rtol=0, atol=0)


@pytest.mark.parametrize("impl", ["fused", "reference"])
@pytest.mark.parametrize("shape", [(0,), (0, 5), (4, 0), (3, 0, 2)])
def test_empty(shape, impl):
    mu = torch.zeros(shape, requires_grad=True)
    logvar = torch.zeros(shape, requires_grad=True)
    z, kl = aigc_fast.reparameterize(mu, logvar, return_kl=True, impl=impl)
    assert z.shape == shape and kl.shape == (shape[0],)
    assert torch.equal(kl, torch.zeros(shape[0]))  # an empty latent has zero KL
    (z.sum() + kl.sum()).backward()
    assert mu.grad.shape == shape and logvar.grad.shape == shape


def test_scalar_without_kl():
    z = aigc_fast.reparameterize(torch.tensor(1.0), torch.tensor(0.0), eps=torch.tensor(0.5))
    assert z.item() == 1.5


def test_extreme_logvar_and_nan():
    mu = torch.tensor([[0.0, 1.0, float("nan"), 0.0]])
    logvar = torch.tensor([[-80.0, 80.0, 0.0, 200.0]])
    eps = torch.ones_like(mu)
    z, kl = aigc_fast.reparameterize(mu, logvar, eps=eps, return_kl=True)
    expected = ref_reparameterize(mu.double(), logvar.double(), eps=eps.double())
    torch.testing.assert_close(z[0, :2].double(), expected[0, :2], rtol=1e-6, atol=0)
    assert torch.isnan(z[0, 2]) and torch.isinf(z[0, 3])
    assert torch.isnan(kl[0])  # NaN propagates to the KL, never dropped


@pytest.mark.parametrize("source", ["eps", "seed"])
def test_logvar_where_the_variance_overflows_but_z_does_not(source):
    """std^2 overflows float32 from logvar ~ 88.7, z only from ~ 177: without a KL output
    the logvar gradient (0.5 * g * std * eps) is finite there, on every backward path."""
    mu = torch.zeros(4, requires_grad=True)
    logvar = torch.tensor([80.0, 90.0, 100.0, 120.0], requires_grad=True)
    if source == "eps":
        eps = torch.tensor([1.0, -0.5, 0.25, 2.0])
        z = aigc_fast.reparameterize(mu, logvar, eps=eps)
    else:
        z = aigc_fast.reparameterize(mu, logvar, generator=torch.Generator().manual_seed(3))
        eps = ((z - mu) / torch.exp(0.5 * logvar)).detach()
    z.sum().backward()
    assert torch.isfinite(logvar.grad).all()
    logvar64 = logvar.detach().double()
    expected = 0.5 * torch.exp(0.5 * logvar64) * eps.double()
    torch.testing.assert_close(logvar.grad.double(), expected, rtol=1e-5, atol=0)


def test_a_strided_seed_is_read_by_its_values():
    """The raw op reads seed[0] and seed[1] from its storage: a strided view must mean its
    own two values, not its storage's first two."""
    stored = torch.tensor([123, 999, 456, 777])
    strided, _ = op()(torch.zeros(64), torch.zeros(64), None, stored[::2], False)
    copied, _ = op()(torch.zeros(64), torch.zeros(64), None, stored[::2].clone(), False)
    assert torch.equal(strided, copied)


def test_large_counter_offset_matches_numpy_philox():
    """The 64-bit Philox counter carries into its high word (elements past 2^34)."""
    from philox_numpy import normals

    offset = 2**32 - 3  # counters cross 2^32 inside this call
    n = 64
    seed_value = 0x0123456789ABCDEF & (2**62 - 1)
    got, _ = op()(torch.zeros(n), torch.zeros(n), None, torch.tensor([seed_value, offset]), False)
    expected = normals(seed_value, offset, n)
    torch.testing.assert_close(got.double(), torch.from_numpy(expected), rtol=0, atol=2e-5)


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(mu=torch.zeros(3, 4), logvar=torch.zeros(4, 3)), ValueError, r"logvar must have the same shape as mu, got \[4, 3\] and \[3, 4\]"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3, dtype=torch.float64)), TypeError, "logvar must have the same dtype as mu"),
        (dict(mu=torch.zeros(3, dtype=torch.int64), logvar=torch.zeros(3, dtype=torch.int64)), TypeError, "mu must be float16, bfloat16, float32 or float64, got torch.int64"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), eps=torch.zeros(4)), ValueError, "eps must have the same shape as mu"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), eps=torch.zeros(3, dtype=torch.int64)), TypeError, "eps must be float16, bfloat16, float32 or float64, got torch.int64"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), eps=torch.zeros(3, device="meta")), ValueError, "eps must be on the same device as mu"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3, device="meta")), ValueError, "logvar must be on the same device as mu"),
        (dict(mu=[0.0], logvar=torch.zeros(1)), TypeError, "mu must be a torch.Tensor, got list"),
        (dict(mu=torch.tensor(0.0), logvar=torch.tensor(0.0), return_kl=True), ValueError, "needs a batch dimension"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), impl="fast"), ValueError, "impl must be one of"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), generator=5), TypeError, "generator must be a torch.Generator"),
        (dict(mu=torch.zeros(3), logvar=torch.zeros(3), return_kl="yes"), TypeError, "return_kl must be True or False, got .yes."),
    ],
)
def test_bad_input_gives_clear_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        aigc_fast.reparameterize(**kwargs)


def test_bad_input_to_the_raw_op():
    with pytest.raises(RuntimeError, match="exactly one source of noise"):
        op()(torch.zeros(3), torch.zeros(3), None, None, False)
    with pytest.raises(RuntimeError, match=r"seed must be an int64 tensor of shape \[2\]"):
        op()(torch.zeros(3), torch.zeros(3), None, torch.tensor([1.0, 2.0]), False)
    with pytest.raises(RuntimeError, match="logvar must have the same shape as mu"):
        op()(torch.zeros(3), torch.zeros(2), None, torch.tensor([1, 2]), False)


@pytest.mark.parametrize("device", ["cpu", "meta"])  # meta: the fake kernel, which torch.compile runs
def test_the_raw_op_and_its_fake_refuse_a_kl_without_a_batch_dimension(device):
    zero = torch.zeros((), device=device)
    with pytest.raises((RuntimeError, ValueError), match="KL needs a batch dimension|needs a batch dimension"):
        op()(zero, zero, zero, None, True)
    z, kl = op()(zero, zero, zero, None, False)  # without the KL a 0-d mu is fine
    assert z.shape == () and kl.shape == (0,)


def test_module_train_and_eval():
    layer = aigc_fast.nn.Reparameterize(return_kl=True)
    mu, logvar, _ = inputs((8, 4), torch.float32)
    z, kl = layer(mu, logvar)
    assert z.shape == mu.shape and kl.shape == (8,)
    layer.eval()
    z_eval, kl_eval = layer(mu, logvar)
    assert torch.equal(z_eval, mu)
    torch.testing.assert_close(kl_eval, kl)
    assert "return_kl=True" in repr(layer)
    # Where std overflows float32 the eval output is still mu itself (mu + inf * 0 is NaN).
    huge = torch.full_like(logvar, 200.0)
    assert torch.equal(layer(mu, huge)[0], mu)
    # An explicit eps is a request for that sample, in eval too.
    eps = torch.ones_like(mu)
    torch.testing.assert_close(layer(mu, logvar, eps)[0], mu + torch.exp(0.5 * logvar))
    layer.train()
    drawn = [layer(mu, logvar, generator=torch.Generator().manual_seed(s))[0] for s in (3, 3, 4)]
    assert torch.equal(drawn[0], drawn[1]) and not torch.equal(drawn[0], drawn[2])


def test_impl_selection():
    mu, logvar, _ = inputs((8, 4), torch.float32)
    torch.manual_seed(0)
    fused = aigc_fast.reparameterize(mu, logvar)
    torch.manual_seed(0)
    with aigc_fast.use_impl("reference"):
        assert aigc_fast.get_impl() == "reference"
        reference = aigc_fast.reparameterize(mu, logvar)
    assert aigc_fast.get_impl() is None
    torch.manual_seed(0)
    assert torch.equal(reference, mu + torch.exp(0.5 * logvar) * torch.randn(8, 4))
    assert not torch.equal(fused, reference)  # different noise streams: proves which ran
    aigc_fast.set_impl("reference")
    try:
        torch.manual_seed(0)
        assert torch.equal(aigc_fast.reparameterize(mu, logvar), reference)
        torch.manual_seed(0)
        assert torch.equal(aigc_fast.reparameterize(mu, logvar, impl="fused"), fused)
    finally:
        aigc_fast.set_impl(None)


def test_the_module_checks_its_arguments_in_eval_too():
    """In eval mode (no sampling) the module returns mu without calling the op: its inputs
    and flags are still refused as in training."""
    module = aigc_fast.nn.Reparameterize().eval()
    with pytest.raises(ValueError, match="logvar must have the same shape as mu"):
        module(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(TypeError, match="mu must be float16"):
        module(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(2, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="return_kl must be True or False"):
        aigc_fast.nn.Reparameterize(return_kl="no")
    with pytest.raises(ValueError, match="impl must be one of"):
        aigc_fast.nn.Reparameterize(impl="bogus")
