from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F

from .. import _activations


def bn_act(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    *,
    training: bool,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
    negative_slope: float = 0.2,
    num_batches_tracked: Optional[torch.Tensor] = None,
    memory_efficient: bool = False,
) -> torch.Tensor:
    """act(batch_norm(x)) exactly as nn.BatchNorm2d followed by the activation module runs it,
    running statistics and num_batches_tracked included (memory_efficient changes only what
    the fused op keeps for backward, so it is ignored here)."""
    factor = 0.0 if momentum is None else momentum
    if training and num_batches_tracked is not None:
        num_batches_tracked.add_(1)
        if momentum is None:
            factor = 1.0 / float(num_batches_tracked)
    use_batch_stats = training or running_mean is None
    # ATen's batch_norm takes parameters and statistics in x's dtype (or float32 beside a 16-bit
    # x); the fused op takes any float dtype, so the others are converted (the statistics
    # updated in place through their copies), as the kernels read them: in the math type.
    mean, var = _in_dtype_for(x, running_mean), _in_dtype_for(x, running_var)
    v = F.batch_norm(x, mean, var, _in_dtype_for(x, weight), _in_dtype_for(x, bias), use_batch_stats, factor, eps)
    if use_batch_stats:  # (the update, rounded to x's dtype on the way: a twin to rounding, not bit for bit)
        for stat, copy in ((running_mean, mean), (running_var, var)):
            if stat is not None and copy is not stat:
                stat.copy_(copy)
    return _activations.apply(act, v, negative_slope)


def _in_dtype_for(x: torch.Tensor, t: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    if t is None or t.dtype == x.dtype or (t.dtype == torch.float32 and x.dtype in (torch.float16, torch.bfloat16)):
        return t
    return t.to(torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype)
