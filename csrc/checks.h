// Argument checks shared by every op: each failure names the argument and says what was
// expected and what was given, so users see the fix in the message.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

#include "math_type.h"

namespace aigc_fast {

inline bool is_supported_float(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16 || t == at::kDouble;
}

inline void check_float_tensor(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.defined(), name, " must be a tensor, got None");
  TORCH_CHECK(is_supported_float(t.scalar_type()), name,
              " must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

inline void check_same_device(const at::Tensor& t, const char* name, const at::Tensor& ref,
                              const char* ref_name) {
  TORCH_CHECK(t.device() == ref.device(), name, " must be on the same device as ", ref_name,
              ", got ", t.device(), " and ", ref.device());
}

inline void check_like(const at::Tensor& t, const char* name, const at::Tensor& ref,
                       const char* ref_name) {
  check_float_tensor(t, name);
  check_same_device(t, name, ref, ref_name);
  TORCH_CHECK(t.scalar_type() == ref.scalar_type(), name, " must have the same dtype as ",
              ref_name, ", got ", t.scalar_type(), " and ", ref.scalar_type());
  TORCH_CHECK(t.sizes() == ref.sizes(), name, " must have the same shape as ", ref_name, ", got ",
              t.sizes(), " and ", ref.sizes());
}

// A float argument the kernels compute with (a slope, a momentum, an eps): NaN or
// inf would turn outputs or running statistics into NaN or inf without an error. The Python
// wrappers check too, but not every value (one a compiled graph takes as a symbolic float),
// and callers of torch.ops.aigc_fast skip them.
inline void check_finite(double value, const char* name) {
  TORCH_CHECK(std::isfinite(value), name, " must be finite, got ", value);
}

}  // namespace aigc_fast
