// The activation table's backward (activations.h: each derivative read from the output y)
// as differentiable ATen ops, for the autograd kernels' create_graph paths (second
// derivatives through bias_act and bn_act).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/leaky_relu_backward.h>
#include <ATen/ops/threshold_backward.h>

#include <string>

#include "channel_act.h"

namespace aigc_fast {

// grad_y * act'(from y). relu and leaky_relu go through PyTorch's own backward ops: their
// derivative with respect to y is a zero that autograd still carries, so a gradient
// penalty taken through the layer gives its bias a zero gradient (as plain PyTorch does)
// rather than none, and an optimizer step after the penalty alone treats it the same.
// (A switch with no default: the compiler names an activation added to the table but not here.)
inline at::Tensor grad_through_activation(const at::Tensor& grad_y, const at::Tensor& y, const std::string& act,
                                          double slope) {
  switch (parse_act(act, slope)) {
    case Act::kIdentity: return grad_y;
    case Act::kRelu: return at::threshold_backward(grad_y, y, 0);
    case Act::kLeakyRelu: return at::leaky_relu_backward(grad_y, y, slope, /*self_is_result=*/true);
    case Act::kTanh: return grad_y.mul(y.mul(y).neg().add(1));
    case Act::kSigmoid: return grad_y.mul(y.mul(y.neg().add(1)));
  }
  TORCH_INTERNAL_ASSERT(false, "unknown activation");
}

}  // namespace aigc_fast
