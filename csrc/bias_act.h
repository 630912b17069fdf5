// The bias + activation op as the CPU and CUDA kernels see it (bias_act.cpp checks the
// arguments and lays the tensors out). Kernels read x in memory order, as [outer, channels,
// inner] with inner = x.stride(dim): true of every dense layout, NCHW (inner = H * W) and
// channels_last (inner = 1) alike, so the output keeps the input's memory format.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>

#include "aigc_fast/activations.h"

namespace aigc_fast {

struct BiasAct {
  at::Tensor x;     // dense (contiguous or channels_last)
  at::Tensor bias;  // [channels], contiguous, any float dtype; undefined for none
  Act act;
  double slope;     // leaky_relu's negative slope
  int64_t channels, inner;
  at::Tensor y;     // output, laid out like x
};

// Backward from the output alone: grad_x = grad_y * f'(v), with f'(v) read from y. The
// bias gradient sums dz = grad_y * f'(v) by channel in the math type, before dz is rounded to
// a 16-bit grad_x: the CPU kernel in the same pass (bias_sums), the CUDA kernel by writing
// dz for a vendor reduction where grad_x cannot hold it.
struct BiasActGrad {
  at::Tensor grad_y, y;  // same layout
  Act act;
  double slope;
  int64_t channels = 1, inner = 1;  // the bias's channels, as in BiasAct
  at::Tensor grad_x;     // laid out like y
  at::Tensor bias_sums;  // CPU: float64 [channels], filled when defined
  at::Tensor dz;         // CUDA: dz in the math type, laid out like y, written when defined
};

// The activation named `act` (the names of aigc_fast/_activations.py); a clear error otherwise.
Act parse_act(const std::string& act, double slope);

// Calls f with the activation as a compile-time constant.
template <typename F>
auto with_act(Act act, F&& f) {
  switch (act) {
    case Act::kIdentity: return f(std::integral_constant<Act, Act::kIdentity>{});
    case Act::kRelu: return f(std::integral_constant<Act, Act::kRelu>{});
    case Act::kLeakyRelu: return f(std::integral_constant<Act, Act::kLeakyRelu>{});
    case Act::kTanh: return f(std::integral_constant<Act, Act::kTanh>{});
    default: return f(std::integral_constant<Act, Act::kSigmoid>{});
  }
}

void bias_act_cpu(BiasAct& op);
void bias_act_grad_cpu(BiasActGrad& op);
#ifdef AIGC_FAST_WITH_CUDA
void bias_act_cuda(BiasAct& op);
void bias_act_grad_cuda(BiasActGrad& op);
#endif

}  // namespace aigc_fast
