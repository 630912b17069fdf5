// The per-element math of the GAN and VAE losses, shared by the CPU and CUDA kernels.
// T is the math type: float for float32/float16/bfloat16 inputs, double for float64.
// Every loss takes logits. Each function returns the element's loss and writes its
// derivative(s), so the kernels produce the loss and the input gradients in one pass.
#pragma once

#include <cstdint>

#include "activations.h"
#include "fastmath.h"
#include "hostdevice.h"
#include "kl.h"

namespace aigc_fast {

// The pieces of softplus(x) = log(1 + e^x) and sigmoid(x), from one exp, and log1p_unit
// (fastmath.h) for the rest. With e = exp(-|x|) in (0, 1], softplus(x) = max(x, 0) +
// log1p(e), and sigmoid(-|x|) = e / (1 + e). log1p(e) keeps its accuracy when e is far below
// 2^-24, where log(1 + e) would return 0 (softplus(-20) = 2.06e-9, not 0).
template <typename T>
struct SoftplusSigmoid {
  T log1p_exp_minus_abs;  // log1p(e^-|x|): softplus(x) = max(x, 0) + this
  T sigmoid_minus_abs;    // sigmoid(-|x|) = e / (1 + e), never formed as 1 - sigmoid(|x|)
};

template <typename T>
AIGC_HD SoftplusSigmoid<T> softplus_sigmoid(T x) {
  const T e = exp_math(x < T(0) ? x : -x);
  T inv_1pe;
  const T log1p_e = log1p_unit(e, inv_1pe);
  return {log1p_e, e * inv_1pe};
}

// Binary cross-entropy of logit x against a target probability y in [0, 1]:
//   softplus(x) - y x,   d/dx = sigmoid(x) - y,   d/dy = -x.
// Written as (x >= 0 ? (1 - y) x : -y x) + log1p(e^-|x|): softplus(x) - y x computed as
// written would round 20 + 2e-9 to 20 and then cancel the 20, losing the whole loss of a
// confident right answer. The derivative likewise, as (x >= 0 ? (1 - y) - s : s - y) with
// s = sigmoid(-|x|): sigmoid(20) - 1 rounds to 0, where -s keeps the -2.06e-9 (1 - y is
// exact for the targets near 1 where that matters).
template <typename T>
AIGC_HD T bce_with_logits(T x, T y, T& d_x) {
  const SoftplusSigmoid<T> s = softplus_sigmoid(x);
  d_x = x < T(0) ? s.sigmoid_minus_abs - y : (T(1) - y) - s.sigmoid_minus_abs;
  // An infinite logit on the right side (coefficient 0: +inf with y = 1, -inf with y = 0)
  // is a loss of 0, the limit, where 0 * inf would be NaN.
  const T coefficient = x < T(0) ? -y : T(1) - y;
  const T linear = coefficient == T(0) ? T(0) : coefficient * x;
  return linear + s.log1p_exp_minus_abs;
}

// scale (x - y)^2,   d/dx = 2 scale (x - y) = -d/dy. (LSGAN uses scale 1/2, the VAE's
// mean-squared-error reconstruction scale 1; both scalings are exact.)
template <typename T>
AIGC_HD T squared_error(T x, T y, T scale, T& d_x) {
  const T d = x - y;
  d_x = T(2) * scale * d;
  return scale * d * d;
}

// The four shapes one term of a GAN loss takes; csrc/losses.cpp maps (kind, role) to them:
//               loss               d/dx                 param p
//   kBce        softplus(x) - p x  sigmoid(x) - p       the label (1, 0, or real_label)
//   kSquare     1/2 (x - p)^2      x - p                the label
//   kHinge      relu(1 + p x)      p [1 + p x > 0]      the sign: -1 real, +1 fake
//   kLinear     p x                p                    the sign
enum class TermKind : int32_t { kBce = 0, kSquare = 1, kHinge = 2, kLinear = 3 };

template <TermKind K, typename T>
AIGC_HD T logit_term(T x, T p, T& d_x) {
  if constexpr (K == TermKind::kBce) {
    return bce_with_logits(x, p, d_x);
  } else if constexpr (K == TermKind::kSquare) {
    return squared_error(x, p, T(0.5), d_x);
  } else if constexpr (K == TermKind::kHinge) {
    const T margin = T(1) + p * x;
    d_x = margin <= T(0) ? T(0) : p;  // as torch.relu's backward, also at NaN
    return act_forward<Act::kRelu>(margin, T(0));  // NaN passes through: it must reach the loss
  } else {
    d_x = p;
    return p * x;
  }
}

// The VAE's reconstruction term of one pixel: recon logit (bce) or value (mse) x against
// target t. Writes d/dx, and d/dt when asked (kTargetGrad).
enum class ReconKind : int32_t { kBce = 0, kMse = 1 };

template <ReconKind R, bool kTargetGrad, typename T>
AIGC_HD T recon_term(T x, T t, T& d_x, T& d_t) {
  T loss;
  if constexpr (R == ReconKind::kBce) {
    loss = bce_with_logits(x, t, d_x);
    if constexpr (kTargetGrad) d_t = -x;
  } else {
    loss = squared_error(x, t, T(1), d_x);
    if constexpr (kTargetGrad) d_t = -d_x;
  }
  return loss;
}

// The VAE's KL term of one latent element (kl.h), var = exp(logvar). Writes d/dmu and
// d/dlogvar.
template <typename T>
AIGC_HD T kl_term_with_grads(T mu, T logvar, T& d_mu, T& d_logvar) {
  const T var = exp_math(logvar);
  d_mu = mu;
  d_logvar = kl_normal_grad_logvar(logvar, var);
  return kl_normal(mu, logvar, var);
}

}  // namespace aigc_fast
