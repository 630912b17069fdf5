"""CUDA loss kernels (run only where a GPU is visible): the same answers as the CPU kernels
(the per-element math is one header; only the summation order differs), bit-identical
results run to run, mixed dtypes, and torch.compile on the GPU."""

import pytest
import torch

import aigc_fast
from aigc_fast import reference

from conftest import DTYPES, requires_cuda, requires_fused

pytestmark = [requires_cuda, requires_fused, pytest.mark.cuda]


def assert_same_math(gpu, cpu):
    """Per-element results: the same bits in float32 and the 16-bit dtypes (fastmath.h is
    built from IEEE-exact operations on both devices); float64 uses each platform's libm
    exp/log1p (glibc vs libdevice, both within 1 ulp), so a few ulp there: of the element,
    or, where a gradient is a difference that cancels (sigmoid(x) - target near zero), of
    the terms it cancels, bounded by the largest gradient (measured on an H200: 7e-14
    relative, 3.5e-17 absolute against gradients up to ~0.1)."""
    if cpu.dtype == torch.float64:
        torch.testing.assert_close(gpu, cpu, rtol=1e-15, atol=1e-15 * float(cpu.abs().max()))
    else:
        torch.testing.assert_close(gpu, cpu, rtol=0, atol=0)


def on_both(*tensors):
    return [t.clone().requires_grad_() for t in tensors], [t.cuda().requires_grad_() for t in tensors]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["bce", "hinge", "lsgan", "wgan"])
def test_gan_losses_cuda_match_cpu(dtype, kind):
    g = torch.Generator().manual_seed(0)
    real, fake = (torch.randn(n, generator=g).mul(3).to(dtype) for n in (5000, 4099))
    cpu, gpu = on_both(real, fake)
    for leaves in (cpu, gpu):
        (aigc_fast.gan_d_loss(*leaves, kind) + aigc_fast.gan_g_loss(leaves[1], kind)).backward()
    loss_cpu, loss_gpu = aigc_fast.gan_d_loss(*cpu, kind), aigc_fast.gan_d_loss(*gpu, kind)
    torch.testing.assert_close(loss_gpu.cpu(), loss_cpu, rtol=1e-6 if dtype != torch.float64 else 1e-13, atol=0)
    for c, d in zip(cpu, gpu):
        assert_same_math(d.grad.cpu(), c.grad)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("recon_loss", ["bce", "mse"])
@pytest.mark.parametrize("reduction", ["mean", "none"])
def test_vae_loss_cuda_matches_cpu(dtype, recon_loss, reduction):
    g = torch.Generator().manual_seed(1)
    recon = torch.randn(7, 3, 40, 40, generator=g).to(dtype)
    target = torch.rand(7, 3, 40, 40, generator=g)  # float32 data, as under autocast
    mu, logvar = (torch.randn(7, 33, generator=g).to(dtype) for _ in range(2))
    (r_c, m_c, l_c), (r_g, m_g, l_g) = on_both(recon, mu, logvar)
    out_c = aigc_fast.vae_loss(r_c, target, m_c, l_c, recon_loss=recon_loss, reduction=reduction, beta=0.5)
    out_g = aigc_fast.vae_loss(r_g, target.cuda(), m_g, l_g, recon_loss=recon_loss, reduction=reduction, beta=0.5)
    out_c[0].sum().backward()
    out_g[0].sum().backward()
    for c, d in zip(out_c, out_g):
        torch.testing.assert_close(d.cpu(), c, rtol=1e-6 if dtype != torch.float64 else 1e-13, atol=0)
    for c, d in ((r_c, r_g), (m_c, m_g), (l_c, l_g)):
        assert_same_math(d.grad.cpu(), c.grad)


def test_cuda_losses_are_bit_reproducible_and_compile():
    g = torch.Generator().manual_seed(2)
    recon, target = torch.randn(64, 3, 64, 64, generator=g).cuda(), torch.rand(64, 3, 64, 64, generator=g).cuda()
    mu, logvar = torch.randn(64, 128, generator=g).cuda(), torch.randn(64, 128, generator=g).cuda()
    first = aigc_fast.vae_loss(recon, target, mu, logvar)
    assert all(torch.equal(a, b) for a, b in zip(first, aigc_fast.vae_loss(recon, target, mu, logvar)))
    compiled = torch.compile(lambda *t: aigc_fast.vae_loss(*t)[0], fullgraph=True)
    torch.testing.assert_close(compiled(recon, target, mu, logvar), first[0])
    exact = reference.vae_loss(recon.double(), target.double(), mu.double(), logvar.double())[0]
    torch.testing.assert_close(first[0].double(), exact, rtol=2e-6, atol=0)
