// The BatchNorm half of the fused bn_act op, written once for the CPU and CUDA kernels.
//
// Statistics: each tile (a few thousand elements, in cache) is reduced in two passes in
// the math type (its mean, then the sum of squared deviations from that mean), and tiles
// are merged in a fixed order with Chan et al.'s pairwise formula in float64. No sum of
// squares is ever formed, so a channel with mean 1e4 and std 1 keeps its variance (the
// naive E[x^2] - E[x]^2 loses every digit in float32).
//
// Forward: y = act((x - mean) * scale + beta), scale = gamma * invstd. Subtracting the mean
// first keeps (x - mean) exact for x close to a large mean, where ATen's
// x * scale + (beta - mean * scale) rounds x * scale at the scale of the mean.
//
// Backward, with dz = dy * act'(z) read from y (activations.h) and xhat = (x - mean) * invstd:
//   dbeta  = sum(dz)                 dgamma = sum(dz * xhat)
//   dx     = gamma * invstd * (dz - dbeta / n - xhat * dgamma / n)    (batch statistics)
//   dx     = gamma * invstd * dz                                      (running statistics)
// (The per-channel steps between the passes, invstd = 1 / sqrt(var + eps) and nn.BatchNorm's
// running update, are a few float64 ATen ops on [channels] tensors in bn_act.cpp.)
// In the memory-saving mode (inplace_abn) x is not kept: z = act^-1(y) and
// xhat = (z - beta) / gamma, for the invertible activations (identity, leaky_relu with
// slope > 0, tanh).
#pragma once

#include <cmath>

#include "activations.h"
#include "fastmath.h"
#include "hostdevice.h"

namespace aigc_fast {

// count, mean and sum of squared deviations of a set of values.
struct Moments {
  double count, mean, m2;
};

// Adds a part with its own moments to `a` (Chan, Golub and LeVeque's pairwise update).
AIGC_HD void merge_moments(Moments& a, double count, double mean, double m2) {
  if (count == 0.0) return;
  const double total = a.count + count;
  const double delta = mean - a.mean;
  a.mean += delta * (count / total);
  a.m2 += m2 + delta * delta * (a.count * count / total);
  a.count = total;
}

template <bool kAffine, Act A, typename T>
AIGC_HD T normalize_act(T x, T mean, T scale, T beta, T slope) {
  if constexpr (kAffine) {
    return act_forward<A>((x - mean) * scale + beta, slope);
  } else {
    return act_forward<A>(x + beta, slope);  // bias_act: x + bias
  }
}

// atanh in the math type, 0.5 * log1p(2a / (1 - a)) for a = |y| (the series of fastmath.h
// below a = 1/3). A tanh saturated to +-1 is read as the largest value below 1, so z stays
// finite (about 8.7 in float32, 18.7 in float64): the true z was at least that.
AIGC_HD float atanh_math(float y) {
  const float a = fminf(y < 0.0f ? -y : y, 0.99999994f);
  const float t = 2.0f * a / (1.0f - a);
  float unused;
  const float r = 0.5f * (t <= 1.0f ? log1p_unit_f32(t, unused) : log_f32(1.0f + t));
  return y < 0.0f ? -r : r;
}
AIGC_HD double atanh_math(double y) { return atanh(fmin(fmax(y, -0.99999999999999989), 0.99999999999999989)); }

// The pre-activation z from y, for the invertible activations of the memory-saving mode.
template <Act A, typename T>
AIGC_HD T act_inverse(T y, T slope) {
  static_assert(A == Act::kIdentity || A == Act::kLeakyRelu || A == Act::kTanh,
                "only identity, leaky_relu and tanh can be inverted");
  if constexpr (A == Act::kLeakyRelu) {
    return y < T(0) ? y / slope : y;
  } else if constexpr (A == Act::kTanh) {
    return atanh_math(y);
  } else {
    return y;
  }
}

// xhat and dz of one element, from x (kept input) or from y alone (memory-saving mode).
template <bool kFromOutput, Act A, typename T>
AIGC_HD void normalized_and_dz(T dy, T y, T x, T mean, T invstd, T beta, T inv_gamma, T slope, T& xhat, T& dz) {
  dz = dy * act_grad_from_output<A>(y, slope);
  if constexpr (kFromOutput) {
    if constexpr (A == Act::kIdentity || A == Act::kLeakyRelu || A == Act::kTanh) {
      xhat = (act_inverse<A>(y, slope) - beta) * inv_gamma;
    }
  } else {
    xhat = (x - mean) * invstd;
  }
}

// dx of one element; k = gamma * invstd, mean_dz = dbeta / n, mean_dz_xhat = dgamma / n
// (both 0 with running statistics).
template <typename T>
AIGC_HD T bn_grad_input(T dz, T xhat, T k, T mean_dz, T mean_dz_xhat) {
  return k * ((dz - mean_dz) - xhat * mean_dz_xhat);
}

}  // namespace aigc_fast
