"""torch.nn modules built on the fused ops."""

from .losses import GANLoss, VAELoss
from .reparameterize import Reparameterize

__all__ = ["GANLoss", "Reparameterize", "VAELoss"]
