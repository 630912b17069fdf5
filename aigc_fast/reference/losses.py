"""The GAN and VAE losses in plain PyTorch, the way a training script writes them. Math in
float32 whatever the input dtype (float64 when an input is float64), as the fused ops do."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import _validate
from .reparameterize import kl_per_sample

GAN_KINDS = ("bce", "hinge", "lsgan", "wgan")
RECON_LOSSES = ("bce", "mse")
REDUCTIONS = ("mean", "sum", "none")


def _in_math_dtype(*tensors: torch.Tensor):
    dtype = _validate.math_dtype(*tensors)
    return [t.to(dtype) for t in tensors]


def gan_d_loss(real_logits, fake_logits, kind: str = "bce", *, real_label: float = 1.0) -> torch.Tensor:
    """The discriminator's loss on its logits for real and generated samples."""
    _validate.choice(kind, "kind", GAN_KINDS)
    real, fake = _in_math_dtype(real_logits, fake_logits)
    if kind == "bce":  # -[E log D(x) + E log(1 - D(G(z)))], D = sigmoid(logits)
        return F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label)) + (
            F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
        )
    if kind == "hinge":
        return F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean()
    if kind == "lsgan":
        return 0.5 * (real - real_label).square().mean() + 0.5 * fake.square().mean()
    return fake.mean() - real.mean()  # wgan


def gan_g_loss(fake_logits, kind: str = "bce") -> torch.Tensor:
    """The generator's loss on the discriminator's logits for generated samples."""
    _validate.choice(kind, "kind", GAN_KINDS)
    (fake,) = _in_math_dtype(fake_logits)
    if kind == "bce":  # non-saturating: -E log D(G(z))
        return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))
    if kind in ("hinge", "wgan"):
        return -fake.mean()
    return 0.5 * (fake - 1.0).square().mean()  # lsgan


def vae_loss(recon, target, mu, logvar, *, recon_loss: str = "bce", beta: float = 1.0, reduction: str = "mean"):
    """The negative ELBO: per sample, the reconstruction loss summed over pixels plus beta
    times KL(N(mu, exp(logvar)) || N(0, 1)) summed over latent dims; then the reduction.
    Returns (loss, recon_term, kl_term), the last two detached and reduced the same way."""
    _validate.choice(recon_loss, "recon_loss", RECON_LOSSES)
    _validate.choice(reduction, "reduction", REDUCTIONS)
    recon, target, mu, logvar = _in_math_dtype(recon, target, mu, logvar)
    if recon_loss == "bce":
        per_pixel = F.binary_cross_entropy_with_logits(recon, target, reduction="none")
    else:
        per_pixel = F.mse_loss(recon, target, reduction="none")
    rec = per_pixel.reshape(per_pixel.shape[0], -1).sum(dim=1)
    kl = kl_per_sample(mu, logvar)
    total = rec + beta * kl
    if reduction == "mean":
        return total.mean(), rec.detach().mean(), kl.detach().mean()
    if reduction == "sum":
        return total.sum(), rec.detach().sum(), kl.detach().sum()
    return total, rec.detach(), kl.detach()  # "none"
