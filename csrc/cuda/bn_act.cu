// CUDA kernels of aigc_fast::bn_act's statistics and backward (its normalize pass is in
// bias_act.cu). Reductions are two-stage and deterministic: block (channel, split) reduces
// a fixed slice of one channel's elements (the backward's sums with block_sum, the
// statistics with a fixed merge_moments tree; the *_rows kernels, for short runs, take 32
// channels a block, thread row 0 adding in order), and one thread per channel merges the
// slices in order in float64.
// The per-element math is batch_norm.h's, as on CPU.
//
// Element k of channel c sits at ((k / inner) * channels + c) * inner + k % inner (the
// division by Divider's multiply). Where channels are innermost (inner = 1: channels_last,
// or [N, C]) that walk reads `channels` apart within a warp; past kRowKernelsFrom
// elements those layouts take the row kernels instead: a block of 32 channels x 8 rows, a
// warp reading 32 neighbouring channels of one row (coalesced), each thread one channel
// over every 8th row of its split. Both write the same partials, merged by the same
// kernels.
#include <ATen/cuda/CUDAContext.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>

#include <algorithm>
#include <limits>

#include "../bn_act.h"
#include "../tensor_ref.h"
#include "block_reduce.cuh"
#include "launch.cuh"

namespace aigc_fast {
namespace {

static_assert((kThreads & (kThreads - 1)) == 0, "the stats kernel's tree merge halves the block");
constexpr int64_t kPerSplit = 16384;  // elements of one channel per block, at least
constexpr int64_t kMaxSplits = 256;

struct ChannelSlices {
  int64_t channels;
  Divider inner;
  int64_t per_channel, splits;
  __device__ int64_t offset(int64_t c, int64_t k) const {
    const int64_t outer = inner.div(k);
    return (outer * channels + c) * inner.divisor + (k - outer * inner.divisor);
  }
  __device__ int64_t begin(int64_t split) const { return per_channel * split / splits; }
};

// Splits of `length` elements (or rows) into slices of at least `per_split`, at most kMaxSplits.
int64_t split_count(int64_t length, int64_t per_split) {
  return std::clamp<int64_t>(ceil_div(length, per_split), 1, kMaxSplits);
}

ChannelSlices slices_of(int64_t numel, int64_t channels, int64_t inner) {
  const int64_t per_channel = numel / channels;
  return ChannelSlices{channels, Divider(inner), per_channel, split_count(per_channel, kPerSplit)};
}

// Stage 1 of the statistics: each thread keeps the moments of its elements of the slice
// (Welford's update in the math type), and the block merges the threads' moments in a fixed
// tree with merge_moments (float64), as the CPU merges its pieces: no sum of squares, so a
// channel far from zero keeps its variance. Out: 3 doubles per (channel, split).
template <typename T>
__global__ void stats_kernel(Ref x, ChannelSlices s, double* partials) {
  __shared__ double counts[kThreads], means[kThreads], m2s[kThreads];
  const int64_t c = blockIdx.x, split = blockIdx.y;  // channels on x: up to 2^31 - 1 of them
  T n = 0, mean = 0, m2 = 0;
  const int64_t end = s.begin(split + 1);
  for (int64_t k = s.begin(split) + threadIdx.x; k < end; k += blockDim.x) {
    welford_push(n, mean, m2, load<T>(x, s.offset(c, k)));
  }
  counts[threadIdx.x] = double(n);
  means[threadIdx.x] = double(mean);
  m2s[threadIdx.x] = double(m2);
  __syncthreads();
  // Pairwise in a fixed tree (deterministic): 8 rounds for 256 threads, where thread 0
  // merging them one by one took 256 float64 merges in sequence.
  for (int half = blockDim.x / 2; half > 0; half /= 2) {
    if (threadIdx.x < half) {
      const int t = threadIdx.x, u = t + half;
      Moments m{counts[t], means[t], m2s[t]};
      merge_moments(m, counts[u], means[u], m2s[u]);
      counts[t] = m.count;
      means[t] = m.mean;
      m2s[t] = m.m2;
    }
    __syncthreads();
  }
  if (threadIdx.x == 0) {
    double* out = partials + (c * s.splits + split) * 3;
    out[0] = counts[0];
    out[1] = means[0];
    out[2] = m2s[0];
  }
}

// Where the row kernels take over. They read coalesced but split the rows 256 ways, and the
// merge kernels then run 256 float64 merges in sequence per channel (~70 us for the
// statistics, ~30 for the sums, on an H200): measured there (bench/NOTES.md, 2026-11-30),
// the DCGAN 64x64 step's BatchNorms (up to 2^23 elements) spent 1.98 ms in the row kernels
// and merges against 1.16 in the channel walk, while at 64x64x128x128 the post part took
// 1.67 ms against 2.81. A merge in parallel over the splits would let them run everywhere.
constexpr int64_t kRowKernelsFrom = int64_t(1) << 23;

bool use_row_kernels(int64_t inner, int64_t numel) { return inner == 1 && numel > kRowKernelsFrom; }

// The row kernels' block: 32 channels (one warp's lanes) by kRowLanes rows.
constexpr int kRowLanes = kThreads / 32;
constexpr int64_t kRowsPerSplit = 64;  // rows of one split, at least
static_assert(kRowLanes * 32 == kThreads, "the row kernels' block is kThreads threads");

// [rows, channels] with channels innermost: splits of the rows, as ChannelSlices splits a
// channel (per_channel = rows).
ChannelSlices row_slices_of(int64_t numel, int64_t channels) {
  const int64_t rows = numel / channels;
  return ChannelSlices{channels, Divider(1), rows, split_count(rows, kRowsPerSplit)};
}

// The slices of a reduction over [outer, channels, inner]: rows when use_row_kernels.
ChannelSlices reduction_slices(int64_t numel, int64_t channels, int64_t inner) {
  return use_row_kernels(inner, numel) ? row_slices_of(numel, channels) : slices_of(numel, channels, inner);
}

dim3 row_grid(const ChannelSlices& s) { return dim3(static_cast<unsigned>((s.channels + 31) / 32), s.splits); }

// Stage 1 of the statistics for channels-innermost tensors: Welford per thread over its
// rows (four loads in flight before their updates), then thread row 0 merges the block's
// rows in order (merge_moments, float64). Same partials as stats_kernel.
template <typename T>
__global__ void stats_rows_kernel(Ref x, ChannelSlices s, double* partials) {
  __shared__ double counts[kRowLanes][32], means[kRowLanes][32], m2s[kRowLanes][32];
  const int lane = threadIdx.x, row_lane = threadIdx.y;
  const int64_t c = blockIdx.x * int64_t(32) + lane, split = blockIdx.y;
  T n = 0, mean = 0, m2 = 0;
  auto update = [&](T v) { welford_push(n, mean, m2, v); };
  if (c < s.channels) {
    const int64_t end = s.begin(split + 1);
    int64_t r = s.begin(split) + row_lane;
    for (; r + 3 * kRowLanes < end; r += 4 * kRowLanes) {
      T v[4];
#pragma unroll
      for (int u = 0; u < 4; ++u) v[u] = load<T>(x, (r + u * kRowLanes) * s.channels + c);
#pragma unroll
      for (int u = 0; u < 4; ++u) update(v[u]);
    }
    for (; r < end; r += kRowLanes) update(load<T>(x, r * s.channels + c));
  }
  counts[row_lane][lane] = double(n);
  means[row_lane][lane] = double(mean);
  m2s[row_lane][lane] = double(m2);
  __syncthreads();
  if (row_lane == 0 && c < s.channels) {
    Moments m{0, 0, 0};
    for (int j = 0; j < kRowLanes; ++j) merge_moments(m, counts[j][lane], means[j][lane], m2s[j][lane]);
    double* out = partials + (c * s.splits + split) * 3;
    out[0] = m.count;
    out[1] = m.mean;
    out[2] = m.m2;
  }
}

// Stage 2, one thread per channel: merges the slices in order, then the channel's step.
__global__ void stats_merge_kernel(const double* partials, int64_t channels, int64_t splits, Ref x, int64_t numel,
                                   int64_t inner, BnForwardChannels step) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  Moments m{0, 0, 0};
  for (int64_t split = 0; split < splits; ++split) {
    const double* p = partials + (c * splits + split) * 3;
    merge_moments(m, p[0], p[1], p[2]);
  }
  if (moments_overflowed(m)) m = exact_channel_moments(x, numel, channels, inner, c, m);
  bn_forward_channel_batch(step, c, m);
}

__global__ void forward_channels_kernel(BnForwardChannels step, int64_t channels) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c < channels) bn_forward_channel_eval(step, c);
}

// The backward's per-channel coefficients (batch_norm.h; math-type tensors).
struct GradParams {
  Ref shift, a, b, c;
};

// (with_grad_kernel<false>: these kernels read act'(z) from y, never GradFrom::kInput, so
// the GradChannel's scale, beta and cut go unread.)
template <GradFrom F, Act A, typename T>
__device__ void element(Ref dy, Ref y, Ref x, const GradParams& p, int64_t c, int64_t i, T slope, T& dz, T& centered) {
  static_assert(F != GradFrom::kInput, "recomputing z from x needs the channel's scale, beta and cut in GradParams");
  const GradChannel<T> ch{load<T>(p.shift, c), T(1), T(0), T(0)};
  dz_and_centered<F, A>(load<T>(dy, i), load<T>(y, i), reads_input(F) ? load<T>(x, i) : T(0), ch, slope, dz,
                        centered);
}

template <GradFrom F, Act A, typename T>
__global__ void sums_kernel(Ref dy, Ref y, Ref x, GradParams p, ChannelSlices s, T slope, double* partials) {
  const int64_t c = blockIdx.x, split = blockIdx.y;  // channels on x: up to 2^31 - 1 of them
  T s1 = 0, s2 = 0;
  const int64_t end = s.begin(split + 1);
  for (int64_t k = s.begin(split) + threadIdx.x; k < end; k += blockDim.x) {
    T dz, centered;
    element<F, A>(dy, y, x, p, c, s.offset(c, k), slope, dz, centered);
    s1 += dz;
    s2 += dz * centered;
  }
  const T sum1 = block_sum(s1), sum2 = block_sum(s2);
  if (threadIdx.x == 0) {
    partials[(c * s.splits + split) * 2] = double(sum1);
    partials[(c * s.splits + split) * 2 + 1] = double(sum2);
  }
}

// sums_kernel for channels-innermost tensors (the row kernels' walk, as stats_rows_kernel);
// thread row 0 adds the block's rows in order. Same partials as sums_kernel.
template <GradFrom F, Act A, typename T>
__global__ void sums_rows_kernel(Ref dy, Ref y, Ref x, GradParams p, ChannelSlices s, T slope, double* partials) {
  __shared__ T sums1[kRowLanes][32], sums2[kRowLanes][32];
  const int lane = threadIdx.x, row_lane = threadIdx.y;
  const int64_t c = blockIdx.x * int64_t(32) + lane, split = blockIdx.y;
  T s1 = 0, s2 = 0;
  if (c < s.channels) {
    const int64_t end = s.begin(split + 1);
#pragma unroll 4
    for (int64_t r = s.begin(split) + row_lane; r < end; r += kRowLanes) {
      T dz, centered;
      element<F, A>(dy, y, x, p, c, r * s.channels + c, slope, dz, centered);
      s1 += dz;
      s2 += dz * centered;
    }
  }
  sums1[row_lane][lane] = s1;
  sums2[row_lane][lane] = s2;
  __syncthreads();
  if (row_lane == 0 && c < s.channels) {
    double t1 = 0, t2 = 0;
    for (int j = 0; j < kRowLanes; ++j) {
      t1 += double(sums1[j][lane]);
      t2 += double(sums2[j][lane]);
    }
    partials[(c * s.splits + split) * 2] = t1;
    partials[(c * s.splits + split) * 2 + 1] = t2;
  }
}

__global__ void sums_merge_kernel(const double* partials, int64_t channels, int64_t splits, BnBackwardChannels step) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c >= channels) return;
  double s1 = 0, s2 = 0;
  for (int64_t split = 0; split < splits; ++split) {
    s1 += partials[(c * splits + split) * 2];
    s2 += partials[(c * splits + split) * 2 + 1];
  }
  bn_backward_channel(step, c, s1, s2);
}

__global__ void backward_channels_kernel(BnBackwardChannels step, int64_t channels) {
  const int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (c < channels) bn_backward_channel(step, c, 0.0, 0.0);
}

template <GradFrom F, Act A, typename T>
__global__ void grad_input_kernel(Ref dy, Ref y, Ref x, GradParams p, int64_t n, ChannelOf channel_of, T slope,
                                  bool batch_stats, Ref dx) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i);
    T dz, centered;
    element<F, A>(dy, y, x, p, c, i, slope, dz, centered);
    const T a = load<T>(p.a, c);
    store(dx, i, batch_stats ? bn_grad_input<true>(dz, centered, a, load<T>(p.b, c), load<T>(p.c, c))
                             : bn_grad_input<false>(dz, centered, a, T(0), T(0)));
  }
}

GradParams grad_params(const BnActGrad& op) {
  return GradParams{optional_ref(op.shift), optional_ref(op.a), optional_ref(op.b), optional_ref(op.c)};
}

// The reductions give each channel a column of blocks: gridDim.x caps the channels.
void check_channel_grid(int64_t channels) {
  TORCH_CHECK(channels <= std::numeric_limits<int32_t>::max(), "bn_act on CUDA takes at most 2^31 - 1 channels, got ",
              channels);
}

}  // namespace

void channel_stats_cuda(ChannelStats& op) {
  check_channel_grid(op.channels);
  const c10::cuda::CUDAGuard guard(op.x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool rows = use_row_kernels(op.inner, op.x.numel());
  const ChannelSlices s = reduction_slices(op.x.numel(), op.channels, op.inner);
  const at::Tensor partials = at::empty({op.channels * s.splits * 3}, op.x.options().dtype(at::kDouble));
  with_math_type(op.x, [&](auto type) {
    using T = decltype(type);
    double* out = partials.mutable_data_ptr<double>();
    if (rows) {
      stats_rows_kernel<T><<<row_grid(s), dim3(32, kRowLanes), 0, stream>>>(ref(op.x), s, out);
    } else {
      stats_kernel<T><<<dim3(op.channels, s.splits), kThreads, 0, stream>>>(ref(op.x), s, out);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  stats_merge_kernel<<<blocks_covering(op.channels), kThreads, 0, stream>>>(
      partials.const_data_ptr<double>(), op.channels, s.splits, ref(op.x), op.x.numel(), op.inner, op.step);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The per-channel steps carry raw pointers only: the caller (bn_act_op, bn_act_backward_op)
// holds the DeviceGuard of x's device, so the current stream is that device's.
void forward_channels_cuda(const BnForwardChannels& step, int64_t channels) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  forward_channels_kernel<<<blocks_covering(channels), kThreads, 0, stream>>>(step, channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bn_act_sums_cuda(BnActGrad& op) {
  check_channel_grid(op.channels);
  const c10::cuda::CUDAGuard guard(op.y.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const bool rows = use_row_kernels(op.inner, op.y.numel());
  const ChannelSlices s = reduction_slices(op.y.numel(), op.channels, op.inner);
  const at::Tensor partials = at::empty({op.channels * s.splits * 2}, op.y.options().dtype(at::kDouble));
  const Ref x = optional_ref(op.x);
  with_grad_kernel<false>(op, [&](auto from, auto act, auto type) {
    using T = decltype(type);
    constexpr GradFrom kFrom = decltype(from)::value;
    constexpr Act kAct = decltype(act)::value;
    double* out = partials.mutable_data_ptr<double>();
    if (rows) {
      sums_rows_kernel<kFrom, kAct, T><<<row_grid(s), dim3(32, kRowLanes), 0, stream>>>(
          ref(op.grad_y), ref(op.y), x, grad_params(op), s, static_cast<T>(op.slope), out);
    } else {
      sums_kernel<kFrom, kAct, T><<<dim3(op.channels, s.splits), kThreads, 0, stream>>>(
          ref(op.grad_y), ref(op.y), x, grad_params(op), s, static_cast<T>(op.slope), out);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  sums_merge_kernel<<<blocks_covering(op.channels), kThreads, 0, stream>>>(partials.const_data_ptr<double>(),
                                                                           op.channels, s.splits, op.step);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void backward_channels_cuda(const BnBackwardChannels& step, int64_t channels) {
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  backward_channels_kernel<<<blocks_covering(channels), kThreads, 0, stream>>>(step, channels);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bn_act_grad_input_cuda(BnActGrad& op) {
  const c10::cuda::CUDAGuard guard(op.y.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = op.y.numel();
  const Ref x = optional_ref(op.x);
  with_grad_kernel<false>(op, [&](auto from, auto act, auto type) {
    using T = decltype(type);
    grad_input_kernel<decltype(from)::value, decltype(act)::value, T><<<grid_for(n), kThreads, 0, stream>>>(
        ref(op.grad_y), ref(op.y), x, grad_params(op), n, ChannelOf(op.channels, op.inner), static_cast<T>(op.slope),
        op.step.training, ref(op.grad_x));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace aigc_fast
