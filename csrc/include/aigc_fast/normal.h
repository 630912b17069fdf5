// Standard normal noise for element i of a tensor: Philox block i / 4 of the stream
// (seed, offset) gives four 32-bit words; Box-Muller turns words (0, 1) and (2, 3) into
// two normals each (cos for the even element, sin for the odd one). Everything here is
// IEEE-exact arithmetic from fastmath.h, so the CPU and CUDA kernels draw bit-identical
// noise for the same (seed, offset), whatever the thread count or block shape.
#pragma once

#include <cstdint>

#include "fastmath.h"
#include "hostdevice.h"
#include "philox.h"

namespace aigc_fast {

constexpr int kNormalsPerBlock = 4;

// A 32-bit word as a uniform in (0, 1]: never 0, so the logarithm below is finite;
// the smallest value 2^-33 bounds |normal| by sqrt(66 ln 2) = 6.76.
AIGC_HD float uniform_open_zero(uint32_t word) {
  return fmaf(static_cast<float>(word), 2.3283064365386963e-10f, 1.1641532182693481e-10f);
}

AIGC_HD void box_muller(uint32_t radius_word, uint32_t angle_word, float& n_cos, float& n_sin) {
  const float minus_two_log = -2.0f * log_f32(uniform_open_zero(radius_word));
  const float radius = sqrtf(minus_two_log > 0.0f ? minus_two_log : 0.0f);
  float c, s;
  sincos_turns_u32(angle_word, c, s);
  n_cos = radius * c;
  n_sin = radius * s;
}

struct Normal4 {
  float v[kNormalsPerBlock];
};

AIGC_HD Normal4 normals_from_bits(U32x4 bits) {
  Normal4 n;
  box_muller(bits.x, bits.y, n.v[0], n.v[1]);
  box_muller(bits.z, bits.w, n.v[2], n.v[3]);
  return n;
}

AIGC_HD Normal4 normal_block(uint64_t seed, uint64_t offset, uint64_t block) {
  return normals_from_bits(philox_block(seed, offset, block));
}

}  // namespace aigc_fast
