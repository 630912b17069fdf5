// Launch shapes shared by the elementwise CUDA kernels (and the math-type switch, math_type.h).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

#include "../math_type.h"
#include "aigc_fast/divider.h"

namespace aigc_fast {
namespace {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU (16 per SM) for a grid-stride loop over n elements.
int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t max_blocks = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return static_cast<int>(blocks < max_blocks ? (blocks > 0 ? blocks : 1) : max_blocks);
}

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
