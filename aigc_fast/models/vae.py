"""VAEs on the fused ops: reparameterization (with its KL) and the negative ELBO in one op
each, conv blocks in the fused backend. Inputs are images in [0, 1]; decoders output
logits (the BCE of vae_loss takes logits; `sample` applies the sigmoid)."""

from __future__ import annotations

import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import is_count
from ..ops.bias_act import bias_act
from ..ops.losses import vae_loss
from ..ops.reparameterize import reparameterize
from . import _backend
from ._modes import eval_mode
from ._shapes import check_images, check_sizes, geometry


class _VAE(nn.Module):
    """What both VAEs share: encode -> (mu, logvar), reparameterize, decode -> logits."""

    latent_dim: int
    backend: str

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, *, sample: Optional[bool] = None,
                generator: Optional[torch.Generator] = None) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(reconstruction logits, mu, logvar). z is sampled (with `generator`, if given)
        when `sample` is True, by default in training mode; else z = mu."""
        mu, logvar = self.encode(x)
        sample = self.training if sample is None else sample
        z = reparameterize(mu, logvar, generator=generator, impl=_backend.impl(self.backend)) if sample else mu
        return self.decode(z), mu, logvar

    def loss(self, x: torch.Tensor, out=None, *, beta: float = 1.0, recon_loss: str = "bce",
             generator: Optional[torch.Generator] = None):
        """The negative ELBO of x (mean over the batch; its one-sample estimate) as vae_loss
        returns it: (loss, recon_term, kl_term). z is sampled in eval mode too (a validation
        loss; `generator` makes it reproducible): z = mu would give the reconstruction at
        the posterior mean, a lower figure that is not the ELBO. `out`: this model's
        forward(x, sample=True), if already computed."""
        recon, mu, logvar = self(x, sample=True, generator=generator) if out is None else out
        return vae_loss(recon, x.reshape(recon.shape), mu, logvar, recon_loss=recon_loss, beta=beta,
                        impl=_backend.impl(self.backend))

    @torch.no_grad()
    def sample(self, n: int, *, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """n samples in [0, 1] (images [n, C, H, W] from ConvVAE, flat [n, features] vectors
        from MLPVAE) decoded from z ~ N(0, I) in eval mode (BatchNorm's running
        statistics, which the call leaves alone; each module's mode is restored after): the
        sigmoid of the decoder's logits, as for a model trained with the BCE reconstruction
        loss (an "mse" model's outputs are the images themselves: decode(z).clamp(0, 1))."""
        if not is_count(n, 0):
            raise ValueError(f"n must be an integer >= 0 (how many samples), got {n!r}")
        p = next(self.parameters())
        z = torch.randn(n, self.latent_dim, generator=generator, device=p.device, dtype=p.dtype)
        with eval_mode(self):
            return torch.sigmoid(self.decode(z))


class ConvVAE(_VAE):
    """A convolutional VAE for images [N, channels, image_size, image_size] in [0, 1].

    Encoder: Conv2d(4, 2, 1) blocks halving the map down to 4x4 (7x7 for 28), widths base,
    2 base, ...; BatchNorm + LeakyReLU(0.2) (none on the first), then one linear layer to
    (mu, logvar). Decoder: the mirror, ConvTranspose2d -> BatchNorm2d -> ReLU blocks and a
    final conv-transpose to logits.
    """

    def __init__(self, latent_dim: int = 20, channels: int = 1, image_size: int = 28, base: int = 32,
                 backend: str = "fused"):
        super().__init__()
        check_sizes(type(self).__name__, latent_dim=latent_dim, channels=channels, base=base)
        steps, side = geometry(image_size)
        self.latent_dim, self.channels, self.image_size, self.backend = latent_dim, channels, image_size, backend
        widths = [base * 2 ** i for i in range(steps)]
        enc = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2, inplace=True)]
        for w_in, w_out in zip(widths, widths[1:]):
            enc += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, inplace=True)]
        features = widths[-1] * side * side
        self.encoder = _backend.sequential(backend, *enc, nn.Flatten(), nn.Linear(features, 2 * latent_dim))
        dec = [nn.Linear(latent_dim, features), nn.ReLU(inplace=True), nn.Unflatten(1, (widths[-1], side, side))]
        for w_in, w_out in zip(widths[::-1], widths[::-1][1:]):
            dec += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(inplace=True)]
        dec += [nn.ConvTranspose2d(widths[0], channels, 4, 2, 1)]
        self.decoder = _backend.sequential(backend, *dec)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        check_images(x, self.channels, self.image_size, type(self).__name__)
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class MLPVAE(_VAE):
    """The classic MNIST VAE (Kingma & Welling; PyTorch's example): 784-400-20, ReLU, with
    the example's layer names (fc1, fc21, fc22, fc3, fc4), so its checkpoints load.
    forward takes [N, 784] or [N, 1, 28, 28]; the decoder returns [N, 784] logits."""

    def __init__(self, input_dim: int = 784, hidden: int = 400, latent_dim: int = 20, backend: str = "fused"):
        super().__init__()
        check_sizes(type(self).__name__, input_dim=input_dim, hidden=hidden, latent_dim=latent_dim)
        _backend.check(backend)
        self.input_dim, self.latent_dim, self.backend = input_dim, latent_dim, backend
        self.fc1, self.fc21, self.fc22 = nn.Linear(input_dim, hidden), nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.fc3, self.fc4 = nn.Linear(latent_dim, hidden), nn.Linear(hidden, input_dim)

    def _linear_relu(self, layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if self.backend == "reference":
            return F.relu(layer(x))
        # bias + ReLU in one pass; the features are last, as F.linear puts them (z [K, N, latent])
        return bias_act(F.linear(x, layer.weight), layer.bias, "relu", dim=-1)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        # One flat vector per sample: a reshape(-1, input_dim) would turn an RGB image into
        # three "images" without a word.
        if (x.numel() if x.dim() == 1 else math.prod(x.shape[1:])) != self.input_dim:
            raise ValueError(f"MLPVAE(input_dim={self.input_dim}) takes [N, {self.input_dim}] or images of "
                             f"{self.input_dim} values each, got shape {list(x.shape)}")
        h = self._linear_relu(self.fc1, x.reshape(-1, self.input_dim))
        return self.fc21(h), self.fc22(h)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc4(self._linear_relu(self.fc3, z))
