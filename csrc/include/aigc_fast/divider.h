// Integer division by a divisor fixed for a whole kernel launch, as a multiply-high, an add
// and a shift (Granlund and Montgomery's method, as ATen's IntDivider): an element's channel
// is (i / inner) % channels, and a 64-bit division is a ~70-instruction software routine on
// a GPU, several per element in a kernel that should be bound by memory. Indices at or above
// 2^31 take the plain division (the same branch for a whole warp).
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace aigc_fast {

struct Divider {
  int64_t divisor;
  uint32_t magic, shift;
  bool fast;  // divisor < 2^31: numerators below 2^31 take the multiply

  Divider() = default;
  explicit Divider(int64_t d) : divisor(d), magic(0), shift(0), fast(d > 0 && d < (int64_t(1) << 31)) {
    if (!fast) return;
    while (shift < 32 && (uint64_t(1) << shift) < uint64_t(d)) ++shift;  // 2^shift >= d
    magic = uint32_t(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - uint64_t(d))) / uint64_t(d) + 1);
  }

  AIGC_HD int64_t div(int64_t n) const {
    if (fast && n >= 0 && n < (int64_t(1) << 31)) {
      const uint32_t u = uint32_t(n);
#if defined(__CUDA_ARCH__)
      const uint32_t high = __umulhi(u, magic);
#else
      const uint32_t high = uint32_t((uint64_t(u) * magic) >> 32);
#endif
      return int64_t((high + u) >> shift);  // high <= u < 2^31: no overflow
    }
    return n / divisor;
  }
};

}  // namespace aigc_fast
