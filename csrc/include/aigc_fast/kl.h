// KL(N(mu, var) || N(0, 1)) of one latent element, var = exp(logvar), and its derivatives:
// the one formula behind reparameterize(return_kl=True) and vae_loss, on both devices.
//   kl = 1/2 (mu^2 + var - 1 - logvar),   dkl/dmu = mu,   dkl/dlogvar = 1/2 (var - 1)
#pragma once

#include "hostdevice.h"

namespace aigc_fast {

template <typename T>
AIGC_HD T kl_normal(T mu, T logvar, T var) {
  return T(0.5) * (mu * mu + var - T(1) - logvar);
}

template <typename T>
AIGC_HD T kl_normal_grad_logvar(T var) {
  return T(0.5) * (var - T(1));
}

}  // namespace aigc_fast
