"""torch.nn modules built on the fused ops."""

from .blocks import ConvBlock, ConvTransposeBlock, FusedSequential, convert, fold
from .losses import GANLoss, VAELoss
from .reparameterize import Reparameterize

__all__ = ["ConvBlock", "ConvTransposeBlock", "FusedSequential", "GANLoss", "Reparameterize", "VAELoss", "convert",
           "fold"]
