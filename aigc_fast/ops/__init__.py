"""Functional API: each op runs its fused kernel or its reference (see aigc_fast._impl)."""

from .reparameterize import reparameterize

__all__ = ["reparameterize"]
