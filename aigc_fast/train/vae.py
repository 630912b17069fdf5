"""VAE training on the negative ELBO (fused reparameterization and loss)."""

from __future__ import annotations

import math
from typing import Any, Dict, Optional

import torch

from ..models import ConvVAE, MLPVAE
from ..models._modes import eval_mode
from .config import VAEConfig
from .trainer import _save_grid_if_possible, _Trainer


class VAETrainer(_Trainer):
    kind = "vae"
    value_range = (0.0, 1.0)

    def _architecture_fields(self):
        return ("model", "latent_dim") + (("base",) if self.config.model == "conv" else ())  # the MLP has no base

    def _objective_fields(self):
        return ("recon_loss",)  # what the decoder's outputs mean (logits or means)

    def __init__(self, config: Optional[VAEConfig] = None):
        super().__init__(config or VAEConfig())

    def build(self) -> None:
        c = self.config
        # (model and recon_loss were checked by the config, before anything is written.)
        if c.model == "mlp":
            model = MLPVAE(c.channels * c.image_size ** 2, latent_dim=c.latent_dim, backend=c.backend)
        else:
            model = ConvVAE(c.latent_dim, c.channels, c.image_size, c.base, backend=c.backend)
        self.model = self.place(model)
        self.opt = self.adam(self.model)
        self.run_model = self.prepare(self.model)

    def modules(self) -> Dict[str, Any]:
        return {"model": self.model, "opt": self.opt}

    def step_losses(self, x: torch.Tensor) -> Dict[str, torch.Tensor]:
        c = self.config
        with self.autocast():
            loss, recon, kl = self.model.loss(x, self.run_model(x), beta=c.beta, recon_loss=c.recon_loss)
        self.optimize(loss, self.opt)
        return {"loss": loss.detach(), "recon": recon.detach(), "kl": kl.detach()}

    def to_images(self, decoded: torch.Tensor) -> torch.Tensor:
        """Decoder outputs as images in [0, 1]: for recon_loss "bce" they are logits (the
        sigmoid gives the Bernoulli means); for "mse" they are the means themselves."""
        decoded = decoded.float()
        return torch.sigmoid(decoded) if self.config.recon_loss == "bce" else decoded.clamp(0, 1)

    def snapshot(self, tag: str) -> None:
        """The sample grid, and samples/recon_<tag>.png: rows of real images (held-out ones
        when the run has a held-out split) alternating with their reconstructions (z = mu)."""
        super().snapshot(tag)
        real = self.preview.to(self.device)
        with eval_mode(self.model), torch.no_grad():
            recon = self.to_images(self.model(real)[0]).view_as(real)
        per_row = math.ceil(math.sqrt(2 * len(real)))  # a square grid of real rows over reconstruction rows
        pairs = [t for i in range(0, len(real), per_row) for t in (real[i:i + per_row], recon[i:i + per_row])]
        _save_grid_if_possible(torch.cat(pairs), self.run_dir / "samples" / f"recon_{tag}.png", self.value_range,
                               nrow=per_row)

    @torch.no_grad()
    def generate(self, n: int, *, seed: Optional[int] = None) -> torch.Tensor:
        """n images in [0, 1] decoded from z ~ N(0, I) in eval mode; seed: a private
        generator, leaving the global RNG untouched."""
        c = self.config
        z = self._latents(n, c.latent_dim, seed)
        with eval_mode(self.model):
            return self.to_images(self.model.decode(z)).view(n, c.channels, c.image_size, c.image_size)
