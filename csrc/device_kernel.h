// Which device's kernel runs an op: the one its tensors live on. Host code calls
// run_on_device(tensor, op, cpu_kernel, AIGC_CUDA_KERNEL(cuda_kernel)); in a build without
// CUDA kernels, where the CUDA symbols do not exist, the macro makes that argument null, so
// the call sites need no #ifdef of their own.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#ifdef AIGC_FAST_WITH_CUDA
#define AIGC_CUDA_KERNEL(kernel) (&(kernel))
#else
#define AIGC_CUDA_KERNEL(kernel) nullptr
#endif

namespace aigc_fast {

// A kernel of `op`: void kernel(Op&). Named through a struct so that only `op` decides Op
// (a nullptr argument could not), as C++20's std::type_identity would; C++17 builds too.
template <typename Op>
struct KernelOf {
  using type = void (*)(Op&);
};

// A build without CUDA kernels registers no CUDA implementation of any op, so a CUDA tensor
// reaches a kernel choice there only through a bug: this says so, rather than calling a
// null pointer or running a CPU kernel on GPU memory.
inline void fail_without_cuda_kernels() {
  TORCH_CHECK(false, "aigc_fast was built without its CUDA kernels; reinstall it where nvcc and a CUDA build of "
              "torch are present");
}

// Runs cuda(op) for a CUDA tensor, else cpu(op).
template <typename Op>
void run_on_device(const at::Tensor& on, Op& op, typename KernelOf<Op>::type cpu,
                   typename KernelOf<Op>::type cuda) {
  if (on.is_cuda()) {
    if (cuda == nullptr) fail_without_cuda_kernels();
    cuda(op);
  } else {
    cpu(op);
  }
}

}  // namespace aigc_fast
