"""DCGAN training: per step one discriminator update on real and generated images, then
one generator update, with the fused GAN losses."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

from ..models import DCGANDiscriminator, DCGANGenerator
from ..models._backend import impl as backend_impl
from ..models._modes import eval_mode
from ..ops.losses import gan_d_loss, gan_g_loss
from .config import GANConfig
from .trainer import _Trainer


class GANTrainer(_Trainer):
    kind = "gan"
    value_range = (-1.0, 1.0)

    def _architecture_fields(self):
        return ("nz", "ngf", "ndf")

    def _objective_fields(self):
        return ("loss",)

    def __init__(self, config: Optional[GANConfig] = None):
        super().__init__(config or GANConfig())

    def build(self) -> None:
        c = self.config
        self.G = self.place(DCGANGenerator(c.nz, c.ngf, c.channels, c.image_size, backend=c.backend))
        self.D = self.place(DCGANDiscriminator(c.ndf, c.channels, c.image_size, backend=c.backend))
        self.opt_g, self.opt_d = self.adam(self.G), self.adam(self.D)
        self.impl = backend_impl(c.backend)
        self.run_g, self.run_d = self.prepare(self.G), self.prepare(self.D)
        # The generator's update differentiates through D but never needs D's gradients:
        # it calls D outside DistributedDataParallel (nothing of D's to average) with D's
        # parameters frozen (no weight gradients computed).
        self.run_d_frozen = torch.compile(self.D) if c.compile else self.D

    def modules(self) -> Dict[str, Any]:
        return {"G": self.G, "D": self.D, "opt_g": self.opt_g, "opt_d": self.opt_d}

    def step_losses(self, real: torch.Tensor) -> Dict[str, torch.Tensor]:
        z = torch.randn(real.shape[0], self.config.nz, device=self.device)
        with self.autocast():
            fake = self.run_g(z)
            d_loss = gan_d_loss(self.run_d(real), self.run_d(fake.detach()), self.config.loss, impl=self.impl)
        self.optimize(d_loss, self.opt_d)
        self.D.requires_grad_(False)
        try:
            with self.autocast():
                g_loss = gan_g_loss(self.run_d_frozen(fake), self.config.loss, impl=self.impl)
            self.optimize(g_loss, self.opt_g)
        finally:
            self.D.requires_grad_(True)
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach()}

    @torch.no_grad()
    def generate(self, n: int, *, seed: Optional[int] = None) -> torch.Tensor:
        """n images in [-1, 1] from the generator in eval mode (BatchNorm's running
        statistics); seed: a private generator, leaving the global RNG untouched."""
        z = self._latents(n, self.config.nz, seed)
        with eval_mode(self.G):
            return self.G(z).float()
