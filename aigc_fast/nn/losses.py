from __future__ import annotations

from typing import Optional, Union

import torch

from .. import _impl, _validate
from ..ops.losses import (GAN_KINDS, RECON_LOSSES, REDUCTIONS, check_beta, check_real_label, gan_d_loss,
                          gan_g_loss, vae_loss)


class GANLoss(torch.nn.Module):
    """The GAN losses of one kind ("bce", "hinge", "lsgan" or "wgan") on discriminator logits.

        criterion = GANLoss("hinge")
        d_loss = criterion.d_loss(D(real), D(fake.detach()))
        g_loss = criterion.g_loss(D(fake))

    Calling the module itself is refused: it holds two losses, and the call
    nn.BCEWithLogitsLoss takes, criterion(output, labels), would read the labels as logits.
    """

    def __init__(self, kind: str = "bce", real_label: float = 1.0, impl: Optional[str] = None):
        super().__init__()
        _validate.choice(kind, "kind", GAN_KINDS)
        self.kind = kind
        self.real_label = check_real_label(kind, real_label)
        _impl.check(impl)
        self.impl = impl

    def d_loss(self, real_logits: torch.Tensor, fake_logits: torch.Tensor) -> torch.Tensor:
        return gan_d_loss(real_logits, fake_logits, self.kind, real_label=self.real_label, impl=self.impl)

    def g_loss(self, fake_logits: torch.Tensor) -> torch.Tensor:
        return gan_g_loss(fake_logits, self.kind, impl=self.impl)

    def forward(self, *args, **kwargs):
        raise TypeError("GANLoss holds two losses: call criterion.d_loss(real_logits, fake_logits) or "
                        "criterion.g_loss(fake_logits). Both take the discriminator's logits; there are no labels "
                        "to pass, as there are to nn.BCEWithLogitsLoss")

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, real_label={self.real_label}, impl={self.impl!r}"


class VAELoss(torch.nn.Module):
    """The negative ELBO: forward(recon, target, mu, logvar) -> (loss, recon_term, kl_term),
    the last two detached, for logging (see aigc_fast.vae_loss).

        loss, recon, kl = VAELoss("bce", beta=1.0)(decoder(z), x, mu, logvar)
    """

    def __init__(self, recon_loss: str = "bce", beta: Union[float, torch.Tensor] = 1.0, reduction: str = "mean",
                 impl: Optional[str] = None):
        super().__init__()
        _validate.choice(recon_loss, "recon_loss", RECON_LOSSES)
        _validate.choice(reduction, "reduction", REDUCTIONS)
        self.recon_loss = recon_loss
        self.beta = check_beta(beta)  # a tensor stays that tensor: a warm-up may write into it
        self.reduction = reduction
        _impl.check(impl)
        self.impl = impl

    def forward(self, recon: torch.Tensor, target: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor):
        return vae_loss(
            recon, target, mu, logvar, recon_loss=self.recon_loss, beta=self.beta, reduction=self.reduction, impl=self.impl
        )

    def extra_repr(self) -> str:
        return f"recon_loss={self.recon_loss!r}, beta={self.beta}, reduction={self.reduction!r}, impl={self.impl!r}"
