"""Models built from the fused blocks: DCGAN generator and discriminator, a convolutional
VAE and the classic MLP VAE. `backend="fused"` (default) runs the fused ops,
`backend="reference"` the same modules as plain PyTorch; both have the same parameters
and state_dict keys, so a checkpoint trained with one loads into the other."""

from ._backend import BACKENDS
from .dcgan import DCGANDiscriminator, DCGANGenerator, dcgan_init_
from .vae import ConvVAE, MLPVAE

__all__ = ["BACKENDS", "ConvVAE", "DCGANDiscriminator", "DCGANGenerator", "MLPVAE", "dcgan_init_"]
