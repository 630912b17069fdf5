// Schema, argument checks, layouts and orchestration of aigc_fast::bn_act: BatchNorm
// (batch or running statistics) + affine + activation in one pass over x after the
// statistics pass, and a two-pass backward (kernels in cpu/ and cuda/, math in
// include/aigc_fast/batch_norm.h, autograd in bn_act_autograd.cpp). The steps between the
// passes (running update, invstd, coefficients) are bn_act.h's per-channel steps, which
// the kernels run where they merge their partials.
#include "bn_act.h"

#include <ATen/MemoryOverlap.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/zeros.h>
#include <c10/core/DeviceGuard.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "checks.h"
#include "device_kernel.h"
#include "layout.h"

namespace aigc_fast {
namespace {

// t, when given: one value per channel of the activation `of` (x forward, y backward).
void check_channel_vector(const std::optional<at::Tensor>& t, const char* name, const at::Tensor& of,
                          const char* of_name) {
  if (!t.has_value()) return;
  check_float_tensor(*t, name);
  check_same_device(*t, name, of, of_name);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == of.size(1), name, " must have shape [", of.size(1),
              "] (one value per channel of ", of_name, ", ", of_name, ".shape[1]), got ", t->sizes());
}

// inner of the [outer, channels, inner] reading of a dense [N, C, ...] tensor: H*W for NCHW,
// 1 for channels_last (layout.h's channel_run along dim 1).
int64_t inner_of(const at::Tensor& x) { return channel_run(x, 1); }

// A parameter's gradient, or an empty tensor when not asked for (an op's outputs are always
// tensors): in the parameter's dtype; in the math type when asked for an absent parameter.
at::Tensor param_grad(bool wanted, const std::optional<at::Tensor>& param, int64_t channels,
                      const at::TensorOptions& math) {
  if (wanted && param.has_value()) return at::empty({channels}, param->options());
  return at::empty({wanted ? channels : 0}, math);
}

// A [channels] vector the per-channel step can index densely (undefined when absent).
at::Tensor dense_channels(const std::optional<at::Tensor>& t) { return t.has_value() ? t->contiguous() : at::Tensor(); }

// A running statistic the training forward updates in place: one element per channel, not
// an expanded view (one memory location for all, which the update could not write).
void check_updatable(const std::optional<at::Tensor>& t, const char* name) {
  TORCH_CHECK(!t.has_value() || at::has_internal_overlap(*t) != at::MemOverlap::Yes, name,
              " is updated in place, one value per channel, so it cannot be an expanded tensor (stride 0)");
}

// Copies a dense stand-in's update back into a buffer that was not dense itself.
void write_back(const std::optional<at::Tensor>& buffer, const at::Tensor& dense) {
  if (buffer.has_value() && !dense.is_same(*buffer)) buffer->copy_(dense);
}

// The kernels of one device, chosen once per call from the tensor they read (a table, not
// run_on_device: a call runs several kernels of different signatures).
struct Kernels {
  void (*stats)(ChannelStats&);
  void (*forward_channels)(const BnForwardChannels&, int64_t);
  void (*affine_act)(ChannelAffineAct&, bool);
  void (*sums)(BnActGrad&);
  void (*backward_channels)(const BnBackwardChannels&, int64_t);
  void (*grad_input)(BnActGrad&);
};

const Kernels& kernels_for(const at::Tensor& t) {
  static const Kernels cpu{channel_stats_cpu, forward_channels_cpu, channel_affine_act_cpu,
                           bn_act_sums_cpu,   backward_channels_cpu, bn_act_grad_input_cpu};
#ifdef AIGC_FAST_WITH_CUDA
  static const Kernels cuda{channel_stats_cuda, forward_channels_cuda, channel_affine_act_cuda,
                            bn_act_sums_cuda,   backward_channels_cuda, bn_act_grad_input_cuda};
  if (t.is_cuda()) return cuda;
#else
  if (t.is_cuda()) fail_without_cuda_kernels();
#endif
  return cpu;
}

// The memory-saving mode recomputes the pre-activation from y: it needs an invertible
// activation, and for tanh a float32/64 y (atanh of a 16-bit tanh has too few bits left).
// The same rule as ops/bn_act.py's memory_efficient_supported, for callers of the raw ops.
void check_memory_saving_mode(Act act, const std::string& name, double slope, at::ScalarType y_dtype) {
  TORCH_CHECK(act == Act::kIdentity || act == Act::kTanh || (act == Act::kLeakyRelu && slope > 0),
              "bn_act's memory-saving mode needs an invertible activation (identity, tanh, or leaky_relu with "
              "negative_slope > 0), got '", name, "' with negative_slope ", slope);
  TORCH_CHECK(act != Act::kTanh || y_dtype == at::kFloat || y_dtype == at::kDouble,
              "bn_act's memory-saving mode with tanh needs a float32 or float64 output, got ", y_dtype);
}

// The forward's arguments, all checked before anything is written (num_batches_tracked
// counted, running statistics updated), so a refused call changes nothing.
void check_forward_args(const at::Tensor& x, const std::optional<at::Tensor>& weight,
                        const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& running_mean,
                        const std::optional<at::Tensor>& running_var,
                        const std::optional<at::Tensor>& num_batches_tracked, bool training,
                        std::optional<double> momentum, double eps, Act activation, const std::string& act,
                        double negative_slope, bool memory_efficient) {
  TORCH_CHECK(x.dim() >= 2, "x must have a batch and a channel dimension ([N, C, ...]), got shape ", x.sizes());
  // The mode decides what autograd keeps (bn_act_autograd.cpp); the forward is the same, but
  // a backward without x must be possible.
  if (memory_efficient) check_memory_saving_mode(activation, act, negative_slope, x.scalar_type());
  check_channel_vector(weight, "weight", x, "x");
  check_channel_vector(bias, "bias", x, "x");
  check_channel_vector(running_mean, "running_mean", x, "x");
  check_channel_vector(running_var, "running_var", x, "x");
  TORCH_CHECK(running_mean.has_value() == running_var.has_value(),
              "running_mean and running_var must both be given or both be None");
  TORCH_CHECK(training || running_mean.has_value(), "bn_act with training=False needs running_mean and running_var");
  check_finite(eps, "eps");
  TORCH_CHECK(eps > 0.0 || (!training && eps == 0.0), "eps must be ",
              training ? "positive with batch statistics" : ">= 0", ", got ", eps);
  if (momentum.has_value()) check_finite(*momentum, "momentum");
  if (training) {
    check_updatable(running_mean, "running_mean");
    check_updatable(running_var, "running_var");
  }
  TORCH_CHECK(x.size(1) > 0, "x must have at least one channel, got shape ", x.sizes());
  TORCH_CHECK(x.numel() > 0, "bn_act needs a non-empty x, got shape ", x.sizes());
  TORCH_CHECK(!training || x.numel() / x.size(1) > 1,
              "Expected more than 1 value per channel when training, got input size ", x.sizes());
  if (num_batches_tracked.has_value()) {  // as the fake kernel checks it, so compile agrees with eager
    check_same_device(*num_batches_tracked, "num_batches_tracked", x, "x");
    // int64 only: a narrower counter wraps (uint8 at 255 to 0, and momentum=None divides by it).
    TORCH_CHECK(num_batches_tracked->scalar_type() == at::kLong && num_batches_tracked->numel() == 1,
                "num_batches_tracked must be a one-element int64 tensor, got ", num_batches_tracked->scalar_type(),
                " of shape ", num_batches_tracked->sizes());
  }
  TORCH_CHECK(!training || !running_mean.has_value() || momentum.has_value() || num_batches_tracked.has_value(),
              "momentum=None (a cumulative average) needs num_batches_tracked");
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_op(
    const at::Tensor& x, const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias,
    const std::optional<at::Tensor>& running_mean, const std::optional<at::Tensor>& running_var,
    const std::optional<at::Tensor>& num_batches_tracked, bool training, std::optional<double> momentum, double eps,
    std::string act, double negative_slope, bool memory_efficient) {
  check_float_tensor(x, "x");
  const c10::DeviceGuard guard(x.device());
  const Act activation = parse_act(act, negative_slope);
  check_forward_args(x, weight, bias, running_mean, running_var, num_batches_tracked, training, momentum, eps,
                     activation, act, negative_slope, memory_efficient);
  if (training && num_batches_tracked.has_value()) num_batches_tracked->add_(1);
  const int64_t channels = x.size(1), per_channel = x.numel() / channels;
  const at::TensorOptions math = x.options().dtype(math_dtype(x.scalar_type()));

  // The per-channel step (bn_act.h) reads and writes the [channels] vectors directly.
  // Running buffers are updated in place: a non-dense one goes through a dense copy.
  const at::Tensor weight_d = dense_channels(weight), bias_d = dense_channels(bias);
  const at::Tensor running_mean_d = dense_channels(running_mean), running_var_d = dense_channels(running_var);
  at::Tensor counter;  // num_batches_tracked as int64 on x's device, when momentum is None
  BnForwardChannels step{};
  step.weight = optional_ref(weight_d);
  step.bias = optional_ref(bias_d);
  step.running_mean = optional_ref(running_mean_d);
  step.running_var = optional_ref(running_var_d);
  step.momentum = momentum.value_or(0.0);
  if (training && running_mean.has_value() && !momentum.has_value()) {
    counter = num_batches_tracked->to(at::kLong).contiguous();
    step.num_batches_tracked = counter.const_data_ptr<int64_t>();
  }
  step.eps = eps;
  step.bessel = training ? double(per_channel) / double(per_channel - 1) : 1.0;
  step.training = training;
  const at::Tensor mean = at::empty({channels}, math), invstd = at::empty({channels}, math);
  const at::Tensor scale = at::empty({channels}, math), beta = at::empty({channels}, math);
  const at::Tensor xo = in_memory_order(x);
  ChannelAffineAct op{xo, channels, inner_of(xo), mean, scale, beta, activation, negative_slope, at::Tensor()};
  step.mean = ref(mean);
  step.invstd = ref(invstd);
  step.scale = ref(scale);
  step.beta = ref(beta);
  const Kernels& kernels = kernels_for(x);
  if (training) {
    ChannelStats stats{op.x, channels, op.inner, step};
    kernels.stats(stats);
    write_back(running_mean, running_mean_d);  // (eval never writes the buffers)
    write_back(running_var, running_var_d);
  } else {
    kernels.forward_channels(step, channels);
  }
  op.y = empty_in_format_of(op.x);
  kernels.affine_act(op, /*affine=*/true);
  return {op.y, mean, invstd};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> bn_act_backward_op(
    const at::Tensor& grad_y, const at::Tensor& y, const std::optional<at::Tensor>& x,
    const std::optional<at::Tensor>& weight, const std::optional<at::Tensor>& bias, const at::Tensor& mean,
    const at::Tensor& invstd, bool training, std::string act, double negative_slope, std::array<bool, 3> output_mask) {
  check_float_tensor(y, "y");
  const c10::DeviceGuard guard(y.device());
  check_like(grad_y, "grad_y", y, "y");
  TORCH_CHECK(y.dim() >= 2 && y.numel() > 0, "y must be a non-empty [N, C, ...] tensor, got shape ", y.sizes());
  if (x.has_value()) check_like(*x, "x", y, "y");
  check_channel_vector(weight, "weight", y, "y");
  check_channel_vector(bias, "bias", y, "y");
  check_channel_vector(mean, "mean", y, "y");
  check_channel_vector(invstd, "invstd", y, "y");
  const int64_t channels = y.size(1), per_channel = y.numel() / channels;
  const at::TensorOptions math = y.options().dtype(math_dtype(y.scalar_type()));

  BnActGrad op;
  op.y = in_memory_order(y);
  op.grad_y = in_order_of(grad_y, op.y);
  if (x.has_value()) {
    op.x = in_order_of(*x, op.y);
    op.beta = dense_channels(bias);
  }
  op.channels = channels;
  op.inner = inner_of(op.y);
  op.act = parse_act(act, negative_slope);
  op.slope = negative_slope;
  // batch_norm.h: S = mean; or beta in the memory-saving mode. Kernels read [channels]
  // vectors densely, in the math type.
  if (x.has_value()) {
    op.shift = mean.to(math.dtype()).contiguous();
  } else {
    check_memory_saving_mode(op.act, act, negative_slope, y.scalar_type());
    op.shift = bias.has_value() ? bias->to(math.dtype()).contiguous() : at::zeros({channels}, math);
  }
  at::Tensor grad_weight = param_grad(output_mask[1], weight, channels, math);
  at::Tensor grad_bias = param_grad(output_mask[2], bias, channels, math);
  const at::Tensor weight_d = dense_channels(weight), invstd_d = invstd.contiguous();
  BnBackwardChannels& step = op.step;
  step.weight = optional_ref(weight_d);
  step.invstd = ref(invstd_d);
  step.from_output = !x.has_value();
  step.training = training;
  step.n = double(per_channel);
  step.grad_weight = ref(grad_weight);  // null data when empty: not written
  step.grad_bias = ref(grad_bias);
  if (output_mask[0]) {
    op.a = at::empty({channels}, math);
    op.b = at::empty({channels}, math);
    op.c = at::empty({channels}, math);
    step.a = ref(op.a);
    step.b = ref(op.b);
    step.c = ref(op.c);
  }
  const bool need_sums = output_mask[1] || output_mask[2] || (training && output_mask[0]);
  const Kernels& kernels = kernels_for(y);
  if (need_sums) {
    kernels.sums(op);
  } else if (output_mask[0]) {
    kernels.backward_channels(step, channels);  // eval, dx only: no sum is needed (zeros)
  }
  if (!output_mask[0]) return {at::empty({0}, y.options()), grad_weight, grad_bias};
  op.grad_x = at::empty_like(op.y);
  kernels.grad_input(op);
  return {op.grad_x, grad_weight, grad_bias};
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
