"""Loads the compiled kernels (aigc_fast._C) if they can be trusted, else explains why not.

A binary built against another torch, or by an older version of this package, can crash
or misbehave when loaded, so its recorded build facts (_build_info.json, written by
setup.py) are checked first. Any failure leaves `LOADED` False, the reason in `REASON`,
and one warning; every op then runs its pure-PyTorch reference.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import struct
import warnings

import torch

from ._version import __version__

# Every op the Python layer expects from the binary; a stale build lacks some.
EXPECTED_OPS = ("build_info", "reparameterize", "reparameterize_backward", "gan_d_loss", "gan_g_loss", "vae_loss",
                "bias_act", "bias_act_backward", "bn_act", "bn_act_backward")
DISABLE_ENV = "AIGC_FAST_NO_EXTENSION"


def _installed() -> tuple[bool, bool]:
    """(whether pip has aigc_fast installed, whether as an editable install)."""
    import importlib.metadata

    try:
        record = importlib.metadata.distribution("aigc_fast").read_text("direct_url.json")
    except importlib.metadata.PackageNotFoundError:
        return False, False
    try:
        return True, bool(json.loads(record or "{}").get("dir_info", {}).get("editable"))
    except (ValueError, AttributeError):
        return True, False


def _rebuild_hint() -> str:
    editable = _installed()[1]  # a plain reinstall would turn an editable install into a copy
    return ("rebuild it against the installed torch: pip install --no-build-isolation --force-reinstall "
            f"--no-deps {'-e ' if editable else ''}.  (from the aigc_fast source folder)")

LOADED = False
REASON = "not loaded yet"
BUILD_INFO: dict = {}


def _read_build_info() -> dict:
    path = os.path.join(os.path.dirname(__file__), "_build_info.json")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        info = json.load(f)
    if not isinstance(info, dict):  # (BUILD_INFO stays a dict, which aigc_fast.info() reads)
        raise ValueError(f"{path} holds a JSON {type(info).__name__}, not the object setup.py writes")
    if "torch" not in info:  # ({} read as a missing file before)
        raise ValueError(f"{path} does not name the torch the kernels were built against, as setup.py writes it")
    return info


def _disabled() -> bool:
    return os.environ.get(DISABLE_ENV, "") not in ("", "0")


def _elf_extent(path: str) -> int | None:
    """The end of the last byte a 64-bit ELF file's headers point at (the section header
    table and every segment), or None for another kind of file (the loader then says what
    is wrong with it). Stripping or patching a library keeps this consistent; cutting it
    short does not."""
    with open(path, "rb") as f:
        head = f.read(64)
        if len(head) < 64 or head[:4] != b"\x7fELF" or head[4] != 2:  # ELFCLASS64
            return None
        order = "<" if head[5] == 1 else ">"
        phoff, shoff = struct.unpack_from(order + "QQ", head, 32)
        phentsize, phnum, shentsize, shnum = struct.unpack_from(order + "HHHH", head, 54)
        end = max(shoff + shnum * shentsize, phoff + phnum * phentsize)
        f.seek(phoff)
        table = f.read(phnum * phentsize)
        for i in range(len(table) // phentsize if phentsize else 0):
            offset, = struct.unpack_from(order + "Q", table, i * phentsize + 8)
            filesz, = struct.unpack_from(order + "Q", table, i * phentsize + 32)
            end = max(end, offset + filesz)
    return end


def _in_source_folder() -> bool:
    return os.path.exists(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "setup.py"))


def _why_not_loadable(info: dict) -> str | None:
    if _disabled():
        return f"the compiled kernels are disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
    spec = importlib.util.find_spec("aigc_fast._C")
    if spec is None:
        installed, editable = _installed()
        if _in_source_folder() and installed and not editable:
            return (
                f"the compiled kernels (aigc_fast._C) are not in {os.path.dirname(__file__)}: this "
                "is the source folder, imported ahead of the installed package"
            )
        if _in_source_folder() and editable:  # the installed package is this folder: build it again
            return "the compiled kernels (aigc_fast._C) are not built in this editable install's source folder"
        if _in_source_folder():
            return "the compiled kernels (aigc_fast._C) are not built: this is the source folder, and aigc_fast is " \
                   "not installed"
        return "the compiled kernels (aigc_fast._C) are not installed (or were built for another Python)"
    if not info:
        return "aigc_fast._C has no _build_info.json beside it, so it cannot be checked"
    # A truncated binary can crash the dynamic loader itself (a bus error, no exception to
    # catch): check that it holds everything its headers point at before loading it.
    end, size = _elf_extent(spec.origin), os.path.getsize(spec.origin)
    if end is not None and end > size:
        return f"{os.path.basename(spec.origin)} is truncated or corrupt: {size} bytes, but its headers reach byte {end}"
    if info.get("torch") != torch.__version__:
        return f"aigc_fast._C was built against torch {info.get('torch')}, but torch {torch.__version__} is running"
    if info.get("package_version") != __version__:
        return (
            f"aigc_fast._C is stale: built by aigc_fast {info.get('package_version')}, "
            f"but this is aigc_fast {__version__}"
        )
    return None


def load() -> bool:
    """Loads _C once; returns whether the fused kernels are usable."""
    global LOADED, REASON, BUILD_INFO
    try:
        BUILD_INFO = _read_build_info()
        reason = _why_not_loadable(BUILD_INFO)
        if reason is None:
            importlib.import_module("aigc_fast._C")
            missing = [op for op in EXPECTED_OPS if not hasattr(torch.ops.aigc_fast, op)]
            if missing:
                reason = f"aigc_fast._C is stale: it lacks the ops {', '.join(missing)}"
    except Exception as exc:  # an ImportError, a bad JSON file, an undefined symbol...
        reason = f"aigc_fast._C failed to load ({type(exc).__name__}: {exc})"
    LOADED, REASON = reason is None, reason or "loaded"
    if not LOADED and not _disabled():  # asked for by the user: nothing to warn about
        if "imported ahead of the installed package" in REASON:
            fix = "run from another folder (or use pytest rather than python -m pytest)"
        elif "aigc_fast is not installed" in REASON:
            fix = "install it (README, Install): pip install --no-build-isolation ."
        else:
            fix = _rebuild_hint()
        warnings.warn(
            f"aigc_fast: {REASON}. Every op runs its pure-PyTorch reference instead "
            f"(correct, but not fused). To use the kernels, {fix}",
            RuntimeWarning,
            stacklevel=3,
        )
    _check_philox_cap()
    return LOADED


PHILOX_CAPS = ("portable", "avx2")


def _check_philox_cap() -> None:
    """AIGC_FAST_PHILOX caps the lanes the CPU draws noise in (tests prove every path draws
    the same bits); any other value is ignored by the kernels, so say so."""
    cap = os.environ.get("AIGC_FAST_PHILOX", "")
    if cap and cap not in PHILOX_CAPS:
        warnings.warn(f"aigc_fast: AIGC_FAST_PHILOX={cap!r} is not one of {', '.join(PHILOX_CAPS)}; ignored "
                      "(the CPU kernels use the widest Philox lanes the CPU has)", RuntimeWarning, stacklevel=3)


def compiled_backends() -> list[str]:
    """Device types the loaded binary has kernels for."""
    if not LOADED:
        return []
    return ["cpu", "cuda"] if BUILD_INFO.get("cuda") else ["cpu"]


def runtime_info() -> dict:
    """What the binary reports about itself (which CPU kernels it runs)."""
    if not LOADED:
        return {}
    pairs = (item.split("=", 1) for item in torch.ops.aigc_fast.build_info().split(";"))
    return dict(pairs)
