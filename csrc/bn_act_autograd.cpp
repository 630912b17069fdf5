// Autograd of aigc_fast::bn_act, in C++ on the Autograd key. It keeps x, y (not for identity,
// whose derivative needs none) and the per-channel mean and invstd (y is the next layer's
// input, kept anyway); in the memory-saving mode (inplace_abn's) it keeps only y and
// recomputes xhat from it, so a block stores no activation-sized tensor of its own. Under
// create_graph (a gradient penalty through a BatchNorm discriminator) the backward is
// written with differentiable ATen ops on the same formulas, with the batch statistics
// recomputed from x, so second derivatives are exact; the memory-saving mode, having no x,
// refuses.
#include <ATen/TensorOperators.h>
#include <ATen/ops/zeros_like.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <utility>
#include <vector>

#include "act_derivative.h"
#include "broadcast.h"
#include "checks.h"
#include "find_op.h"

namespace aigc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;
using Outputs = std::tuple<at::Tensor, at::Tensor, at::Tensor>;

auto forward_op() {
  static const auto op =
      find_op<Outputs(const at::Tensor&, const OptionalTensor&, const OptionalTensor&, const OptionalTensor&,
                      const OptionalTensor&, const OptionalTensor&, bool, std::optional<double>, double, std::string,
                      double, bool)>("aigc_fast::bn_act");
  return op;
}

auto backward_op() {
  static const auto op =
      find_op<Outputs(const at::Tensor&, const at::Tensor&, const OptionalTensor&, const OptionalTensor&,
                      const OptionalTensor&, const at::Tensor&, const at::Tensor&, bool, std::string, double,
                      std::array<bool, 3>)>("aigc_fast::bn_act_backward");
  return op;
}

// The backward as differentiable ops, for second derivatives (batch_norm.h's formulas), in
// the math type as the kernels compute (float32 for 16-bit x: in bf16 the statistics and
// sums had lost the weight gradient's third digit); x's gradient is returned in x's dtype.
Outputs differentiable_backward(const at::Tensor& grad_y_in, const at::Tensor& y_in, const at::Tensor& x_in,
                                const OptionalTensor& weight, const at::Tensor& saved_mean,
                                const at::Tensor& saved_invstd, bool training, double eps, const std::string& act,
                                double slope) {
  const at::ScalarType math = math_dtype(x_in.scalar_type());
  const at::Tensor x = x_in.to(math), y = y_in.to(math), grad_y = grad_y_in.to(math);
  std::vector<int64_t> dims{0};
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  const c10::Scalar n(x.sym_numel() / x.sym_size(1));
  const auto per_channel = [&x](const at::Tensor& v) { return along_dim(v.to(x.scalar_type()), x, 1); };
  // In eval the statistics are the running ones: constants (the saved outputs are detached,
  // since unpacked they would lead back to this node, which passes them no gradient in eval).
  const at::Tensor mean =
      training ? x.mean(dims, /*keepdim=*/true) : per_channel(saved_mean.detach());
  const at::Tensor invstd = training ? (x - mean).pow(2).mean(dims, true).add(eps).rsqrt()
                                     : per_channel(saved_invstd.detach());
  const at::Tensor xhat = (x - mean) * invstd;
  const at::Tensor dz = grad_through_activation(grad_y, y, act, slope);
  const at::Tensor sum_dz = dz.sum(dims, true), sum_dz_xhat = (dz * xhat).sum(dims, true);
  const at::Tensor k = (weight.has_value() ? per_channel(*weight) : at::ones_like(mean)) * invstd;
  const at::Tensor grad_x = training ? k * (dz - sum_dz / n - xhat * (sum_dz_xhat / n)) : k * dz;
  return {grad_x.to(x_in.scalar_type()), sum_dz_xhat.reshape({-1}), sum_dz.reshape({-1})};
}

// d/dx of <g_mean, mean> + <g_invstd, invstd> for the batch statistics (training): mean =
// sum(x) / n and invstd = (var + eps)^-1/2 with var = sum((x - mean)^2) / n, so
// d mean/dx = 1 / n and d invstd/dx = -invstd^3 (x - mean) / n. Either gradient may be
// undefined (not used).
at::Tensor statistics_backward(const at::Tensor& x, const at::Tensor& mean, const at::Tensor& invstd,
                               const at::Tensor& grad_mean, const at::Tensor& grad_invstd) {
  const c10::Scalar n(x.sym_numel() / x.sym_size(1));
  at::Tensor grad = at::zeros_like(x, x.options().dtype(mean.scalar_type()));
  if (grad_mean.defined()) grad = grad.add(along_dim(grad_mean, x, 1).div(n));
  if (grad_invstd.defined()) {
    const at::Tensor centered = x.to(mean.scalar_type()).sub(along_dim(mean, x, 1));
    grad = grad.sub(centered.mul(along_dim(grad_invstd.mul(invstd.pow(3)), x, 1).div(n)));
  }
  return grad.to(x.scalar_type());
}

class BnActFunction : public torch::autograd::Function<BnActFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& x, const OptionalTensor& weight,
                               const OptionalTensor& bias, const OptionalTensor& running_mean,
                               const OptionalTensor& running_var, const OptionalTensor& num_batches_tracked,
                               bool training, std::optional<double> momentum, double eps, const std::string& act,
                               double slope, bool memory_efficient) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    auto [y, mean, invstd] = forward_op().call(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                               training, momentum, eps, act, slope, memory_efficient);
    // mean and invstd are differentiable outputs too (statistics_backward): the Python
    // function drops them, but a caller of the raw op may use them. (Marking them
    // non-differentiable instead: compiled autograd refuses a C++ Function that does so,
    // and detaching them after this mutating op broke torch 2.13's inductor.)
    ctx->set_materialize_grads(false);  // no zeros ops for the statistics' (unused) gradients
    // Undefined tensors stand for absent ones (x in the memory-saving mode, no weight/bias).
    // y is kept for the activation's derivative, except identity's (1) where x is kept:
    // the caller may then modify y in place (a residual `out += skip` after conv ->
    // BatchNorm), as after nn.BatchNorm2d, which keeps no output. Only identity: the CPU
    // kernels would find relu's and leaky_relu's derivative from x too, but the CUDA ones
    // read it from y (with_grad_kernel<false>, bn_act.h), and x standing in for y there
    // would give wrong gradients without an error.
    const bool keep_y = memory_efficient || act != "identity";
    ctx->save_for_backward({memory_efficient ? at::Tensor() : x, keep_y ? y : at::Tensor(),
                            weight.value_or(at::Tensor()), bias.value_or(at::Tensor()), mean, invstd});
    ctx->saved_data["training"] = training;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    return {y, mean, invstd};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &mean = saved[4], &invstd = saved[5];
    // Without a saved y (identity) x stands in for it: of y the kernels then read only its
    // layout, which is x's (the forward's output keeps the input's memory format).
    const at::Tensor& y = saved[1].defined() ? saved[1] : x;
    const OptionalTensor weight = saved[2].defined() ? OptionalTensor(saved[2]) : std::nullopt;
    const OptionalTensor bias = saved[3].defined() ? OptionalTensor(saved[3]) : std::nullopt;
    const bool training = ctx->saved_data["training"].toBool();
    const std::string act = ctx->saved_data["act"].toStringRef();
    const double slope = ctx->saved_data["slope"].toDouble();
    // needs_input_grad counts only the tensors given: without a weight, the bias is input 1.
    const int bias_index = weight.has_value() ? 2 : 1;
    const std::array<bool, 3> mask{ctx->needs_input_grad(0), weight.has_value() && ctx->needs_input_grad(1),
                                   bias.has_value() && ctx->needs_input_grad(bias_index)};
    variable_list out(12);
    at::Tensor grad_x, grad_weight, grad_bias;
    const bool output_used = grads[0].defined();  // else only the statistics were
    if (output_used && at::GradMode::is_enabled()) {
      TORCH_CHECK(x.defined(),
                  "bn_act(memory_efficient=True) keeps only its output and supports first derivatives only; "
                  "use memory_efficient=False for double backward (a gradient penalty through this layer)");
      std::tie(grad_x, grad_weight, grad_bias) = differentiable_backward(
          grads[0], y, x, weight, mean, invstd, training, ctx->saved_data["eps"].toDouble(), act, slope);
      if (weight.has_value()) grad_weight = grad_weight.to(weight->scalar_type());
      if (bias.has_value()) grad_bias = grad_bias.to(bias->scalar_type());
    } else if (output_used) {
      std::tie(grad_x, grad_weight, grad_bias) = backward_op().call(
          grads[0], y, x.defined() ? OptionalTensor(x) : std::nullopt, weight, bias, mean, invstd, training, act,
          slope, mask);
    }
    // In eval the statistics are the running ones, constants: only batch statistics pass a
    // gradient to x (the memory-saving mode keeps no x to compute it from).
    if (training && mask[0] && (grads[1].defined() || grads[2].defined())) {
      TORCH_CHECK(x.defined(), "bn_act(memory_efficient=True) keeps only its output: gradients through the "
                  "batch statistics it returns need memory_efficient=False");
      const at::Tensor through_statistics = statistics_backward(x, mean, invstd, grads[1], grads[2]);
      grad_x = grad_x.defined() ? grad_x.add(through_statistics) : through_statistics;
    }
    out[0] = mask[0] ? grad_x : at::Tensor();
    out[1] = mask[1] ? grad_weight : at::Tensor();
    out[2] = mask[2] ? grad_bias : at::Tensor();
    return out;
  }
};

Outputs bn_act_autograd(const at::Tensor& x, const OptionalTensor& weight, const OptionalTensor& bias,
                        const OptionalTensor& running_mean, const OptionalTensor& running_var,
                        const OptionalTensor& num_batches_tracked, bool training, std::optional<double> momentum,
                        double eps, std::string act, double negative_slope, bool memory_efficient) {
  // The running statistics take no gradient: with grad mode on, one that requires grad is
  // refused, as ATen's batch_norm refuses it (under no_grad both run).
  for (const auto& [t, name] : {std::pair{&running_mean, "running_mean"}, std::pair{&running_var, "running_var"}}) {
    TORCH_CHECK(!at::GradMode::is_enabled() || !t->has_value() || !(*t)->requires_grad(), name,
                " is a buffer bn_act reads and updates; it takes no gradient, so it must not require grad");
  }
  const variable_list out = BnActFunction::apply(x, weight, bias, running_mean, running_var, num_batches_tracked,
                                                 training, momentum, eps, act, negative_slope, memory_efficient);
  return {out[0], out[1], out[2]};
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_fast, Autograd, m) { m.impl("bn_act", &bn_act_autograd); }

}  // namespace aigc_fast
