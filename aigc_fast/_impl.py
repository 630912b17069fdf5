"""Choosing between the fused kernels and the pure-PyTorch reference.

Per call: `impl="fused" | "reference"`. Globally: `set_impl(...)` or, for a block of code,
`with use_impl(...)`. The default, None, means fused wherever the kernels are available
(compiled in and loaded, and built for the tensor's device), else the reference.
Asking for "fused" where it is unavailable raises, rather than silently running something
else. The global choice is a plain module attribute, so torch.compile guards on it; it
is one for the whole process (use_impl in one thread is seen by the others, and blocks
in two threads that overlap can restore each other's choice), so code running ops from
several threads passes impl= per call.
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Optional

import torch

from . import _extension

IMPLS = ("fused", "reference")
_default: Optional[str] = None


def _check(impl: Optional[str]) -> None:
    if impl is not None and impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS} or None, got {impl!r}")


def set_impl(impl: Optional[str]) -> None:
    """Sets the implementation every op uses when a call does not pass `impl=`."""
    global _default
    _check(impl)
    _default = impl


def get_impl() -> Optional[str]:
    """The global choice: "fused", "reference", or None (fused where available)."""
    return _default


@contextlib.contextmanager
def use_impl(impl: Optional[str]) -> Iterator[None]:
    """`with aigc_fast.use_impl("reference"): ...` runs the block with that choice."""
    global _default
    _check(impl)
    previous, _default = _default, impl
    try:
        yield
    finally:
        _default = previous


def fused_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the fused kernels can run on `device`, else why not."""
    if not _extension.LOADED:
        return _extension.REASON
    if device.type == "meta" or device.type in _extension.compiled_backends():
        return None
    if device.type == "cuda":
        return "aigc_fast was built without CUDA kernels (see aigc_fast.info())"
    return f"aigc_fast has no kernels for device type {device.type!r}"


def use_fused(impl: Optional[str], op: str, device: torch.device) -> bool:
    """Resolves a call's `impl` argument against the global choice and availability."""
    _check(impl)
    chosen = impl if impl is not None else _default
    if chosen == "reference":
        return False
    reason = fused_unavailable_reason(device)
    if chosen == "fused" and reason is not None:
        raise RuntimeError(f"aigc_fast.{op}: impl='fused' was requested on {device}, but {reason}")
    return reason is None
