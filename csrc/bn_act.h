// The BatchNorm + activation op as the CPU and CUDA kernels see it (bn_act.cpp checks the
// arguments and lays the tensors out). Like bias_act, tensors are read in memory order as
// [outer, channels, inner] (inner = H * W for NCHW, 1 for channels_last); the math is
// include/aigc_fast/batch_norm.h.
#pragma once

#include <ATen/core/Tensor.h>

#include <cfloat>
#include <cmath>
#include <type_traits>

#include "aigc_fast/batch_norm.h"
#include "channel_act.h"
#include "math_type.h"
#include "tensor_ref.h"

namespace aigc_fast {

// The per-channel steps between the passes, in float64, written once for both devices: the
// CPU runs them in a loop after its reductions, the CUDA kernels one thread per channel (in
// the kernel that merges the reduction's partials). Each [channels] vector is read and
// written in its own dtype through a Ref, so no per-channel ATen op (on CUDA, a kernel
// launch each) runs between the passes. Vectors are dense; an absent one has null data.

// The normalize pass's scale, gamma * invstd (gamma absent: 1), in float64. Both passes
// form it from invstd as stored in the math type, so the backward rounds it to the
// forward's bits (which GradFrom::kInput needs to recompute z).
AIGC_HD double bn_scale(const Ref& weight, int64_t c, double invstd) {
  return (weight.data != nullptr ? load<double>(weight, c) : 1.0) * invstd;
}

// Forward: nn.BatchNorm's running update (training), invstd, and the normalize
// coefficients of the affine pass.
struct BnForwardChannels {
  Ref weight, bias;                     // absent: gamma 1, beta 0
  Ref running_mean, running_var;        // read in eval; updated in training when present
  const int64_t* num_batches_tracked;   // given for momentum=None: a cumulative average
  double momentum, eps, bessel;         // bessel = n / (n - 1), for the unbiased variance
  bool training;
  Ref mean, invstd, scale, beta;        // outputs, in the math type
};

// One channel, with the batch's mean and biased variance (or, in eval, the running ones).
AIGC_HD void bn_forward_channel(const BnForwardChannels& p, int64_t c, double mean, double var) {
  if (p.training && p.running_mean.data != nullptr) {
    // running = f * batch + (1 - f) * running, with the unbiased variance; f = momentum,
    // or 1 / num_batches_tracked (already counting this batch).
    const double f = p.num_batches_tracked != nullptr ? 1.0 / double(*p.num_batches_tracked) : p.momentum;
    store(p.running_mean, c, mean * f + load<double>(p.running_mean, c) * (1.0 - f));
    store(p.running_var, c, var * p.bessel * f + load<double>(p.running_var, c) * (1.0 - f));
  }
  // scale from invstd as stored, as the backward (given the stored invstd) forms it too.
  store(p.invstd, c, 1.0 / sqrt(var + p.eps));
  store(p.mean, c, mean);
  store(p.scale, c, bn_scale(p.weight, c, load<double>(p.invstd, c)));
  store(p.beta, c, p.bias.data != nullptr ? load<double>(p.bias, c) : 0.0);
}

// Training: the batch's moments of one channel. The biased variance m2 / count is never
// negative but for rounding; the clamp keeps a NaN (from a NaN or infinite input), so the
// running variance turns NaN as nn.BatchNorm2d's does.
AIGC_HD void bn_forward_channel_batch(const BnForwardChannels& p, int64_t c, const Moments& m) {
  const double var = m.m2 / m.count;
  bn_forward_channel(p, c, m.mean, var < 0.0 ? 0.0 : var);
}

// A channel's moments again, in float64 element by element (ATen's CPU BatchNorm also
// accumulates in float64), for a channel whose merged moments came out infinite or NaN: finite
// data can overflow the math type's sums (|x - shift| past ~1e19 squares past float32's
// range) and must still get its statistics. (The outputs are then the exact normalized
// values; ATen's float32 invstd of the variance, itself past float32's range, is 0.) An
// inf in the data gives ATen's statistics too (an infinite mean, a NaN variance), after
// one serial pass over the channel; a NaN keeps the merged NaN, found at the first one,
// so a run diverged to NaN pays only up to it, per channel and step. A rare path (one
// thread per such channel on CUDA: slow for an inf in a large channel), written for
// clarity, not speed. x is dense, read in memory order as [outer, channels, inner].
AIGC_HD Moments exact_channel_moments(const Ref& x, int64_t numel, int64_t channels, int64_t inner, int64_t c,
                                      const Moments& merged) {
  const int64_t outer = numel / (channels * inner);
  double sum = 0.0, m2 = 0.0;
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const double v = load<double>(x, (o * channels + c) * inner + i);
      if (v != v) return merged;
      sum += v;
    }
  }
  const double count = double(outer * inner), mean = sum / count;
  // An infinite mean comes only from an inf in the data (float data cannot overflow a double
  // sum), whose own d = inf - inf makes m2 NaN: the result without the second pass.
  if (!(fabs(mean) <= DBL_MAX)) return Moments{count, mean, NAN};
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < inner; ++i) {
      const double d = load<double>(x, (o * channels + c) * inner + i) - mean;
      m2 += d * d;
    }
  }
  return Moments{count, mean, m2};
}

// Whether the merged moments are infinite or NaN (comparisons are false for NaN).
AIGC_HD bool moments_overflowed(const Moments& m) {
  return !(fabs(m.mean) <= DBL_MAX && fabs(m.m2) <= DBL_MAX);
}

// Eval: the statistics are the running buffers.
AIGC_HD void bn_forward_channel_eval(const BnForwardChannels& p, int64_t c) {
  bn_forward_channel(p, c, load<double>(p.running_mean, c), load<double>(p.running_var, c));
}

// Backward: the parameter gradients and the coefficients of the dx pass (batch_norm.h),
// from the channel's sum(dz) and sum(dz * (u - S)).
struct BnBackwardChannels {
  Ref weight, invstd;          // gamma (absent: 1) and the forward's invstd
  bool from_output, training;  // from_output: the memory-saving mode, R = 1 / gamma
  double n;                    // values per channel
  Ref a, b, c;                 // outputs, in the math type (absent when dx is not asked for)
  Ref grad_weight, grad_bias;  // outputs (absent when not asked for)
};

AIGC_HD void bn_backward_channel(const BnBackwardChannels& p, int64_t ch, double sum_dz, double sum_dz_centered) {
  const double gamma = p.weight.data != nullptr ? load<double>(p.weight, ch) : 1.0;
  const double invstd = load<double>(p.invstd, ch);
  const double ratio = p.from_output ? 1.0 / gamma : invstd;
  const double grad_gamma = sum_dz_centered * ratio;
  store(p.grad_weight, ch, grad_gamma);
  store(p.grad_bias, ch, sum_dz);
  store(p.a, ch, bn_scale(p.weight, ch, invstd));  // the forward's scale
  store(p.b, ch, p.training ? grad_gamma * ratio / -p.n : 0.0);
  store(p.c, ch, p.training ? sum_dz / -p.n : 0.0);
}

// The statistics pass of the forward in training: per-channel moments of x, then
// bn_forward_channel for each channel.
struct ChannelStats {
  at::Tensor x;  // dense
  int64_t channels, inner;
  BnForwardChannels step{};
};

// The bn_act backward: two passes (per-channel sums, then dx), with the coefficients of
// batch_norm.h.
struct BnActGrad {
  at::Tensor grad_y, y, x;  // same layout; x undefined in the memory-saving mode
  int64_t channels, inner;
  at::Tensor shift;  // [channels], math type: S = mean (or beta in the memory-saving mode)
  at::Tensor beta;   // [channels] or undefined (0): the forward's beta, for GradFrom::kInput
  Act act;
  double slope;
  // pass 1: per-channel sums of dz and dz * (u - S), then bn_backward_channel
  BnBackwardChannels step{};
  // pass 2 (when grad_x is defined): dx = a * ((dz + c) + b * (u - S))
  at::Tensor a, b, c;  // [channels], math type: step's outputs
  at::Tensor grad_x;
};

// batch_norm.h's cut for an output of this dtype: the largest z whose output rounds to a
// value that is not positive. Half the smallest subnormal of a 16-bit type is a tie, which
// rounds to even (0); a float32 or float64 output is z itself.
template <typename T>
T output_cut(at::ScalarType dtype) {
  if (dtype == at::kBFloat16) return static_cast<T>(std::ldexp(1.0, -134));
  if (dtype == at::kHalf) return static_cast<T>(std::ldexp(1.0, -25));
  return T(0);
}

// Calls f(from, act, T{}) with what the backward reads (batch_norm.h's GradFrom, as a
// std::integral_constant), its activation and math type (double for float64, else float),
// as compile-time values: the one dispatch of the CPU and CUDA backward kernels. x not
// kept is the memory-saving mode (kOutput); with x, kInput where kInputAlone and the
// activation allows it (the CPU kernels; the CUDA ones still read y there, unmeasured on
// a GPU so far), else kInputAndOutput.
template <bool kInputAlone, typename F>
void with_grad_kernel(const BnActGrad& op, const F& f) {
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    const auto with_type = [&](auto from) {
      with_math_type(op.y, [&](auto type) { f(from, act, type); });
    };
    using std::integral_constant;
    if (op.x.defined()) {
      if constexpr (kInputAlone && (A == Act::kIdentity || A == Act::kRelu || A == Act::kLeakyRelu)) {
        return with_type(integral_constant<GradFrom, GradFrom::kInput>{});
      } else {
        return with_type(integral_constant<GradFrom, GradFrom::kInputAndOutput>{});
      }
    }
    if constexpr (A == Act::kIdentity || A == Act::kLeakyRelu || A == Act::kTanh) {
      with_type(integral_constant<GradFrom, GradFrom::kOutput>{});
    } else {
      TORCH_CHECK(false, "bn_act: the memory-saving backward needs an invertible activation");
    }
  });
}

// channel_stats: the statistics and step (training). forward_channels: the step alone
// (eval); then channel_affine_act (channel_act.h) normalizes.
// bn_act_sums: the backward's sums and step. backward_channels: the step alone, with zero
// sums (none needed: eval, dx only). bn_act_grad_input: dx from the step (training).
void channel_stats_cpu(ChannelStats& op);
void forward_channels_cpu(const BnForwardChannels& step, int64_t channels);
void bn_act_sums_cpu(BnActGrad& op);
void backward_channels_cpu(const BnBackwardChannels& step, int64_t channels);
void bn_act_grad_input_cpu(BnActGrad& op);
#ifdef AIGC_FAST_WITH_CUDA
void channel_stats_cuda(ChannelStats& op);
void forward_channels_cuda(const BnForwardChannels& step, int64_t channels);
void bn_act_sums_cuda(BnActGrad& op);
void backward_channels_cuda(const BnBackwardChannels& step, int64_t channels);
void bn_act_grad_input_cuda(BnActGrad& op);
#endif

}  // namespace aigc_fast
