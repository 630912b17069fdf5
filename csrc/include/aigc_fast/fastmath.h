// float32 exp, log, log1p (of [0, 1]) and sincos built only from IEEE-exact operations
// (+, *, fmaf, sqrt, integer bit manipulation), so that g++ (with -ffp-contract=off) and
// nvcc (with --fmad=false) produce bit-identical results, and g++ can vectorize them in
// loops; exp_math and log1p_unit take them for float and the C library's for double.
// Polynomials are Cephes' single-precision minimax fits (S. L. Moshier), evaluated with
// explicit fmaf. Accuracy against float64: exp, log1p_unit and sigmoid within 2 ulp
// (tests/test_fastmath.py, through the ops), log and sin/cos of 2*pi*k/2^32 within a few
// ulp (tests/test_noise.py, through the normals).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#include "hostdevice.h"

namespace aigc_fast {

// Reinterprets the bits of one type as another of the same size (std::bit_cast, usable in
// device code).
template <typename To, typename From>
AIGC_HD To bit_cast(From from) {
  static_assert(sizeof(To) == sizeof(From), "bit_cast needs types of the same size");
  To to;
  memcpy(&to, &from, sizeof to);
  return to;
}

AIGC_HD float bits_to_float(uint32_t u) { return bit_cast<float>(u); }
AIGC_HD uint32_t float_to_bits(float f) { return bit_cast<uint32_t>(f); }

// e^x for float32; exact 1 at 0, +inf above ln(FLT_MAX), 0 far below, NaN kept.
AIGC_HD float exp_f32(float x) {
  // (Written so a NaN x lands on a bound: the float -> int conversion of n below is then
  // defined; the NaN is restored at the end.)
  const float xc = x > -104.0f ? (x < 89.0f ? x : 89.0f) : -104.0f;
  const float n = rintf(xc * 1.44269504088896341f);
  // x - n*ln2 in two steps (Cody-Waite): the high part of ln2 has few bits, so n*hi is exact.
  float r = fmaf(n, -0.693359375f, xc);
  r = fmaf(n, 2.12194440e-4f, r);
  float p = 1.9875691500e-4f;
  p = fmaf(p, r, 1.3981999507e-3f);
  p = fmaf(p, r, 8.3334519073e-3f);
  p = fmaf(p, r, 4.1665795894e-2f);
  p = fmaf(p, r, 1.6666665459e-1f);
  p = fmaf(p, r, 5.0000001201e-1f);
  const float y = fmaf(p, r * r, r) + 1.0f;
  // Scale by 2^n in two halves so both factors stay normal for n in [-150, 128].
  const int ni = static_cast<int>(n);
  const int n1 = ni / 2;
  const int n2 = ni - n1;
  const float result = y * bits_to_float(static_cast<uint32_t>(n1 + 127) << 23) *
                       bits_to_float(static_cast<uint32_t>(n2 + 127) << 23);
  return x != x ? x : (x < -103.972077f ? 0.0f : result);
}

// ln(x) for x > 0 and normal (the callers pass uniforms in (0, 1]).
AIGC_HD float log_f32(float x) {
  const uint32_t bits = float_to_bits(x);
  int e = static_cast<int>(bits >> 23) - 127;
  float m = bits_to_float((bits & 0x007FFFFFu) | 0x3F800000u);  // in [1, 2)
  const bool high = m > 1.41421356f;
  m = high ? 0.5f * m : m;  // in [sqrt(1/2), sqrt(2))
  e = high ? e + 1 : e;
  const float f = m - 1.0f;
  const float fe = static_cast<float>(e);
  float p = 7.0376836292e-2f;
  p = fmaf(p, f, -1.1514610310e-1f);
  p = fmaf(p, f, 1.1676998740e-1f);
  p = fmaf(p, f, -1.2420140846e-1f);
  p = fmaf(p, f, 1.4249322787e-1f);
  p = fmaf(p, f, -1.6668057665e-1f);
  p = fmaf(p, f, 2.0000714765e-1f);
  p = fmaf(p, f, -2.4999993993e-1f);
  p = fmaf(p, f, 3.3333331174e-1f);
  const float f2 = f * f;
  float y = p * f * f2;
  y = fmaf(fe, -2.12194440e-4f, y);
  y = fmaf(-0.5f, f2, y);
  return fmaf(fe, 0.693359375f, f + y);
}

// cos and sin of 2*pi*k/2^32 for a 32-bit integer k. The range reduction is done on the
// integer, so it is exact: the nearest quarter turn q and a remainder in [-1/8, 1/8) turn.
AIGC_HD void sincos_turns_u32(uint32_t k, float& c, float& s) {
  const uint32_t q = (k + 0x20000000u) >> 30;
  const int32_t rem = static_cast<int32_t>(k - (q << 30));  // in [-2^29, 2^29)
  const float t = static_cast<float>(rem) * 1.46291807926715968e-9f;  // * (pi/2) / 2^30
  const float t2 = t * t;
  float ps = -1.9515295891e-4f;
  ps = fmaf(ps, t2, 8.3321608736e-3f);
  ps = fmaf(ps, t2, -1.6666654611e-1f);
  const float sin_t = fmaf(ps * t2, t, t);
  float pc = 2.443315711809948e-5f;
  pc = fmaf(pc, t2, -1.388731625493765e-3f);
  pc = fmaf(pc, t2, 4.166664568298827e-2f);
  const float cos_t = fmaf(pc * t2, t2, fmaf(-0.5f, t2, 1.0f));
  // Rotate (cos t, sin t) by q quarter turns.
  const bool swap = (q & 1u) != 0;
  const float cq = swap ? sin_t : cos_t;
  const float sq = swap ? cos_t : sin_t;
  c = ((q + 1u) & 2u) ? -cq : cq;  // cos negative in quarters 1 and 2
  s = (q & 2u) ? -sq : sq;        // sin negative in quarters 2 and 3
}

// log1p(e) for e in [0, 1], and 1 / (1 + e) on the side: what softplus and sigmoid need
// with e = exp(-|x|). log1p(e) = 2 atanh(s), s = e / (2 + e) in [0, 1/3]; the atanh series
// 2 s (1 + s^2/3 + ... + s^12/13) is then exact to float32 precision (the next term is below
// 1.4e-8 relative), with no range reduction and no cancellation: within 2 ulp, where
// log(1 + e) would lose everything once 1 + e rounds to 1. Two divisions, ~25% fewer
// instructions than log_f32 plus a rounding correction.
AIGC_HD float log1p_unit_f32(float e, float& inv_1pe) {
  inv_1pe = 1.0f / (1.0f + e);
  const float s = e / (2.0f + e);
  const float z = s * s;
  float p = 7.6923076923e-2f;  // 1/13
  p = fmaf(p, z, 9.0909090909e-2f);
  p = fmaf(p, z, 1.1111111111e-1f);
  p = fmaf(p, z, 1.4285714286e-1f);
  p = fmaf(p, z, 2.0000000000e-1f);
  p = fmaf(p, z, 3.3333333333e-1f);
  const float two_s = 2.0f * s;
  return fmaf(two_s, p * z, two_s);
}

// The math type's exp, for formulas written once for float and double: the IEEE-exact
// float32 version above, libm for float64.
AIGC_HD float exp_math(float x) { return exp_f32(x); }
AIGC_HD double exp_math(double x) { return exp(x); }
AIGC_HD float log1p_unit(float e, float& inv_1pe) { return log1p_unit_f32(e, inv_1pe); }
AIGC_HD double log1p_unit(double e, double& inv_1pe) {
  inv_1pe = 1.0 / (1.0 + e);
  return log1p(e);
}

}  // namespace aigc_fast
