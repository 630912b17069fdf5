"""torch.nn modules built on the fused ops."""

from .reparameterize import Reparameterize

__all__ = ["Reparameterize"]
