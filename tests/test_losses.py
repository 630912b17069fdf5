"""The fused GAN and VAE losses against their references and against independent float64
formulas, in every dtype, plus the ecosystem contracts: opcheck, gradcheck,
torch.compile, autocast, determinism, extreme values, bad input."""

import math

import pytest
import torch
import torch.nn.functional as F

import aigc_fast
from aigc_fast import reference

from conftest import DTYPES, FusedOpCounter, assert_close_to_float64, requires_fused

pytestmark = requires_fused
KINDS = ["bce", "hinge", "lsgan", "wgan"]


def randn(*shape, seed=0, scale=2.0, dtype=torch.float64):
    return (torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale).to(dtype)


def vae_inputs(dtype, batch=8, image=(1, 28, 28), latent=20, seed=0):
    g = torch.Generator().manual_seed(seed)
    recon = torch.randn((batch, *image), generator=g, dtype=torch.float64) * 3
    target = torch.rand((batch, *image), generator=g, dtype=torch.float64)
    mu = torch.randn((batch, latent), generator=g, dtype=torch.float64)
    logvar = torch.randn((batch, latent), generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (recon, target, mu, logvar)]


def grads_of(fn, inputs, cast, grad_out):
    leaves = [cast(t).detach().requires_grad_() for t in inputs]
    out = fn(*leaves)
    loss = out[0] if isinstance(out, tuple) else out
    (loss.double() * grad_out).sum().backward()
    return loss.detach(), [t.grad for t in leaves]


# ---- the same numbers as independent float64 formulas ---------------------------------


@pytest.mark.parametrize("real_label", [1.0, 0.9])
def test_gan_bce_is_the_minimax_loss(real_label):
    real, fake = randn(300, seed=1), randn(200, seed=2)
    d = aigc_fast.gan_d_loss(real, fake, "bce", real_label=real_label)
    # -[y log D(x) + (1 - y) log(1 - D(x))] averaged over real, plus -log(1 - D(G(z))) over fake
    expected = -(real_label * F.logsigmoid(real) + (1 - real_label) * F.logsigmoid(-real)).mean()
    expected = expected - F.logsigmoid(-fake).mean()
    torch.testing.assert_close(d, expected, rtol=1e-13, atol=0)
    torch.testing.assert_close(aigc_fast.gan_g_loss(fake, "bce"), -F.logsigmoid(fake).mean(), rtol=1e-13, atol=0)


def test_vae_loss_is_the_negative_elbo():
    recon, target, mu, logvar = vae_inputs(torch.float64)
    loss, rec, kl = aigc_fast.vae_loss(recon, target, mu, logvar, beta=0.5)
    log_p = target * F.logsigmoid(recon) + (1 - target) * F.logsigmoid(-recon)  # Bernoulli log-likelihood
    std_normal = torch.distributions.Normal(0.0, 1.0)
    kl_exact = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()), std_normal)
    torch.testing.assert_close(rec, -log_p.flatten(1).sum(1).mean(), rtol=1e-13, atol=0)
    torch.testing.assert_close(kl, kl_exact.sum(1).mean(), rtol=1e-13, atol=0)
    torch.testing.assert_close(loss, rec + 0.5 * kl, rtol=1e-15, atol=0)


# ---- fused vs reference in every dtype -------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind, label", [(k, 1.0) for k in KINDS] + [("bce", 0.9), ("lsgan", 0.9)])
@pytest.mark.parametrize("shapes", [((64, 1), (64, 1)), ((5000,), (4099,)), ((1,), (3, 1, 1, 1))])
def test_gan_losses_match_reference(dtype, kind, label, shapes):
    real, fake = randn(*shapes[0], seed=3, dtype=dtype), randn(*shapes[1], seed=4, dtype=dtype)
    cases = [
        (lambda r, f: aigc_fast.gan_d_loss(r, f, kind, real_label=label),
         lambda r, f: reference.gan_d_loss(r, f, kind, real_label=label), (real, fake)),
        (lambda f: aigc_fast.gan_g_loss(f, kind), lambda f: reference.gan_g_loss(f, kind), (fake,)),
    ]
    for fused_fn, ref_fn, inputs in cases:
        loss, fused = grads_of(fused_fn, inputs, lambda t: t, 0.75)
        _, same_dtype = grads_of(ref_fn, inputs, lambda t: t, 0.75)
        exact_loss, exact = grads_of(ref_fn, inputs, lambda t: t.double(), 0.75)
        assert loss.dtype == (torch.float64 if dtype == torch.float64 else torch.float32) and loss.dim() == 0
        rtol = 1e-12 if dtype == torch.float64 else 2e-6  # the loss is computed in float32 at least
        torch.testing.assert_close(loss.double(), exact_loss, rtol=rtol, atol=rtol)
        for f, r, x in zip(fused, same_dtype, exact):
            assert f.dtype == dtype and f.shape == x.shape
            assert_close_to_float64(f, r, x, rel_floor=1.0 / x.numel())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_vae_loss_matches_reference(dtype, recon_loss, reduction):
    inputs = vae_inputs(dtype, batch=6, image=(3, 40, 40), latent=33)  # 4800 pixels: 2 tiles a sample
    grad_out = 0.5 if reduction != "none" else randn(6, seed=5)

    def fused_fn(*t):
        return aigc_fast.vae_loss(*t, recon_loss=recon_loss, beta=0.3, reduction=reduction)

    def ref_fn(*t):
        return reference.vae_loss(*t, recon_loss=recon_loss, beta=0.3, reduction=reduction)

    loss, fused = grads_of(fused_fn, inputs, lambda t: t, grad_out)
    _, same_dtype = grads_of(ref_fn, inputs, lambda t: t, grad_out)
    exact_loss, exact = grads_of(ref_fn, inputs, lambda t: t.double(), grad_out)
    rtol = 1e-12 if dtype == torch.float64 else 2e-6
    torch.testing.assert_close(loss.double(), exact_loss, rtol=rtol, atol=0)
    for f, r, x in zip(fused, same_dtype, exact):
        assert f.dtype == dtype
        # sigmoid(recon) - target (and var - 1) cancel: errors are absolute at the gradient's scale.
        assert_close_to_float64(f, r, x, rel_floor=float(x.abs().max()))
    values = fused_fn(*inputs)
    exact_values = ref_fn(*(t.double() for t in inputs))
    for v, x in zip(values[1:], exact_values[1:]):
        assert not v.requires_grad
        torch.testing.assert_close(v.double(), x, rtol=rtol, atol=0)
    torch.testing.assert_close(values[0], values[1] + 0.3 * values[2], rtol=1e-6, atol=0)


# ---- autograd, opcheck, torch.compile, autocast ---------------------------------------


CHECKS = [torch.autograd.gradcheck, torch.autograd.gradgradcheck]  # second derivatives: the create_graph path


@pytest.mark.parametrize("check", CHECKS, ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("kind", KINDS)
def test_gradcheck_gan(kind, check):
    real = randn(7, 3, seed=6).requires_grad_()
    fake = randn(5, seed=7).requires_grad_()
    label = 0.8 if kind in ("bce", "lsgan") else 1.0
    assert check(lambda r, f: aigc_fast.gan_d_loss(r, f, kind, real_label=label), (real, fake))
    assert check(lambda f: aigc_fast.gan_g_loss(f, kind), (fake,))


@pytest.mark.parametrize("check", CHECKS, ids=["gradcheck", "gradgradcheck"])
@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_gradcheck_vae(recon_loss, reduction, check):
    # every input requires grad, the target too (a learned or soft target)
    inputs = [t.requires_grad_() for t in vae_inputs(torch.float64, batch=3, image=(2, 3), latent=4)]
    fn = lambda *t: aigc_fast.vae_loss(*t, recon_loss=recon_loss, beta=2.0, reduction=reduction)[0]  # noqa: E731
    assert check(fn, inputs)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_opcheck(dtype):
    def leaves(tensors, mask):  # inputs require grad exactly where the mask asks for gradients
        return [t.detach().requires_grad_(wanted) for t, wanted in zip(tensors, mask)]

    ops = torch.ops.aigc_fast
    as_beta = lambda b: torch.tensor(b, dtype=torch.float64)  # noqa: E731  (the op's beta: a 0-d CPU tensor)
    real, fake = randn(6, 1, seed=8, dtype=dtype), randn(4, seed=9, dtype=dtype)
    torch.library.opcheck(ops.gan_d_loss, (*leaves((real, fake), [True, True]), "bce", 0.9, [True, True]))
    torch.library.opcheck(ops.gan_d_loss, (*leaves((real, fake), [True, False]), "hinge", 1.0, [True, False]))
    torch.library.opcheck(ops.gan_g_loss, (*leaves((fake,), [True]), "lsgan", True))
    vae = vae_inputs(dtype, batch=3, image=(2, 4, 4), latent=5)
    for recon_loss, beta, reduction, mask in [("bce", 1.0, "mean", [True, False, True, True]),
                                              ("mse", 0.5, "none", [True, True, True, True])]:
        torch.library.opcheck(ops.vae_loss, (*leaves(vae, mask), recon_loss, as_beta(beta), reduction, mask))
    channels_last = [vae[0].to(memory_format=torch.channels_last), *vae[1:]]
    mask = [True, False, False, True]
    torch.library.opcheck(ops.vae_loss, (*leaves(channels_last, mask), "bce", as_beta(1.0), "sum", mask))
    mono = vae_inputs(dtype, batch=3, image=(1, 4, 4), latent=5)  # strides differ only in the size-1 dim
    mono[0] = mono[0].to(memory_format=torch.channels_last)
    mask = [True, True, False, False]
    torch.library.opcheck(ops.vae_loss, (*leaves(mono, mask), "mse", as_beta(1.0), "none", mask))


def test_torch_compile_fullgraph_forward_and_backward():
    recon, target, mu, logvar = vae_inputs(torch.float32, batch=4, image=(1, 8, 8), latent=6)
    real, fake = randn(16, 1, seed=10, dtype=torch.float32), randn(16, 1, seed=11, dtype=torch.float32)

    def step(r, m, l, rl, fk):
        loss, rec, kl = aigc_fast.vae_loss(r, target, m, l, beta=0.5)
        return loss + aigc_fast.gan_d_loss(rl, fk, "hinge") + aigc_fast.gan_g_loss(fk, "bce"), rec, kl

    compiled = torch.compile(step, fullgraph=True)
    leaves = [t.clone().requires_grad_() for t in (recon, mu, logvar, real, fake)]
    twins = [t.clone().requires_grad_() for t in (recon, mu, logvar, real, fake)]
    out_c, out_e = compiled(*leaves), step(*twins)
    out_c[0].backward()
    out_e[0].backward()
    for c, e in zip(out_c, out_e):
        torch.testing.assert_close(c, e)
    for c, e in zip(leaves, twins):
        torch.testing.assert_close(c.grad, e.grad)


@pytest.mark.parametrize("given_as, backend", [("float", "aot_eager"), ("tensor", "aot_eager"),
                                               ("module attribute", "aot_eager"), ("float", "inductor")])
def test_torch_compile_keeps_one_graph_while_beta_changes(given_as, backend):
    """A KL warm-up changes beta every step: beta must be an input of the compiled graph,
    not a constant compiled again per value (past 8 values dynamo would give up). Through
    AOTAutograd, where a float made a tensor by torch.tensor had been specialized (the
    "eager" backend, which skips it, had counted one graph), and with grads, as in training."""
    import torch._dynamo.config as dynamo_config
    from torch._dynamo.testing import CompileCounterWithBackend

    recon, target, mu, logvar = vae_inputs(torch.float32, batch=4, image=(1, 8, 8), latent=6)
    recon, mu, logvar = (t.requires_grad_() for t in (recon, mu, logvar))
    counter = CompileCounterWithBackend(backend)
    criterion = aigc_fast.nn.VAELoss()

    def loss(beta):
        if given_as == "module attribute":
            return criterion(recon, target, mu, logvar)[0]
        return aigc_fast.vae_loss(recon, target, mu, logvar, beta=beta)[0]

    step = torch.compile(loss, backend=counter, fullgraph=True)
    torch.compiler.reset()
    with dynamo_config.patch(fail_on_recompile_limit_hit=True):
        for i in range(12):
            beta = criterion.beta = min(1.0, i / 10)
            got = step(torch.tensor(beta) if given_as == "tensor" else beta)
            expected = aigc_fast.vae_loss(recon, target, mu, logvar, beta=beta)[0]
            torch.testing.assert_close(got, expected)
    assert counter.frame_count <= 2  # the first call may compile beta as a constant
    torch.compiler.reset()


def test_autocast_mixed_dtypes():
    """Under bf16 autocast a decoder gives bf16 logits while the data stays float32: the
    loss takes each input in its own dtype and returns float32."""
    decoder, critic = torch.nn.Linear(6, 12), torch.nn.Linear(12, 1)
    z, x = torch.randn(4, 6), torch.rand(4, 12)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        recon = decoder(z)
        mu, logvar = recon[:, :3], recon[:, 3:6]
        loss, _, _ = aigc_fast.vae_loss(recon, x, mu, logvar)
        d = aigc_fast.gan_d_loss(critic(x), critic(torch.sigmoid(recon)), "bce")
    assert recon.dtype == torch.bfloat16 and loss.dtype == torch.float32 and d.dtype == torch.float32
    exact, _, _ = reference.vae_loss(recon.double(), x.double(), mu.double(), logvar.double())
    torch.testing.assert_close(loss.double(), exact, rtol=2e-6, atol=0)
    (loss + d).backward()
    assert torch.isfinite(decoder.weight.grad).all() and torch.isfinite(critic.weight.grad).all()


@pytest.mark.parametrize("dtypes", [(torch.float32, torch.bfloat16), (torch.float16, torch.float32),
                                    (torch.float64, torch.float32), (torch.bfloat16, torch.float64)],
                         ids=lambda d: "-".join(str(t).removeprefix("torch.") for t in d))
def test_mixed_input_dtypes_match_reference(dtypes):
    """Each input in its own dtype (a bf16 critic's fake logits beside float32 real ones; bf16
    logits beside a float32 target): the loss in the widest math dtype, each gradient in its
    input's dtype, against the reference on the same inputs and float64."""
    first, second = dtypes
    real, fake = randn(64, seed=21, dtype=first), randn(48, seed=22, dtype=second)
    recon, target, mu, logvar = vae_inputs(torch.float64, batch=4, image=(30,), latent=5)
    vae = (recon.to(first), target.to(second).clamp(0, 1), mu.to(first), logvar.to(first))
    cases = [
        (lambda r, f: aigc_fast.gan_d_loss(r, f, "bce", real_label=0.9),
         lambda r, f: reference.gan_d_loss(r, f, "bce", real_label=0.9), (real, fake), 1.0 / 64),
        (lambda *t: aigc_fast.vae_loss(*t, beta=0.5), lambda *t: reference.vae_loss(*t, beta=0.5), vae, None),
    ]
    for fused_fn, ref_fn, inputs, floor in cases:
        loss, fused = grads_of(fused_fn, inputs, lambda t: t, 0.75)
        _, same_dtype = grads_of(ref_fn, inputs, lambda t: t, 0.75)
        exact_loss, exact = grads_of(ref_fn, inputs, lambda t: t.double(), 0.75)
        assert loss.dtype == (torch.float64 if torch.float64 in dtypes else torch.float32)
        torch.testing.assert_close(loss.double(), exact_loss, rtol=2e-6, atol=0)
        for f, r, x, t in zip(fused, same_dtype, exact, inputs):
            assert f.dtype == t.dtype
            assert_close_to_float64(f, r, x, rel_floor=floor or float(x.abs().max()))


# ---- extreme values, NaN, shapes, layouts ----------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_gan_extreme_logits(kind):
    real = torch.tensor([1e4, -1e4, 0.0, 30.0, -30.0, 88.0, -104.0], dtype=torch.float32, requires_grad=True)
    fake = (-real.detach()).requires_grad_()
    label = 0.9 if kind in ("bce", "lsgan") else 1.0
    d = aigc_fast.gan_d_loss(real, fake, kind, real_label=label)
    g = aigc_fast.gan_g_loss(fake, kind)
    (d + g).backward()
    r64, f64 = real.detach().double().requires_grad_(), fake.detach().double().requires_grad_()
    d64 = reference.gan_d_loss(r64, f64, kind, real_label=label)
    g64 = reference.gan_g_loss(f64, kind)
    (d64 + g64).backward()
    for fused, exact in ((d, d64), (g, g64), (real.grad, r64.grad), (fake.grad, f64.grad)):
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused.double(), exact, rtol=2e-6, atol=1e-7)


def test_bce_infinite_logit_on_the_wrong_side_is_an_infinite_loss():
    """-inf with a positive label: log(1 + e^inf) = inf, where eager's 0 * (-inf) gives NaN."""
    inf = float("inf")
    assert aigc_fast.gan_g_loss(torch.tensor([-inf, 0.0]), "bce").item() == inf
    assert aigc_fast.gan_d_loss(torch.tensor([-inf]), torch.tensor([inf]), "bce").item() == inf
    assert aigc_fast.gan_d_loss(torch.tensor([1.0]), torch.tensor([0.0]), "bce").isfinite()


def test_bce_infinite_logit_on_the_right_side_is_a_zero_loss():
    """+inf with a positive label, -inf with a zero one: the limit 0 (and gradient 0), where
    (1 - y) * x written as is would be 0 * inf = NaN."""
    inf = float("inf")
    fake = torch.tensor([inf, -inf], requires_grad=True)
    loss = aigc_fast.gan_g_loss(fake[:1], "bce") + aigc_fast.gan_d_loss(torch.zeros(1), fake[1:], "bce")
    loss.backward()
    torch.testing.assert_close(loss, torch.tensor(math.log(2.0)))  # the zero logit's log 2
    assert fake.grad.tolist() == [0.0, 0.0]
    recon = torch.tensor([[inf, -inf]])
    total, _, _ = aigc_fast.vae_loss(recon, torch.tensor([[1.0, 0.0]]), torch.zeros(1, 1), torch.zeros(1, 1))
    assert total.item() == 0.0


def test_bce_tiny_losses_keep_their_digits():
    """softplus(-20) = 2.06e-9: log(1 + e^-20) in float32 would round it to 0."""
    fake = torch.full((8,), -20.0)
    expected = torch.nn.functional.softplus(torch.tensor(-20.0, dtype=torch.float64))
    loss = aigc_fast.gan_d_loss(torch.full((8,), 20.0), fake, "bce")
    torch.testing.assert_close(loss.double(), 2 * expected, rtol=1e-6, atol=0)


def test_vae_extreme_logvar():
    mu = torch.tensor([[0.5, -1.0, 2.0, 0.0]], requires_grad=True)
    logvar = torch.tensor([[-80.0, 80.0, -30.0, 30.0]], requires_grad=True)
    recon, target = torch.tensor([[1e4, -1e4]], requires_grad=True), torch.tensor([[0.25, 1.0]])
    loss, _, kl = aigc_fast.vae_loss(recon, target, mu, logvar)
    loss.backward()
    m64, l64, r64 = (t.detach().double().requires_grad_() for t in (mu, logvar, recon))
    loss64, _, kl64 = reference.vae_loss(r64, target.double(), m64, l64)
    loss64.backward()
    for fused, exact in ((loss, loss64), (kl, kl64), (mu.grad, m64.grad), (logvar.grad, l64.grad), (recon.grad, r64.grad)):
        assert torch.isfinite(fused).all()
        torch.testing.assert_close(fused.double(), exact, rtol=2e-6, atol=0)


@pytest.mark.parametrize("which", ["recon", "target", "mu", "logvar"])
def test_vae_nan_propagates(which):
    inputs = dict(zip(("recon", "target", "mu", "logvar"), vae_inputs(torch.float32, batch=3, image=(7,), latent=2)))
    inputs[which][1, 0] = float("nan")
    loss, rec, kl = aigc_fast.vae_loss(**inputs, reduction="none")
    assert torch.isnan(loss[1]) and torch.isfinite(loss[[0, 2]]).all()
    assert torch.isnan(rec[1] if which in ("recon", "target") else kl[1])
    assert torch.isnan(aigc_fast.vae_loss(**inputs)[0])


@pytest.mark.parametrize("kind", KINDS)
def test_gan_nan_propagates(kind):
    real, fake = randn(50, seed=12, dtype=torch.float32), randn(70, seed=13, dtype=torch.float32)
    bad = fake.clone()
    bad[33] = float("nan")
    assert torch.isnan(aigc_fast.gan_d_loss(real, bad, kind))
    assert torch.isnan(aigc_fast.gan_d_loss(bad, real, kind))
    assert torch.isnan(aigc_fast.gan_g_loss(bad, kind))


def test_batch_of_one_and_noncontiguous():
    recon, target, mu, logvar = vae_inputs(torch.float32, batch=1, image=(3, 5, 5), latent=4)
    torch.testing.assert_close(aigc_fast.vae_loss(recon, target, mu, logvar)[0],
                               reference.vae_loss(recon, target, mu, logvar)[0])
    wide = randn(10, 8, seed=14, dtype=torch.float32)
    mu_view, logvar_view = wide[:, :4], wide[:, 4:]  # the usual encoder(x).chunk(2, dim=1)
    recon, target, _, _ = vae_inputs(torch.float32, batch=10, image=(6, 4), latent=1)
    recon_t, target_t = recon.transpose(1, 2), target.transpose(1, 2)
    assert not (mu_view.is_contiguous() or recon_t.is_contiguous())
    args = (recon_t, target_t, mu_view, logvar_view)
    for fused, ref in zip(aigc_fast.vae_loss(*args, reduction="none"), reference.vae_loss(*args, reduction="none")):
        torch.testing.assert_close(fused, ref)
    real = randn(12, 6, seed=15, dtype=torch.float32)[:, ::2]
    torch.testing.assert_close(aigc_fast.gan_d_loss(real, real.t(), "bce"), reference.gan_d_loss(real, real.t(), "bce"))


@pytest.mark.parametrize("channels", [3, 1])  # with 1 channel both layouts are one memory order
@pytest.mark.parametrize("target_layout", ["channels_last", "contiguous"])
def test_channels_last_recon_keeps_its_layout(target_layout, channels):
    recon, target, mu, logvar = vae_inputs(torch.float32, batch=4, image=(channels, 6, 5), latent=3)
    recon = recon.to(memory_format=torch.channels_last).requires_grad_()
    if target_layout == "channels_last":
        target = target.to(memory_format=torch.channels_last)
    loss, _, _ = aigc_fast.vae_loss(recon, target, mu, logvar)
    loss.backward()
    assert recon.grad.is_contiguous(memory_format=torch.channels_last)
    r = recon.detach().contiguous().requires_grad_()
    reference.vae_loss(r, target, mu, logvar)[0].backward()
    torch.testing.assert_close(loss, reference.vae_loss(recon, target, mu, logvar)[0])
    torch.testing.assert_close(recon.grad, r.grad)


def test_latent_and_pixels_may_be_empty_but_the_batch_may_not():
    loss, rec, kl = aigc_fast.vae_loss(torch.zeros(2, 0), torch.zeros(2, 0), torch.zeros(2, 3), torch.zeros(2, 3))
    assert loss.item() == 0.0 and rec.item() == 0.0 and kl.item() == 0.0
    with pytest.raises(ValueError, match="empty batch"):
        aigc_fast.vae_loss(torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0, 2), torch.zeros(0, 2))
    with pytest.raises(ValueError, match="fake_logits is empty"):
        aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(0), "bce")
    with pytest.raises(RuntimeError, match="real_logits is empty"):
        torch.ops.aigc_fast.gan_d_loss(torch.zeros(0), torch.zeros(3), "bce", 1.0, [False, False])


# ---- determinism -----------------------------------------------------------------------


def test_bit_identical_across_runs_and_thread_counts():
    recon, target, mu, logvar = vae_inputs(torch.float32, batch=64, image=(3, 16, 16), latent=64)
    real, fake = randn(70000, seed=16, dtype=torch.float32), randn(50001, seed=17, dtype=torch.float32)

    def run():
        r = recon.clone().requires_grad_()
        vae = aigc_fast.vae_loss(r, target, mu, logvar, reduction="none")
        vae[0].sum().backward()
        f = fake.clone().requires_grad_()
        d = aigc_fast.gan_d_loss(real, f, "bce")
        d.backward()
        return [*vae, r.grad, d, f.grad]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        first, second = run(), run()
        torch.set_num_threads(1)
        single = run()
    finally:
        torch.set_num_threads(threads)
    for a, b, c in zip(first, second, single):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_bce_gradient_of_a_confident_right_answer_keeps_its_digits():
    """d/dx of softplus(-x) at x = 20 is -sigmoid(-20) = -2.06e-9: sigmoid(20) - 1 in float32
    would round it to 0 (and lose most digits already at x = 10)."""
    logits = torch.tensor([10.0, 20.0, 30.0], dtype=torch.float32, requires_grad=True)
    aigc_fast.gan_g_loss(logits, "bce").backward()
    exact = -torch.sigmoid(-logits.detach().double()) / 3
    torch.testing.assert_close(logits.grad.double(), exact, rtol=1e-6, atol=0)
    real = torch.tensor([15.0, 25.0], requires_grad=True)
    fake = torch.tensor([-15.0, -25.0], requires_grad=True)
    aigc_fast.gan_d_loss(real, fake, "bce").backward()
    torch.testing.assert_close(real.grad.double(), -torch.sigmoid(-real.detach().double()) / 2, rtol=1e-6, atol=0)
    torch.testing.assert_close(fake.grad.double(), torch.sigmoid(fake.detach().double()) / 2, rtol=1e-6, atol=0)
    recon = torch.tensor([[20.0, -20.0, 3.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 0.25]])
    aigc_fast.vae_loss(recon, target, torch.zeros(1, 2), torch.zeros(1, 2))[0].backward()
    exact = torch.sigmoid(recon.detach().double()) - target.double()
    exact[0, 0] = -torch.sigmoid(torch.tensor(-20.0, dtype=torch.float64))
    torch.testing.assert_close(recon.grad.double(), exact, rtol=1e-6, atol=0)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_gradients_are_scaled_before_they_are_rounded(dtype):
    """Under GradScaler the loss is multiplied by a large scale before backward. The fused
    losses keep their precomputed gradients in float32, so the scale applies before the
    gradient is rounded to the input's dtype: a mean over 4096 float16 logits has gradients
    below float16's smallest subnormal, which would otherwise be 0 whatever the scale."""
    scale = 65536.0 * 0.7  # not a power of two: the rounding after the scale is tested too
    for kind in KINDS:
        logits = (randn(4096, seed=31, scale=4.0) + 2).to(dtype).requires_grad_()
        (aigc_fast.gan_g_loss(logits, kind) * scale).backward()
        exact64 = logits.detach().double().requires_grad_()
        (reference.gan_g_loss(exact64, kind) * scale).backward()
        expected = exact64.grad.to(dtype)  # the float64 gradient, rounded once
        assert logits.grad.dtype == dtype
        assert (logits.grad == 0).sum() == (expected == 0).sum(), kind
        # Rounded once (loss scale, then the input's dtype): at most one ulp from the float64 gradient rounded.
        ulp = 2.0 ** (-10 if dtype == torch.float16 else -7)
        torch.testing.assert_close(logits.grad.double(), expected.double(), rtol=ulp, atol=0)
    out = torch.ops.aigc_fast.gan_d_loss(logits.detach(), logits.detach(), "bce", 1.0, [True, True])
    assert out[1].dtype == out[2].dtype == torch.float32


def test_second_backward_after_grad_is_changed_in_place():
    """The first backward's .grad must not share memory with what the retained graph keeps:
    zeroing it (zero_grad(set_to_none=False)), clipping it, or writing into it in place must
    leave the next backward's gradient as it was. Also through a view of a leaf."""
    for make in (lambda x: aigc_fast.gan_g_loss(x.view(2, 3), "bce"),
                 lambda x: aigc_fast.vae_loss(x.view(2, 3), torch.rand(2, 3), torch.zeros(2, 1), torch.zeros(2, 1))[0]):
        x = randn(6, seed=33, dtype=torch.float32).requires_grad_()
        loss = make(x)
        loss.backward(retain_graph=True)
        first = x.grad.clone()
        x.grad.zero_()  # what zero_grad(set_to_none=False) does
        loss.backward(retain_graph=True)
        torch.testing.assert_close(x.grad, first)
        torch.nn.utils.clip_grad_norm_([x], 1e-3)
        x.grad.mul_(0)
        loss.backward()
        torch.testing.assert_close(x.grad, first)


def test_backward_twice_with_retain_graph():
    """loss.backward() hands autograd the saved gradient itself (no scaling pass): a second
    backward through a retained graph must still see it unchanged."""
    fake = randn(40, seed=22, dtype=torch.float32).requires_grad_()
    recon, target, mu, logvar = (t.requires_grad_() for t in vae_inputs(torch.float32, batch=3, image=(6,), latent=2))
    losses = [aigc_fast.gan_g_loss(fake, "bce"), aigc_fast.vae_loss(recon, target, mu, logvar)[0]]
    for loss, leaves in zip(losses, [(fake,), (recon, target, mu, logvar)]):
        loss.backward(retain_graph=True)
        first = [t.grad.clone() for t in leaves]
        loss.backward()
        for t, g in zip(leaves, first):
            torch.testing.assert_close(t.grad, 2 * g)


@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_batched_backward_passes_match_the_reference(reduction):
    """autograd.grad(is_grads_batched=True) and jacobian(vectorize=True) vmap the backward:
    the batched factor holds a gradient per batch entry, more than the saved gradient can
    take in place (the fused losses raised there unless the graph was retained)."""
    real, fake = (randn(5, seed=s, dtype=torch.float64).requires_grad_() for s in (30, 31))
    recon, target, mu, logvar = (t.requires_grad_() for t in vae_inputs(torch.float64, batch=3, image=(4,), latent=2))
    for impl in ("fused", "reference"):
        loss = aigc_fast.gan_d_loss(real, fake, impl=impl)
        (batched,) = torch.autograd.grad(loss, real, torch.tensor([1.0, 2.0, -1.0], dtype=torch.float64),
                                         is_grads_batched=True)
        (single,) = torch.autograd.grad(aigc_fast.gan_d_loss(real, fake, impl=impl), real)
        torch.testing.assert_close(batched, torch.stack([single, 2 * single, -single]))
    jacobians = [torch.autograd.functional.jacobian(
        lambda r, m: aigc_fast.vae_loss(r, target, m, logvar, reduction=reduction, impl=impl)[0], (recon, mu),
        vectorize=True) for impl in ("fused", "reference")]
    for fused, reference in zip(*jacobians):
        torch.testing.assert_close(fused, reference)


@pytest.mark.parametrize("weight", [1.0, 3.0, "per sample"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_last_backward_scales_the_saved_gradient_in_place(weight, dtype):
    """Where the graph is freed after it, the backward's answer is the saved gradient itself,
    scaled in place by any factor (a loss weight, GradScaler's scale; per sample with
    reduction="none"): no second gradient-sized tensor. Not through a retained graph (its
    next backward reads the saved gradient again), nor when the raw op's caller keeps the
    gradient it returned (which must not change)."""
    x = randn(4, 6, seed=34, dtype=torch.float32).to(dtype)
    target = torch.rand(4, 6, generator=torch.Generator().manual_seed(35))
    mu, logvar = torch.zeros(4, 2), torch.zeros(4, 2)
    factor = torch.tensor([1.0, 2.0, 3.0, 4.0]) if weight == "per sample" else weight
    reduction = "none" if weight == "per sample" else "mean"

    def run(retain=False, keep=False):
        leaf = x.clone().requires_grad_()
        out = torch.ops.aigc_fast.vae_loss(leaf, target, mu, logvar, "bce", torch.tensor(1.0, dtype=torch.float64),
                                           reduction, [True, False, False, False])
        loss, returned = out[0], out[3]  # the op's gradient output: what autograd saved
        del out
        address, unscaled = returned.data_ptr(), returned.clone()
        kept = returned if keep else None
        del returned
        (loss * factor).sum().backward(retain_graph=retain)
        expected = unscaled * (factor[:, None] if weight == "per sample" else factor)
        torch.testing.assert_close(leaf.grad.float(), expected.to(dtype).float())
        return leaf.grad.data_ptr() == address, kept, unscaled

    in_place, _, _ = run()
    assert in_place == (dtype == torch.float32)  # (a bfloat16 gradient is a rounded copy either way)
    in_place, _, _ = run(retain=True)
    assert not in_place
    in_place, kept, unscaled = run(keep=True)
    assert not in_place and torch.equal(kept, unscaled)


LOSS_CASES = [  # (name, the loss of its inputs, the inputs): every kind, label, recon loss and reduction
    *[(f"d {kind} label {label}", lambda r, f, kind=kind, label=label: aigc_fast.gan_d_loss(r, f, kind, real_label=label),
       lambda: [randn(6, 2, seed=30), randn(5, seed=31)])
      for kind in KINDS for label in ((1.0, 0.8) if kind in ("bce", "lsgan") else (1.0,))],
    *[(f"g {kind}", lambda f, kind=kind: aigc_fast.gan_g_loss(f, kind), lambda: [randn(7, seed=32)]) for kind in KINDS],
    *[(f"vae {recon} {reduction}", lambda *t, recon=recon, reduction=reduction: aigc_fast.vae_loss(
        *t, recon_loss=recon, beta=0.7, reduction=reduction)[0].sum(),
       lambda: vae_inputs(torch.float64, batch=3, image=(2, 3), latent=4))
      for recon in ("bce", "mse") for reduction in ("mean", "sum", "none")],
]


@pytest.mark.parametrize("name, loss_of, make_inputs", LOSS_CASES, ids=[c[0] for c in LOSS_CASES])
def test_create_graph_gradients_are_the_kernels(name, loss_of, make_inputs):
    """The create_graph path computes the gradients again from the inputs: they must be the
    kernel's (and gradgradcheck, which compares that path only with itself, cannot tell)."""
    inputs = [t.requires_grad_() for t in make_inputs()]
    kernel = torch.autograd.grad(loss_of(*inputs), inputs)
    graph = torch.autograd.grad(loss_of(*inputs), inputs, create_graph=True)
    with aigc_fast.use_impl("reference"):
        expected = torch.autograd.grad(loss_of(*inputs), inputs)
    for k, g, e in zip(kernel, graph, expected):
        assert not k.requires_grad  # the kernel's gradients hand out no graph
        torch.testing.assert_close(g, e, rtol=1e-12, atol=1e-15)
        torch.testing.assert_close(k, e, rtol=1e-12, atol=1e-15)


def test_create_graph_bce_keeps_a_confident_answers_tiny_gradient():
    logits = torch.tensor([20.0, -20.0], requires_grad=True)  # float32: sigmoid(20) - 1 rounds to 0
    (g,) = torch.autograd.grad(aigc_fast.gan_g_loss(logits, "bce"), logits, create_graph=True)
    torch.testing.assert_close(g.detach(), torch.tensor([-2.0612e-9, -1.0]) / 2, rtol=1e-4, atol=0)  # a mean of 2


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", KINDS)
def test_a_penalty_through_the_loss_reaches_the_parameters(dtype, kind):
    """A gradient penalty taken through the loss, then differentiated with respect to the
    discriminator's parameters by autograd.grad(inputs=...), which runs only the nodes on
    paths to those inputs: every second-order term must be on such a path."""
    def penalty_grads(losses):
        torch.manual_seed(0)
        d = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1)).to(dtype)
        x_real, x_fake = randn(6, 4, seed=27, dtype=dtype), randn(5, 4, seed=28, dtype=dtype).requires_grad_()
        loss = losses.gan_d_loss(d(x_real), d(x_fake), kind) + losses.gan_g_loss(d(x_fake), kind)
        (g,) = torch.autograd.grad(loss, x_fake, create_graph=True)
        return torch.autograd.grad(g.square().sum(), list(d.parameters()), allow_unused=True,
                                   materialize_grads=True)

    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    for fused, expected in zip(penalty_grads(aigc_fast), penalty_grads(reference)):
        torch.testing.assert_close(fused, expected, rtol=tol, atol=tol)


# ---- gradients only where asked; bad input ----------------------------------------------


def test_gradients_only_for_inputs_that_require_them():
    real, fake = randn(5, seed=18, dtype=torch.float32), randn(5, seed=19, dtype=torch.float32)
    loss, grad_real, grad_fake = torch.ops.aigc_fast.gan_d_loss(real, fake, "bce", 1.0, [False, True])
    assert grad_real.numel() == 0 and grad_fake.shape == fake.shape
    recon, target, mu, logvar = vae_inputs(torch.float32, batch=2, image=(4,), latent=2)
    out = torch.ops.aigc_fast.vae_loss(recon, target, mu, logvar, "bce", torch.tensor(1.0, dtype=torch.float64), "mean", [True, False, False, True])
    assert [t.numel() > 0 for t in out[3:]] == [True, False, False, True]
    # Through the public functions: the masks follow requires_grad and grad mode.
    with FusedOpCounter() as ops:
        aigc_fast.gan_d_loss(real, fake.clone().requires_grad_(), "bce")
        aigc_fast.gan_g_loss(fake.clone().requires_grad_(), "bce")
        aigc_fast.vae_loss(recon.clone().requires_grad_(), target, mu, logvar.clone().requires_grad_())
    assert list(ops.last_args["gan_d_loss"][-1]) == [False, True]
    assert ops.last_args["gan_g_loss"][-1] is True
    assert list(ops.last_args["vae_loss"][-1]) == [True, False, False, True]
    with torch.no_grad(), FusedOpCounter() as ops:  # nothing takes a gradient: nothing computed, nothing kept
        aigc_fast.gan_d_loss(real.clone().requires_grad_(), fake, "bce")
        aigc_fast.gan_g_loss(fake.clone().requires_grad_(), "bce")
        aigc_fast.vae_loss(recon.clone().requires_grad_(), target, mu, logvar)
    assert list(ops.last_args["gan_d_loss"][-1]) == [False, False]
    assert ops.last_args["gan_g_loss"][-1] is False
    assert list(ops.last_args["vae_loss"][-1]) == [False, False, False, False]
    leaf = fake.clone().requires_grad_()
    loss, _, _ = torch.ops.aigc_fast.gan_d_loss(real.detach(), leaf, "bce", 1.0, [False, False])
    with pytest.raises(RuntimeError, match="gan_d_loss: the gradient of fake_logits was not computed in the forward"):
        loss.backward()


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "minimax"), ValueError, "kind must be one of 'bce', 'hinge', 'lsgan', 'wgan', got 'minimax'"),
        (lambda: aigc_fast.gan_g_loss(torch.zeros(3, dtype=torch.int64)), TypeError, "fake_logits must be float16, bfloat16, float32 or float64, got torch.int64"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3, dtype=torch.int64), torch.zeros(3)), TypeError, "real_logits must be float16, bfloat16, float32 or float64, got torch.int64"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3, dtype=torch.int32), torch.zeros(2, 3)), TypeError, "mu must be float16, bfloat16, float32 or float64, got torch.int32"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3, device="meta")), ValueError, "fake_logits must be on the same device as real_logits"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "hinge", real_label=0.9), ValueError, "real_label applies to kind 'bce' and 'lsgan' only"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "bce", real_label=float("nan")), ValueError, "real_label must be finite, got nan"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "lsgan", real_label=2.0), ValueError, "real_label must be a probability"),
        (lambda: aigc_fast.nn.GANLoss("wgan", real_label=0.9), ValueError, "real_label applies to kind 'bce' and 'lsgan' only"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=torch.tensor(1.0, requires_grad=True)), TypeError, "beta is a constant of the loss"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=True), TypeError, "beta must be a number or a one-element tensor, got bool"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=-1.0), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=float("nan")), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=float("inf")), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 5), torch.zeros(2, 3), torch.zeros(2, 3)), ValueError, r"target must have the same shape as recon, got \[2, 5\] and \[2, 4\]"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 2)), ValueError, r"logvar must have the same shape as mu, got \[2, 2\] and \[2, 3\]"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(3, 3), torch.zeros(3, 3)), ValueError, "mu and recon must have the same batch size, got 3 and 2"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4, dtype=torch.int32), torch.zeros(2, 3), torch.zeros(2, 3)), TypeError, "target must be float16"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3, device="meta"), torch.zeros(2, 3)), ValueError, "mu must be on the same device as recon"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), recon_loss="l1"), ValueError, "recon_loss must be one of 'bce', 'mse', got 'l1'"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), reduction="avg"), ValueError, "reduction must be one of"),
        (lambda: torch.ops.aigc_fast.gan_g_loss(torch.zeros(3), "minimax", False), RuntimeError, "kind must be one of"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(2, 3), "bce", torch.tensor(1.0, dtype=torch.float64), "mean", [False] * 4), RuntimeError, "target must have the same shape as recon"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), "bce", torch.tensor(1.0, dtype=torch.float64), "avg", [False] * 4), RuntimeError, "reduction must be 'mean', 'sum' or 'none'"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), "bce", torch.ones(1), "mean", [False] * 4), RuntimeError, "beta must be a 0-d floating-point CPU tensor"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=torch.ones(2)), ValueError, r"beta must be a number or a one-element tensor, got shape \[2\]"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta="1"), TypeError, "beta must be a number or a one-element tensor, got str"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), real_label=None), TypeError, "real_label must be a number, got NoneType"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), real_label="0.9"), TypeError, "real_label must be a number, got str"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), real_label=torch.full((3, 1), 0.9)), TypeError, r"real_label must be a number or a one-element real tensor, got a torch.float32 tensor of shape \[3, 1\]"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), real_label=torch.tensor(0.9, requires_grad=True)), TypeError, "real_label is a constant"),
        (lambda: aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), real_label=10**400), ValueError, "real_label must be finite"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=10**400), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.nn.VAELoss(beta=10**400), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=torch.tensor(float("nan"))), ValueError, "beta must be a finite number >= 0"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=torch.tensor(2 + 1j)), TypeError, "beta must be a real number, got a torch.complex64 tensor"),
        (lambda: aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), beta=torch.ones((), device="meta")), TypeError, "beta must have a value, got a meta tensor"),
        (lambda: aigc_fast.nn.VAELoss(beta="x"), TypeError, "beta must be a number or a one-element tensor, got str"),
        (lambda: aigc_fast.nn.VAELoss(beta=True), TypeError, "beta must be a number or a one-element tensor, got bool"),
        (lambda: aigc_fast.nn.VAELoss(impl="bogus"), ValueError, "impl must be one of"),
        (lambda: aigc_fast.nn.GANLoss(impl="bogus"), ValueError, "impl must be one of"),
        # torch.ops directly: the C++ op checks the values the Python functions do, and the
        # fake kernel (a meta argument sends a call there) the arguments.
        (lambda: torch.ops.aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "bce", float("nan"), [False] * 2), RuntimeError, r"real_label must be a probability in \[0, 1\], got nan"),
        (lambda: torch.ops.aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "lsgan", 2.0, [False] * 2), RuntimeError, "real_label must be a probability"),
        (lambda: torch.ops.aigc_fast.gan_d_loss(torch.zeros(3), torch.zeros(3), "relu", 0.5, [False] * 2), RuntimeError, "kind must be one of"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), "bce", torch.tensor(-1.0, dtype=torch.float64), "mean", [False] * 4), RuntimeError, "beta must be a finite number >= 0"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4), torch.zeros(2, 4), torch.zeros(2, 3), torch.zeros(2, 3), "bce", torch.tensor(1.0, dtype=torch.float64, device="meta"), "mean", [False] * 4), ValueError, "beta must be a 0-d floating-point CPU tensor"),
        (lambda: torch.ops.aigc_fast.vae_loss(torch.zeros(2, 4, device="meta"), torch.zeros(2, 5, device="meta"), torch.zeros(2, 3, device="meta"), torch.zeros(2, 3, device="meta"), "bce", torch.tensor(1.0, dtype=torch.float64), "mean", [False] * 4), ValueError, "target must have the same shape as recon"),
        (lambda: torch.ops.aigc_fast.gan_d_loss(torch.zeros(3, device="meta"), torch.zeros(3, device="meta"), "foo", 1.0, [False] * 2), ValueError, "kind must be one of"),
        (lambda: torch.ops.aigc_fast.gan_g_loss(torch.zeros(0, device="meta"), "bce", False), ValueError, "fake_logits is empty"),
    ],
)
def test_bad_input_gives_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


# ---- modules and implementation choice ---------------------------------------------------


def test_modules():
    real, fake = randn(32, 1, seed=20, dtype=torch.float32), randn(32, 1, seed=21, dtype=torch.float32)
    criterion = aigc_fast.nn.GANLoss("lsgan", real_label=0.9)
    torch.testing.assert_close(criterion.d_loss(real, fake), reference.gan_d_loss(real, fake, "lsgan", real_label=0.9))
    torch.testing.assert_close(criterion.g_loss(fake), reference.gan_g_loss(fake, "lsgan"))
    with pytest.raises(TypeError, match=r"call criterion.d_loss\(real_logits, fake_logits\)"):
        criterion(real, torch.ones_like(real))  # nn.BCEWithLogitsLoss's criterion(output, labels)
    assert "kind='lsgan'" in repr(criterion)
    inputs = vae_inputs(torch.float32, batch=4, image=(10,), latent=3)
    vae = aigc_fast.nn.VAELoss("mse", beta=4.0)
    for fused, ref in zip(vae(*inputs), reference.vae_loss(*inputs, recon_loss="mse", beta=4.0)):
        torch.testing.assert_close(fused, ref)
    with pytest.raises(ValueError, match="kind must be one of"):
        aigc_fast.nn.GANLoss("minimax")


def test_vae_loss_module_keeps_a_tensor_beta_live():
    """A KL warm-up that writes into the tensor given as beta reaches the loss (it had been
    copied once as a float, so the KL stayed out for good), and its value is checked at
    each call."""
    inputs = vae_inputs(torch.float32, batch=4, image=(10,), latent=3)
    beta = torch.tensor(0.0)
    criterion = aigc_fast.nn.VAELoss("bce", beta=beta)
    for value in (0.0, 0.5, 1.0):
        beta.fill_(value)
        torch.testing.assert_close(criterion(*inputs)[0], reference.vae_loss(*inputs, beta=value)[0])
    beta.fill_(-1.0)
    with pytest.raises(ValueError, match="beta must be a finite number >= 0"):
        criterion(*inputs)


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_a_number_beta_does_not_follow_the_default_device(impl):
    """Under torch.set_default_device (here meta, standing in for "cuda"), beta=0.5 is still
    a number: the loss of CPU inputs is the same (it had become a tensor on the default device,
    refused by the op), and VAELoss(beta=0.5) can be built."""
    inputs = vae_inputs(torch.float32, batch=4, image=(10,), latent=3)
    expected = aigc_fast.vae_loss(*inputs, beta=0.5, impl=impl)
    with torch.device("meta"):
        got = aigc_fast.vae_loss(*inputs, beta=0.5, impl=impl)
        criterion = aigc_fast.nn.VAELoss("bce", beta=0.5, impl=impl)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e)
    torch.testing.assert_close(criterion(*inputs)[0], expected[0])


@pytest.mark.parametrize("impl", ["fused", "reference"])
def test_probabilities_from_a_sigmoid_are_named(impl, recwarn):
    """The port of a D ending in nn.Sigmoid (PyTorch's DCGAN example: netD(x).view(-1)) or of
    a decoder ending in torch.sigmoid: the losses take logits, so these are wrong without an
    error; a warning says so. Logits, and losses that do not apply a sigmoid, give none."""
    d = torch.nn.Sequential(torch.nn.Linear(4, 1), torch.nn.Sigmoid())
    x = torch.randn(6, 4)
    with pytest.warns(UserWarning, match="real_logits comes from a sigmoid"):
        aigc_fast.gan_d_loss(d(x).view(-1), d[0](x).view(-1), impl=impl)
    with pytest.warns(UserWarning, match="fake_logits comes from a sigmoid"):
        aigc_fast.gan_g_loss(d(x).squeeze(1), impl=impl)
    probabilities = torch.sigmoid(torch.randn(2, 5, requires_grad=True))
    latent = torch.zeros(2, 3)
    with pytest.warns(UserWarning, match="recon comes from a sigmoid"):
        aigc_fast.vae_loss(probabilities, torch.rand(2, 5), latent, latent, impl=impl)
    recwarn.clear()
    aigc_fast.gan_d_loss(d[0](x).view(-1), d[0](x).view(-1), impl=impl)  # logits
    aigc_fast.gan_d_loss(d(x).view(-1), d(x).view(-1), "lsgan", impl=impl)  # no sigmoid of its own
    aigc_fast.vae_loss(probabilities, torch.rand(2, 5), latent, latent, recon_loss="mse", impl=impl)
    assert not [w for w in recwarn if "sigmoid" in str(w.message)]


def test_probabilities_from_a_converted_sigmoid_are_named(recwarn):
    """convert() fuses a final conv + Sigmoid into bias_act (a D) or conv + BatchNorm +
    Sigmoid into bn_act, whose autograd node is not torch's sigmoid: the losses warn all
    the same. A fused op ending in another activation gives no warning."""
    torch.manual_seed(3)
    d = aigc_fast.nn.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 1, 4, bias=False), torch.nn.Sigmoid()))
    bn_d = aigc_fast.nn.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 2, 4), torch.nn.BatchNorm2d(2),
                                                    torch.nn.Sigmoid()))
    x = torch.randn(3, 3, 4, 4)
    assert all(isinstance(m, aigc_fast.nn.blocks.FusedSequential) for m in (d, bn_d))
    with pytest.warns(UserWarning, match="fake_logits comes from a sigmoid"):
        aigc_fast.gan_g_loss(d(x).view(-1))
    with pytest.warns(UserWarning, match="recon comes from a sigmoid"):
        latent = torch.zeros(3, 2)
        aigc_fast.vae_loss(bn_d(x), torch.rand(3, 2, 1, 1), latent, latent)
    recwarn.clear()
    tanh_d = aigc_fast.nn.convert(torch.nn.Sequential(torch.nn.Conv2d(3, 1, 4), torch.nn.Tanh()))
    aigc_fast.gan_g_loss(tanh_d(x).view(-1))
    assert not [w for w in recwarn if "sigmoid" in str(w.message)]


def test_impl_reference_runs_the_reference(monkeypatch):
    calls = []
    monkeypatch.setattr(reference, "gan_g_loss", lambda *a: calls.append(a) or torch.tensor(0.0))
    fake = torch.zeros(3)
    aigc_fast.gan_g_loss(fake)
    assert not calls
    with aigc_fast.use_impl("reference"):
        aigc_fast.gan_g_loss(fake)
    assert len(calls) == 1


def test_an_int_beta_beyond_int64():
    inputs = vae_inputs(torch.float64, batch=2, image=(3,), latent=2)
    torch.testing.assert_close(aigc_fast.vae_loss(*inputs, beta=10**20)[0], aigc_fast.vae_loss(*inputs, beta=1e20)[0])


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("create_graph", [False, True])
def test_gan_logits_without_gradient_may_change_before_backward(kind, create_graph):
    """Eager's GAN loss keeps nothing of logits that take no gradient, so they may be
    changed in place between the loss and its backward; the fused loss does not keep them
    either (a kept tensor would make that an autograd error)."""
    def grad(fn):
        real, fake = torch.randn(5, generator=torch.Generator().manual_seed(1)), torch.randn(4, requires_grad=True)
        with torch.no_grad():
            fake.copy_(torch.linspace(-2, 2, 4))
        loss = fn(real, fake, kind)
        real.add_(1.0)
        (g,) = torch.autograd.grad(loss, fake, create_graph=create_graph)
        return g

    torch.testing.assert_close(grad(aigc_fast.gan_d_loss), grad(reference.gan_d_loss))


def test_inference_mode_inputs_that_take_no_gradient():
    """A tensor made under torch.inference_mode cannot be saved for backward: the losses
    keep only the inputs that can take a gradient, so such a tensor beside one that does
    works (first and second derivatives of the GAN losses), as in the reference."""
    with torch.inference_mode():
        fake, target = torch.randn(5, 1), torch.rand(2, 4)
    real = torch.randn(3, 1, requires_grad=True)
    (grad,) = torch.autograd.grad(aigc_fast.gan_d_loss(real, fake), real, create_graph=True)
    twin = real.detach().requires_grad_()
    (expected,) = torch.autograd.grad(reference.gan_d_loss(twin, fake), twin, create_graph=True)
    torch.testing.assert_close(grad, expected)
    grad.square().sum().backward()  # a gradient penalty through the real logits
    expected.square().sum().backward()
    torch.testing.assert_close(real.grad, twin.grad)

    recon, mu, logvar = (torch.randn(2, 4, requires_grad=True) for _ in range(3))
    aigc_fast.vae_loss(recon, target, mu, logvar)[0].backward()  # (the reference's BCE cannot: it saves target)
    assert recon.grad is not None
    loss = aigc_fast.vae_loss(recon, target, mu, logvar)[0]
    with pytest.raises(RuntimeError, match="second derivatives need target, an inference tensor"):
        torch.autograd.grad(loss, recon, create_graph=True)


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning",  # (torch deprecates jit)
                            "ignore::torch.jit.TracerWarning")  # (the input checks are constants of a trace)
def test_jit_trace_of_a_fused_loss_is_refused_by_name_and_the_reference_traces():
    """The op's which-inputs-need-gradients argument cannot be traced (a list of bools), and
    would be a constant of the example inputs if it could: the tracer's own errors named
    neither the package nor the way out."""
    real, fake = torch.randn(6), torch.randn(6, requires_grad=True)
    mu, logvar, target = torch.randn(2, 3), torch.randn(2, 3), torch.rand(2, 5)
    losses = {"gan_d_loss": (lambda r, f: aigc_fast.gan_d_loss(r, f), (real, fake)),
              "gan_g_loss": (lambda f: aigc_fast.gan_g_loss(f), (fake,)),
              "vae_loss": (lambda r, m, lv: aigc_fast.vae_loss(r, target, m, lv)[0],
                           (torch.randn(2, 5), mu, logvar))}
    for name, (fn, inputs) in losses.items():
        with pytest.raises(RuntimeError, match=rf"aigc_fast.{name}: torch.jit.trace cannot record.*use_impl\('reference'\)"):
            torch.jit.trace(fn, inputs)
        with aigc_fast.use_impl("reference"):
            traced = torch.jit.trace(fn, inputs, check_trace=False)
        torch.testing.assert_close(traced(*inputs), fn(*inputs))
