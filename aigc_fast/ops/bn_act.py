"""aigc_fast.bn_act: BatchNorm + activation in one op, for the conv blocks of a DCGAN
(conv-transpose -> BatchNorm2d -> ReLU, conv -> BatchNorm2d -> LeakyReLU)."""

from __future__ import annotations

from typing import Optional, Tuple

import torch

from .. import _activations, _extension, _impl, _layout, _validate
from .. import reference

# Activations the memory-saving mode can invert (z = act^-1(y)).
INVERTIBLE = ("identity", "leaky_relu", "tanh")


def act_is_invertible(act: str, negative_slope: float) -> bool:
    """Whether the pre-activation can be recomputed from the output (the memory-saving mode)."""
    return act in INVERTIBLE and (act != "leaky_relu" or negative_slope > 0)


def memory_efficient_supported(act: str, negative_slope: float, dtype: torch.dtype) -> bool:
    """Whether bn_act's memory-saving mode can run: an invertible activation, and for tanh a
    float32/64 output (atanh of a 16-bit tanh output has too few bits left)."""
    return act_is_invertible(act, negative_slope) and (act != "tanh" or dtype in (torch.float32, torch.float64))


def _check(x, weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope,
           num_batches_tracked, memory_efficient) -> Tuple[Optional[float], float, float]:
    """Refuses bad arguments (for the public function and the fake kernel alike); returns
    momentum, eps and negative_slope as floats."""
    _validate.float_tensor(x, "x")
    if x.dim() < 2:
        raise ValueError(f"x must have a batch and a channel dimension ([N, C, ...]), got shape {list(x.shape)}")
    channels = x.shape[1]
    for name, t in (("weight", weight), ("bias", bias), ("running_mean", running_mean), ("running_var", running_var)):
        if t is None:
            continue
        _validate.float_tensor(t, name)
        _validate.same_device(t, name, x, "x")
        if t.dim() != 1 or t.shape[0] != channels:
            raise ValueError(
                f"{name} must have shape [{channels}] (one value per channel of x, x.shape[1]), got {list(t.shape)}"
            )
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must both be given or both be None")
    if num_batches_tracked is not None:
        if not isinstance(num_batches_tracked, torch.Tensor):
            raise TypeError(f"num_batches_tracked must be a torch.Tensor, got {type(num_batches_tracked).__name__}")
        _validate.same_device(num_batches_tracked, "num_batches_tracked", x, "x")
        # int64 only: a narrower counter wraps (uint8 at 255 to 0, and momentum=None then divides by it).
        if num_batches_tracked.dtype != torch.int64 or num_batches_tracked.numel() != 1:
            raise TypeError("num_batches_tracked must be a one-element int64 tensor (nn.BatchNorm's is a 0-d int64), "
                            f"got {num_batches_tracked.dtype} of shape {list(num_batches_tracked.shape)}")
    negative_slope = _activations.check(act, negative_slope)
    if momentum is not None:
        momentum = _validate.number(momentum, "momentum")
    eps = _validate.number(eps, "eps")
    batch_stats = training or running_mean is None
    if eps < 0 or (batch_stats and eps == 0):  # (ATen's batch_norm refuses eps = 0 with batch statistics too)
        raise ValueError(f"eps must be {'positive with batch statistics' if batch_stats else '>= 0'}, got {eps}")
    if batch_stats and x.numel() > 0 and x.numel() // channels == 1:  # (an empty batch passes)
        raise ValueError("Expected more than 1 value per channel when normalizing with the batch's statistics "
                         f"(training, or no running statistics), got input size {list(x.shape)}")
    if training and momentum is None and running_mean is not None and num_batches_tracked is None:
        raise ValueError("momentum=None (a cumulative average) needs num_batches_tracked")
    if memory_efficient:
        if not act_is_invertible(act, negative_slope):
            raise ValueError(
                "memory_efficient=True recomputes the pre-activation from the output, so it needs an invertible "
                f"activation ({', '.join(INVERTIBLE)}; leaky_relu with negative_slope > 0), got {act!r}"
            )
        if not memory_efficient_supported(act, negative_slope, x.dtype):
            raise ValueError(
                "memory_efficient=True with tanh needs a float32 or float64 output: atanh of a 16-bit tanh "
                "output has too few bits left to recover the pre-activation"
            )
    return momentum, eps, negative_slope


def bn_act(
    x: torch.Tensor,
    weight: Optional[torch.Tensor],
    bias: Optional[torch.Tensor],
    running_mean: Optional[torch.Tensor],
    running_var: Optional[torch.Tensor],
    *,
    training: bool,
    momentum: Optional[float] = 0.1,
    eps: float = 1e-5,
    act: str = "relu",
    negative_slope: float = 0.2,
    num_batches_tracked: Optional[torch.Tensor] = None,
    memory_efficient: bool = False,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """act(BatchNorm(x)) over channel dimension 1 of an [N, C, ...] tensor, as nn.BatchNorm2d
    followed by the activation module computes it, in one op.

    training=True normalizes with the batch statistics (float32 math, float64 for float64
    x; each piece's moments about its own mean, pieces merged pairwise: no cancellation for
    large means) and updates running_mean/running_var in place
    as nn.BatchNorm does (momentum, unbiased variance; momentum=None is the cumulative
    average and needs num_batches_tracked, which is incremented as the module does).
    training=False normalizes with the running statistics when given; without them, with
    the batch's (as nn.BatchNorm2d(track_running_stats=False) does in eval).
    act: "identity", "relu", "leaky_relu", "tanh" or "sigmoid". x: float16/bfloat16/float32/
    float64, NCHW or channels_last (y keeps x's memory format); parameters and running
    statistics in any float dtype. memory_efficient=True (inplace_abn's mode, for identity,
    leaky_relu with negative_slope > 0, and tanh in float32/64) keeps only y for backward
    and recomputes the normalized input from it: one activation-sized tensor less per block.
    In that mode a channel whose weight is exactly 0 gets NaN gradients (its input cannot be
    recovered from its output); first derivatives only.
    """
    training = _validate.flag(training, "training")
    memory_efficient = _validate.flag(memory_efficient, "memory_efficient")
    momentum, eps, negative_slope = _check(x, weight, bias, running_mean, running_var, training, momentum, eps, act,
                                           negative_slope, num_batches_tracked, memory_efficient)
    # An empty batch goes through the reference, which is PyTorch's BatchNorm: an empty output,
    # running statistics untouched, num_batches_tracked counted (the kernels need elements).
    if x.numel() == 0 or not _impl.use_fused(impl, "bn_act", x.device):
        return reference.bn_act(x, weight, bias, running_mean, running_var, training=training, momentum=momentum,
                                eps=eps, act=act, negative_slope=negative_slope,
                                num_batches_tracked=num_batches_tracked)
    use_batch_stats = training or running_mean is None
    y, _, _ = torch.ops.aigc_fast.bn_act(
        x, weight, bias, running_mean, running_var, num_batches_tracked if training else None, use_batch_stats,
        None if momentum is None else float(momentum), float(eps), act, float(negative_slope), memory_efficient,
    )
    return _activations.mark_sigmoid(y, act)


def _fake_forward(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps, act,
                  negative_slope, memory_efficient):
    _check(x, weight, bias, running_mean, running_var, training, momentum, eps, act, negative_slope,
           num_batches_tracked, memory_efficient)
    if x.numel() == 0:  # (the public function sends an empty batch to the reference)
        raise ValueError(f"bn_act needs a non-empty x, got shape {list(x.shape)}")
    stats = x.new_empty((x.shape[1],), dtype=_validate.math_dtype(x))
    return _layout.empty_in_format_of(_layout.in_memory_order(x)), stats, stats.clone()


def _fake_backward(grad_y, y, x, weight, bias, mean, invstd, training, act, negative_slope, output_mask):
    _validate.fake_inputs_on("y", y, grad_y=grad_y, x=x, weight=weight, bias=bias, mean=mean, invstd=invstd)
    channels, math = y.shape[1], _validate.math_dtype(y)
    grad_x = torch.empty_like(_layout.in_memory_order(y)) if output_mask[0] else y.new_empty((0,))
    grad_weight = y.new_empty((channels if output_mask[1] else 0,),
                              dtype=weight.dtype if weight is not None and output_mask[1] else math)
    grad_bias = y.new_empty((channels if output_mask[2] else 0,),
                            dtype=bias.dtype if bias is not None and output_mask[2] else math)
    return grad_x, grad_weight, grad_bias


def _no_vmap(info, in_dims, *args):
    # (Reached only by calling the registered op: the function aigc_fast.bn_act runs the
    # reference under torch.func transforms.)
    raise RuntimeError(
        "torch.ops.aigc_fast.bn_act does not support torch.vmap (the kernels have no batching rule). Call "
        "aigc_fast.bn_act, which runs the reference under torch.func transforms: ATen's batch_norm, which vmap "
        "supports where no running statistics are updated (eval, or training without running statistics)."
    )


def _register() -> None:
    # Autograd is registered in C++ (csrc/bn_act_autograd.cpp); torch.compile needs the shapes.
    torch.library.register_fake("aigc_fast::bn_act")(_fake_forward)
    torch.library.register_fake("aigc_fast::bn_act_backward")(_fake_backward)
    # (vmap's own fallback would fail on the in-place running statistics, naming none of this.)
    torch.library.register_vmap("aigc_fast::bn_act", _no_vmap)


if _extension.LOADED:
    _register()
