// Philox4x32-10 (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3", SC'11),
// written once for host and device. Counter-based: the four 32-bit words for a counter
// depend only on (key, counter), so any thread may draw any element's noise in any order.
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace aigc_fast {

struct U32x4 {
  uint32_t x, y, z, w;
};

AIGC_HD void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
#if defined(__CUDA_ARCH__)
  hi = __umulhi(a, b);
#else
  // The high word from 16-bit limbs: every partial product fits in 32 bits, so a loop over
  // blocks vectorizes in 32-bit lanes. A uint64 product makes g++ split each vector into
  // 64-bit halves and shuffle them back, which measured twice as slow (bench/NOTES.md).
  const uint32_t al = a & 0xFFFFu, ah = a >> 16, bl = b & 0xFFFFu, bh = b >> 16;
  const uint32_t low_cross = ah * bl + ((al * bl) >> 16);
  const uint32_t high_cross = al * bh + (low_cross & 0xFFFFu);
  hi = ah * bh + (low_cross >> 16) + (high_cross >> 16);
#endif
  lo = a * b;
}

// The ten rounds, written once for any word type W: one block at a time (uint32_t, on
// both devices) or a vector of blocks in SIMD lanes (cpu/philox_x86.h), which needs only
// `^` and a `mulhilo32(uint32_t, W, W&, W&)` for its lanes.
template <typename W>
AIGC_HD void philox4x32_10_rounds(W& x, W& y, W& z, W& w, uint32_t k0, uint32_t k1) {
  constexpr uint32_t kMul0 = 0xD2511F53u, kMul1 = 0xCD9E8D57u;
  constexpr uint32_t kWeyl0 = 0x9E3779B9u, kWeyl1 = 0xBB67AE85u;
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    W hi0, lo0, hi1, lo1;
    mulhilo32(kMul0, x, hi0, lo0);
    mulhilo32(kMul1, z, hi1, lo1);
    const W next_x = hi1 ^ y ^ k0, next_z = hi0 ^ w ^ k1;
    x = next_x;
    y = lo1;
    z = next_z;
    w = lo0;
    k0 += kWeyl0;
    k1 += kWeyl1;
  }
}

AIGC_HD U32x4 philox4x32_10(U32x4 ctr, uint32_t k0, uint32_t k1) {
  philox4x32_10_rounds(ctr.x, ctr.y, ctr.z, ctr.w, k0, k1);
  return ctr;
}

// The 128 random bits behind Philox block number `counter` (a 64-bit number held in the
// low two counter words, split so vector loops can carry it in 32-bit lanes) for `seed`.
AIGC_HD U32x4 philox_block(uint64_t seed, uint32_t counter_lo, uint32_t counter_hi) {
  return philox4x32_10(U32x4{counter_lo, counter_hi, 0u, 0u}, static_cast<uint32_t>(seed),
                       static_cast<uint32_t>(seed >> 32));
}

// Block `block` of the stream (seed, offset): the counter is offset + block.
AIGC_HD U32x4 philox_block(uint64_t seed, uint64_t offset, uint64_t block) {
  const uint64_t counter = offset + block;
  return philox_block(seed, static_cast<uint32_t>(counter), static_cast<uint32_t>(counter >> 32));
}

}  // namespace aigc_fast
