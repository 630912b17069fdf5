"""aigc_fast.bias_act: bias + activation in one pass, for conv blocks without BatchNorm
(a generator's final conv-transpose + tanh, a discriminator's first conv + leaky ReLU)."""

from __future__ import annotations

import numbers
from typing import Optional

import torch

from .. import _activations, _extension, _impl, _layout, _validate
from .. import reference


def bias_act(
    x: torch.Tensor,
    bias: Optional[torch.Tensor] = None,
    act: str = "relu",
    *,
    negative_slope: float = 0.2,
    dim: int = 1,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """y = act(x + bias), bias of shape [x.shape[dim]] broadcast along `dim`.

    Without a bias `dim` is not used (nor range-checked), so y = act(x) works for any x, a 0-d
    one included.

    act: "identity", "relu", "leaky_relu" (negative_slope >= 0), "tanh" or "sigmoid".
    x: any float dtype (math in float32, float64 for float64), any shape; contiguous and
    channels_last inputs keep their memory format in y. bias: optional, any float dtype
    (under autocast a float32 bias next to bfloat16 activations is fine). The backward
    reads every derivative from y, so autograd keeps only y, which the next layer keeps
    anyway: no pre-activation tensor is stored (identity keeps nothing).
    """
    negative_slope, dim = _check(x, bias, act, negative_slope, dim)
    if not _impl.use_fused(impl, "bias_act", x.device):
        return reference.bias_act(x, bias, act, negative_slope=negative_slope, dim=dim)
    return _activations.mark_sigmoid(torch.ops.aigc_fast.bias_act(x, bias, dim, act, float(negative_slope)), act)


def _check(x, bias, act, negative_slope, dim):
    """Refuses bad arguments (for the public function and the fake kernel alike); returns
    negative_slope as a float and dim as a non-negative int."""
    _validate.float_tensor(x, "x")
    negative_slope = _activations.check(act, negative_slope)
    if isinstance(dim, bool) or not isinstance(dim, numbers.Integral):
        raise TypeError(f"dim must be an int, got {type(dim).__name__}")
    dim = int(dim)
    if bias is not None:
        _validate.float_tensor(bias, "bias")
        _validate.same_device(bias, "bias", x, "x")
        if not -x.dim() <= dim < x.dim():
            raise ValueError(f"dim must index a dimension of x ({x.dim()}-d), got {dim}")
        dim %= x.dim()  # a negative dim counts from the end, as in torch
        if bias.dim() != 1 or bias.shape[0] != x.shape[dim]:
            raise ValueError(f"bias must have shape [{x.shape[dim]}] (x.shape[{dim}]), got {list(bias.shape)}")
    return negative_slope, dim


def _fake_forward(x, bias, dim, act, negative_slope):
    _check(x, bias, act, negative_slope, dim)
    return _layout.empty_in_format_of(_layout.in_memory_order(x))


def _fake_backward(grad_y, y, dim, act, negative_slope, bias_dtype):
    _validate.fake_inputs_on("y", y, grad_y=grad_y)
    grad_bias = y.new_empty((0,)) if bias_dtype is None else y.new_empty((y.shape[dim],), dtype=bias_dtype)
    return torch.empty_like(_layout.in_memory_order(y)), grad_bias


def _register() -> None:
    # Autograd is registered in C++ (csrc/bias_act_autograd.cpp); torch.compile needs the shapes.
    torch.library.register_fake("aigc_fast::bias_act")(_fake_forward)
    torch.library.register_fake("aigc_fast::bias_act_backward")(_fake_backward)


if _extension.LOADED:
    _register()
