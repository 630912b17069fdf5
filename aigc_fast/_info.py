"""aigc_fast.info(): what is installed, what was compiled, and what each op will run."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Optional

import torch

from . import _extension, _impl, ops
from ._version import __version__


def _devices() -> list:
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    return devices


def cpu_info(field: str) -> Optional[str]:
    """The first value of `field` ("model name", "flags") in /proc/cpuinfo; None where
    there is no such file or field (not Linux, not x86)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return None
    return next((line.split(":", 1)[1].strip() for line in lines if line.split(":", 1)[0].strip() == field), None)


def cpu_vector_isa() -> Optional[str]:
    """This x86 CPU's widest vector ISA and its native bf16 ("AVX-512, AVX512-BF16"), which
    set what the CPU benchmarks can reach: two machines may share a model name ("AMD EPYC")
    but not these. None where /proc/cpuinfo has no flags (not Linux, not x86)."""
    flags = set((cpu_info("flags") or "").split())
    if not flags:
        return None
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else "SSE"
    return ", ".join([widest] + [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))
                                 if flag in flags])


def cpu_has_native_bf16() -> bool:
    """Whether this x86 CPU computes in bfloat16 natively (AMX-BF16 or AVX512-BF16), where
    bf16 autocast speeds convolutions up; elsewhere oneDNN emulates bf16, slower than fp32
    (measured on an AVX2 EPYC: a conv-VAE step 10x slower)."""
    return bool({"amx_bf16", "avx512_bf16"} & set((cpu_info("flags") or "").split()))


def _implementation_on(device: torch.device) -> str:
    """What an op called on `device` runs: "fused", "reference (why)", or the error a call raises."""
    choice, reason = _impl.get_impl(), _impl.fused_unavailable_reason(device)
    if choice == "reference":
        return "reference (chosen with aigc_fast.set_impl / use_impl)"
    if reason is None:
        return "fused"
    if choice == "fused":  # forced where it cannot run: every call raises
        return f"error: fused is forced (aigc_fast.set_impl / use_impl) but {reason}"
    return f"reference ({reason})"


def collect() -> dict:
    runtime = _extension.runtime_info()
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    # One choice covers every op: the implementation is chosen per device, not per op.
    chosen = {device.type: _implementation_on(device) for device in _devices()}
    per_op = {op: dict(chosen) for op in ops.__all__}
    return {
        "aigc_fast": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "extension": "loaded" if _extension.LOADED else f"not loaded: {_extension.REASON}",
        "built_against_torch": _extension.BUILD_INFO.get("torch"),
        "compiled_backends": _extension.compiled_backends(),
        "cpu_kernels": runtime.get("cpu_kernels"),
        "cpu_philox_lanes": runtime.get("philox"),
        "cpu_kernel_threading": runtime.get("cpu_threading"),
        "cuda_archs": _extension.BUILD_INFO.get("cuda_archs"),
        "cpu_threads": torch.get_num_threads(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "gpus_visible": gpus,
        "impl_default": _impl.get_impl() or "fused where available",
        "ops": per_op,
    }


def format_report(facts: dict) -> str:
    lines = []
    for key, value in facts.items():
        if key == "ops":
            continue
        if isinstance(value, list):
            value = ", ".join(value) if value else "none"
        lines.append(f"{key:20s} {value}")
    lines.append("ops:")
    for op, per_device in facts["ops"].items():
        for device, how in per_device.items():
            lines.append(f"  {op} [{device}]: {how}")
    return "\n".join(lines)


def info(print_report: bool = True) -> dict:
    """Prints (and returns as a dict) the package, torch and CUDA versions, the compiled
    backends and CUDA archs, whether a GPU is visible, and which implementation each op
    will use on each device."""
    facts = collect()
    if print_report:
        print(format_report(facts))
    return facts
