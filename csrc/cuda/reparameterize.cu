// CUDA kernels of aigc_fast::reparameterize. One thread block per tile (tiling.h), grid-
// stride over tiles; each thread draws one Philox block (four normals) per step and
// handles those four elements. The math is the same header the CPU kernels use.
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../math_type.h"
#include "../reparameterize.h"
#include "block_reduce.cuh"
#include "launch.cuh"
#include "aigc_fast/normal.h"
#include "aigc_fast/reparameterize.h"

namespace aigc_fast {
namespace {

// The noise of element `index` (4 * block + k): from the Philox block already drawn.
template <typename T, typename scalar_t>
__device__ T noise_at(const scalar_t* eps, const Normal4& normals, int64_t index, int k) {
  return eps != nullptr ? static_cast<T>(eps[index]) : static_cast<T>(normals.v[k]);
}

template <typename scalar_t, typename T>
__global__ void forward_kernel(const scalar_t* __restrict__ mu, const scalar_t* __restrict__ logvar,
                               const scalar_t* __restrict__ eps, const int64_t* __restrict__ seed,
                               RowTiles tiles, scalar_t* __restrict__ z, T* __restrict__ kl_slots) {
  const uint64_t key = seed != nullptr ? static_cast<uint64_t>(seed[0]) : 0;
  const uint64_t offset = seed != nullptr ? static_cast<uint64_t>(seed[1]) : 0;
  for (int64_t tile = blockIdx.x; tile < tiles.count(); tile += gridDim.x) {
    const int64_t begin = tiles.begin(tile), end = tiles.end(tile);
    const int64_t first_block = begin / kNormalsPerBlock;
    const int64_t last_block = (end - 1) / kNormalsPerBlock;
    T kl = T(0);
    for (int64_t block = first_block + threadIdx.x; block <= last_block; block += blockDim.x) {
      Normal4 normals{};
      if (eps == nullptr) normals = normal_block(key, offset, static_cast<uint64_t>(block));
#pragma unroll
      for (int k = 0; k < kNormalsPerBlock; ++k) {
        const int64_t i = block * kNormalsPerBlock + k;
        if (i < begin || i >= end) continue;
        const T m = static_cast<T>(mu[i]), lv = static_cast<T>(logvar[i]);
        const T std = std_from_logvar(lv);
        z[i] = static_cast<scalar_t>(reparam_sample(m, std, noise_at<T>(eps, normals, i, k)));
        if (kl_slots != nullptr) kl += kl_term(m, lv, std);
      }
    }
    if (kl_slots != nullptr) {
      const T total = block_sum(kl);
      if (threadIdx.x == 0) kl_slots[tile] = total;
    }
  }
}

template <typename scalar_t, typename T>
__global__ void backward_kernel(const scalar_t* __restrict__ g, const T* __restrict__ grad_kl,
                                const scalar_t* __restrict__ mu,
                                const scalar_t* __restrict__ logvar,
                                const scalar_t* __restrict__ eps, const scalar_t* __restrict__ z,
                                const int64_t* __restrict__ seed, RowTiles tiles,
                                scalar_t* __restrict__ d_mu, scalar_t* __restrict__ d_logvar,
                                scalar_t* __restrict__ d_eps) {
  const uint64_t key = seed != nullptr ? static_cast<uint64_t>(seed[0]) : 0;
  const uint64_t offset = seed != nullptr ? static_cast<uint64_t>(seed[1]) : 0;
  for (int64_t tile = blockIdx.x; tile < tiles.count(); tile += gridDim.x) {
    const int64_t begin = tiles.begin(tile), end = tiles.end(tile);
    const T gk = grad_kl != nullptr ? grad_kl[tiles.row(tile)] : T(0);
    const int64_t first_block = begin / kNormalsPerBlock;
    const int64_t last_block = (end - 1) / kNormalsPerBlock;
    for (int64_t block = first_block + threadIdx.x; block <= last_block; block += blockDim.x) {
      // Drawn only when an element of the block needs it: with z given, where z - mu would
      // lose precision (recovery_is_lossy), which is almost nowhere.
      Normal4 normals{};
      bool drawn = false;
#pragma unroll
      for (int k = 0; k < kNormalsPerBlock; ++k) {
        const int64_t i = block * kNormalsPerBlock + k;
        if (i < begin || i >= end) continue;
        const T gi = static_cast<T>(g[i]), m = static_cast<T>(mu[i]);
        const T lv = static_cast<T>(logvar[i]);
        const T std = std_from_logvar(lv);
        const T zi = z != nullptr ? static_cast<T>(z[i]) : T(0);
        const bool recover = z != nullptr && !(seed != nullptr && recovery_is_lossy(zi, lv));
        if (!recover && eps == nullptr && !drawn) {
          normals = normal_block(key, offset, static_cast<uint64_t>(block));
          drawn = true;
        }
        const T std_eps = recover ? zi - m : std * noise_at<T>(eps, normals, i, k);
        if (d_mu != nullptr) d_mu[i] = static_cast<scalar_t>(grad_mu(gi, gk, m));
        if (d_logvar != nullptr) d_logvar[i] = static_cast<scalar_t>(grad_logvar(gi, std_eps, gk, lv, std));
        if (d_eps != nullptr) d_eps[i] = static_cast<scalar_t>(grad_eps(gi, std));
      }
    }
  }
}

// Second stage of the KL: each row's tile partials added in chunk order.
template <typename T>
__global__ void reduce_rows_kernel(const T* __restrict__ partials, RowTiles tiles, T* __restrict__ out) {
  for (int64_t r = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; r < tiles.rows;
       r += int64_t(gridDim.x) * blockDim.x) {
    out[r] = tiles.row_total(partials, r);
  }
}

struct Launch {
  int blocks, threads;
};

// Enough threads for one tile's Philox blocks (a short row gets a small block), and enough
// blocks to fill the GPU several times over; the grid-stride loop covers the rest.
Launch launch_for(const RowTiles& tiles) {
  const int64_t blocks_per_tile = (tiles.chunk < tiles.row_len ? tiles.chunk : tiles.row_len) / kNormalsPerBlock + 1;
  int threads = 32;
  while (threads < kThreads && threads < blocks_per_tile) threads *= 2;
  return Launch{capped_grid(tiles.count(), 2048 / threads), threads};
}

template <typename scalar_t>
const scalar_t* ptr_or_null(const std::optional<at::Tensor>& t) {
  return t.has_value() ? t->const_data_ptr<scalar_t>() : nullptr;
}

}  // namespace

void reparameterize_forward_cuda(ReparamForward& op) {
  const c10::cuda::CUDAGuard guard(op.mu.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Launch launch = launch_for(op.tiles);
  const bool with_kl = op.kl.numel() > 0;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, op.mu.scalar_type(), "reparameterize_cuda", [&] {
    using T = MathType<scalar_t>;
    T* slots = !with_kl ? nullptr : op.kl_partials.defined() ? op.kl_partials.mutable_data_ptr<T>() : op.kl.mutable_data_ptr<T>();
    forward_kernel<scalar_t, T><<<launch.blocks, launch.threads, 0, stream>>>(
        op.mu.const_data_ptr<scalar_t>(), op.logvar.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(op.eps),
        op.seed.has_value() ? op.seed->const_data_ptr<int64_t>() : nullptr, op.tiles,
        op.z.mutable_data_ptr<scalar_t>(), slots);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    if (with_kl && op.kl_partials.defined()) {
      reduce_rows_kernel<T><<<blocks_covering(op.tiles.rows), kThreads, 0, stream>>>(slots, op.tiles,
                                                                                    op.kl.mutable_data_ptr<T>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
}

void reparameterize_backward_cuda(ReparamBackward& op) {
  const c10::cuda::CUDAGuard guard(op.mu.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const Launch launch = launch_for(op.tiles);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, op.mu.scalar_type(), "reparameterize_backward_cuda", [&] {
    using T = MathType<scalar_t>;
    backward_kernel<scalar_t, T><<<launch.blocks, launch.threads, 0, stream>>>(
        op.grad_z.const_data_ptr<scalar_t>(), op.grad_kl.has_value() ? op.grad_kl->const_data_ptr<T>() : nullptr,
        op.mu.const_data_ptr<scalar_t>(), op.logvar.const_data_ptr<scalar_t>(), ptr_or_null<scalar_t>(op.eps),
        ptr_or_null<scalar_t>(op.z), op.seed.has_value() ? op.seed->const_data_ptr<int64_t>() : nullptr,
        op.tiles, data_or_null<scalar_t>(op.grad_mu), data_or_null<scalar_t>(op.grad_logvar),
        data_or_null<scalar_t>(op.grad_eps));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
}

}  // namespace aigc_fast
