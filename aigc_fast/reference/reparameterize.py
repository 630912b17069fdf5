from __future__ import annotations

from typing import Optional

import torch

from .. import _validate


def kl_per_sample(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, exp(logvar)) || N(0, 1)) summed over all dims but the first, in float32
    (float64 for float64 inputs), as the fused op returns it."""
    math_dtype = _validate.math_dtype(mu)
    mu, logvar = mu.to(math_dtype), logvar.to(math_dtype)
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar)
    return kl if kl.dim() == 1 else kl.flatten(1).sum(dim=1)  # (flatten: reshape(B, -1) fails at B = 0)


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    eps: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    return_kl: bool = False,
):
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, 1) from torch.randn (kept for backward
    by autograd, as eager PyTorch does)."""
    if eps is None:
        # generator=None spelled out makes torch.compile fail on a dynamic batch size (torch
        # 2.14: "SymIntArrayRef expected to contain only concrete integers"); left out, it works.
        given = {} if generator is None else {"generator": generator}
        eps = torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, **given)
    z = mu + torch.exp(0.5 * logvar) * eps
    if return_kl:
        return z, kl_per_sample(mu, logvar)
    return z
