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
#include <cstdint>

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

// Whether recovering std * eps as z - mu loses too much where |z| is far above std. z - mu is
// exact up to the rounding of z, half an ulp of z (2^-24 |z| in float32, 2^-53 in float64),
// against a gradient scale of std: past |z| > 2^8 std the error could exceed 2^-16 of it in
// float32 and 2^-45 in float64, and the backward uses the regenerated noise there instead.
// (float64 is for checking results, so it keeps nearly all of its digits; it had a cut-off
// of 2^37, the same 2^-16, and agreed with eager to only ~5 digits near it.)
// Decided from z's exponent bits, without an exp: e(z) > bits + log2(std), log2(std) =
// logvar / (2 ln 2), so the cut-off ratio lies in [2^bits, 2^(bits+1)). A NaN or infinite z
// counts as lossy (the regenerated noise is finite); a NaN logvar does not (NaN either way).
AIGC_HD bool recovery_is_lossy(float z, float logvar) {
  const int exponent = static_cast<int>((float_to_bits(z) >> 23) & 0xFFu) - 127;
  return static_cast<float>(exponent) - 0.72134752f * logvar > 8.0f;
}

AIGC_HD bool recovery_is_lossy(double z, double logvar) {
  const int exponent = static_cast<int>((bit_cast<uint64_t>(z) >> 52) & 0x7FFu) - 1023;
  return static_cast<double>(exponent) - 0.72134752044448170 * logvar > 8.0;
}

// `std_eps` is std * eps: either computed from eps, or recovered as z - mu (docs/api.md,
// "Backward: the noise is never stored", says when each is used). gk is 0 when no KL
// gradient flows; its term is then left out rather than multiplied by 0, since std^2
// overflows float32 from logvar ~ 88.7 on, where z (finite up to logvar ~ 177) still has a
// finite gradient and 0 * inf would be NaN. A zero g likewise: an unused z's gradient comes
// as zeros, and where std overflows (logvar > ~177) g * std * eps would be NaN beside the
// KL's inf, the gradient the reference gives, which has no z term then.
template <typename T>
AIGC_HD T grad_logvar(T g, T std_eps, T gk, T logvar, T std) {
  const T from_kl = gk == T(0) ? T(0) : gk * kl_normal_grad_logvar(logvar, std * std);
  const T from_z = g == T(0) ? T(0) : T(0.5) * g * std_eps;
  return from_z + from_kl;
}

template <typename T>
AIGC_HD T grad_mu(T g, T gk, T mu) {
  return gk == T(0) ? g : g + gk * mu;  // (no KL term: 0 * an infinite mu would be NaN)
}

template <typename T>
AIGC_HD T grad_eps(T g, T std) {
  return g == T(0) ? T(0) : g * std;  // (zero for an unused z, as in grad_logvar)
}

}  // namespace aigc_fast
