// The BatchNorm half of the fused bn_act op, written once for the CPU and CUDA kernels.
//
// Statistics: on the CPU each piece of a long run (at most 1024 elements) or block of whole
// rows (at most 64K elements, in L2) is reduced in two passes in the math type (its mean,
// then the sum of squared deviations from that mean);
// on CUDA each thread keeps a Welford update (welford_push) over its elements, one pass.
// Either way the partial results are merged in a fixed order with Chan et al.'s pairwise formula in float64. No sum of squares is
// ever formed, so a channel with mean 1e4 and std 1 keeps its variance (the
// naive E[x^2] - E[x]^2 loses every digit in float32).
//
// Forward: y = act((x - mean) * scale + beta), scale = gamma * invstd. Subtracting the mean
// first keeps (x - mean) exact for x close to a large mean, where ATen's
// x * scale + (beta - mean * scale) rounds x * scale at the scale of the mean.
//
// Backward, with dz = dy * act'(z) and xhat = (u - S) * R where u = x, S = mean, R = invstd;
// or, in the memory-saving mode (inplace_abn's, for the invertible activations: identity,
// leaky_relu with slope > 0, tanh), where x is not kept, u = z = act^-1(y), S = beta,
// R = 1 / gamma. act'(z) is read from y (activations.h), or, for the activations whose
// derivative is a function of the output's sign (identity, relu, leaky_relu), found from
// z recomputed from x as the forward computed it, so the backward reads no y (GradFrom):
//   pass 1: per channel  sum(dz)  and  sum(dz * (u - S))
//           dbeta = sum(dz),  dgamma = R * sum(dz * (u - S))
//   pass 2: dx = A ((dz + C) + B (u - S)),  A = gamma * invstd,  B = -R dgamma / n,  C = -dbeta / n
//           (the textbook A (dz - dbeta / n - xhat dgamma / n), dz - dbeta / n formed first as
//           there; B = C = 0 with running statistics)
// So pass 1 reads one per-channel value (S) and pass 2 four (S, A, B, C), and reading no y
// adds scale and beta to pass 1 and beta to pass 2 (scale is A): where they are read per
// element from a row pattern (channels_last), fewer is faster. (The per-channel
// steps between passes, invstd = 1 / sqrt(var + eps), nn.BatchNorm's running update and
// these coefficients, are bn_act.h's, in float64.)
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

// Adds one value v to the moments (n, mean, m2) of the values before it (Welford's update,
// in the math type T: the CUDA statistics' per-thread step).
template <typename T>
AIGC_HD void welford_push(T& n, T& mean, T& m2, T v) {
  n += T(1);
  const T delta = v - mean;
  mean += delta / n;
  m2 += delta * (v - mean);
}

// Adds a part with its own moments to `a` (Chan, Golub and LeVeque's pairwise update).
AIGC_HD void merge_moments(Moments& a, double count, double mean, double m2) {
  if (count == 0.0) return;
  const double total = a.count + count;
  const double delta = mean - a.mean;
  a.mean += delta * (count / total);
  a.m2 += m2 + delta * delta * (a.count * count / total);
  a.count = total;
}

// The pre-activation z = (x - mean) * scale + beta from centered = x - mean: written once,
// as the backward's GradFrom::kInput recomputes it and must get the forward's bits.
template <typename T>
AIGC_HD T preactivation(T centered, T scale, T beta) {
  return centered * scale + beta;
}

template <bool kAffine, Act A, typename T>
AIGC_HD T normalize_act(T x, T mean, T scale, T beta, T slope) {
  if constexpr (kAffine) {
    return act_forward<A>(preactivation(x - mean, scale, beta), slope);
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

// What the backward reads besides dy (bn_act.h's with_grad_kernel picks):
//   kInputAndOutput  x for u - S, y for act'(z) (tanh, sigmoid);
//   kInput           x alone: act'(z) from z = (x - mean) * scale + beta, the forward's
//                    expression on the forward's per-channel values, so the same bits
//                    (identity, relu, leaky_relu): one activation-sized stream less in
//                    each of the two passes;
//   kOutput          y alone (the memory-saving mode).
enum class GradFrom : int { kInputAndOutput, kInput, kOutput };
AIGC_HD constexpr bool reads_output(GradFrom f) { return f != GradFrom::kInput; }
AIGC_HD constexpr bool reads_input(GradFrom f) { return f != GradFrom::kOutput; }

// act'(z) for the activations whose derivative depends only on whether the output is
// positive, from z: y = act(z), rounded to the output's dtype, is positive exactly when z >
// cut (0 for float32 and float64 outputs, half the smallest subnormal for 16-bit ones,
// which rounds to 0), and NaN exactly when z is, so this is act_grad_from_output of that
// y, bit for bit, NaN included (one comparison each, written as activations.h's).
template <Act A, typename T>
AIGC_HD T act_grad_from_preactivation(T z, T cut, T slope) {
  static_assert(A == Act::kIdentity || A == Act::kRelu || A == Act::kLeakyRelu,
                "only a piecewise-linear activation's derivative follows from the sign of z");
  if constexpr (A == Act::kIdentity) {
    return T(1);
  } else if constexpr (A == Act::kRelu) {
    return z <= cut ? T(0) : T(1);
  } else {
    return z > cut ? T(1) : slope;
  }
}

// The per-channel values one element's backward reads: S, and for GradFrom::kInput the
// forward's scale and beta and the output dtype's cut (unused otherwise).
template <typename T>
struct GradChannel {
  T shift, scale, beta, cut;
};

// dz and the centered value u - S of one element.
template <GradFrom F, Act A, typename T>
AIGC_HD void dz_and_centered(T dy, T y, T x, const GradChannel<T>& ch, T slope, T& dz, T& centered) {
  if constexpr (F == GradFrom::kOutput) {
    dz = dy * act_grad_from_output<A>(y, slope);
    if constexpr (A == Act::kIdentity || A == Act::kLeakyRelu || A == Act::kTanh) {
      centered = act_inverse<A>(y, slope) - ch.shift;
    }
  } else if constexpr (F == GradFrom::kInput) {
    centered = x - ch.shift;
    dz = dy * act_grad_from_preactivation<A>(preactivation(centered, ch.scale, ch.beta), ch.cut, slope);
  } else {
    dz = dy * act_grad_from_output<A>(y, slope);
    centered = x - ch.shift;
  }
}

// dx of one element from the per-channel coefficients above. With running statistics (B =
// C = 0) dx = A dz does not depend on x, so an infinite or NaN x, or a NaN running mean,
// must not reach it through 0 * (u - S), as it does not in ATen.
template <bool kBatchStats, typename T>
AIGC_HD T bn_grad_input(T dz, T centered, T a, T b, T c) {
  if constexpr (kBatchStats) {
    return a * ((dz + c) + b * centered);
  } else {
    return a * dz;
  }
}

}  // namespace aigc_fast
