"""Conv blocks on the fused ops: ConvTranspose2d/Conv2d -> BatchNorm2d -> activation with
everything after the convolution in one op (bn_act, or bias_act without BatchNorm).

Every block is an nn.Sequential of the standard modules, so it prints, indexes and loads a
state_dict exactly like the nn.Sequential a DCGAN builds ("0.weight", "1.running_mean", ...);
only forward differs. `convert` turns an existing model's sequences into such blocks in
place, keeping its modules (and so its weights, buffers and state_dict keys); `fold` folds
BatchNorm into the convolutions for inference.
"""

from __future__ import annotations

import copy
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import _activations, _validate
from ..ops.bias_act import bias_act
from ..ops.bn_act import bn_act, memory_efficient_supported

CONVS = (nn.Conv2d, nn.ConvTranspose2d)
# activation module -> its name in the activation table (the slope is read from the module)
_ACT_MODULES = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                nn.Identity: "identity"}


def _activation_of(module: nn.Module):
    name = _ACT_MODULES.get(type(module))
    if name is None:
        return None
    return name, float(getattr(module, "negative_slope", 0.0))


def _activation_module(act: str, negative_slope: float) -> nn.Module:
    negative_slope = _activations.check(act, negative_slope)
    if act == "leaky_relu":
        return nn.LeakyReLU(negative_slope)
    return next(module for module, name in _ACT_MODULES.items() if name == act)()


class FoldedBatchNorm(nn.Identity):
    """Where fold() took a BatchNorm2d out (its statistics now live in the convolution).
    A folded model is for inference: training it would train a model without BatchNorm,
    so .train() warns. (A warning, not an error: nn.Module.train has switched the modules
    before this one by then, and generic code, exporters among it, restores modes with it.)"""

    def train(self, mode: bool = True):
        if mode:
            warnings.warn("this model was made by aigc_fast.nn.fold() for inference: its BatchNorms are folded into "
                          "the convolutions, so training it trains a model without BatchNorm. Train the model you "
                          "folded, and fold it again", RuntimeWarning, stacklevel=3)
        return super().train(mode)


@dataclass(frozen=True)
class _Group:
    """Children of a Sequential that run as convolution + one fused op (indices)."""

    conv: int
    stop: int  # one past the group's last child
    bn: Optional[int]
    act: str
    negative_slope: float
    # What follows may overwrite the output: fused only with identity, which keeps none
    # unless in the memory-saving mode (then off for this group).
    output_overwritten: bool = False


def _runs_own_code(module: nn.Module) -> bool:
    """Whether the module has code that only its own call runs: hooks (spectral_norm's
    weight update, the torch.nn.utils one, a pre-hook; a lazy module's initialization; a
    feature extractor's forward hook; a full backward hook), or a forward patched onto the
    instance (a "frozen BatchNorm" written as `bn.forward = ...`). A fused group reads its
    modules' parameters without calling them, so such a module runs as itself instead."""
    return bool(module._forward_pre_hooks or module._forward_hooks or module._backward_pre_hooks
                or module._backward_hooks) or any(name in vars(module) for name in ("forward", "_conv_forward"))


def _plain_conv(module: nn.Module) -> bool:
    """A Conv2d/ConvTranspose2d whose forward is torch's own (parametrized ones included).
    A subclass with its own forward or _conv_forward (weight standardization, QAT fake
    quantization, a conv with BatchNorm inside) computes something a fused group, which
    reads the weight and calls the functional conv, would not."""
    for base in CONVS:
        if isinstance(module, base):
            cls = type(module)
            return cls.forward is base.forward and getattr(cls, "_conv_forward", None) is getattr(base, "_conv_forward", None)
    return False


def _batch_norm_over(module: nn.Module, channels: int) -> bool:
    """A BatchNorm2d over `channels`, or a LazyBatchNorm2d, which becomes one in its first
    call (its initializing hook keeps it running as itself until then, see _runs_own_code)."""
    return (type(module) is nn.BatchNorm2d and module.num_features == channels) or type(module) is nn.LazyBatchNorm2d


# Modules that can hand on their input itself or a view of it, which a later module may
# then overwrite (Dropout does so in eval mode, and in any mode when p = 0).
_PASS_THROUGH = (nn.Identity, nn.Flatten, nn.Unflatten, nn.modules.dropout._DropoutNd)


def _overwritten(following: List[nn.Module], then: Optional[bool] = False) -> Optional[bool]:
    """Whether the modules after a group may overwrite its output: one that writes in
    place (ReLU6(inplace=True), Dropout(inplace=True), ...), directly or after modules that
    pass the output on; `then` if they all pass it on (whether what comes after the
    container overwrites its output). A fused op keeps its output for the backward (the
    next layer usually keeps it anyway), so that would corrupt what the backward reads;
    with the identity activation it keeps none (see _plan). A plain Sequential among them
    counts as its children: Sequential(ReLU(inplace=True), ...) overwrites too."""
    for module in following:
        if type(module) in (nn.Sequential, FusedSequential):
            inner = _overwritten(list(module), then=None)  # None: its children all pass it on
            if inner is not None:
                return inner
            continue
        if getattr(module, "inplace", False):
            return True
        if not isinstance(module, _PASS_THROUGH):
            return False
    return then


def _mark_overwritten(seq: nn.Sequential) -> None:
    """Records that what follows `seq` in its parent may overwrite its output, and so the
    output of its last child that is not a pass-through, if that is a Sequential too."""
    if isinstance(seq, FusedSequential):
        seq.output_overwritten = True
    last = next((m for m in reversed(list(seq)) if not isinstance(m, _PASS_THROUGH)), None)
    if isinstance(last, nn.Sequential):
        _mark_overwritten(last)


def _plan(children: List[nn.Module], *, hooks: bool = True, backward: bool = True,
          output_overwritten: bool = False) -> List[Union[int, _Group]]:
    """The Sequential's forward as steps: a child's index, or a fused group for each
    conv [-> BatchNorm2d over its channels] [-> Identity ...] [-> activation] with at least
    one of BatchNorm and activation, (unless hooks=False: the structure alone) none of them
    with code of its own to run (hooks, a patched forward: _runs_own_code), and (when a backward may follow) nothing after it, in the Sequential or
    (output_overwritten) after it, that may overwrite its output, unless its activation is
    the identity (bn_act and bias_act keep no output for it: a residual `out += skip` after
    conv -> BatchNorm)."""
    steps: List[Union[int, _Group]] = []
    i = 0
    while i < len(children):
        conv = children[i]
        j, bn = i + 1, None
        if _plain_conv(conv):
            if j < len(children) and _batch_norm_over(children[j], conv.out_channels):
                bn, j = j, j + 1
            elif j < len(children) and isinstance(children[j], FoldedBatchNorm):
                j += 1
            # nn.Identity placeholders (an optional norm left out) pass on to a real activation.
            while j + 1 < len(children) and type(children[j]) is nn.Identity and _activation_of(children[j + 1]):
                j += 1
            act = _activation_of(children[j]) if j < len(children) else None
            if act is not None:
                j += 1
            name, slope = act or ("identity", 0.0)
            overwritten = backward and _overwritten(children[j:], output_overwritten)
            if (bn is not None or act is not None) and (name == "identity" or not overwritten) and not (
                    hooks and any(_runs_own_code(m) for m in children[i:j])):
                if name != "leaky_relu" or slope >= 0:  # the kernels need slope >= 0 (else: run as is)
                    steps.append(_Group(i, j, bn, name, slope, overwritten))
                    i = j
                    continue
        steps.append(i)
        i += 1
    return steps


def _is_projection(conv: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A conv-transpose of a 1x1 map without padding (a generator's first layer, latent z
    to k x k): every output pixel is one kernel tap, so it is one matrix multiply. (An input
    the conv would refuse, wrong channels or dtype, goes to the conv, for its error.)"""
    return (isinstance(conv, nn.ConvTranspose2d) and x.dim() == 4 and x.shape[-2:] == (1, 1)
            and conv.padding == (0, 0) and conv.output_padding == (0, 0) and conv.dilation == (1, 1)
            and conv.groups == 1 and conv.padding_mode == "zeros" and x.shape[1] == conv.in_channels
            and (x.dtype == weight.dtype or torch.is_autocast_enabled(x.device.type)))


def _convolve(conv: nn.Module, x: torch.Tensor, with_bias: bool) -> torch.Tensor:
    # The weight read once: a parametrized one (spectral_norm) is computed at each read, and
    # spectral_norm's power iteration would then run twice a step.
    weight = conv.weight
    bias = conv.bias if with_bias else None
    if _is_projection(conv, x, weight):
        w = weight  # [in, out, kh, kw]
        if w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous():
            # A channels_last model: its weight is [in, kh, kw, out] in memory, so the product
            # comes out [N, kh, kw, out], the channels_last output the conv would give, with no
            # copy of the weight or the output either way (forward and backward).
            w_hwc = w.permute(0, 2, 3, 1)
            h = (x.flatten(1) @ w_hwc.flatten(1)).view(x.shape[0], *w_hwc.shape[1:]).permute(0, 3, 1, 2)
        else:
            h = (x.flatten(1) @ w.flatten(1)).view(x.shape[0], *w.shape[1:])
        return h if bias is None else h + bias.view(1, -1, 1, 1).to(h.dtype)
    if isinstance(conv, nn.ConvTranspose2d):  # (padding_mode is always "zeros" for these)
        return F.conv_transpose2d(x, weight, bias, conv.stride, conv.padding, conv.output_padding, conv.groups,
                                  conv.dilation)
    if conv.padding_mode != "zeros":
        return conv._conv_forward(x, weight, bias)
    return F.conv2d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups)


class FusedSequential(nn.Sequential):
    """An nn.Sequential whose conv [-> BatchNorm2d] [-> activation] runs are fused: the
    convolution runs as the vendor op (a conv-transpose from a 1x1 map as one matrix
    multiply), then one bn_act (or bias_act) pass does the rest. Same children, same
    state_dict keys, same outputs as the plain nn.Sequential.

    memory_efficient=True uses bn_act's memory-saving mode in the groups whose activation
    can be inverted (identity, leaky_relu, tanh in float32/64): each keeps only its output
    (not in an identity group that a later module of the container overwrites).
    """

    def __init__(self, *modules: nn.Module, memory_efficient: bool = False):
        super().__init__(*modules)
        self.memory_efficient = _validate.flag(memory_efficient, "memory_efficient")
        # Set by convert() when the module after this one in its parent writes in place.
        self.output_overwritten = False

    def __prepare_scriptable__(self):
        # torch.jit.script calls this before compiling; its own error would be about an
        # import inside torch.fx, far from the cause.
        raise RuntimeError("torch.jit.script cannot compile a FusedSequential (aigc_fast.nn's fused container "
                           "plans its forward in Python): use torch.compile, torch.export or torch.jit.trace, "
                           "or script the model before aigc_fast.nn.convert")

    def _plan(self, backward: bool) -> List[Union[int, _Group]]:
        return _plan(list(self), backward=backward, output_overwritten=getattr(self, "output_overwritten", False))

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002  (nn.Sequential's name, for input=)
        if isinstance(input, torch.fx.Proxy):
            # torch.fx.symbolic_trace (torchvision's feature extractors, FX quantization)
            # cannot follow the plan's branches: it records the plain children instead, under
            # the names they have in the unconverted model. The graph computes the same, unfused.
            return super().forward(input)
        x = input
        children = list(self)
        # Planned on every call (a few type checks), so swapping a child never leaves a stale plan.
        for step in self._plan(backward=torch.is_grad_enabled()):
            x = children[step](x) if isinstance(step, int) else self._run_group(step, children, x)
        return x

    def _run_group(self, group: _Group, children: List[nn.Module], x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            # An unbatched [C, H, W] image (which Conv2d takes) or a wrong shape: the group's
            # modules run as themselves, so the result, or the error, is the unconverted model's.
            for child in children[group.conv:group.stop]:
                x = child(x)
            return x
        conv = children[group.conv]
        if group.bn is None:
            return bias_act(_convolve(conv, x, with_bias=False), conv.bias, group.act,
                            negative_slope=group.negative_slope)
        bn = children[group.bn]
        h = _convolve(conv, x, with_bias=True)
        track = bn.training and bn.track_running_stats  # the counter moves only then
        use_running = not bn.training or bn.track_running_stats  # buffers read (eval) or updated
        memory_efficient = (bool(self.memory_efficient) and not group.output_overwritten
                            and memory_efficient_supported(group.act, group.negative_slope, h.dtype))
        return bn_act(
            h, bn.weight, bn.bias,
            bn.running_mean if use_running else None,
            bn.running_var if use_running else None,
            training=bn.training, momentum=bn.momentum, eps=bn.eps, act=group.act,
            negative_slope=group.negative_slope, num_batches_tracked=bn.num_batches_tracked if track else None,
            memory_efficient=memory_efficient,
        )

    def fused_groups(self, *, backward: Optional[bool] = None) -> List[_Group]:
        """The groups forward fuses (with a backward possible: grad mode by default)."""
        backward = torch.is_grad_enabled() if backward is None else backward
        return [s for s in self._plan(backward) if not isinstance(s, int)]

    def __getitem__(self, idx):
        if isinstance(idx, slice):  # nn.Sequential's would call a block's own __init__ with a dict
            return FusedSequential(OrderedDict(list(self._modules.items())[idx]), memory_efficient=self.memory_efficient)
        return super().__getitem__(idx)

    def extra_repr(self) -> str:
        return f"fused groups: {len(self.fused_groups())}, memory_efficient={self.memory_efficient}"


class _ConvNormAct(FusedSequential):
    """conv -> BatchNorm2d (norm="batch") or nothing (norm=None) -> activation."""

    conv_type = nn.Conv2d

    def __init__(self, in_ch: int, out_ch: int, kernel_size=4, stride=2, padding=1, *, norm: Optional[str] = "batch",
                 act: str = "relu", negative_slope: float = 0.2, bias: Optional[bool] = None,
                 memory_efficient: bool = False):
        if norm not in ("batch", None):
            raise ValueError(f"norm must be 'batch' or None, got {norm!r}")
        modules = [self.conv_type(in_ch, out_ch, kernel_size, stride, padding,
                                  bias=norm is None if bias is None else bias)]
        if norm == "batch":
            modules.append(nn.BatchNorm2d(out_ch))
        modules.append(_activation_module(act, negative_slope))
        super().__init__(*modules, memory_efficient=memory_efficient)

    # The convolution's weight and bias, read through the block: DCGAN code initializes by
    # class name (the PyTorch tutorial's weights_init: `if classname.find('Conv') != -1:
    # nn.init.normal_(m.weight.data, 0.0, 0.02)`), which matches these blocks too.
    @property
    def weight(self) -> torch.Tensor:
        return self[0].weight

    @property
    def bias(self) -> Optional[torch.Tensor]:
        return self[0].bias


class ConvTransposeBlock(_ConvNormAct):
    """ConvTranspose2d -> BatchNorm2d -> activation (a DCGAN generator block), fused.

    Holds the same modules as nn.Sequential(nn.ConvTranspose2d(...), nn.BatchNorm2d(out_ch),
    nn.ReLU()) and loads its state_dict. bias defaults to norm is None (DCGAN's convs are
    bias-free before BatchNorm); norm=None with act="tanh" is a generator's last layer.
    """

    conv_type = nn.ConvTranspose2d


class ConvBlock(_ConvNormAct):
    """Conv2d -> BatchNorm2d -> activation (a DCGAN discriminator block; LeakyReLU(0.2) by
    default), fused. Loads the state_dict of the equivalent nn.Sequential."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size=4, stride=2, padding=1, *, act: str = "leaky_relu",
                 **kwargs):
        super().__init__(in_ch, out_ch, kernel_size, stride, padding, act=act, **kwargs)


def convert(module: nn.Module, *, memory_efficient: bool = False) -> nn.Module:
    """Fuses every conv [-> BatchNorm2d] [-> activation] run inside the model's nn.Sequential
    containers, in place: each such Sequential becomes a FusedSequential, the same object
    with the same modules (weights, buffers, state_dict keys and hooks unchanged). Returns
    the model. Runs written out in a custom forward are left alone, and so are modules with
    hooks or a forward patched onto the instance (they run as themselves, see _runs_own_code). Convert before torch.compile, not after."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"convert() takes a torch.nn.Module, got {type(module).__name__}")
    memory_efficient = _validate.flag(memory_efficient, "memory_efficient")
    if isinstance(getattr(module, "_orig_mod", None), nn.Module):  # torch.compile's OptimizedModule
        raise TypeError("convert() got a torch.compile'd module, whose compiled forward would keep running the "
                        "unconverted model: convert the model first, then compile it (torch.compile(convert(model)))")
    for child in module.children():
        convert(child, memory_efficient=memory_efficient)
    # On structure alone: a lazy conv fuses once its initializing hook is gone.
    if type(module) is nn.Sequential and any(
            not isinstance(s, int) for s in _plan(list(module), hooks=False, backward=False)):
        # A class change, not a new container: the user's references, the container's own
        # hooks and attributes stay. FusedSequential adds two attributes and no state.
        module.__class__ = FusedSequential
        module.memory_efficient = memory_efficient
        module.output_overwritten = False
    elif isinstance(module, FusedSequential) and memory_efficient:  # one already fused (the models, the blocks)
        module.memory_efficient = True
    if isinstance(module, nn.Sequential):  # Sequential(Sequential(conv, bn), ReLU(inplace=True))
        children = list(module)
        for k, child in enumerate(children):
            if isinstance(child, nn.Sequential) and _overwritten(children[k + 1:]):
                _mark_overwritten(child)
    return module


def _plain_copy(conv: nn.Module) -> nn.Module:
    """A copy of the conv without parametrizations (weight_norm, spectral_norm from
    torch.nn.utils.parametrizations), whose weight and bias fold() then sets. The copy
    leaves the parametrized class (shared with the user's model, which
    remove_parametrizations would edit) for the class it wrapped, keeping everything else."""
    folded = copy.deepcopy(conv)
    if torch.nn.utils.parametrize.is_parametrized(folded):
        folded.__class__ = torch.nn.utils.parametrize.type_before_parametrizations(conv)
        del folded.parametrizations
    return folded


def _fold_group(conv: nn.Module, bn: nn.BatchNorm2d) -> nn.Module:
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    folded = _plain_copy(conv)
    transpose = isinstance(conv, nn.ConvTranspose2d)
    weight = conv.weight
    if transpose and conv.groups > 1:
        # torch.nn.utils.fusion scales a transposed weight's dim 1 as the output channels,
        # but a grouped one is [in, out / groups, kh, kw]: output channel g * (out / groups) + j
        # sits at [g's inputs, j]. Laid out as [in / groups, out, kh, kw] it is a plain one.
        groups, in_per_group = conv.groups, conv.in_channels // conv.groups
        weight = weight.unflatten(0, (groups, in_per_group)).transpose(0, 1).flatten(1, 2)
    folded.weight, folded.bias = fuse_conv_bn_weights(
        weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias, transpose=transpose)
    if transpose and conv.groups > 1:  # back to [in, out / groups, kh, kw], in the conv's memory format
        with torch.no_grad():
            grouped = torch.empty_like(conv.weight).copy_(folded.weight.unflatten(1, (groups, -1)).transpose(0, 1)
                                                          .flatten(0, 1))
        folded.weight = nn.Parameter(grouped, conv.weight.requires_grad)
    return folded


def fold(module: nn.Module) -> nn.Module:
    """For inference: a converted copy of the model (which must be in eval mode; see
    convert) with each fused group's BatchNorm folded into its convolution's weight and
    bias (torch.nn.utils.fusion), so the group runs as convolution + bias_act. The
    BatchNorm modules become FoldedBatchNorm (an nn.Identity), so the other modules keep
    their names; .train() on the result warns, as the folded model is a different network."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"fold() takes a torch.nn.Module, got {type(module).__name__}")
    if any(m.training for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)):
        raise ValueError("fold() is for inference: call model.eval() first (BatchNorm must use its running statistics)")
    try:
        module = convert(copy.deepcopy(module))  # a plain model's groups, found the way convert finds them
    except RuntimeError as error:
        # The hook-based torch.nn.utils.spectral_norm and weight_norm leave a computed weight
        # that deepcopy refuses (spectral_norm's once the model has run forward).
        from torch.nn.utils.spectral_norm import SpectralNorm
        from torch.nn.utils.weight_norm import WeightNorm

        hooked = [name for name, kind in (("spectral_norm", SpectralNorm), ("weight_norm", WeightNorm))
                  if any(isinstance(hook, kind) for m in module.modules() for hook in m._forward_pre_hooks.values())]
        if not hooked:
            raise
        name = hooked[0]
        raise ValueError(f"fold() copies the model, and torch could not copy it: a model using the hook-based "
                         f"torch.nn.utils.{name} cannot be copied; use torch.nn.utils.parametrizations.{name} "
                         f"(which fold() supports), or remove_{name} before folding ({error})") from None
    for seq in [m for m in module.modules() if isinstance(m, FusedSequential)]:
        # The names of the children in list(seq)'s order: a module placed twice (one ReLU
        # reused after each BatchNorm) has two names, where named_children() gives its first.
        names, children = list(seq._modules), list(seq)
        for group in seq.fused_groups(backward=False):  # inference: what follows a group cannot matter
            # A BatchNorm without running statistics normalizes with the batch's, even in eval:
            # there is nothing to fold.
            if group.bn is not None and children[group.bn].running_mean is not None:
                setattr(seq, names[group.conv], _fold_group(children[group.conv], children[group.bn]))
                setattr(seq, names[group.bn], FoldedBatchNorm().eval())
    return module
