// Autograd of aigc_fast::bias_act, in C++ on the Autograd key. It saves only the output y,
// which the next layer keeps anyway: every activation's derivative is read from y
// (activations.h), so the block keeps no pre-activation tensor.
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <string>
#include <tuple>

namespace aigc_fast {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;
using OptionalTensor = std::optional<at::Tensor>;

auto forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("aigc_fast::bias_act", "")
                             .typed<at::Tensor(const at::Tensor&, const OptionalTensor&, int64_t,
                                               std::string, double)>();
  return op;
}

auto backward_op() {
  static const auto op =
      c10::Dispatcher::singleton()
          .findSchemaOrThrow("aigc_fast::bias_act_backward", "")
          .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                    const OptionalTensor&, int64_t, std::string,
                                                    double, bool)>();
  return op;
}

class BiasActFunction : public torch::autograd::Function<BiasActFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const OptionalTensor& bias,
                            int64_t dim, const std::string& act, double slope) {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor y = forward_op().call(x, bias, dim, act, slope);
    ctx->save_for_backward({y, bias.value_or(at::Tensor())});
    ctx->saved_data["dim"] = dim;
    ctx->saved_data["act"] = act;
    ctx->saved_data["slope"] = slope;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &y = saved[0], &bias = saved[1];
    const bool need_bias = bias.defined() && ctx->needs_input_grad(1);
    auto [grad_x, grad_bias] = backward_op().call(
        grads[0], y, bias.defined() ? OptionalTensor(bias) : std::nullopt,
        ctx->saved_data["dim"].toInt(), ctx->saved_data["act"].toStringRef(),
        ctx->saved_data["slope"].toDouble(), need_bias);
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
