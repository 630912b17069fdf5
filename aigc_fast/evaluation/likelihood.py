"""A VAE's likelihood on held-out data, in nats per image: the negative ELBO, and the
importance-sampled estimate of -log p(x) (Burda et al.'s IWAE bound with K samples from
the encoder), which is tighter: -log p(x) <= NLL_K <= -ELBO in expectation, and NLL_K
approaches -log p(x) as K grows."""

from __future__ import annotations

import math
from typing import Dict

import torch
import torch.nn.functional as F

from .._validate import float_tensor, is_count
from ..models._modes import eval_mode
from ..reference.reparameterize import kl_per_sample


def _log_likelihood(logits: torch.Tensor, x: torch.Tensor, recon_loss: str) -> torch.Tensor:
    """log p(x | z) summed over pixels, [..., N]. "bce": Bernoulli with these logits (for
    grey levels in [0, 1] the usual, unnormalized, MNIST convention); "mse": the Gaussian
    with variance 1/2 whose negative log density is the squared error + D/2·log π."""
    if recon_loss == "bce":
        return -F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(-1).sum(-1)
    if recon_loss == "mse":
        d = x[0].numel()
        return -(logits - x).square().flatten(-1).sum(-1) - 0.5 * d * math.log(math.pi)
    raise ValueError(f"recon_loss must be 'bce' or 'mse', got {recon_loss!r}")


def _log_normal(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return (-0.5 * (math.log(2 * math.pi) + logvar + (z - mu).square() / logvar.exp())).sum(-1)


def _check_likelihood_args(images, samples, batch_size) -> None:
    for name, value in (("samples", samples), ("batch_size", batch_size)):
        if not is_count(value, 1):
            raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    float_tensor(images, "images")
    if images.dim() < 2 or len(images) == 0:
        raise ValueError(f"images must be a non-empty batch [N, ...], got shape {list(images.shape)}")
    if not bool(((images >= 0) & (images <= 1)).all()):  # uint8 pixels scaled, say, or [-1, 1] GAN data
        raise ValueError("images must lie in [0, 1] (the VAE's data range); got values from "
                         f"{images.min().item():g} to {images.max().item():g}")


@torch.no_grad()
def vae_likelihood(model, images: torch.Tensor, *, recon_loss: str = "bce", samples: int = 100,
                   batch_size: int = 25, seed: int = 0) -> Dict[str, float]:
    """{"neg_elbo", "nll", "recon", "kl"} per image (nats, mean over images) of a VAE from
    aigc_fast.models (encode -> (mu, logvar), decode -> logits) in eval mode, on floating
    images in [0, 1], run in the model's dtype. Both use the same `samples` z per image:
    neg_elbo (and recon) averages log p(x|z) over them, nll is their importance-weighted
    bound (<= neg_elbo in expectation; with few samples either can come out above).
    The noise is drawn per batch of `batch_size` images from `seed`, so the estimates
    depend on both."""
    _check_likelihood_args(images, samples, batch_size)
    dtype = next((p.dtype for p in model.parameters()), torch.float32)
    g = torch.Generator().manual_seed(seed)
    totals = {"neg_elbo": 0.0, "nll": 0.0, "recon": 0.0, "kl": 0.0}
    with eval_mode(model):
        for x in images.split(batch_size):
            x = x.to(dtype)
            mu, logvar = (t.double() for t in model.encode(x))
            target = x.reshape(x.shape[0], -1).double()
            kl = kl_per_sample(mu, logvar)                                        # float64, [N]
            eps = torch.randn((samples,) + mu.shape, generator=g, dtype=torch.float64).to(mu.device)
            z = mu + (0.5 * logvar).exp() * eps                                   # [K, N, latent]
            logits = model.decode(z.flatten(0, 1).to(dtype)).double().reshape(samples, x.shape[0], -1)
            log_px_z = _log_likelihood(logits, target, recon_loss)                # [K, N]
            log_w = log_px_z + _log_normal(z, torch.zeros_like(z), torch.zeros_like(z)) - _log_normal(z, mu, logvar)
            nll = -(torch.logsumexp(log_w, 0) - math.log(samples))
            recon = -log_px_z.mean(0)
            for name, value in (("neg_elbo", recon + kl), ("nll", nll), ("recon", recon), ("kl", kl)):
                totals[name] += float(value.sum())
    return {name: value / len(images) for name, value in totals.items()}
