// What every CPU kernel needs to walk its tiles. A tile's view of a tensor in the math
// type T, whatever the tensor's dtype (the kernels accept each input in its own dtype, as
// autocast gives bfloat16 activations next to float32 data and parameters): the tensor's
// own memory when it already holds T, else a converted copy in scratch; outputs are
// written in place or converted on store. Conversions run in AIGC_CPU_CLONES loops, so
// they vectorize with the kernels. (for_units, the parallel loop, is in parallel.h.)
#pragma once

#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <type_traits>

#include "isa.h"
#include "parallel.h"

namespace aigc_fast {
namespace {

// float -> bfloat16 and float -> half bits, rounded to nearest even exactly as c10's
// conversions round (NaN included: checked over all 2^32 floats), in forms g++ vectorizes.
// c10::BFloat16(float) and c10::Half(float) run one element at a time, ~1.0 and ~1.6 ns
// each on a Zen 4 against ~0.07 and ~0.15 here, which made every 16-bit output cost more
// than its float32 twin. (Half: c10's own branchless formula, called directly; _Float16
// would tie the library to libgcc 12's __truncsfhf2 in clones without F16C.)
inline __attribute__((always_inline)) uint16_t bfloat16_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof(bits));
  const uint32_t rounded = (bits + 0x7FFFu + ((bits >> 16) & 1u)) >> 16;
  return f != f ? uint16_t(0x7FC0) : static_cast<uint16_t>(rounded);
}

inline __attribute__((always_inline)) uint16_t half_bits(float f) { return c10::detail::fp16_ieee_from_fp32_value(f); }

template <typename T, typename S>
inline __attribute__((always_inline)) T math(S v) {
  return static_cast<T>(v);
}

// out[i] = v in out's type, 16-bit types through the vectorizable roundings above.
template <typename S, typename T>
inline __attribute__((always_inline)) void put(S* out, int64_t i, T v) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    reinterpret_cast<uint16_t*>(out)[i] = bfloat16_bits(v);
  } else if constexpr (std::is_same_v<S, c10::Half>) {
    reinterpret_cast<uint16_t*>(out)[i] = half_bits(v);
  } else {
    out[i] = static_cast<S>(v);
  }
}

template <typename To, typename From>
AIGC_CPU_CLONES void convert(const From* src, To* dst, int64_t n) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) put(dst, i, src[i]);
}

// Kernels whose inputs and outputs all hold one 16-bit type (autocast's bfloat16
// activations and their gradients) read and write them in that type inside their own
// vector loops, converting in registers: a converted copy of each input in scratch costs a
// pass through L1 or L2 per tensor, which made the bfloat16 bn_act backward slower than
// the float32 one. with_storage calls f with that type S (else with T, and tensors of other
// types are copied as below); math<T> and put (above) are the conversions.
template <typename T, typename F>
void with_storage(std::initializer_list<const at::Tensor*> tensors, const F& f) {
  if constexpr (std::is_same_v<T, float>) {
    const auto all = [&](at::ScalarType type) {
      for (const at::Tensor* t : tensors) {
        if (t->defined() && t->scalar_type() != type) return false;
      }
      return true;
    };
    if (all(at::kBFloat16)) return f(c10::BFloat16{});
    if (all(at::kHalf)) return f(c10::Half{});
  }
  f(T{});
}

// Elements [begin, begin + n) of data as T: data's own memory if it holds T, else
// converted into scratch.
template <typename T, typename S>
const T* load(const S* data, int64_t begin, int64_t n, T* scratch) {
  if constexpr (std::is_same_v<T, S>) {
    return data + begin;
  } else {
    convert(data + begin, scratch, n);
    return scratch;
  }
}

// Where a tile writes elements [begin, ...) of data: data's own memory if it holds T, else
// scratch (also when data is null: an output not asked for); then `store` converts.
template <typename T, typename S>
T* output(S* data, int64_t begin, T* scratch) {
  if constexpr (std::is_same_v<T, S>) {
    return data == nullptr ? scratch : data + begin;
  } else {
    return scratch;
  }
}

template <typename T, typename S>
void store(const T* values, S* data, int64_t begin, int64_t n) {
  if (data == nullptr || static_cast<const void*>(values) == static_cast<const void*>(data + begin)) return;
  convert(values, data + begin, n);
}

// The same for elements [begin, begin + n) of t (in memory order), whatever its dtype.
template <typename T>
const T* load(const at::Tensor& t, int64_t begin, int64_t n, T* scratch) {
  const T* out = scratch;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "aigc_fast_load",
                                  [&] { out = load(t.const_data_ptr<scalar_t>(), begin, n, scratch); });
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
