// The activation table's derivatives (activations.h: each read from the output y) as
// differentiable ATen ops, for the autograd kernels' create_graph paths (second
// derivatives through bias_act and bn_act).
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/ones_like.h>
#include <ATen/ops/where.h>

#include <string>

namespace aigc_fast {

inline at::Tensor derivative_from_output(const at::Tensor& y, const std::string& act, double slope) {
  if (act == "relu") return y.gt(0).to(y.scalar_type());
  if (act == "leaky_relu") return at::where(y.gt(0), at::ones_like(y), at::full_like(y, slope));
  if (act == "tanh") return y.mul(y).neg().add(1);
  if (act == "sigmoid") return y.mul(y.neg().add(1));
  return at::ones_like(y);
}

}  // namespace aigc_fast
