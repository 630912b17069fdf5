// Schema, argument checks, layouts and orchestration of aigc_fast::bn_act: BatchNorm
// (batch or running statistics) + affine + activation in one pass over x after the
// statistics pass, and a two-pass backward (kernels in cpu/ and cuda/, math in
// include/aigc_fast/batch_norm.h, autograd in bn_act_autograd.cpp). The steps between the
// passes act on [channels] vectors and are written once here, as float64 ATen ops.
#include "bn_act.h"

#include <ATen/TensorOperators.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/full.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <string>
#include <tuple>

#include "checks.h"
#include "layout.h"

namespace aigc_fast {
namespace {

void check_channel_vector(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& x) {
  if (!t.has_value()) return;
  check_float_tensor(*t, name);
  TORCH_CHECK(t->device() == x.device(), name, " must be on the same device as x, got ", t->device(), " and ",
              x.device());
  TORCH_CHECK(t->dim() == 1 && t->size(0) == x.size(1), name, " must have shape [", x.size(1),
              "] (one value per channel of x, x.shape[1]), got ", t->sizes());
}

// [outer, channels, inner] view of a dense tensor: inner = x.stride(1) (H * W for NCHW, 1
// for channels_last); a single channel is one long run.
int64_t inner_of(const at::Tensor& x) { return x.size(1) > 1 ? x.stride(1) : std::max<int64_t>(x.numel(), 1); }

at::Tensor as_double(const std::optional<at::Tensor>& t, double fill, const at::Tensor& like_channels) {
  if (t.has_value()) return t->to(at::kDouble);
  return at::full({like_channels.size(0)}, fill, like_channels.options().dtype(at::kDouble));
}

void run_stats(ChannelStats& op) {
#ifdef AIGC_FAST_WITH_CUDA
  if (op.x.is_cuda()) return channel_stats_cuda(op);
#endif
  channel_stats_cpu(op);
}

void run_affine_act(ChannelAffineAct& op) {
#ifdef AIGC_FAST_WITH_CUDA
  if (op.x.is_cuda()) return channel_affine_act_cuda(op, true);
#endif
  channel_affine_act_cpu(op, true);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_op(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, bool training, std::optional<double> momentum, double eps,
    std::string act, double negative_slope, bool memory_efficient) {
  check_float_tensor(x, "x");
  TORCH_CHECK(x.dim() >= 2, "x must have a batch and a channel dimension ([N, C, ...]), got shape ", x.sizes());
  const Act activation = parse_act(act, negative_slope);
  (void)memory_efficient;  // what autograd keeps (bn_act_autograd.cpp); the forward is the same
  check_channel_vector(weight, "weight", x);
  check_channel_vector(bias, "bias", x);
  check_channel_vector(running_mean, "running_mean", x);
  check_channel_vector(running_var, "running_var", x);
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "running_mean and running_var must both be given or both be None");
  TORCH_CHECK(training || running_mean.has_value(), "bn_act with training=False needs running_mean and running_var");
  TORCH_CHECK(eps >= 0.0, "eps must be >= 0, got ", eps);
  const int64_t channels = x.size(1);
  TORCH_CHECK(channels > 0, "x must have at least one channel, got shape ", x.sizes());
  const int64_t per_channel = x.numel() / channels;
  TORCH_CHECK(x.numel() > 0, "bn_act needs a non-empty x, got shape ", x.sizes());
  TORCH_CHECK(!training || per_channel > 1, "Expected more than 1 value per channel when training, got input size ",
              x.sizes());
  const at::ScalarType math = math_dtype(x.scalar_type());
  const at::TensorOptions doubles = x.options().dtype(at::kDouble);

  // Per-channel mean and biased variance (float64) from the batch or the running buffers.
  at::Tensor mean, var;
  const at::Tensor xo = in_memory_order(x);
  if (training) {
    ChannelStats stats{xo, channels, inner_of(xo), at::empty({channels}, doubles), at::empty({channels}, doubles)};
    run_stats(stats);
    mean = stats.mean;
    var = stats.var;
    if (num_batches_tracked.has_value()) num_batches_tracked->add_(1);
    if (running_mean.has_value()) {
      // nn.BatchNorm: running = factor * batch + (1 - factor) * running, with the unbiased
      // variance; factor = momentum, or 1 / num_batches_tracked (a cumulative average).
      TORCH_CHECK(momentum.has_value() || num_batches_tracked.has_value(),
                  "momentum=None (a cumulative average) needs num_batches_tracked");
      const at::Tensor unbiased = var * (double(per_channel) / double(per_channel - 1));
      if (momentum.has_value()) {
        const double f = *momentum;
        running_mean->copy_(mean * f + running_mean->to(at::kDouble) * (1.0 - f));
        running_var->copy_(unbiased * f + running_var->to(at::kDouble) * (1.0 - f));
      } else {
        const at::Tensor f = num_batches_tracked->to(at::kDouble).reciprocal();
        running_mean->copy_(mean * f + running_mean->to(at::kDouble) * (1.0 - f));
        running_var->copy_(unbiased * f + running_var->to(at::kDouble) * (1.0 - f));
      }
    }
  } else {
    mean = running_mean->to(at::kDouble);
    var = running_var->to(at::kDouble);
  }
  const at::Tensor invstd = (var + eps).rsqrt();
  const at::Tensor scale = as_double(weight, 1.0, mean) * invstd;

  ChannelAffineAct op{xo,
                      channels,
                      inner_of(xo),
                      mean.to(math, /*non_blocking=*/false, /*copy=*/true).contiguous(),  // never a buffer's alias
                      scale.to(math),
                      bias.has_value() ? bias->to(math).contiguous() : at::zeros({channels}, x.options().dtype(math)),
                      activation,
                      negative_slope,
                      at::empty_like(xo)};
  run_affine_act(op);
  return {op.y, op.mean, invstd.to(math)};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_op(
    const at::Tensor& grad_y, const at::Tensor& y, const std::optional<at::Tensor>& x,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const at::Tensor& mean,
    const at::Tensor& invstd, bool training, std::string act, double negative_slope, std::array<bool, 3> output_mask) {
  check_float_tensor(y, "y");
  check_like(grad_y, "grad_y", y, "y");
  TORCH_CHECK(y.dim() >= 2 && y.numel() > 0, "y must be a non-empty [N, C, ...] tensor, got shape ", y.sizes());
  if (x.has_value()) check_like(*x, "x", y, "y");
  check_channel_vector(weight, "weight", y);
  check_channel_vector(bias, "bias", y);
  check_channel_vector(mean, "mean", y);
  check_channel_vector(invstd, "invstd", y);
  const int64_t channels = y.size(1), per_channel = y.numel() / channels;
  const at::ScalarType math = math_dtype(y.scalar_type());
  const at::TensorOptions doubles = y.options().dtype(at::kDouble);

  BnActGrad op;
  op.y = in_memory_order(y);
  op.grad_y = in_order_of(grad_y, op.y);
  if (x.has_value()) op.x = in_order_of(*x, op.y);
  op.channels = channels;
  op.inner = inner_of(op.y);
  op.act = parse_act(act, negative_slope);
  op.slope = negative_slope;
  // batch_norm.h: S, R = mean, invstd; or beta, 1 / gamma in the memory-saving mode.
  const at::Tensor gamma = as_double(weight, 1.0, invstd), invstd64 = invstd.to(at::kDouble);
  at::Tensor shift = mean, ratio = invstd64;
  if (!x.has_value()) {
    TORCH_CHECK(op.act == Act::kIdentity || op.act == Act::kTanh || (op.act == Act::kLeakyRelu && negative_slope > 0),
                "bn_act's memory-saving mode needs an invertible activation (identity, tanh, or leaky_relu with "
                "negative_slope > 0), got '", act, "' with negative_slope ", negative_slope);
    shift = bias.has_value() ? *bias : at::zeros({channels}, doubles);
    ratio = gamma.reciprocal();
  }
  op.shift = shift.to(math).contiguous();  // kernels read [channels] vectors densely
  const bool need_sums = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  op.sum_dz = at::zeros({channels}, doubles);
  op.sum_dz_centered = at::zeros({channels}, doubles);
  if (need_sums) {
#ifdef AIGC_FAST_WITH_CUDA
    if (y.is_cuda()) {
      bn_act_sums_cuda(op);
    } else
#endif
    {
      bn_act_sums_cpu(op);
    }
  }
  const at::Tensor grad_gamma = op.sum_dz_centered * ratio, grad_beta = op.sum_dz;
  // Outputs not asked for are empty tensors (an op's outputs are always tensors).
  at::Tensor grad_x = at::empty({0}, y.options()), grad_weight = at::empty({0}, y.options().dtype(math));
  at::Tensor grad_bias = at::empty({0}, y.options().dtype(math));
  if (output_mask[0]) {
    op.a = (gamma * invstd64).to(math);
    const double n = double(per_channel);
    op.b = training ? (grad_gamma * ratio / -n).to(math) : at::zeros({channels}, y.options().dtype(math));
    op.c = training ? (grad_beta / -n).to(math) : at::zeros({channels}, y.options().dtype(math));
    op.grad_x = at::empty_like(op.y);
#ifdef AIGC_FAST_WITH_CUDA
    if (y.is_cuda()) {
      bn_act_grad_input_cuda(op);
    } else
#endif
    {
      bn_act_grad_input_cpu(op);
    }
    grad_x = op.grad_x;
  }
  if (output_mask[1]) grad_weight = grad_gamma.to(weight.has_value() ? weight->scalar_type() : math);
  if (output_mask[2]) grad_bias = grad_beta.to(bias.has_value() ? bias->scalar_type() : math);
  return {grad_x, grad_weight, grad_bias};
}
TORCH_LIBRARY_FRAGMENT(aigc_fast, m) {
  m.def(
      "bn_act(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, "
      "Tensor(c!)? num_batches_tracked, bool training, float? momentum, float eps, str act, float negative_slope, "
      "bool memory_efficient) -> (Tensor y, Tensor mean, Tensor invstd)");
  m.def(
      "bn_act_backward(Tensor grad_y, Tensor y, Tensor? x, Tensor? weight, Tensor? bias, Tensor mean, "
      "Tensor invstd, bool training, str act, float negative_slope, bool[3] output_mask) "
      "-> (Tensor grad_x, Tensor grad_weight, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(aigc_fast, CPU, m) {
  m.impl("bn_act", &bn_act_op);
  m.impl("bn_act_backward", &bn_act_backward_op);
}

#ifdef AIGC_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(aigc_fast, CUDA, m) {
  m.impl("bn_act", &bn_act_op);
  m.impl("bn_act_backward", &bn_act_backward_op);
}
#endif

}  // namespace aigc_fast
