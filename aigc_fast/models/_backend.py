"""The one switch between the fused ops and plain PyTorch for the models."""

from __future__ import annotations

from typing import Optional

from torch import nn

from .._validate import choice
from ..nn import FusedSequential

BACKENDS = ("fused", "reference")


def check(backend: str) -> None:
    choice(backend, "backend", BACKENDS)


def sequential(backend: str, *modules: nn.Module) -> nn.Sequential:
    """The same children as a FusedSequential (fused) or a plain nn.Sequential (reference):
    identical parameters and state_dict keys either way."""
    check(backend)
    return FusedSequential(*modules) if backend == "fused" else nn.Sequential(*modules)


def impl(backend: str) -> Optional[str]:
    """The `impl=` the fused functional ops get: None (fused where available) or "reference"."""
    check(backend)
    return None if backend == "fused" else "reference"
