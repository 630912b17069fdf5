// CUDA kernels of aigc_fast::bias_act: elementwise, grid-stride, in memory order; element
// o belongs to channel (o / inner) % channels (bias_act.h). The activation formulas are
// the header the CPU kernels use. The bias gradient is a vendor reduction (bias_act.cpp).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "../bias_act.h"
#include "tensor_ref.cuh"

namespace aigc_fast {
namespace {

constexpr int kThreads = 256;

template <Act A, typename T>
__global__ void forward_kernel(Ref x, Ref bias, int64_t n, int64_t channels, int64_t inner, T slope,
                               Ref y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const T b = bias.data != nullptr ? load<T>(bias, (i / inner) % channels) : T(-0.0);  // x + (-0) is x
    store(y, i, act_forward<A>(load<T>(x, i) + b, slope));
  }
}

template <Act A, typename T>
__global__ void grad_kernel(Ref grad_y, Ref y, int64_t n, T slope, Ref grad_x) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    store(grad_x, i, load<T>(grad_y, i) * act_grad_from_output<A>(load<T>(y, i), slope));
  }
}

int grid_for(int64_t n) {
  const int64_t blocks = (n + kThreads - 1) / kThreads;
  const int64_t max_blocks = int64_t(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) * 16;
  return static_cast<int>(blocks < max_blocks ? blocks : max_blocks);
}

}  // namespace

void bias_act_cuda(BiasAct& op) {
  const c10::cuda::CUDAGuard guard(op.x.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = op.x.numel();
  const Ref bias = op.bias.defined() ? ref(op.bias) : Ref{nullptr, DType::kFloat};
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    if (op.x.scalar_type() == at::kDouble) {
      forward_kernel<A, double><<<grid_for(n), kThreads, 0, stream>>>(ref(op.x), bias, n, op.channels, op.inner,
                                                                     op.slope, ref(op.y));
    } else {
      forward_kernel<A, float><<<grid_for(n), kThreads, 0, stream>>>(ref(op.x), bias, n, op.channels, op.inner,
                                                                    static_cast<float>(op.slope), ref(op.y));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void bias_act_grad_cuda(BiasActGrad& op) {
  const c10::cuda::CUDAGuard guard(op.y.device());
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  const int64_t n = op.y.numel();
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    if (op.y.scalar_type() == at::kDouble) {
      grad_kernel<A, double><<<grid_for(n), kThreads, 0, stream>>>(ref(op.grad_y), ref(op.y), n, op.slope,
                                                                  ref(op.grad_x));
    } else {
      grad_kernel<A, float><<<grid_for(n), kThreads, 0, stream>>>(ref(op.grad_y), ref(op.y), n,
                                                                 static_cast<float>(op.slope), ref(op.grad_x));
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace aigc_fast
