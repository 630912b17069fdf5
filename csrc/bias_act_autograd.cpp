// Autograd of aigc_fast::bias_act, in C++ on the Autograd key. It saves only the output y,
// which the next layer keeps anyway: every activation's derivative is read from y
// (activations.h), so the block keeps no pre-activation tensor; identity's (1) needs none,
// so it saves nothing. Under create_graph (a gradient penalty such as R1 or WGAN-GP
// through a discriminator's first layer) the backward is written with differentiable ATen
// ops on the same formulas instead of the kernel, so second derivatives flow through y
// correctly.
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "act_derivative.h"
#include "bias_act.h"
#include "checks.h"
#include "find_op.h"

namespace aigc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;

auto forward_op() {
  static const auto op = find_op<at::Tensor(const at::Tensor&, const OptionalTensor&, int64_t,
                                            std::string, double)>("aigc_fast::bias_act");
  return op;
}

auto backward_op() {
  static const auto op =
      find_op<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, std::string,
                                                 double, std::optional<at::ScalarType>)>(
          "aigc_fast::bias_act_backward");
  return op;
}

class BiasActFunction : public torch::autograd::Function<BiasActFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptionalTensor& bias,
                            int64_t dim, const std::string& act, double slope) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = forward_op().call(x, bias, dim, act, slope);
    // The bias values are not needed, only whether and which dtype. y is, for the
    // activation's derivative, except identity's (1): keeping none there lets the caller
    // modify y in place (a residual `out += skip`), as after a plain `x + bias`.
    ctx->save_for_backward({act == "identity" ? at::Tensor() : y});
    ctx->saved_data["bias_dtype"] = bias.has_value() ? int64_t(bias->scalar_type()) : int64_t(-1);
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    // Without a saved y (identity) the gradient stands in for it: only its layout is read.
    const at::Tensor saved = ctx->get_saved_variables()[0];
    const at::Tensor y = saved.defined() ? saved : grads[0];
    const int64_t bias_dtype = ctx->saved_data["bias_dtype"].toInt();
    const int64_t dim = ctx->saved_data["dim"].toInt();
    const std::string act = ctx->saved_data["act"].toStringRef();
    const double slope = ctx->saved_data["slope"].toDouble();
    const bool need_bias = bias_dtype >= 0 && ctx->needs_input_grad(1);
    at::Tensor grad_x, grad_bias;
    if (at::GradMode::is_enabled()) {
      // In the math type, as the kernels compute: the bias gradient sums the unrounded dz.
      const at::ScalarType math_type = math_dtype(y.scalar_type());
      const at::Tensor dz = grad_through_activation(grads[0].to(math_type), y.to(math_type), act, slope);
      grad_x = dz.to(y.scalar_type());
      if (need_bias) grad_bias = bias_grad_from(dz, dim, at::ScalarType(bias_dtype));
    } else {
      std::optional<at::ScalarType> wanted;
      if (need_bias) wanted = at::ScalarType(bias_dtype);
      std::tie(grad_x, grad_bias) = backward_op().call(grads[0], y, dim, act, slope, wanted);
    }
    return {ctx->needs_input_grad(0) ? grad_x : at::Tensor(), need_bias ? grad_bias : at::Tensor(),
            at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

at::Tensor bias_act_autograd(const at::Tensor& x, const OptionalTensor& bias, int64_t dim,
                             std::string act, double negative_slope) {
  return BiasActFunction::apply(x, bias, dim, act, negative_slope);
}

}  // namespace

TORCH_LIBRARY_IMPL(aigc_fast, Autograd, m) { m.impl("bias_act", &bias_act_autograd); }

}  // namespace aigc_fast
