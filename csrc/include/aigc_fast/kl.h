// KL(N(mu, var) || N(0, 1)) of one latent element, var = exp(logvar), and its derivatives:
// the one formula behind reparameterize(return_kl=True) and vae_loss, on both devices. (Each
// passes its own var: vae_loss exp(logvar), reparameterize std * std from the std it samples
// with, one exp fewer; the two KLs can differ in the last bits.)
//   kl = 1/2 (mu^2 + var - 1 - logvar),   dkl/dmu = mu,   dkl/dlogvar = 1/2 (var - 1)
// Near logvar = 0 (a latent the posterior has collapsed onto the prior) var - 1 - logvar
// and var - 1 cancel: written as computed, float32 keeps only a few correct digits of a
// KL of ~logvar^2 / 4. Below |logvar| = 1 both come from their Taylor series instead. (At
// 1/2 the direct form still magnified exp's rounding 11x, e^x / (e^x - 1 - x): 13 ulp of
// KL; at 1, 3.8x.)
#pragma once

#include <cmath>

#include "hostdevice.h"

namespace aigc_fast {

// e^x - 1 - x for |x| < 1: x^2 (1/2 + x/6 + ... + x^10/12!); the first omitted term is below
// 5e-10 of the sum there.
AIGC_HD float exp_m1_mx_series(float x) {
  float p = 2.0876756988e-9f;  // 1/12!
  p = fmaf(p, x, 2.5052108385e-8f);
  p = fmaf(p, x, 2.7557319224e-7f);
  p = fmaf(p, x, 2.7557319224e-6f);
  p = fmaf(p, x, 2.4801587302e-5f);
  p = fmaf(p, x, 1.9841269841e-4f);
  p = fmaf(p, x, 1.3888888889e-3f);
  p = fmaf(p, x, 8.3333333333e-3f);
  p = fmaf(p, x, 4.1666666667e-2f);
  p = fmaf(p, x, 1.6666666667e-1f);
  p = fmaf(p, x, 0.5f);
  return p * x * x;
}

// e^x - 1 - x, given ex = e^x.
AIGC_HD float exp_m1_mx(float x, float ex) {
  const float small = exp_m1_mx_series(x);
  const float a = x < 0.0f ? -x : x;
  return a < 1.0f ? small : (ex - 1.0f) - x;
}
// float64: the series to x^20/20! below |x| = 1 (the first omitted term is below 1e-19 of
// the sum), e^x - 1 - x above.
AIGC_HD double exp_m1_mx_series(double x) {
  double inv_factorial = 1.0, p = 0.0;
  double coefficients[19];  // 1/2!, ..., 1/20!
  for (int k = 2; k <= 20; ++k) coefficients[k - 2] = (inv_factorial /= k);
  for (int k = 18; k >= 0; --k) p = p * x + coefficients[k];
  return p * x * x;
}
AIGC_HD double exp_m1_mx(double x, double ex) {
  return (x < 0.0 ? -x : x) < 1.0 ? exp_m1_mx_series(x) : (ex - 1.0) - x;
}

// e^x - 1, given ex = e^x.
AIGC_HD float exp_m1(float x, float ex) {
  const float small = x + exp_m1_mx_series(x);
  const float a = x < 0.0f ? -x : x;
  return a < 1.0f ? small : ex - 1.0f;
}
AIGC_HD double exp_m1(double x, double) { return expm1(x); }

template <typename T>
AIGC_HD T kl_normal(T mu, T logvar, T var) {
  return T(0.5) * (mu * mu + exp_m1_mx(logvar, var));
}

template <typename T>
AIGC_HD T kl_normal_grad_logvar(T logvar, T var) {
  return T(0.5) * exp_m1(logvar, var);
}

}  // namespace aigc_fast
