// CUDA kernels of the GAN and VAE losses. Stage 1: one thread block per tile (grid-stride
// over tiles) computes the shared per-element math, writes the gradients and puts the
// tile's float64 sum in its slot. Stage 2: one block adds the slots with a fixed thread
// assignment and a fixed-order block sum. No atomics, so results are bit-reproducible.
// Inputs may each have their own dtype (as autocast produces them); the dtype switch in
// load/store is the same for a whole warp, so it costs no divergence.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../losses.h"
#include "../tensor_ref.h"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace aigc_fast {
namespace {

// One GAN loss term as the kernel sees it; its tiles are numbered from `first_tile`.
struct TermArgs {
  Ref x, grad;
  RowTiles tiles;
  double param;
  int64_t numel;
  int64_t first_tile;
};

TermArgs term_args(const LogitTerm& term, int64_t first_tile) {
  return TermArgs{ref(term.x), ref(term.grad), term.tiles, term.param, term.x.numel(), first_tile};
}

template <TermKind K, typename T>
__global__ void gan_tiles_kernel(TermArgs a, TermArgs b, int64_t tiles, double* __restrict__ partials) {
  for (int64_t tile = blockIdx.x; tile < tiles; tile += gridDim.x) {
    // By value: a reference chosen between two kernel parameters put both on the stack.
    const TermArgs term = tile < b.first_tile ? a : b;
    const int64_t local = tile - term.first_tile;
    const int64_t begin = term.tiles.begin(local), end = term.tiles.end(local);
    const T param = static_cast<T>(term.param), scale = T(1) / static_cast<T>(term.numel);
    double sum = 0.0;
    for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
      T d_x;
      sum += logit_term<K>(load<T>(term.x, i), param, d_x);
      store(term.grad, i, d_x * scale);
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[tile] = sum;
  }
}

// One block: the loss is each term's slot sum over its element count, terms added in order.
template <typename T>
__global__ void gan_finalize_kernel(const double* __restrict__ partials, TermArgs a, TermArgs b,
                                    int64_t tiles, T* __restrict__ loss) {
  double sum_a = 0.0, sum_b = 0.0;
  for (int64_t t = threadIdx.x; t < tiles; t += blockDim.x) (t < b.first_tile ? sum_a : sum_b) += partials[t];
  sum_a = block_sum(sum_a);
  sum_b = block_sum(sum_b);
  if (threadIdx.x == 0) {
    const double mean_b = b.numel > 0 ? sum_b / static_cast<double>(b.numel) : 0.0;
    *loss = static_cast<T>(sum_a / static_cast<double>(a.numel) + mean_b);
  }
}

struct VaeArgs {
  Ref recon, target, mu, logvar, grad_recon, grad_target, grad_mu, grad_logvar;
  RowTiles tiles;
  int64_t latent;
  double scale, kl_scale;
};

template <ReconKind R, bool kTargetGrad, typename T>
__global__ void vae_units_kernel(VaeArgs v, int64_t units, double* __restrict__ partials) {
  const int64_t recon_units = v.tiles.count();
  const T scale = static_cast<T>(v.scale), kl_scale = static_cast<T>(v.kl_scale);
  for (int64_t unit = blockIdx.x; unit < units; unit += gridDim.x) {
    double sum = 0.0;
    if (unit < recon_units) {
      const int64_t begin = v.tiles.begin(unit), end = v.tiles.end(unit);
      for (int64_t i = begin + threadIdx.x; i < end; i += blockDim.x) {
        T d_x, d_t;
        sum += recon_term<R, kTargetGrad>(load<T>(v.recon, i), load<T>(v.target, i), d_x, d_t);
        store(v.grad_recon, i, d_x * scale);
        if constexpr (kTargetGrad) store(v.grad_target, i, d_t * scale);
      }
    } else {  // one sample's KL
      const int64_t begin = (unit - recon_units) * v.latent;
      for (int64_t i = begin + threadIdx.x; i < begin + v.latent; i += blockDim.x) {
        T d_mu, d_logvar;
        sum += kl_term_with_grads(load<T>(v.mu, i), load<T>(v.logvar, i), d_mu, d_logvar);
        store(v.grad_mu, i, d_mu * kl_scale);
        store(v.grad_logvar, i, d_logvar * kl_scale);
      }
    }
    sum = block_sum(sum);
    if (threadIdx.x == 0) partials[unit] = sum;
  }
}

// One block: per-sample totals (reduction "none"), or their sum or mean.
template <typename T>
__global__ void vae_finalize_kernel(const double* __restrict__ partials, RowTiles tiles, Reduction reduction,
                                    VaeOutputs<T> out) {
  const int64_t recon_units = tiles.count();
  double recon_sum = 0.0, kl_sum = 0.0;
  for (int64_t b = threadIdx.x; b < tiles.rows; b += blockDim.x) {
    const double recon = tiles.row_total(partials, b), kl = partials[recon_units + b];
    if (reduction == Reduction::kNone) out.sample(b, recon, kl);
    recon_sum += recon;
    kl_sum += kl;
  }
  recon_sum = block_sum(recon_sum);
  kl_sum = block_sum(kl_sum);
  if (threadIdx.x == 0 && reduction != Reduction::kNone) out.batch(recon_sum, kl_sum, tiles.rows, reduction);
}

// One block per unit (a tile, a row), up to 8 per SM; the grid-stride loops cover the rest.
int blocks_for_units(int64_t units) { return capped_grid(units, 8); }

template <typename T>
void gan_launch(GanLoss& op, cudaStream_t stream) {
  const TermArgs a = term_args(op.terms[0], 0);
  TermArgs b = a;
  b.numel = 0;
  b.first_tile = a.tiles.count();
  if (op.terms.size() > 1) {
    TORCH_INTERNAL_ASSERT(op.terms[1].kind == op.terms[0].kind);
    b = term_args(op.terms[1], a.tiles.count());
  }
  const int64_t tiles = op.partials.numel();
  double* partials = op.partials.mutable_data_ptr<double>();
  with_term_kind(op.terms[0].kind, [&](auto kind) {
    gan_tiles_kernel<decltype(kind)::value, T>
        <<<blocks_for_units(tiles), kThreads, 0, stream>>>(a, b, tiles, partials);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  gan_finalize_kernel<T><<<1, kThreads, 0, stream>>>(partials, a, b, tiles, op.loss.mutable_data_ptr<T>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

template <typename T>
void vae_launch(VaeLoss& op, cudaStream_t stream) {
  const VaeArgs args{ref(op.recon), ref(op.target), ref(op.mu), ref(op.logvar),
                     ref(op.grad_recon), ref(op.grad_target), ref(op.grad_mu), ref(op.grad_logvar),
                     op.recon_tiles, op.latent, op.grad_scale(), op.kl_grad_scale()};
  const int64_t units = op.partials.numel();
  double* partials = op.partials.mutable_data_ptr<double>();
  with_recon_kind(op.recon_kind, op.grad_target.numel() > 0, [&](auto kind, auto target_grad) {
    vae_units_kernel<decltype(kind)::value, decltype(target_grad)::value, T>
        <<<blocks_for_units(units), kThreads, 0, stream>>>(args, units, partials);
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  vae_finalize_kernel<T><<<1, kThreads, 0, stream>>>(partials, op.recon_tiles, op.reduction, vae_outputs<T>(op));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void gan_loss_cuda(GanLoss& op) {
  const c10::cuda::CUDAGuard guard(op.terms[0].x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (op.double_math) return gan_launch<double>(op, stream);
  gan_launch<float>(op, stream);
}

void vae_loss_cuda(VaeLoss& op) {
  const c10::cuda::CUDAGuard guard(op.recon.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (op.double_math) return vae_launch<double>(op, stream);
  vae_launch<float>(op, stream);
}

}  // namespace aigc_fast
