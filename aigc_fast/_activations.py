"""The activation table of the conv blocks: one entry per activation, shared by the
reference ops and the argument checks. The kernels' side of the same table is
csrc/include/aigc_fast/activations.h (same names; each derivative read from the output y,
so a block saves only its output for backward)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from . import _validate

# name: the activation of the pre-activation v (autograd differentiates it for the reference)
ACTIVATIONS = {
    "identity": lambda v, slope: v,
    "relu": lambda v, slope: F.relu(v),
    "leaky_relu": lambda v, slope: F.leaky_relu(v, slope),
    "tanh": lambda v, slope: torch.tanh(v),
    "sigmoid": lambda v, slope: torch.sigmoid(v),
}


def check(act: str, negative_slope: float) -> float:
    """Refuses an unknown act or a bad slope; returns the slope as a float."""
    _validate.choice(act, "act", tuple(ACTIVATIONS))
    negative_slope = _validate.number(negative_slope, "negative_slope")  # (passed to the kernels for any act)
    if act == "leaky_relu" and negative_slope < 0:
        raise ValueError(
            f"negative_slope must be >= 0 (the backward reads the sign of the input from the output), got {negative_slope}"
        )
    if act == "leaky_relu" and negative_slope > torch.finfo(torch.float32).max:
        raise ValueError(f"negative_slope must fit in float32, where the kernels compute, got {negative_slope}")
    return negative_slope


def apply(act: str, v: torch.Tensor, negative_slope: float = 0.2) -> torch.Tensor:
    return ACTIVATIONS[act](v, negative_slope)


# The losses warn when their logits come from a sigmoid (ops/losses.py), which they see as
# a SigmoidBackward0 node in the autograd graph. A fused op ending in a sigmoid (a converted
# D's conv + Sigmoid) records a node of its own, so it marks that node.
SIGMOID_MARK = "aigc_fast.ends_in_sigmoid"


def mark_sigmoid(y: torch.Tensor, act: str) -> torch.Tensor:
    """Marks y's autograd node as a sigmoid's when act is one; returns y."""
    if act == "sigmoid" and not torch.compiler.is_compiling() and y.grad_fn is not None:
        y.grad_fn.metadata[SIGMOID_MARK] = True
    return y
