from __future__ import annotations

from typing import Optional

import torch

from .. import _activations


def bias_act(x: torch.Tensor, bias: Optional[torch.Tensor] = None, act: str = "relu", *,
             negative_slope: float = 0.2, dim: int = 1) -> torch.Tensor:
    """act(x + bias), bias broadcast along `dim`, in x's dtype (as eager PyTorch computes it)."""
    if bias is None and act == "identity":
        return x.clone()  # a new tensor, as the fused op returns: never x itself
    v = x
    if bias is not None:
        shape = [1] * x.dim()
        shape[dim] = -1
        v = x + bias.to(x.dtype).reshape(shape)
    return _activations.apply(act, v, negative_slope)
