// Schema, argument checks, layouts and dispatch of aigc_fast::bias_act (kernels in
// cpu/bias_act.cpp and cuda/bias_act.cu, autograd in bias_act_autograd.cpp).
#include "bias_act.h"

#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <string>
#include <vector>

#include "checks.h"
#include "device_kernel.h"
#include "layout.h"

namespace aigc_fast {

Act parse_act(const std::string& act, double slope) {
  check_finite(slope, "negative_slope");
  if (act == "identity") return Act::kIdentity;
  if (act == "relu") return Act::kRelu;
  if (act == "tanh") return Act::kTanh;
  if (act == "sigmoid") return Act::kSigmoid;
  if (act == "leaky_relu") {
    TORCH_CHECK(slope >= 0.0, "negative_slope must be >= 0 (the backward reads the sign of the "
                "input from the output), got ", slope);
    TORCH_CHECK(slope <= std::numeric_limits<float>::max(), "negative_slope must fit in float32, where the "
                "kernels compute, got ", slope);
    return Act::kLeakyRelu;
  }
  TORCH_CHECK(false, "act must be one of 'identity', 'relu', 'leaky_relu', 'tanh', 'sigmoid', got '",
              act, "'");
}

void request_unrounded_dz(BiasActGrad& op) {
  const at::ScalarType math_type = math_dtype(op.y.scalar_type());
  if (op.y.scalar_type() != math_type) op.dz = at::empty_like(op.y, op.y.options().dtype(math_type));
}

at::Tensor bias_act_op(const at::Tensor& x, const std::optional<at::Tensor>& bias, int64_t dim,
                       std::string act, double negative_slope) {
  check_float_tensor(x, "x");
  BiasAct op;
  op.act = parse_act(act, negative_slope);
  op.slope = negative_slope;
  op.x = in_memory_order(x);
  op.channels = 1;  // without a bias, one "channel" covering everything
  op.inner = std::max<int64_t>(x.numel(), 1);
  if (bias.has_value()) {
    check_float_tensor(*bias, "bias");
    check_same_device(*bias, "bias", x, "x");
    dim = wrap_channel_dim(dim, x, "x");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == x.size(dim), "bias must have shape [",
                x.size(dim), "] (x.shape[", dim, "]), got ", bias->sizes());
    op.bias = bias->contiguous();
    op.channels = x.size(dim);
    op.inner = channel_run(op.x, dim);
  }
  op.y = empty_in_format_of(op.x);
  if (x.numel() > 0) run_on_device(x, op, bias_act_cpu, AIGC_CUDA_KERNEL(bias_act_cuda));
  return op.y;
}

std::tuple<at::Tensor, at::Tensor> bias_act_backward_op(const at::Tensor& grad_y, const at::Tensor& y,
                                                        int64_t dim, std::string act,
                                                        double negative_slope,
                                                        std::optional<at::ScalarType> bias_dtype) {
  check_float_tensor(y, "y");
  check_like(grad_y, "grad_y", y, "y");
  BiasActGrad op;
  op.act = parse_act(act, negative_slope);
  op.slope = negative_slope;
  op.y = in_memory_order(y);
  op.grad_y = in_order_of(grad_y, op.y);
  op.grad_x = at::empty_like(op.y);
  op.inner = std::max<int64_t>(y.numel(), 1);  // without a bias, one "channel" (as in bias_act_op)
  if (bias_dtype.has_value()) {
    TORCH_CHECK(is_supported_float(*bias_dtype), "bias_dtype must be float16, bfloat16, float32 or float64, got ",
                *bias_dtype);
    dim = wrap_channel_dim(dim, y, "y");
    op.channels = y.size(dim);
    op.inner = channel_run(op.y, dim);
    op.sum_bias = true;
  }
  if (y.numel() > 0) run_on_device(y, op, bias_act_grad_cpu, AIGC_CUDA_KERNEL(bias_act_grad_cuda));
  at::Tensor grad_bias = at::empty({0}, y.options());
  if (bias_dtype.has_value()) {  // the bias gradient, in the bias's dtype
    if (op.bias_sums.defined()) {
      grad_bias = op.bias_sums.to(*bias_dtype);
    } else {
      // The vendor reduction of dz in the math type: the kernel's copy, or grad_x itself
      // (float32, float64).
      grad_bias = bias_grad_from(op.dz.defined() ? op.dz : op.grad_x, dim, *bias_dtype);
    }
  }
  return {op.grad_x, grad_bias};
}

TORCH_LIBRARY_FRAGMENT(aigc_fast, m) {
  m.def("bias_act(Tensor x, Tensor? bias, int dim, str act, float negative_slope) -> Tensor");
  m.def(
      "bias_act_backward(Tensor grad_y, Tensor y, int dim, str act, float negative_slope, "
      "ScalarType? bias_dtype) -> (Tensor grad_x, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(aigc_fast, CPU, m) {
  m.impl("bias_act", &bias_act_op);
  m.impl("bias_act_backward", &bias_act_backward_op);
}

#ifdef AIGC_FAST_WITH_CUDA
TORCH_LIBRARY_IMPL(aigc_fast, CUDA, m) {
  m.impl("bias_act", &bias_act_op);
  m.impl("bias_act_backward", &bias_act_backward_op);
}
#endif

}  // namespace aigc_fast
