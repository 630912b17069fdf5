// Philox4x32-10 for many blocks at once in x86 vector lanes: 8 blocks per instruction with
// AVX2, 16 with AVX-512. The rounds are the shared template of philox.h; only the lane
// multiply differs: two vpmuludq (even and odd lanes) give all 32x32->64 products, where
// the portable 16-bit-limb mulhi that g++ vectorizes needs four times as many multiplies.
// Bit-identical by construction (tests compare the paths with each other and the noise
// with a NumPy Philox). AVX2 made the op 1.8x faster on an AVX2-only CPU; AVX-512 takes
// ~10% more off on a Zen 4, whose 512-bit multiplies are two 256-bit ones (bench/NOTES.md).
//
// The helpers carry a target attribute but are not force-inlined: that lets the shared
// (default-target) round template call them, and g++ inlines them once the template is
// itself inlined into the philox_words of the same target.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define AIGC_HAVE_PHILOX_X86 1

#include <immintrin.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "aigc_fast/philox.h"

namespace aigc_fast {

namespace avx2 {

#define AIGC_AVX2_FN __attribute__((target("avx2"))) inline

struct Lanes {
  __m256i v;
};

AIGC_AVX2_FN Lanes operator^(Lanes a, Lanes b) { return {_mm256_xor_si256(a.v, b.v)}; }

AIGC_AVX2_FN Lanes operator^(Lanes a, uint32_t key) {
  return {_mm256_xor_si256(a.v, _mm256_set1_epi32(static_cast<int>(key)))};
}

AIGC_AVX2_FN void mulhilo32(uint32_t multiplier, Lanes a, Lanes& hi, Lanes& lo) {
  const __m256i m = _mm256_set1_epi32(static_cast<int>(multiplier));
  const __m256i even = _mm256_mul_epu32(a.v, m);                         // lanes 0, 2, 4, 6
  const __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a.v, 32), m);  // lanes 1, 3, 5, 7
  lo = {_mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA)};
  hi = {_mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA)};
}

// Words of blocks base .. base + n_blocks - 1 (base = base_hi:base_lo) into w0..w3, which
// must have room for n_blocks rounded up to a multiple of 8.
__attribute__((target("avx2"))) inline void philox_words(uint64_t seed, uint32_t base_lo,
                                                         uint32_t base_hi, int n_blocks,
                                                         uint32_t* w0, uint32_t* w1,
                                                         uint32_t* w2, uint32_t* w3) {
  const __m256i step = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i sign = _mm256_set1_epi32(static_cast<int>(0x80000000u));
  const __m256i lo0 = _mm256_set1_epi32(static_cast<int>(base_lo));
  const __m256i hi0 = _mm256_set1_epi32(static_cast<int>(base_hi));
  for (int j = 0; j < n_blocks; j += 8) {
    const __m256i lo = _mm256_add_epi32(lo0, _mm256_add_epi32(_mm256_set1_epi32(j), step));
    // The counter's high word gains 1 where the low word wrapped (lo < base_lo, unsigned).
    const __m256i wrapped = _mm256_cmpgt_epi32(_mm256_xor_si256(lo0, sign), _mm256_xor_si256(lo, sign));
    Lanes x{lo}, y{_mm256_sub_epi32(hi0, wrapped)}, z{_mm256_setzero_si256()}, w{z.v};
    philox4x32_10_rounds(x, y, z, w, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w0 + j), x.v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w1 + j), y.v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w2 + j), z.v);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(w3 + j), w.v);
  }
}

}  // namespace avx2
#undef AIGC_AVX2_FN

namespace avx512 {

// g++ 12 reports the "undefined" pass-through vectors inside its own AVX-512 shift
// intrinsics as maybe-uninitialized; they are don't-care lanes by definition.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

#define AIGC_AVX512_FN __attribute__((target("avx512f"))) inline

struct Lanes {
  __m512i v;
};

AIGC_AVX512_FN Lanes operator^(Lanes a, Lanes b) { return {_mm512_xor_si512(a.v, b.v)}; }

AIGC_AVX512_FN Lanes operator^(Lanes a, uint32_t key) {
  return {_mm512_xor_si512(a.v, _mm512_set1_epi32(static_cast<int>(key)))};
}

AIGC_AVX512_FN void mulhilo32(uint32_t multiplier, Lanes a, Lanes& hi, Lanes& lo) {
  constexpr __mmask16 kOdd = 0xAAAA;
  const __m512i m = _mm512_set1_epi32(static_cast<int>(multiplier));
  const __m512i even = _mm512_mul_epu32(a.v, m);                         // lanes 0, 2, ..., 14
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a.v, 32), m);  // lanes 1, 3, ..., 15
  lo = {_mm512_mask_blend_epi32(kOdd, even, _mm512_slli_epi64(odd, 32))};
  hi = {_mm512_mask_blend_epi32(kOdd, _mm512_srli_epi64(even, 32), odd)};
}

// As avx2::philox_words, 16 blocks at a time: room for n_blocks rounded up to 16.
__attribute__((target("avx512f"))) inline void philox_words(uint64_t seed, uint32_t base_lo,
                                                           uint32_t base_hi, int n_blocks,
                                                           uint32_t* w0, uint32_t* w1,
                                                           uint32_t* w2, uint32_t* w3) {
  const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __m512i lo0 = _mm512_set1_epi32(static_cast<int>(base_lo));
  const __m512i hi0 = _mm512_set1_epi32(static_cast<int>(base_hi));
  for (int j = 0; j < n_blocks; j += 16) {
    const __m512i lo = _mm512_add_epi32(lo0, _mm512_add_epi32(_mm512_set1_epi32(j), step));
    // The counter's high word gains 1 where the low word wrapped (lo < base_lo, unsigned).
    const __mmask16 wrapped = _mm512_cmplt_epu32_mask(lo, lo0);
    Lanes x{lo}, y{_mm512_mask_add_epi32(hi0, wrapped, hi0, _mm512_set1_epi32(1))};
    Lanes z{_mm512_setzero_si512()}, w{z.v};
    philox4x32_10_rounds(x, y, z, w, static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
    _mm512_storeu_si512(w0 + j, x.v);
    _mm512_storeu_si512(w1 + j, y.v);
    _mm512_storeu_si512(w2 + j, z.v);
    _mm512_storeu_si512(w3 + j, w.v);
  }
}

#pragma GCC diagnostic pop
#undef AIGC_AVX512_FN

}  // namespace avx512

// Which Philox path the CPU kernels take: the widest the CPU has, capped by
// AIGC_FAST_PHILOX=portable|avx2 (the tests set it to prove every path draws the same bits;
// aigc_fast.info() shows the path taken, and the package warns about other values).
enum class PhiloxPath { kPortable, kAvx2, kAvx512 };

inline PhiloxPath philox_path() {
  static const PhiloxPath path = [] {
    __builtin_cpu_init();
    PhiloxPath best = __builtin_cpu_supports("avx512f")  ? PhiloxPath::kAvx512
                      : __builtin_cpu_supports("avx2") ? PhiloxPath::kAvx2
                                                       : PhiloxPath::kPortable;
    const char* cap = std::getenv("AIGC_FAST_PHILOX");
    if (cap != nullptr && std::strcmp(cap, "portable") == 0) best = PhiloxPath::kPortable;
    if (cap != nullptr && std::strcmp(cap, "avx2") == 0 && best == PhiloxPath::kAvx512) best = PhiloxPath::kAvx2;
    return best;
  }();
  return path;
}

}  // namespace aigc_fast

#endif
