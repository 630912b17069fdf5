"""Choosing between the fused kernels and the pure-PyTorch reference.

Per call: `impl="fused" | "reference"`. Globally: `set_impl(...)` or, for a block of code,
`with use_impl(...)`. The default, None, means fused wherever the kernels are available
(compiled in and loaded, and built for the tensor's device), else the reference.
Under torch.func's transforms and forward-mode AD the default is the reference (neither can
transform the fused ops' C++ autograd), and so it is under torch.onnx.export (ONNX has no
aigc_fast operators: the exported graph is the reference's plain ops). Asking for "fused"
where it is unavailable raises, rather than silently running something else. The global
choice is a plain module attribute, so torch.compile guards on it; it is one for the whole
process (use_impl in one thread is seen by the others, and blocks in two threads that
overlap can restore each other's choice), so code running ops from several threads passes
impl= per call.
"""

from __future__ import annotations

import contextlib
import functools
import re
import sys
from typing import Callable, Iterator, List, Optional, Tuple

import torch
from torch.autograd import forward_ad

from . import _extension, _validate

IMPLS = ("fused", "reference")
_default: Optional[str] = None


def check(impl: Optional[str]) -> None:
    """Refuses an impl= value other than "fused", "reference" or None."""
    _validate.choice(impl, "impl", IMPLS + (None,))


def set_impl(impl: Optional[str]) -> None:
    """Sets the implementation every op uses when a call does not pass `impl=`."""
    global _default
    check(impl)
    _default = impl


def get_impl() -> Optional[str]:
    """The global choice: "fused", "reference", or None (fused where available)."""
    return _default


@contextlib.contextmanager
def use_impl(impl: Optional[str]) -> Iterator[None]:
    """`with aigc_fast.use_impl("reference"): ...` runs the block with that choice."""
    global _default
    check(impl)
    previous, _default = _default, impl
    try:
        yield
    finally:
        _default = previous


def built_cuda_archs(arch_list: Optional[str]) -> List[Tuple[int, int, str]]:
    """(major, minor, kind) of each entry of a TORCH_CUDA_ARCH_LIST such as
    "8.0;9.0+PTX;9.0a": kind "ptx" (runs on X.Y and newer), "exact" (an arch-specific "a"
    build, PTX or not: X.Y only) or "sm" (X.Y' with Y' >= Y); [] when any entry is not of that form
    (named archs; "visible GPUs", as builds before 2026-11-30 recorded)."""
    entries = [e for e in re.split(r"[;\s]+", arch_list or "") if e]
    parsed = [re.fullmatch(r"(\d+)\.(\d+)([a-z]?)(\+PTX)?", e) for e in entries]
    if not entries or not all(parsed):
        return []
    return [(int(m.group(1)), int(m.group(2)), "exact" if m.group(3) == "a" else "ptx" if m.group(4) else "sm")
            for m in parsed]


def _cuda_arch_reason(device: torch.device) -> Optional[str]:
    """Why the CUDA kernels cannot run on this GPU, if the build's arch list says so: a
    binary for sm_XY runs on compute capability X.Y' with Y' >= Y, PTX for X.Y on any
    X.Y or newer. Without this the default build of a machine with no GPU (8.0;9.0+PTX)
    would fail at launch on a Turing or Volta GPU ("no kernel image") instead of falling
    back to the reference. A list it cannot read means nothing to check. Not checked while
    torch.compile traces (where it would break the graph)."""
    arch_list = _extension.BUILD_INFO.get("cuda_archs")
    if not arch_list or torch.compiler.is_compiling():
        return None
    return _arch_mismatch(arch_list, tuple(torch.cuda.get_device_capability(device)))


@functools.lru_cache(maxsize=None)
def _arch_mismatch(arch_list: str, capability: Tuple[int, int]) -> Optional[str]:
    """_cuda_arch_reason's verdict, once per (arch list, GPU): every op call asks it."""
    major, minor = capability
    archs = built_cuda_archs(arch_list)
    runs = {"sm": lambda a, b: a == major and b <= minor, "exact": lambda a, b: (a, b) == capability,
            "ptx": lambda a, b: (a, b) <= capability}
    if not archs or any(runs[kind](a, b) for a, b, kind in archs):
        return None
    return (f"aigc_fast's CUDA kernels were built for {arch_list}, which cannot run on this GPU (compute "
            f"capability {major}.{minor}): reinstall with TORCH_CUDA_ARCH_LIST={major}.{minor}, with an nvcc that "
            "still builds for it (CUDA 13's starts at 7.5)")


def _under_torch_func() -> bool:
    """Whether a torch.func transform (grad, vjp, jacrev, vmap, ...) is running. The fused
    ops' autograd is a C++ torch::autograd::Function, which functorch cannot transform;
    the reference, plain ATen ops, it can. (Dynamo answers the question while it traces,
    a compiled torch.func.grad included, without breaking the graph.)"""
    return torch._C._are_functorch_transforms_active()


def _under_forward_ad() -> bool:
    """Whether a forward-mode AD level is open (torch.autograd.forward_ad.dual_level): the
    fused ops' C++ autograd has no jvp rule, and the reference's ATen ops do."""
    return forward_ad._current_level >= 0


_onnx_flags: Optional[Callable[[], bool]] = None


def _under_onnx_export() -> bool:
    """Whether torch.onnx.export is running (ONNX has no aigc_fast operators). The answer of
    torch.onnx.is_in_onnx_export(), read from the two flags it reads: it imports both modules
    on every call, 2 us, more than the rest of an op's dispatch. No export runs before
    torch.onnx is imported (and asking would import it, 28 ms). While dynamo traces, its
    constant answer (False), with no graph break."""
    global _onnx_flags
    if torch.compiler.is_compiling():
        return torch.onnx.is_in_onnx_export()
    if _onnx_flags is None:
        if "torch.onnx" not in sys.modules:
            return False
        try:
            from torch.onnx._internal.exporter import _flags
            from torch.onnx._internal.torchscript_exporter._globals import GLOBALS
            _onnx_flags = lambda: GLOBALS.in_onnx_export or _flags._is_onnx_exporting  # noqa: E731
        except ImportError:  # another torch's layout: the public question, slower
            _onnx_flags = torch.onnx.is_in_onnx_export
    return _onnx_flags()


def fused_unavailable_reason(device: torch.device) -> Optional[str]:
    """None when the fused kernels can run on `device`, else why not."""
    if not _extension.LOADED:
        return _extension.REASON
    if _under_torch_func():
        return "torch.func transforms (grad, vjp, jacrev, vmap) cannot run the fused ops' C++ autograd"
    if _under_forward_ad():
        return "forward-mode AD (torch.autograd.forward_ad) cannot run the fused ops' C++ autograd, which has no jvp"
    if _under_onnx_export():
        return "ONNX has no aigc_fast operators, so torch.onnx.export traces the reference ops"
    if device.type == "cuda" and "cuda" in _extension.compiled_backends():
        return _cuda_arch_reason(device)
    if device.type == "meta" or device.type in _extension.compiled_backends():
        return None
    if device.type == "cuda":
        return "aigc_fast was built without CUDA kernels (see aigc_fast.info())"
    return f"aigc_fast has no kernels for device type {device.type!r}"


def use_fused(impl: Optional[str], op: str, device: torch.device) -> bool:
    """Resolves a call's `impl` argument against the global choice and availability."""
    check(impl)
    chosen = impl if impl is not None else _default
    if chosen == "reference":
        return False
    reason = fused_unavailable_reason(device)
    if chosen == "fused" and reason is not None:
        raise RuntimeError(f"aigc_fast.{op}: impl='fused' was requested on {device}, but {reason}")
    return reason is None
