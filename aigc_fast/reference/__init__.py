"""Pure-PyTorch twins of every fused op: the oracle tests compare against, the baseline
benchmarks race, and the fallback when the compiled kernels are unavailable. Written for
clarity, never for speed."""

from .reparameterize import reparameterize

__all__ = ["reparameterize"]
