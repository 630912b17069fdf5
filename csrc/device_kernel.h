// Which device's kernel runs an op: the one its tensors live on. Host code calls
// run_on_device(tensor, op, cpu_kernel, AIGC_CUDA_KERNEL(cuda_kernel)), so the build
// without CUDA kernels (where the CUDA symbols do not exist) is handled here, once.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <type_traits>

#ifdef AIGC_FAST_WITH_CUDA
#define AIGC_CUDA_KERNEL(kernel) (&(kernel))
#else
#define AIGC_CUDA_KERNEL(kernel) nullptr
#endif

namespace aigc_fast {

// Runs cuda(op) for a CUDA tensor, else cpu(op). A build without CUDA kernels registers no
// CUDA implementation of any op, so a CUDA tensor reaches this only through a bug; the
// check says so rather than calling a null pointer.
template <typename Op>
void run_on_device(const at::Tensor& on, Op& op, std::type_identity_t<void (*)(Op&)> cpu,
                   std::type_identity_t<void (*)(Op&)> cuda) {
  if (on.is_cuda()) {
    TORCH_CHECK(cuda != nullptr, "aigc_fast: this build has no CUDA kernels (AIGC_FAST_CUDA=0)");
    cuda(op);
  } else {
    cpu(op);
  }
}

}  // namespace aigc_fast
