"""The float32 math of csrc/include/aigc_fast/fastmath.h against float64, element by
element, through ops that expose it: reparameterize with mu = 0 and eps = 1 gives
exp(logvar / 2); a one-pixel VAE loss against target 0 gives softplus(x) and its
gradient sigmoid(x). (log and sin/cos are checked through the normals in test_noise.py.)"""

import decimal

import torch

import aigc_fast

from conftest import requires_fused

pytestmark = requires_fused
ULP = 2.0**-23  # float32 spacing at 1, so relative error / ULP is in ulps (within 2x)


def ulps(got, exact):
    exact = exact.double()
    spacing = torch.ldexp(torch.ones_like(exact), torch.frexp(exact.abs()).exponent.double() - 24)
    return ((got.double() - exact).abs() / spacing).max().item()


def test_exp_within_2_ulp():
    x = torch.linspace(-87.0, 88.0, 200_001)  # results in the normal float32 range
    z = aigc_fast.reparameterize(torch.zeros_like(x), 2 * x, eps=torch.ones_like(x))
    assert ulps(z, torch.exp(x.double())) <= 2


def one_pixel_bce(x):
    """Per-sample loss softplus(x) (target 0) and its gradient sigmoid(x)."""
    recon = x.reshape(-1, 1).clone().requires_grad_()
    zeros = torch.zeros_like(recon)
    latent = torch.zeros(recon.shape[0], 1)
    loss, _, _ = aigc_fast.vae_loss(recon, zeros, latent, latent, reduction="none")
    loss.sum().backward()
    return loss.detach(), recon.grad.reshape(-1)


def test_softplus_and_sigmoid_within_2_ulp_of_their_float32_arguments():
    # Dense around 0 and out to where exp(-|x|) leaves the normal range.
    x = torch.cat([torch.linspace(-87.0, 87.0, 100_001), torch.linspace(-1.0, 1.0, 100_001)])
    loss, grad = one_pixel_bce(x)
    x64 = x.double()
    # exp(-|x|) itself carries up to 2 ulp: its relative error passes through log1p(e)
    # and sigmoid at most once more, so the bound of the composition is 4 ulp.
    assert ulps(loss, torch.nn.functional.softplus(x64)) <= 4
    assert ulps(grad, torch.sigmoid(x64)) <= 4


def test_log1p_unit_keeps_tiny_values():
    x = torch.tensor([-20.0, -40.0, -80.0, -87.0])
    loss, grad = one_pixel_bce(x)
    exact = torch.nn.functional.softplus(x.double())
    torch.testing.assert_close(loss.double(), exact, rtol=4 * ULP, atol=0)
    torch.testing.assert_close(grad.double(), torch.sigmoid(x.double()), rtol=4 * ULP, atol=0)


def test_kl_keeps_its_digits_near_the_prior():
    """KL of a latent collapsed onto the prior: 1/2 (e^lv - 1 - lv) ~ lv^2 / 4, which the
    float32 formula as written loses to cancellation (the reference: 2x off at lv = 1e-4)."""
    # The fine grid walks across the switch from the series to the direct formula at |lv| = 1,
    # and the switch itself: +-1 and their float32 neighbours.
    one = torch.tensor(1.0)
    edges = torch.stack([torch.nextafter(one, torch.tensor(0.0)), one, torch.nextafter(one, torch.tensor(2.0))])
    lv = torch.cat([torch.logspace(-6, -0.2, 400), -torch.logspace(-6, -0.2, 400), torch.linspace(-3, 3, 6001),
                    edges, -edges])
    lv = lv.reshape(-1, 1)
    mu = torch.zeros_like(lv)
    exact = 0.5 * (torch.expm1(lv.double()) - lv.double()).reshape(-1)
    exact_grad = 0.5 * torch.expm1(lv.double()).reshape(-1)
    _, kl = aigc_fast.reparameterize(mu, lv, eps=torch.zeros_like(lv), return_kl=True)
    logvar = lv.clone().requires_grad_()
    pixel = torch.zeros(lv.shape[0], 1)
    _, _, kl_vae = aigc_fast.vae_loss(pixel, pixel, mu, logvar, reduction="none")
    aigc_fast.vae_loss(pixel, pixel, mu, logvar, reduction="sum")[0].backward()
    # Past |lv| = 1 the direct formula keeps a few ulp of cancellation (e^lv - 1 - lv is
    # down to ~1/4 of e^lv there); reparameterize squares std, which doubles exp's error.
    for got in (kl, kl_vae):
        assert ((got.double() - exact).abs() / exact).max().item() < 8 * ULP
    assert ((logvar.grad.reshape(-1).double() - exact_grad).abs() / exact_grad.abs()).max().item() < 4 * ULP


def test_float64_kl_keeps_its_digits_near_the_prior():
    # Up to 1.2: across the switch to the direct formula at |lv| = 1 too.
    lv = torch.cat([torch.logspace(-9, 0.08, 300, dtype=torch.float64), -torch.logspace(-9, 0.08, 300, dtype=torch.float64)])
    lv = lv.reshape(-1, 1)
    pixel = torch.zeros(lv.shape[0], 1, dtype=torch.float64)
    _, _, kl = aigc_fast.vae_loss(pixel, pixel, torch.zeros_like(lv), lv, reduction="none")
    with decimal.localcontext() as context:  # e^x - 1 - x to 50 digits
        context.prec = 50
        exact = [float((decimal.Decimal(x).exp() - 1 - decimal.Decimal(x)) / 2) for x in lv.reshape(-1).tolist()]
    exact = torch.tensor(exact, dtype=torch.float64)
    assert ((kl - exact).abs() / exact).max().item() < 1e-13
