"""DCGAN (Radford et al., 2016) as the PyTorch tutorial builds it: a generator of
ConvTranspose2d -> BatchNorm2d -> ReLU blocks ending in ConvTranspose2d -> Tanh, and a
discriminator of Conv2d -> BatchNorm2d -> LeakyReLU(0.2) blocks (none on the first) ending
in a conv to one logit. Bias-free convolutions, N(0, 0.02) initialization. Image sizes: any
power of two from 16 to 128, and 28 (MNIST)."""

from __future__ import annotations

import torch
from torch import nn

from . import _backend
from ._shapes import check_float, check_images, check_sizes, geometry


def dcgan_init_(module: nn.Module) -> nn.Module:
    """DCGAN's initialization, in place: conv weights ~ N(0, 0.02), BatchNorm weights ~
    N(1, 0.02) and biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)
    return module


class DCGANGenerator(nn.Module):
    """z ([N, nz] or [N, nz, 1, 1]) -> images [N, channels, image_size, image_size] in [-1, 1].

    64x64: nz -> ngf*8 @4 -> ngf*4 @8 -> ngf*2 @16 -> ngf @32 -> channels @64 (the first
    block, from a 1x1 map, runs as one matrix multiply in the fused backend).
    28x28: nz -> ngf*4 @7 -> ngf*2 @14 -> channels @28.
    """

    def __init__(self, nz: int = 100, ngf: int = 64, channels: int = 3, image_size: int = 64,
                 backend: str = "fused"):
        super().__init__()
        check_sizes(type(self).__name__, nz=nz, ngf=ngf, channels=channels)
        steps, first_side = geometry(image_size)
        self.nz, self.channels, self.image_size, self.backend = nz, channels, image_size, backend
        # before each stride-2 step: the tutorial's ngf*8, ngf*4, ... ngf at 64x64
        widths = [ngf * 2 ** (steps - 1 - i) for i in range(steps)] if image_size != 28 else [ngf * 4, ngf * 2]
        layers = [nn.ConvTranspose2d(nz, widths[0], first_side, 1, 0, bias=False), nn.BatchNorm2d(widths[0]),
                  nn.ReLU(True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.ConvTranspose2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = _backend.sequential(backend, *layers)
        dcgan_init_(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        # The first block would take any spatial size and return larger images (a 2x2 z gives
        # 20x20 at 28), and its fused matrix multiply would name no argument: check here.
        if z.dim() not in (2, 4) or z.shape[1] != self.nz or (z.dim() == 4 and z.shape[2:] != (1, 1)):
            raise ValueError(f"{type(self).__name__} takes z [N, {self.nz}] or [N, {self.nz}, 1, 1], "
                             f"got shape {list(z.shape)}")
        check_float(z, "z", type(self).__name__)
        if z.dim() == 2:
            z = z[:, :, None, None]
        return self.main(z)


class DCGANDiscriminator(nn.Module):
    """Images [N, channels, image_size, image_size] -> logits [N] (use the losses of
    aigc_fast, which take logits).

    64x64: channels -> ndf @32 -> ndf*2 @16 -> ndf*4 @8 -> ndf*8 @4 -> 1 logit (LeakyReLU(0.2),
    BatchNorm on all but the first block). 28x28: channels -> ndf*2 @14 -> ndf*4 @7 -> 1.
    """

    def __init__(self, ndf: int = 64, channels: int = 3, image_size: int = 64, backend: str = "fused"):
        super().__init__()
        check_sizes(type(self).__name__, ndf=ndf, channels=channels)
        steps, last_side = geometry(image_size)
        self.channels, self.image_size, self.backend = channels, image_size, backend
        # the mirror of the generator: widths after each stride-2 step
        widths = [ndf * 2 ** i for i in range(steps)] if image_size != 28 else [ndf * 2, ndf * 4]
        layers = [nn.Conv2d(channels, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, inplace=True)]
        for w_in, w_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(w_in, w_out, 4, 2, 1, bias=False), nn.BatchNorm2d(w_out), nn.LeakyReLU(0.2, inplace=True)]
        layers += [nn.Conv2d(widths[-1], 1, last_side, 1, 0, bias=False)]
        self.main = _backend.sequential(backend, *layers)
        dcgan_init_(self)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        check_images(images, self.channels, self.image_size, type(self).__name__)
        return self.main(images).flatten()
