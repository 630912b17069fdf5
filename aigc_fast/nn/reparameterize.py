from __future__ import annotations

from typing import Optional

import torch

from .. import _impl, _validate
from ..ops.reparameterize import checked_inputs, reparameterize


class Reparameterize(torch.nn.Module):
    """z = mu + exp(logvar / 2) * eps as a module, e.g. between a VAE's encoder and decoder.

    In training mode it samples; in eval mode it returns mu (the posterior mean), unless
    `sample_in_eval=True`. With `return_kl=True` the forward returns (z, kl) where kl has
    shape [batch] (the KL term of the ELBO per sample; zero-noise eval still reports it).

        enc_mu, enc_logvar = encoder(x).chunk(2, dim=1)
        z, kl = Reparameterize(return_kl=True)(enc_mu, enc_logvar)
    """

    def __init__(self, return_kl: bool = False, sample_in_eval: bool = False, impl: Optional[str] = None):
        super().__init__()
        self.return_kl = _validate.flag(return_kl, "return_kl")
        self.sample_in_eval = _validate.flag(sample_in_eval, "sample_in_eval")
        _impl.check(impl)
        self.impl = impl

    def forward(self, mu: torch.Tensor, logvar: torch.Tensor, eps: Optional[torch.Tensor] = None, *,
                generator: Optional[torch.Generator] = None):
        """z (and the KL with return_kl); eps and generator as for aigc_fast.reparameterize."""
        if self.training or self.sample_in_eval or eps is not None:
            return reparameterize(mu, logvar, eps=eps, generator=generator, return_kl=self.return_kl, impl=self.impl)
        if not self.return_kl:
            checked_inputs(mu, logvar, None)  # refused as in training, though only mu is used
            return mu
        # The KL of the same op, with no noise; z is mu itself (mu + std * 0 would be NaN where
        # std overflows, and its gradient g * 0 * std too).
        _, kl = reparameterize(mu, logvar, eps=torch.zeros_like(mu), return_kl=True, impl=self.impl)
        return mu, kl

    def extra_repr(self) -> str:
        return f"return_kl={self.return_kl}, sample_in_eval={self.sample_in_eval}, impl={self.impl!r}"
