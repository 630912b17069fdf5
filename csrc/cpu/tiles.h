// What every CPU kernel needs to walk its tiles. A tile's view of a tensor in the math
// type T, whatever the tensor's dtype (the kernels accept each input in its own dtype, as
// autocast gives bfloat16 activations next to float32 data and parameters): the tensor's
// own memory when it already holds T, else a converted copy in scratch; outputs are
// written in place or converted on store. Conversions run in AIGC_CPU_CLONES loops, so
// they vectorize with the kernels. (for_units, the parallel loop, is in parallel.h.)
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <type_traits>

#include "isa.h"
#include "parallel.h"

namespace aigc_fast {
namespace {

template <typename To, typename From>
AIGC_CPU_CLONES void convert(const From* src, To* dst, int64_t n) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<To>(src[i]);
}

// Elements [begin, begin + n) of t (in memory order) as T: t's own memory if it holds T,
// else converted into scratch.
template <typename T>
const T* load(const at::Tensor& t, int64_t begin, int64_t n, T* scratch) {
  const T* out = scratch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "aigc_fast_load", [&] {
    const scalar_t* src = t.const_data_ptr<scalar_t>() + begin;
    if constexpr (std::is_same_v<scalar_t, T>) {
      out = src;
    } else {
      convert(src, scratch, n);
    }
  });
  return out;
}

// Where a tile writes elements [begin, ...) of t: t's own memory if it holds T, else scratch
// (then `store` converts).
template <typename T>
T* output(const at::Tensor& t, int64_t begin, T* scratch) {
  if (t.scalar_type() == c10::CppTypeToScalarType<T>::value) return t.mutable_data_ptr<T>() + begin;
  return scratch;
}

template <typename T>
void store(const T* values, const at::Tensor& t, int64_t begin, int64_t n) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "aigc_fast_store", [&] {
    if constexpr (!std::is_same_v<scalar_t, T>) convert(values, t.mutable_data_ptr<scalar_t>() + begin, n);
  });
}

}  // namespace
}  // namespace aigc_fast
