"""Image grids as PNG files (Pillow), for sample and reconstruction snapshots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Tuple, Union

import numpy as np
import torch


def to_uint8(images: torch.Tensor, value_range: Tuple[float, float] = (-1.0, 1.0)) -> torch.Tensor:
    """Images in value_range (clamped) as uint8 0-255 on the CPU, rounded to nearest."""
    images = images.detach().float().cpu().clamp(*value_range)
    return ((images - value_range[0]) / (value_range[1] - value_range[0]) * 255 + 0.5).to(torch.uint8)


def make_grid(images: torch.Tensor, nrow: int = 0, padding: int = 2, value_range: Tuple[float, float] = (-1.0, 1.0)) -> np.ndarray:
    """[N, C, H, W] images in value_range -> one uint8 [rows*(H+p)+p, cols*(W+p)+p, C] array."""
    pixels = to_uint8(images, value_range).permute(0, 2, 3, 1).numpy()
    n, h, w, c = pixels.shape
    cols = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    grid = np.zeros((rows * (h + padding) + padding, cols * (w + padding) + padding, c), dtype=np.uint8)
    for i in range(n):
        r, col = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + col * (w + padding)
        grid[top:top + h, left:left + w] = pixels[i]
    return grid


def save_grid(images: torch.Tensor, path: Union[str, Path], nrow: int = 0,
              value_range: Tuple[float, float] = (-1.0, 1.0)) -> Path:
    """Writes make_grid(images) as a PNG (needs Pillow: pip install Pillow)."""
    try:
        from PIL import Image
    except ImportError as exc:
        raise ModuleNotFoundError("saving image grids needs Pillow: pip install Pillow") from exc
    grid = make_grid(images, nrow, value_range=value_range)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return path
