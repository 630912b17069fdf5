"""Functional API: each op runs its fused kernel or its reference (see aigc_fast._impl)."""

from .bias_act import bias_act
from .bn_act import bn_act
from .losses import gan_d_loss, gan_g_loss, vae_loss
from .reparameterize import reparameterize

# In the order aigc_fast.info() lists them.
__all__ = ["reparameterize", "gan_d_loss", "gan_g_loss", "vae_loss", "bias_act", "bn_act"]
