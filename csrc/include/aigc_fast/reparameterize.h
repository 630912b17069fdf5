// The per-element math of the reparameterization op, shared by the CPU and CUDA kernels.
// T is the math type: float for float32/float16/bfloat16 tensors, double for float64.
//
//   z    = mu + std * eps,            std = exp(logvar / 2)
//   kl   = 1/2 (mu^2 + std^2 - 1 - logvar)      (per element; the op sums a row)
//   backward, with g = dL/dz and gk = dL/dkl of the element's row:
//   dmu     = g + gk * mu
//   dlogvar = 1/2 g (std * eps) + 1/2 gk (std^2 - 1)
//   deps    = g * std
#pragma once

#include <cmath>

#include "fastmath.h"
#include "hostdevice.h"
#include "kl.h"

namespace aigc_fast {

template <typename T>
AIGC_HD T std_from_logvar(T logvar) {
  return exp_math(T(0.5) * logvar);
}

template <typename T>
AIGC_HD T reparam_sample(T mu, T std, T eps) {
  return mu + std * eps;
}

template <typename T>
AIGC_HD T kl_term(T mu, T logvar, T std) {
  return kl_normal(mu, logvar, std * std);
}

// `std_eps` is std * eps: either computed from eps, or recovered as z - mu (see the README
// section on precision for when each is used).
template <typename T>
AIGC_HD T grad_logvar(T g, T std_eps, T gk, T logvar, T std) {
  return T(0.5) * g * std_eps + gk * kl_normal_grad_logvar(logvar, std * std);
}

template <typename T>
AIGC_HD T grad_mu(T g, T gk, T mu) {
  return g + gk * mu;
}

template <typename T>
AIGC_HD T grad_eps(T g, T std) {
  return g * std;
}

}  // namespace aigc_fast
