// CUDA kernels of aigc_fast::bias_act and of bn_act's normalize pass: elementwise,
// grid-stride, in memory order; element o belongs to channel (o / inner) % channels
// (launch.cuh, ChannelOf). The formulas are the headers the CPU kernels use. The bias gradient is a
// vendor reduction of the unrounded products (bias_act.cpp).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../bias_act.h"
#include "../math_type.h"
#include "../tensor_ref.h"
#include "aigc_fast/batch_norm.h"
#include "launch.cuh"

namespace aigc_fast {
namespace {

template <bool kAffine, Act A, typename T>
__global__ void affine_act_kernel(Ref x, Ref mean, Ref scale, Ref beta, int64_t n, ChannelOf channel_of, T slope,
                                  Ref y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = channel_of(i);
    const T b = beta.data != nullptr ? load<T>(beta, c) : T(-0.0);  // x + (-0) is x
    const T m = kAffine ? load<T>(mean, c) : T(0), s = kAffine ? load<T>(scale, c) : T(1);
    store(y, i, normalize_act<kAffine, A>(load<T>(x, i), m, s, b, slope));
  }
}

// dz (optional) receives the unrounded products for the bias gradient's vendor sum.
template <Act A, typename T>
__global__ void grad_kernel(Ref grad_y, Ref y, int64_t n, T slope, Ref grad_x, Ref dz) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T product = load<T>(grad_y, i) * act_grad_from_output<A>(load<T>(y, i), slope);
    store(grad_x, i, product);
    if (dz.data != nullptr) store(dz, i, product);
  }
}

}  // namespace

void channel_affine_act_cuda(ChannelAffineAct& op, bool affine) {
  const c10::cuda::CUDAGuard guard(op.x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = op.x.numel();
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    with_math_type(op.x, [&](auto type) {
      using T = decltype(type);
      const Ref x = ref(op.x), mean = optional_ref(op.mean), scale = optional_ref(op.scale), beta = optional_ref(op.beta);
      const T slope = static_cast<T>(op.slope);
      const auto kernel = affine ? affine_act_kernel<true, A, T> : affine_act_kernel<false, A, T>;
      kernel<<<grid_for(n), kThreads, 0, stream>>>(x, mean, scale, beta, n, ChannelOf(op.channels, op.inner), slope,
                                                   ref(op.y));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bias_act_cuda(BiasAct& op) {
  ChannelAffineAct affine = bias_only(op);
  channel_affine_act_cuda(affine, false);
}

void bias_act_grad_cuda(BiasActGrad& op) {
  const c10::cuda::CUDAGuard guard(op.y.device());
  if (op.sum_bias) request_unrounded_dz(op);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = op.y.numel();
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    with_math_type(op.y, [&](auto type) {
      using T = decltype(type);
      grad_kernel<A, T><<<grid_for(n), kThreads, 0, stream>>>(ref(op.grad_y), ref(op.y), n, static_cast<T>(op.slope),
                                                              ref(op.grad_x), optional_ref(op.dz));
    });
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace aigc_fast
