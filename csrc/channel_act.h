// What bias_act and bn_act share: the activation, parsed from its name and dispatched as a
// compile-time constant, and the elementwise pass both ops end with,
// y = act((x - mean) * scale + beta) per channel (bn_act's normalize pass), or
// y = act(x + beta) (bias_act). Its kernels are in cpu/bias_act.cpp and cuda/bias_act.cu,
// over the formulas of include/aigc_fast/batch_norm.h and activations.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>

#include "aigc_fast/activations.h"

namespace aigc_fast {

// The activation named `act` (the names of aigc_fast/_activations.py); a clear error otherwise.
Act parse_act(const std::string& act, double slope);  // (defined in bias_act.cpp)

// Calls f with the activation as a compile-time constant.
template <typename F>
auto with_act(Act act, F&& f) {
  switch (act) {
    case Act::kIdentity: return f(std::integral_constant<Act, Act::kIdentity>{});
    case Act::kRelu: return f(std::integral_constant<Act, Act::kRelu>{});
    case Act::kLeakyRelu: return f(std::integral_constant<Act, Act::kLeakyRelu>{});
    case Act::kTanh: return f(std::integral_constant<Act, Act::kTanh>{});
    case Act::kSigmoid: return f(std::integral_constant<Act, Act::kSigmoid>{});
  }
  // (No default: the compiler names an activation added to the table but not here.)
  TORCH_INTERNAL_ASSERT(false, "unknown activation");
}

// The pass, read in memory order as [outer, channels, inner]: with affine,
// y = act((x - mean) * scale + beta); without, y = act(x + beta) (mean and scale undefined).
struct ChannelAffineAct {
  at::Tensor x;
  int64_t channels, inner;
  at::Tensor mean, scale, beta;  // [channels] in the math type; beta undefined: 0
  Act act;
  double slope;
  at::Tensor y;  // laid out like x
};

void channel_affine_act_cpu(ChannelAffineAct& op, bool affine);
#ifdef AIGC_FAST_WITH_CUDA
void channel_affine_act_cuda(ChannelAffineAct& op, bool affine);
#endif

}  // namespace aigc_fast
