"""The activation table of the conv blocks: one entry per activation, shared by the
reference ops and the argument checks. The kernels' side of the same table is
csrc/include/aigc_fast/activations.h (same names; each derivative read from the output y,
so a block saves only its output for backward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate

# name: (forward on the pre-activation v, derivative from the output y)
ACTIVATIONS = {
    "identity": (lambda v, slope: v, lambda y, slope: torch.ones_like(y)),
    "relu": (lambda v, slope: F.relu(v), lambda y, slope: (y > 0).to(y.dtype)),
    "leaky_relu": (lambda v, slope: F.leaky_relu(v, slope), lambda y, slope: torch.where(y > 0, 1.0, slope).to(y.dtype)),
    "tanh": (lambda v, slope: torch.tanh(v), lambda y, slope: 1 - y * y),
    "sigmoid": (lambda v, slope: torch.sigmoid(v), lambda y, slope: y * (1 - y)),
}


def check(act: str, negative_slope: float) -> None:
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {', '.join(map(repr, ACTIVATIONS))}, got {act!r}")
    negative_slope = _validate.number(negative_slope, "negative_slope")  # (passed to the kernels for any act)
    if act == "leaky_relu" and negative_slope < 0:
        raise ValueError(
            f"negative_slope must be >= 0 (the backward reads the sign of the input from the output), got {negative_slope}"
        )


def apply(act: str, v: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    return ACTIVATIONS[act][0](v, negative_slope)
