// CPU kernels of aigc_fast::reparameterize. Tiles (see tiling.h) run in parallel; inside a
// tile, simple loops over float32 (or float64) scratch arrays vectorize the shared math.
#include "../reparameterize.h"
#include "../math_type.h"

#include <ATen/Dispatch.h>

#include <cstring>
#include <type_traits>

#include "aigc_fast/normal.h"
#include "aigc_fast/reparameterize.h"
#include "isa.h"
#include "parallel.h"
#include "philox_x86.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

constexpr int64_t kChunk = kReparamChunk;
// Philox blocks one tile may touch (it may straddle blocks at both ends), rounded up to a
// whole number of 16-lane vectors.
constexpr int64_t kMaxBlocks = (kChunk / kNormalsPerBlock + 2 + 15) / 16 * 16;

// The four Philox words of blocks base .. base + n_blocks - 1, where base = base_hi:base_lo.
AIGC_CPU_CLONES void philox_words_portable(uint64_t seed, uint32_t base_lo, uint32_t base_hi,
                                           int n_blocks, uint32_t* w0, uint32_t* w1,
                                           uint32_t* w2, uint32_t* w3) {
  AIGC_SIMD
  for (int j = 0; j < n_blocks; ++j) {
    const uint32_t lo = base_lo + static_cast<uint32_t>(j);
    const U32x4 bits = philox_block(seed, lo, base_hi + (lo < base_lo ? 1u : 0u));
    w0[j] = bits.x;
    w1[j] = bits.y;
    w2[j] = bits.z;
    w3[j] = bits.w;
  }
}

void philox_words(uint64_t seed, uint32_t base_lo, uint32_t base_hi, int n_blocks, uint32_t* w0,
                  uint32_t* w1, uint32_t* w2, uint32_t* w3) {
#ifdef AIGC_HAVE_PHILOX_X86
  switch (philox_path()) {
    case PhiloxPath::kAvx512:
      return avx512::philox_words(seed, base_lo, base_hi, n_blocks, w0, w1, w2, w3);
    case PhiloxPath::kAvx2:
      return avx2::philox_words(seed, base_lo, base_hi, n_blocks, w0, w1, w2, w3);
    case PhiloxPath::kPortable:
      break;
  }
#endif
  philox_words_portable(seed, base_lo, base_hi, n_blocks, w0, w1, w2, w3);
}

// Normals of elements [begin, end) of the stream (seed, offset), end - begin <= kChunk.
// `scratch` holds kMaxBlocks * 4 floats; returns a pointer to element `begin` inside it.
// (The Box-Muller loop reads local arrays: with pointer arguments g++ 12 kept the AVX2
// clone's loop scalar, 3x slower.)
AIGC_CPU_CLONES const float* fill_normals(uint64_t seed, uint64_t offset, int64_t begin,
                                          int64_t end, float* scratch) {
  const int64_t first_block = begin / kNormalsPerBlock;
  const int n_blocks = static_cast<int>((end + kNormalsPerBlock - 1) / kNormalsPerBlock - first_block);
  const uint64_t base = offset + static_cast<uint64_t>(first_block);
  alignas(64) uint32_t w0[kMaxBlocks], w1[kMaxBlocks], w2[kMaxBlocks], w3[kMaxBlocks];
  philox_words(seed, static_cast<uint32_t>(base), static_cast<uint32_t>(base >> 32), n_blocks, w0,
               w1, w2, w3);
  AIGC_SIMD
  for (int j = 0; j < n_blocks; ++j) {
    box_muller(w0[j], w1[j], scratch[4 * j], scratch[4 * j + 1]);
    box_muller(w2[j], w3[j], scratch[4 * j + 2], scratch[4 * j + 3]);
  }
  return scratch + (begin - first_block * kNormalsPerBlock);
}

template <typename T>
AIGC_CPU_CLONES T forward_tile(const T* mu, const T* logvar, const T* eps, int64_t n, T* z,
                               bool with_kl) {
  T kl = T(0);
  if (with_kl) {
    AIGC_SIMD_SUM(kl)
    for (int64_t i = 0; i < n; ++i) {
      const T std = std_from_logvar(logvar[i]);
      z[i] = reparam_sample(mu[i], std, eps[i]);
      kl += kl_term(mu[i], logvar[i], std);
    }
  } else {
    AIGC_SIMD
    for (int64_t i = 0; i < n; ++i) z[i] = reparam_sample(mu[i], std_from_logvar(logvar[i]), eps[i]);
  }
  return kl;
}

// `source` is eps, or z when from_z (then std * eps = z - mu). `noise`, with from_z: the
// regenerated eps of a tile where recovery_is_lossy holds somewhere; each element then takes
// std * eps where z - mu would lose it and z - mu elsewhere, as the CUDA kernel decides it.
// With from_z, no noise and kCheck (the seed is there to regenerate it), returns whether
// recovery_is_lossy holds anywhere in the tile, checked in the same loop (a separate scan
// made the 4M backward ~15% slower); the caller then runs the tile again with its noise.
template <bool kCheck, typename T>
AIGC_CPU_CLONES bool backward_tile(const T* g, T gk, const T* mu, const T* logvar, const T* source,
                                   bool from_z, const T* noise, int64_t n, T* d_mu, T* d_logvar, T* d_eps) {
  int lossy = 0;
  if (from_z && noise != nullptr) {
    AIGC_SIMD
    for (int64_t i = 0; i < n; ++i) {
      const T std = std_from_logvar(logvar[i]);
      const T std_eps = recovery_is_lossy(source[i], logvar[i]) ? std * noise[i] : source[i] - mu[i];
      d_logvar[i] = grad_logvar(g[i], std_eps, gk, logvar[i], std);
      d_mu[i] = grad_mu(g[i], gk, mu[i]);
    }
  } else if (from_z && gk == T(0)) {  // the common case: no KL term, so no exp at all
    AIGC_SIMD_OR(lossy)
    for (int64_t i = 0; i < n; ++i) {
      d_logvar[i] = grad_logvar(g[i], source[i] - mu[i], T(0), T(0), T(1));
      d_mu[i] = g[i];
      if constexpr (kCheck) lossy |= static_cast<int>(recovery_is_lossy(source[i], logvar[i]));
    }
  } else if (from_z) {
    AIGC_SIMD_OR(lossy)
    for (int64_t i = 0; i < n; ++i) {
      const T std = std_from_logvar(logvar[i]);
      d_logvar[i] = grad_logvar(g[i], source[i] - mu[i], gk, logvar[i], std);
      d_mu[i] = grad_mu(g[i], gk, mu[i]);
      if constexpr (kCheck) lossy |= static_cast<int>(recovery_is_lossy(source[i], logvar[i]));
    }
  } else {
    AIGC_SIMD
    for (int64_t i = 0; i < n; ++i) {
      const T std = std_from_logvar(logvar[i]);
      d_logvar[i] = grad_logvar(g[i], std * source[i], gk, logvar[i], std);
      d_mu[i] = grad_mu(g[i], gk, mu[i]);
      d_eps[i] = grad_eps(g[i], std);
    }
  }
  return lossy != 0;
}

// A named pair, not a structured binding: lambdas capture bindings only from clang 16 on.
struct PhiloxKey {
  uint64_t seed = 0, offset = 0;
};

PhiloxKey read_seed(const std::optional<at::Tensor>& seed) {
  if (!seed.has_value()) return {};
  const int64_t* s = seed->const_data_ptr<int64_t>();
  return {static_cast<uint64_t>(s[0]), static_cast<uint64_t>(s[1])};
}

// Adds each row's tile partials in chunk order (deterministic for any thread count).
template <typename T>
void sum_row_tiles(const RowTiles& tiles, const T* partials, T* out) {
  for (int64_t r = 0; r < tiles.rows; ++r) out[r] = tiles.row_total(partials, r);
}

template <typename scalar_t>
void forward_impl(ReparamForward& op) {
  using T = MathType<scalar_t>;
  const RowTiles tiles = op.tiles;
  const bool with_kl = op.kl.numel() > 0;
  const PhiloxKey key = read_seed(op.seed);
  const scalar_t* mu = op.mu.const_data_ptr<scalar_t>();
  const scalar_t* logvar = op.logvar.const_data_ptr<scalar_t>();
  const scalar_t* eps = op.eps.has_value() ? op.eps->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* z = op.z.mutable_data_ptr<scalar_t>();
  T* kl_slots = !with_kl ? nullptr
                : op.kl_partials.defined() ? op.kl_partials.mutable_data_ptr<T>()
                                           : op.kl.mutable_data_ptr<T>();
  for_units(tiles.count(), op.mu.numel(), [&](int64_t first, int64_t last) {
    T mu_buf[kChunk], logvar_buf[kChunk], eps_buf[kChunk], z_buf[kChunk];
    float normals[kMaxBlocks * kNormalsPerBlock];
    for (int64_t t = first; t < last; ++t) {
      const int64_t begin = tiles.begin(t), n = tiles.end(t) - begin;
      const T* e = eps != nullptr
                       ? load(eps, begin, n, eps_buf)
                       : load(fill_normals(key.seed, key.offset, begin, begin + n, normals), 0, n, eps_buf);
      T* out = output(z, begin, z_buf);
      const T kl = forward_tile(load(mu, begin, n, mu_buf), load(logvar, begin, n, logvar_buf), e,
                                n, out, with_kl);
      store(out, z, begin, n);
      if (with_kl) kl_slots[t] = kl;
    }
  });
  if (with_kl && op.kl_partials.defined()) sum_row_tiles(tiles, kl_slots, op.kl.mutable_data_ptr<T>());
}

template <typename scalar_t>
void backward_impl(ReparamBackward& op) {
  using T = MathType<scalar_t>;
  const RowTiles tiles = op.tiles;
  const PhiloxKey key = read_seed(op.seed);
  const bool from_z = op.z.has_value();
  const scalar_t* g = op.grad_z.const_data_ptr<scalar_t>();
  const T* gk = op.grad_kl.has_value() ? op.grad_kl->const_data_ptr<T>() : nullptr;
  const scalar_t* mu = op.mu.const_data_ptr<scalar_t>();
  const scalar_t* logvar = op.logvar.const_data_ptr<scalar_t>();
  const scalar_t* given = op.eps.has_value() ? op.eps->const_data_ptr<scalar_t>()
                          : from_z           ? op.z->const_data_ptr<scalar_t>()
                                             : nullptr;
  scalar_t* d_mu = data_or_null<scalar_t>(op.grad_mu);
  scalar_t* d_logvar = data_or_null<scalar_t>(op.grad_logvar);
  scalar_t* d_eps = data_or_null<scalar_t>(op.grad_eps);
  for_units(tiles.count(), op.mu.numel(), [&](int64_t first, int64_t last) {
    T g_buf[kChunk], mu_buf[kChunk], logvar_buf[kChunk], src_buf[kChunk], noise_buf[kChunk];
    T d_mu_buf[kChunk], d_logvar_buf[kChunk], d_eps_buf[kChunk];
    float normals[kMaxBlocks * kNormalsPerBlock];
    for (int64_t t = first; t < last; ++t) {
      const int64_t begin = tiles.begin(t), n = tiles.end(t) - begin;
      const T* lv = load(logvar, begin, n, logvar_buf);
      const T* src = given != nullptr
                         ? load(given, begin, n, src_buf)
                         : load(fill_normals(key.seed, key.offset, begin, begin + n, normals), 0, n, src_buf);
      T* out_mu = output(d_mu, begin, d_mu_buf);
      T* out_logvar = output(d_logvar, begin, d_logvar_buf);
      T* out_eps = output(d_eps, begin, d_eps_buf);
      const T* g_tile = load(g, begin, n, g_buf);
      const T* mu_tile = load(mu, begin, n, mu_buf);
      const T gk_row = gk != nullptr ? gk[tiles.row(t)] : T(0);
      const T* no_noise = nullptr;
      const bool lossy =
          op.seed.has_value()
              ? backward_tile<true>(g_tile, gk_row, mu_tile, lv, src, from_z, no_noise, n, out_mu, out_logvar, out_eps)
              : backward_tile<false>(g_tile, gk_row, mu_tile, lv, src, from_z, no_noise, n, out_mu, out_logvar, out_eps);
      // z - mu lost precision somewhere in the tile: again, with the seed's noise there.
      if (lossy) {
        const T* noise = load(fill_normals(key.seed, key.offset, begin, begin + n, normals), 0, n, noise_buf);
        backward_tile<false>(g_tile, gk_row, mu_tile, lv, src, from_z, noise, n, out_mu, out_logvar, out_eps);
      }
      store(out_mu, d_mu, begin, n);
      store(out_logvar, d_logvar, begin, n);
      store(out_eps, d_eps, begin, n);
    }
  });
}

}  // namespace

void reparameterize_forward_cpu(ReparamForward& op) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, op.mu.scalar_type(),
                                  "reparameterize_cpu", [&] { forward_impl<scalar_t>(op); });
}

void reparameterize_backward_cpu(ReparamBackward& op) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, op.mu.scalar_type(),
                                  "reparameterize_backward_cpu", [&] { backward_impl<scalar_t>(op); });
}

}  // namespace aigc_fast
