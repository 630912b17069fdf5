// A thread block's sum in a fixed order (warp shuffles, then the warp sums added by thread
// 0 in warp order), so CUDA reductions are bit-reproducible run to run: no atomics.
#pragma once

#include "launch.cuh"

namespace aigc_fast {

// The block's total in thread 0 (other threads get 0). Every thread of the block (at most
// kThreads) must call.
template <typename T>
__device__ T block_sum(T value) {
  __shared__ T warp_sums[kThreads / 32];
  for (int delta = 16; delta > 0; delta /= 2) value += __shfl_down_sync(0xffffffffu, value, delta);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_sums[warp] = value;
  __syncthreads();
  T total = T(0);
  if (threadIdx.x == 0) {
    for (int w = 0; w < (blockDim.x + 31) / 32; ++w) total += warp_sums[w];  // fixed order
  }
  __syncthreads();
  return total;
}

}  // namespace aigc_fast
