"""Pure-PyTorch twins of every fused op: the oracle tests compare against, the baseline
benchmarks race, and the fallback when the compiled kernels are unavailable. Written for
clarity, never for speed."""

from .bias_act import bias_act
from .bn_act import bn_act
from .losses import gan_d_loss, gan_g_loss, vae_loss
from .reparameterize import reparameterize

__all__ = ["bias_act", "bn_act", "gan_d_loss", "gan_g_loss", "reparameterize", "vae_loss"]
