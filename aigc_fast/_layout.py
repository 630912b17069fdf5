"""The layouts of ops whose kernels walk tensors in memory order: the Python mirror of
csrc/layout.h, for the fake kernels torch.compile traces (their strides must match)."""

from __future__ import annotations

from typing import Optional

import torch

_FORMATS = (torch.contiguous_format, torch.channels_last, torch.channels_last_3d)


def dense_format(t: torch.Tensor) -> Optional[torch.memory_format]:
    return next((f for f in _FORMATS if t.is_contiguous(memory_format=f)), None)


def in_memory_order(t: torch.Tensor) -> torch.Tensor:
    return t if dense_format(t) is not None else t.contiguous()


def empty_in_format_of(t: torch.Tensor) -> torch.Tensor:
    """An elementwise op's output for t (in memory order): the strides of t's dense format,
    contiguous first, as ATen's unary ops give them where t's are ambiguous (layout.h)."""
    return torch.empty(t.shape, dtype=t.dtype, device=t.device,
                       memory_format=dense_format(t) or torch.contiguous_format)


def in_order_of(t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=dense_format(ref) or torch.contiguous_format)
