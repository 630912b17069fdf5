"""Python-side argument checks shared by the fused and reference paths, so both give the
same clear error (the C++ ops check again, for callers that use torch.ops directly)."""

from __future__ import annotations

import math
import numbers

import numpy
import torch

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def math_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """The dtype the kernels compute in: float64 if any input is float64, else float32."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def float_tensor(t, name: str) -> None:
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")


def choice(value, name: str, allowed) -> None:
    """Refuses a value outside `allowed` (a string argument's options), naming them all."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")


def is_count(value, least: int) -> bool:
    """Whether value is an integer >= least: a count or size (a bool, an int to Python, is
    not one; neither is a float, even a whole one)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def number(value, name: str):
    """value as a float: a finite real number (a Python or NumPy int or float, or a
    one-element real tensor; not a bool, a string or None), so a NaN or a typo is refused by
    name rather than carried into the kernels or turned into NaN outputs. A symbolic float
    (torch.compile traces a Python float argument as one once it changes) is not checked
    for finiteness while compiling: it has no value to check, and dynamo cannot trace
    math.isfinite of it (nor tell it from a constant here). The C++ ops check it when the
    graph runs."""
    if isinstance(value, (torch.SymFloat, torch.SymInt)):
        return value
    if isinstance(value, torch.Tensor) and value.numel() == 1 and (value.dtype.is_floating_point or not (
            value.dtype.is_complex or value.dtype == torch.bool)):
        if value.requires_grad:
            raise TypeError(f"{name} is a constant (a number, or a tensor without grad): its gradient is not computed")
        if value.is_meta:
            raise TypeError(f"{name} must have a value, got a meta tensor")
        value = value.item()
    if isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a number or a one-element real tensor, got a {value.dtype} tensor of "
                        f"shape {list(value.shape)}")
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}")
    try:
        value = float(value)
    except OverflowError:  # an int past float's range
        raise ValueError(f"{name} must be finite, got {value}") from None
    if not torch.compiler.is_compiling() and not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def flag(value, name: str) -> bool:
    """value as a bool: True or False (also NumPy's, and the ints 1 and 0), not a string or None."""
    if isinstance(value, (bool, numpy.bool_)) or (isinstance(value, numbers.Integral) and value in (0, 1)):
        return bool(value)
    raise TypeError(f"{name} must be True or False, got {value!r}")


def like(t, name: str, ref: torch.Tensor, ref_name: str) -> None:
    float_tensor(t, name)
    same_device(t, name, ref, ref_name)
    if t.dtype != ref.dtype:
        raise TypeError(f"{name} must have the same dtype as {ref_name}, got {t.dtype} and {ref.dtype}")
    same_shape(t, name, ref, ref_name)


def same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name} must be on the same device as {ref_name}, got {t.device} and {ref.device}")


def same_shape(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.shape != ref.shape:
        raise ValueError(
            f"{name} must have the same shape as {ref_name}, got {list(t.shape)} and {list(ref.shape)}"
        )


def fake_inputs_on(ref_name: str, ref: torch.Tensor, **others) -> None:
    """For the fake kernels: one argument on the meta device sends a whole call there, with
    real tensors beside it, and the fake would hand back uninitialised outputs. Raise the
    error the real op gives instead."""
    for name, t in others.items():
        if isinstance(t, torch.Tensor):
            same_device(t, name, ref, ref_name)
