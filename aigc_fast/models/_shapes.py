"""The image sizes the convolutional models build for, and the checks of what they are
given (shared by the DCGAN and the VAEs)."""

from __future__ import annotations

import math
from typing import Tuple

import torch

from .._validate import is_count

SIZES = (16, 32, 64, 128, 28)


def geometry(image_size: int) -> Tuple[int, int]:
    """(stride-2 steps, side of the smallest map): the models go between a 4x4 map (7x7 for
    28) and the image in stride-2 (up or down) steps."""
    if image_size not in SIZES:
        raise ValueError(f"image_size must be a power of two from 16 to 128, or 28, got {image_size}")
    return (2, 7) if image_size == 28 else (int(math.log2(image_size)) - 2, 4)


def check_images(images: torch.Tensor, channels: int, image_size: int, model: str) -> None:
    """The models' convolutions would take other sizes too and return the wrong number of
    outputs (a 28x28 discriminator gives 4 logits per 32x32 image): refuse them instead."""
    if images.dim() != 4 or tuple(images.shape[1:]) != (channels, image_size, image_size):
        raise ValueError(f"{model} takes images [N, {channels}, {image_size}, {image_size}], "
                         f"got shape {list(images.shape)}")
    check_float(images, "images", model)


def check_float(t: torch.Tensor, name: str, model: str) -> None:
    """(Else the first layer's error names a scalar type, not the argument.)"""
    if not t.is_floating_point():
        raise TypeError(f"{model} takes floating-point {name} (uint8 images: aigc_fast.data.to_model_range), "
                        f"got {t.dtype}")


def check_sizes(model: str, **sizes: int) -> None:
    for name, value in sizes.items():
        if not is_count(value, 1):
            raise ValueError(f"{model}: {name} must be an integer >= 1, got {value!r}")
