// The BatchNorm + activation op as the CPU and CUDA kernels see it (bn_act.cpp checks the
// arguments and lays the tensors out). Like bias_act, tensors are read in memory order as
// [outer, channels, inner] (inner = H * W for NCHW, 1 for channels_last); the math is
// include/aigc_fast/batch_norm.h.
#pragma once

#include <ATen/core/Tensor.h>

#include "aigc_fast/batch_norm.h"
#include "bias_act.h"  // with_act

namespace aigc_fast {

// Per-channel statistics of x: mean and biased variance, in float64 (the kernels' merge type).
struct ChannelStats {
  at::Tensor x;  // dense
  int64_t channels, inner;
  at::Tensor mean, var;  // [channels] float64 outputs
};

// y = act((x - mean) * scale + beta) per channel, or act(x + beta) without kAffine (bias_act).
struct ChannelAffineAct {
  at::Tensor x;
  int64_t channels, inner;
  at::Tensor mean, scale, beta;  // [channels] in the math type (mean, scale undefined: bias only)
  Act act;
  double slope;
  at::Tensor y;  // laid out like x
};

// The bn_act backward: two passes (per-channel sums, then dx), with the coefficients of
// batch_norm.h.
struct BnActGrad {
  at::Tensor grad_y, y, x;  // same layout; x undefined in the memory-saving mode
  int64_t channels, inner;
  at::Tensor shift;  // [channels], math type: S = mean (or beta in the memory-saving mode)
  Act act;
  double slope;
  // pass 1: per-channel sums of dz and dz * (u - S) ([channels], float64)
  at::Tensor sum_dz, sum_dz_centered;
  // pass 2 (when grad_x is defined): dx = a * ((dz + c) + b * (u - S))
  at::Tensor a, b, c;  // [channels], math type
  at::Tensor grad_x;
};

// Calls f(from_output, act, T{}) with the backward's mode (std::true_type: x not kept, the
// memory-saving mode), activation and math type (double for float64, else float) as
// compile-time values: the one dispatch of the CPU and CUDA backward kernels.
template <typename F>
void with_grad_kernel(const BnActGrad& op, const F& f) {
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    const auto with_type = [&](auto from_output) {
      op.y.scalar_type() == at::kDouble ? f(from_output, act, double{}) : f(from_output, act, float{});
    };
    if (op.x.defined()) return with_type(std::false_type{});
    if constexpr (A == Act::kIdentity || A == Act::kLeakyRelu || A == Act::kTanh) {
      with_type(std::true_type{});
    } else {
      TORCH_CHECK(false, "bn_act: the memory-saving backward needs an invertible activation");
    }
  });
}

void channel_stats_cpu(ChannelStats& op);
void channel_affine_act_cpu(ChannelAffineAct& op, bool affine);
void bn_act_sums_cpu(BnActGrad& op);
void bn_act_grad_input_cpu(BnActGrad& op);
#ifdef AIGC_FAST_WITH_CUDA
void channel_stats_cuda(ChannelStats& op);
void channel_affine_act_cuda(ChannelAffineAct& op, bool affine);
void bn_act_sums_cuda(BnActGrad& op);
void bn_act_grad_input_cuda(BnActGrad& op);
#endif

}  // namespace aigc_fast
