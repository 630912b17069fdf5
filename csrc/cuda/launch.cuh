// Launch shapes shared by the CUDA kernels (and the math-type switch, math_type.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include <limits>

#include "../math_type.h"
#include "aigc_fast/divider.h"

namespace aigc_fast {
namespace {

// A block's threads: every launch uses this many, or fewer (reparameterize's short rows);
// block_sum's scratch is sized for it.
constexpr int kThreads = 256;

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Blocks of kThreads covering n items, one thread each (channels, rows: far below the cap).
int blocks_covering(int64_t n) {
  const int64_t blocks = ceil_div(n, kThreads);
  TORCH_CHECK(blocks <= std::numeric_limits<int32_t>::max(), "a grid of ", blocks, " blocks is more than CUDA takes");
  return static_cast<int>(blocks);
}

// `blocks`, capped at `per_sm` blocks per SM (and at least one): enough to fill the GPU, with
// the kernels' grid-stride loops covering the rest.
int capped_grid(int64_t blocks, int64_t per_sm) {
  const int64_t cap = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * per_sm;
  return static_cast<int>(blocks < 1 ? 1 : (blocks < cap ? blocks : cap));
}

// A grid-stride loop over n elements: a block per kThreads of them, up to 16 blocks per SM
// (capped in int64: n may exceed what one grid covers).
int grid_for(int64_t n) { return capped_grid(ceil_div(n, kThreads), 16); }

// The channel of element i of an [outer, channels, inner] tensor in memory order,
// (i / inner) % channels, with Divider's multiplies in place of 64-bit divisions.
struct ChannelOf {
  Divider inner, channels;
  ChannelOf(int64_t channels_, int64_t inner_) : inner(inner_), channels(channels_) {}
  __device__ int64_t operator()(int64_t i) const {
    const int64_t row = inner.div(i);
    return row - channels.div(row) * channels.divisor;
  }
};

}  // namespace
}  // namespace aigc_fast
