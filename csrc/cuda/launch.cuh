// Launch shapes and the math-type switch shared by the elementwise CUDA kernels.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/cuda/CUDAContext.h>

namespace aigc_fast {
namespace {

constexpr int kThreads = 256;

// Enough blocks to fill the GPU (16 per SM) for a grid-stride loop over n elements.
int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t max_blocks = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return static_cast<int>(blocks < max_blocks ? (blocks > 0 ? blocks : 1) : max_blocks);
}

// f(T{}) with T the math type of t: double for float64, float for the rest.
template <typename F>
void with_math_type(const at::Tensor& t, const F& f) {
  if (t.scalar_type() == at::kDouble) {
    f(double{});
  } else {
    f(float{});
  }
}

}  // namespace
}  // namespace aigc_fast
