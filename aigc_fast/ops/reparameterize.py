"""aigc_fast.reparameterize: the VAE reparameterization trick as one fused op."""

from __future__ import annotations

import functools
from typing import Optional, Tuple, Union

import torch

from .. import _extension, _impl, _validate
from .. import reference

# Seeds are drawn below 2^62 so they stay positive int64 values on every device.
_SEED_HIGH = 2**62


def reparameterize(
    mu: torch.Tensor,
    logvar: torch.Tensor,
    *,
    eps: Optional[torch.Tensor] = None,
    generator: Optional[torch.Generator] = None,
    return_kl: bool = False,
    impl: Optional[str] = None,
) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor]]:
    """Samples z = mu + exp(logvar / 2) * eps with eps ~ N(0, 1), in one fused pass.

    Args:
        mu, logvar: tensors of the same shape, dtype (float16, bfloat16, float32 or float64)
            and device. Math runs in float32 (float64 for float64 inputs). Under
            torch.autocast differing dtypes are promoted to the widest, as eager's formula is.
        eps: explicit noise of the same shape, dtype and device (no random numbers drawn;
            under autocast, as mu and logvar, promoted); gradients flow into it if it
            requires grad.
        generator: the torch.Generator to draw the Philox seed from (default: the device's).
        return_kl: also return the per-sample KL(N(mu, std^2) || N(0, 1)), summed over all
            dimensions but the first: shape [mu.shape[0]], float32 (float64 for float64).
        impl: "fused", "reference" or None (the global choice; fused where available).

    Returns:
        z (same shape as mu, contiguous; mu's dtype, or the promoted one under autocast), or
        (z, kl) when return_kl.

    The noise comes from Philox4x32-10 keyed by (seed, offset) drawn from `generator`, so
    torch.manual_seed reproduces it; it is never stored: the backward recovers std * eps as
    z - mu (float32/float64; regenerating the noise where |z| is so far above std that z's
    rounding would swamp it) or regenerates it from the seed (float16/bfloat16).
    """
    mu, logvar, eps = checked_inputs(mu, logvar, eps)
    return_kl = _validate.flag(return_kl, "return_kl")
    _check_kl(mu, return_kl)
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    if not _impl.use_fused(impl, "reparameterize", mu.device):
        return reference.reparameterize(mu, logvar, eps=eps, generator=generator, return_kl=return_kl)
    seed = None
    if eps is None:
        seed = torch.randint(0, _SEED_HIGH, (2,), dtype=torch.int64, device=mu.device, generator=generator)
    z, kl = torch.ops.aigc_fast.reparameterize(mu, logvar, eps, seed, return_kl)
    return (z, kl) if return_kl else z


def checked_inputs(mu, logvar, eps):
    """mu, logvar and eps promoted under autocast (see there), then checked (for
    nn.Reparameterize's eval mode too, which does not call the op)."""
    mu, logvar, eps = _promoted_under_autocast(mu, logvar, eps)
    _check_tensors(mu, logvar, eps)
    return mu, logvar, eps


def _check_tensors(mu, logvar, eps) -> None:
    """The checks of the public function that the raw op makes too (the fake kernel's)."""
    _validate.float_tensor(mu, "mu")
    _validate.like(logvar, "logvar", mu, "mu")
    if eps is not None:
        _validate.like(eps, "eps", mu, "mu")


def _promoted_under_autocast(mu, logvar, eps):
    """Under torch.autocast a Linear's bfloat16 mu may meet a float32 logvar (a learned
    parameter) or eps: all go to their widest dtype, as eager's mu + exp(logvar / 2) * eps
    promotes them. Outside autocast differing dtypes stay an error (usually a bug)."""
    if not (isinstance(mu, torch.Tensor) and torch.amp.is_autocast_available(mu.device.type)
            and torch.is_autocast_enabled(mu.device.type)):  # (asking about "meta" raises)
        return mu, logvar, eps
    tensors = [t for t in (mu, logvar, eps) if isinstance(t, torch.Tensor)]
    if len({t.dtype for t in tensors}) == 1 or not all(t.is_floating_point() for t in tensors):
        return mu, logvar, eps
    dtype = functools.reduce(torch.promote_types, [t.dtype for t in tensors])
    return tuple(t.to(dtype) if isinstance(t, torch.Tensor) else t for t in (mu, logvar, eps))


def _check_kl(mu, return_kl: bool) -> None:
    if return_kl and mu.dim() == 0:
        raise ValueError("return_kl=True needs a batch dimension: mu must have at least 1 dimension")


def _fake_forward(mu, logvar, eps, seed, compute_kl):
    _check_tensors(mu, logvar, eps)  # (logvar's and eps's devices among them)
    _check_kl(mu, compute_kl)
    _validate.fake_inputs_on("mu", mu, seed=seed)
    z = torch.empty_like(mu, memory_format=torch.contiguous_format)
    return z, mu.new_empty((mu.shape[0] if compute_kl else 0,), dtype=_validate.math_dtype(mu))


def _fake_backward(grad_z, grad_kl, mu, logvar, eps, seed, z, output_mask):
    _validate.fake_inputs_on("mu", mu, grad_z=grad_z, grad_kl=grad_kl, logvar=logvar, eps=eps, seed=seed, z=z)
    def grad(wanted: bool) -> torch.Tensor:
        return torch.empty_like(mu, memory_format=torch.contiguous_format) if wanted else mu.new_empty((0,))

    return grad(output_mask[0]), grad(output_mask[1]), grad(output_mask[2] and eps is not None)


def _register() -> None:
    # Autograd is registered in C++ (csrc/reparameterize_autograd.cpp); torch.compile needs
    # only the shapes of both ops.
    torch.library.register_fake("aigc_fast::reparameterize")(_fake_forward)
    torch.library.register_fake("aigc_fast::reparameterize_backward")(_fake_backward)


if _extension.LOADED:
    _register()
