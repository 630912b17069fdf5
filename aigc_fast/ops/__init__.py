"""Functional API: each op runs its fused kernel or its reference (see aigc_fast._impl)."""

from .bias_act import bias_act
from .bn_act import bn_act
from .losses import gan_d_loss, gan_g_loss, vae_loss
from .reparameterize import reparameterize

__all__ = ["bias_act", "bn_act", "gan_d_loss", "gan_g_loss", "reparameterize", "vae_loss"]
