// The type the kernels compute in, on both devices: double for float64 tensors, float for
// the rest (float16 and bfloat16 are read and written as such, and computed in float32).
#pragma once

#include <ATen/core/Tensor.h>

#include <type_traits>

namespace aigc_fast {

template <typename scalar_t>
using MathType = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;

inline at::ScalarType math_dtype(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// f(T{}) with T the math type of t.
template <typename F>
void with_math_type(const at::Tensor& t, const F& f) {
  if (t.scalar_type() == at::kDouble) {
    f(double{});
  } else {
    f(float{});
  }
}

}  // namespace aigc_fast
