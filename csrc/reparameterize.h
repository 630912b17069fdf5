// The reparameterization op as the CPU and CUDA kernels see it: inputs already checked and
// made contiguous by reparameterize.cpp, outputs allocated, work split into RowTiles.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>

#include "aigc_fast/tiling.h"

namespace aigc_fast {

// Elements per tile: large enough to amortize per-tile work, small enough that a tile's
// float32 scratch buffers stay in L1/L2 on the CPU.
constexpr int64_t kReparamChunk = 2048;

struct ReparamForward {
  at::Tensor mu, logvar;        // contiguous, same shape and dtype
  std::optional<at::Tensor> eps;  // explicit noise, contiguous; else drawn from `seed`
  std::optional<at::Tensor> seed;  // int64 [2] = (Philox key, counter offset), on mu's device
  at::Tensor z;                 // output, like mu
  at::Tensor kl;                // output [rows] in the math dtype, or empty when not asked
  at::Tensor kl_partials;       // one slot per tile when kl is asked and a row has >1 chunk
  RowTiles tiles;
};

struct ReparamBackward {
  at::Tensor grad_z, mu, logvar;     // contiguous
  std::optional<at::Tensor> grad_kl;  // [rows], math dtype
  // The source of std * eps: explicit eps, the regenerated noise of `seed`, or z - mu (with
  // `seed` too: its noise where z - mu loses precision, see recovery_is_lossy).
  std::optional<at::Tensor> eps, seed, z;
  at::Tensor grad_mu, grad_logvar, grad_eps;  // outputs (empty when not asked)
  RowTiles tiles;
};

// An output's data, or null for one not asked for (an empty tensor): the kernels skip it.
template <typename scalar_t>
scalar_t* data_or_null(const at::Tensor& t) {
  return t.numel() > 0 ? t.mutable_data_ptr<scalar_t>() : nullptr;
}

void reparameterize_forward_cpu(ReparamForward& op);
void reparameterize_backward_cpu(ReparamBackward& op);
#ifdef AIGC_FAST_WITH_CUDA
void reparameterize_forward_cuda(ReparamForward& op);
void reparameterize_backward_cuda(ReparamBackward& op);
#endif

}  // namespace aigc_fast
