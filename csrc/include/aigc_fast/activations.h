// The activation table of the conv blocks, shared by the CPU and CUDA kernels (the Python
// side of the same table is aigc_fast/_activations.py, which the reference uses). Every
// derivative is written in terms of the activation's output y, so a block's backward
// needs only the output, which the next layer keeps anyway (as torch's own tanh and
// sigmoid backward do):
//
//   act          y = f(v)                     f'(v) from y
//   identity     v                            1
//   relu         max(v, 0)                    [y > 0] (1 at a NaN y, as ATen's)
//   leaky_relu   v > 0 ? v : slope v          y > 0 ? 1 : slope       (slope >= 0)
//   tanh         tanh(v)                      1 - y^2
//   sigmoid      1 / (1 + e^-v)               y (1 - y)
#pragma once

#include <cmath>
#include <cstdint>

#include "fastmath.h"
#include "hostdevice.h"

namespace aigc_fast {

enum class Act : int32_t { kIdentity = 0, kRelu = 1, kLeakyRelu = 2, kTanh = 3, kSigmoid = 4 };

// tanh in float32 from IEEE-exact operations (the same bits on CPU and CUDA): below
// |v| = 0.625 Cephes' odd minimax polynomial (relative error ~1.4e-7); above, with
// e = exp(-2|v|) <= 0.29, (1 - e) / (1 + e), well conditioned and free of overflow.
AIGC_HD float tanh_f32(float v) {
  const float a = v < 0.0f ? -v : v;
  const float z = v * v;
  float p = -5.70498872745e-3f;
  p = fmaf(p, z, 2.06390887954e-2f);
  p = fmaf(p, z, -5.37397155531e-2f);
  p = fmaf(p, z, 1.33314422036e-1f);
  p = fmaf(p, z, -3.33332819422e-1f);
  const float small = fmaf(p * z, v, v);
  const float e = exp_f32(-2.0f * a);
  const float large = (1.0f - e) / (1.0f + e);
  const float signed_large = v < 0.0f ? -large : large;
  return a < 0.625f ? (v == 0.0f ? v : small) : (v == v ? signed_large : v);  // keeps -0
}
AIGC_HD double tanh_math(double v) { return tanh(v); }
AIGC_HD float tanh_math(float v) { return tanh_f32(v); }

template <Act A, typename T>
AIGC_HD T act_forward(T v, T slope) {
  if constexpr (A == Act::kIdentity) {
    return v;
  } else if constexpr (A == Act::kRelu) {
    return v < T(0) ? T(0) : v;  // NaN passes through
  } else if constexpr (A == Act::kLeakyRelu) {
    return v < T(0) ? slope * v : v;
  } else if constexpr (A == Act::kTanh) {
    return tanh_math(v);
  } else {
    const T e = exp_math(v < T(0) ? v : -v);  // e^-|v|: no overflow
    const T inv = T(1) / (T(1) + e);
    return v < T(0) ? e * inv : inv;
  }
}

template <Act A, typename T>
AIGC_HD T act_grad_from_output(T y, T slope) {
  if constexpr (A == Act::kIdentity) {
    return T(1);
  } else if constexpr (A == Act::kRelu) {
    return y <= T(0) ? T(0) : T(1);  // a NaN output passes the gradient on, as ATen's threshold_backward
  } else if constexpr (A == Act::kLeakyRelu) {
    return y > T(0) ? T(1) : slope;  // and ATen's leaky_relu_backward scales it by slope
  } else if constexpr (A == Act::kTanh) {
    return T(1) - y * y;
  } else {
    return y * (T(1) - y);
  }
}

}  // namespace aigc_fast
