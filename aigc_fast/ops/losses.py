"""aigc_fast.gan_d_loss, gan_g_loss and vae_loss: each loss in one fused pass that also
computes the input gradients, so the backward only scales them by grad_output."""

from __future__ import annotations

import math
import numbers
import warnings
from typing import Optional, Tuple, Union

import torch

from .. import _activations, _extension, _impl, _layout, _validate
from .. import reference
from ..reference.losses import GAN_KINDS, RECON_LOSSES, REDUCTIONS


def _check_logits(t, name: str) -> None:
    _validate.float_tensor(t, name)
    if t.numel() == 0:
        raise ValueError(f"{name} is empty (shape {list(t.shape)}): the mean of no logits is undefined")


# Ops that only move or copy values: a sigmoid's output seen through them is still probabilities.
_SHAPE_ONLY_GRAD_FNS = ("View", "UnsafeView", "ReshapeAlias", "Squeeze", "Unsqueeze", "Permute", "Transpose",
                        "Expand", "Slice", "Select", "Clone", "ToCopy")
_FUSED_NODE = "torch::autograd::CppNode<aigc_fast::"  # the autograd nodes of our C++ ops


def _warn_if_probabilities(t: torch.Tensor, name: str, loss: str) -> None:
    """Warns when `t` comes straight from a sigmoid (through reshapes): the loss applies its
    own sigmoid to logits, so probabilities give a wrong loss without an error, the classic
    slip in a port of `nn.Sigmoid` + `nn.BCELoss` code. It reads only what autograd
    recorded (the grad_fn chain), no data: nothing to see under no_grad or torch.compile."""
    if torch.compiler.is_compiling():
        return
    fn = t.grad_fn
    for _ in range(8):
        if fn is None:
            return
        node = fn.name()
        # A fused op that ended in a sigmoid marks its node (_activations.mark_sigmoid); the
        # metadata is read only on our nodes, since reading it makes a dict on any node.
        if node == "SigmoidBackward0" or (
                node.startswith(_FUSED_NODE) and fn.metadata.get(_activations.SIGMOID_MARK, False)):
            warnings.warn(f"{loss}: {name} comes from a sigmoid, but the loss takes logits and applies the "
                          "sigmoid itself (as nn.BCEWithLogitsLoss does): remove the model's final Sigmoid "
                          "(docs/api.md, Losses: porting from nn.BCELoss)", UserWarning, stacklevel=3)
            return
        if not node.startswith(_SHAPE_ONLY_GRAD_FNS) or not fn.next_functions:
            return
        fn = fn.next_functions[0][0]


def check_real_label(kind: str, real_label) -> float:
    """real_label as a float, checked against the kind (shared with nn.GANLoss)."""
    real_label = _validate.number(real_label, "real_label")
    if real_label != 1.0 and kind not in ("bce", "lsgan"):
        raise ValueError(f"real_label applies to kind 'bce' and 'lsgan' only, got real_label={real_label} with {kind!r}")
    if not 0.0 <= real_label <= 1.0:
        raise ValueError(f"real_label must be a probability in [0, 1], got {real_label}")
    return real_label


# The checks of the public functions that the raw ops make too (the fake kernels' as well).


def _check_d_loss(real_logits, fake_logits, kind, real_label) -> float:
    _check_logits(real_logits, "real_logits")
    _check_logits(fake_logits, "fake_logits")
    _validate.same_device(fake_logits, "fake_logits", real_logits, "real_logits")
    _validate.choice(kind, "kind", GAN_KINDS)
    return check_real_label(kind, real_label)


def _check_g_loss(fake_logits, kind) -> None:
    _check_logits(fake_logits, "fake_logits")
    _validate.choice(kind, "kind", GAN_KINDS)


def _check_vae_loss(recon, target, mu, logvar, recon_loss, reduction) -> None:
    for t, name in ((recon, "recon"), (target, "target"), (mu, "mu"), (logvar, "logvar")):
        _validate.float_tensor(t, name)
        _validate.same_device(t, name, recon, "recon")
    _validate.same_shape(target, "target", recon, "recon")
    _validate.same_shape(logvar, "logvar", mu, "mu")
    if recon.dim() == 0 or mu.dim() == 0:
        raise ValueError(f"recon and mu need a batch dimension, got shapes {list(recon.shape)} and {list(mu.shape)}")
    if mu.shape[0] != recon.shape[0]:
        raise ValueError(f"mu and recon must have the same batch size, got {mu.shape[0]} and {recon.shape[0]}")
    if recon.shape[0] == 0:
        raise ValueError("recon is an empty batch: the loss of no samples is undefined")
    _validate.choice(recon_loss, "recon_loss", RECON_LOSSES)
    _validate.choice(reduction, "reduction", REDUCTIONS)


def _needs_grad(t: torch.Tensor) -> bool:
    # Gradients are computed (and kept) only for inputs autograd will ask about.
    return t.requires_grad and torch.is_grad_enabled()


def _refuse_jit_trace(op: str) -> None:
    """torch.jit.trace would record the op's which-inputs-need-gradients argument as a
    constant of the example inputs (and cannot record a list of bools at all): say so,
    rather than leave its own error or a trace that is right for one case only."""
    if torch.jit.is_tracing():
        raise RuntimeError(f"aigc_fast.{op}: torch.jit.trace cannot record the fused loss (which inputs need "
                           "gradients is an argument of its op, fixed at trace time); trace it inside "
                           "aigc_fast.use_impl('reference') or with impl='reference', or compile it with "
                           "torch.compile")


def gan_d_loss(
    real_logits: torch.Tensor,
    fake_logits: torch.Tensor,
    kind: str = "bce",
    *,
    real_label: float = 1.0,
    impl: Optional[str] = None,
) -> torch.Tensor:
    """The discriminator loss from its logits on real and on generated samples.

    kind:
        "bce":   -[E log D(x) + E log(1 - D(G(z)))], D = sigmoid, with softplus: finite for any logit;
        "hinge": E relu(1 - real) + E relu(1 + fake);
        "lsgan": 1/2 E (real - real_label)^2 + 1/2 E fake^2;
        "wgan":  E fake - E real.
    real_label < 1 smooths the real labels (one-sided label smoothing; bce and lsgan only).
    real and fake may have different shapes and batch sizes, and any float dtype (math in
    float32, float64 for float64 inputs). Returns a 0-d tensor in the math dtype.
    Empty logits raise ValueError (the mean of no samples is undefined).
    """
    real_label = _check_d_loss(real_logits, fake_logits, kind, real_label)
    if kind == "bce":
        _warn_if_probabilities(real_logits, "real_logits", "gan_d_loss")
        _warn_if_probabilities(fake_logits, "fake_logits", "gan_d_loss")
    if not _impl.use_fused(impl, "gan_d_loss", real_logits.device):
        return reference.gan_d_loss(real_logits, fake_logits, kind, real_label=real_label)
    _refuse_jit_trace("gan_d_loss")
    mask = [_needs_grad(real_logits), _needs_grad(fake_logits)]
    return torch.ops.aigc_fast.gan_d_loss(real_logits, fake_logits, kind, real_label, mask)[0]


def gan_g_loss(fake_logits: torch.Tensor, kind: str = "bce", *, impl: Optional[str] = None) -> torch.Tensor:
    """The generator loss from the discriminator's logits on generated samples:
    non-saturating -E log D(G(z)) for "bce", -E fake for "hinge" and "wgan",
    1/2 E (fake - 1)^2 for "lsgan". A 0-d tensor in the math dtype."""
    _check_g_loss(fake_logits, kind)
    if kind == "bce":
        _warn_if_probabilities(fake_logits, "fake_logits", "gan_g_loss")
    if not _impl.use_fused(impl, "gan_g_loss", fake_logits.device):
        return reference.gan_g_loss(fake_logits, kind)
    _refuse_jit_trace("gan_g_loss")
    return torch.ops.aigc_fast.gan_g_loss(fake_logits, kind, _needs_grad(fake_logits))[0]


def vae_loss(
    recon: torch.Tensor,
    target: torch.Tensor,
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    recon_loss: str = "bce",
    beta: float = 1.0,
    reduction: str = "mean",
    impl: Optional[str] = None,
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The negative ELBO of a VAE in one op: returns (loss, recon_term, kl_term).

    Per sample b: recon_b = the reconstruction loss summed over all dims but the batch
    ("bce": recon are logits, target probabilities in [0, 1]; "mse": squared error),
    kl_b = KL(N(mu, exp(logvar)) || N(0, 1)) summed over all dims but the batch, and
    total_b = recon_b + beta * kl_b. Then reduction "mean" over the batch, "sum", or
    "none" (shape [B]). recon_term and kl_term are detached and reduced the same way, so
    loss == recon_term + beta * kl_term to rounding (for logging without extra kernels).

    Each input may have its own float dtype (math in float32, float64 if one is float64);
    gradients flow to recon, mu, logvar, and target when it requires grad. An empty batch
    raises ValueError.
    """
    _check_vae_loss(recon, target, mu, logvar, recon_loss, reduction)
    if recon_loss == "bce":
        _warn_if_probabilities(recon, "recon", "vae_loss")
    beta = _beta_tensor(beta)
    if not _impl.use_fused(impl, "vae_loss", recon.device):
        return reference.vae_loss(recon, target, mu, logvar, recon_loss=recon_loss, beta=beta, reduction=reduction)
    _refuse_jit_trace("vae_loss")
    mask = [_needs_grad(t) for t in (recon, target, mu, logvar)]
    out = torch.ops.aigc_fast.vae_loss(recon, target, mu, logvar, recon_loss, beta, reduction, mask)
    return out[0], out[1], out[2]


def _beta_tensor(beta) -> torch.Tensor:
    """beta as the op takes it: a 0-d float64 CPU tensor. A Python number becomes one as
    ones() * beta, which torch.compile traces with the number as a graph input, so a beta
    that changes every step (a KL warm-up) reuses one graph; a float argument of the op
    would be a constant, compiled again for each value. (torch.tensor(beta) is traced
    symbolically by dynamo, but AOTAutograd then specializes it: a recompile per value
    under the default backend.) A CUDA tensor is copied (one sync). A value compiled into a
    graph (a tensor's, or a number's once it turns symbolic) is checked by the C++ op."""
    if isinstance(beta, torch.Tensor):
        if beta.requires_grad:
            raise TypeError("beta is a constant of the loss (a Python number or a tensor without grad); "
                            "its gradient is not computed")
        if beta.numel() != 1:
            raise ValueError(f"beta must be a number or a one-element tensor, got shape {list(beta.shape)}")
        if beta.dtype.is_complex or beta.dtype == torch.bool:
            raise TypeError(f"beta must be a real number, got a {beta.dtype} tensor")
        if beta.is_meta:
            raise TypeError("beta must have a value, got a meta tensor")
        beta = beta.detach().reshape(()).to("cpu", torch.float64)
        if not torch.compiler.is_compiling():
            _check_beta_value(beta.item())
        return beta
    if not isinstance(beta, (torch.SymInt, torch.SymFloat)):
        if isinstance(beta, bool) or not isinstance(beta, numbers.Real):
            raise TypeError(f"beta must be a number or a one-element tensor, got {type(beta).__name__}")
        try:
            beta = float(beta)  # (a Python int beyond int64 would not multiply a tensor)
        except OverflowError:
            beta = math.inf  # beyond float64: refused as infinite
        _check_beta_value(beta)
    # (On the CPU by name: under torch.set_default_device("cuda") a plain float stays a number.)
    return torch.ones((), dtype=torch.float64, device="cpu") * beta


def check_beta(beta) -> Union[float, torch.Tensor]:
    """beta checked, as nn.VAELoss keeps it: a number as a float; a tensor as the same tensor,
    so that a KL warm-up writing into it (beta.fill_(...)) reaches the loss (its value is
    checked again at each call)."""
    checked = _beta_tensor(beta)
    return beta if isinstance(beta, torch.Tensor) else checked.item()


def _check_beta_value(beta: float) -> None:
    if not 0 <= beta < math.inf:  # NaN too
        raise ValueError(f"beta must be a finite number >= 0 (the KL term's weight), got {beta}")


# ---- shapes for torch.compile: these mirror the layouts csrc/losses.cpp chooses (_layout) ----


def _grad_like(t: torch.Tensor, wanted: bool) -> torch.Tensor:
    # At least float32 (csrc/losses.cpp, grad_like: loss scaling applies before rounding).
    dtype = torch.promote_types(t.dtype, torch.float32)
    return torch.empty_like(t, dtype=dtype) if wanted else t.new_empty((0,), dtype=dtype)


def _fake_gan_d_loss(real, fake, kind, real_label, output_mask):
    _check_d_loss(real, fake, kind, real_label)
    loss = real.new_empty((), dtype=_validate.math_dtype(real, fake))
    return loss, _grad_like(real.contiguous(), output_mask[0]), _grad_like(fake.contiguous(), output_mask[1])


def _fake_gan_g_loss(fake, kind, need_grad):
    _check_g_loss(fake, kind)
    return fake.new_empty((), dtype=_validate.math_dtype(fake)), _grad_like(fake.contiguous(), need_grad)


def _fake_vae_loss(recon, target, mu, logvar, recon_loss, beta, reduction, output_mask):
    _check_vae_loss(recon, target, mu, logvar, recon_loss, reduction)
    if beta.dim() != 0 or beta.device.type != "cpu" or not beta.dtype.is_floating_point:
        raise ValueError(f"beta must be a 0-d floating-point CPU tensor, got {beta.dtype} of shape "
                         f"{list(beta.shape)} on {beta.device}")
    recon_l = _layout.in_memory_order(recon)
    target_l = _layout.in_order_of(target, recon_l)
    shape = (recon.shape[0],) if reduction == "none" else ()
    dtype = _validate.math_dtype(recon, target, mu, logvar)
    values = [recon.new_empty(shape, dtype=dtype) for _ in range(3)]
    grads = [
        _grad_like(t, wanted)
        for t, wanted in zip((recon_l, target_l, mu.contiguous(), logvar.contiguous()), output_mask)
    ]
    return (*values, *grads)


def _register() -> None:
    # Autograd is registered in C++ (csrc/loss_autograd.cpp); torch.compile needs the shapes.
    torch.library.register_fake("aigc_fast::gan_d_loss")(_fake_gan_d_loss)
    torch.library.register_fake("aigc_fast::gan_g_loss")(_fake_gan_g_loss)
    torch.library.register_fake("aigc_fast::vae_loss")(_fake_vae_loss)


if _extension.LOADED:
    _register()
