// A tensor's memory and dtype, for code that takes each input in its own dtype (as autocast
// produces them) and computes in T: the CUDA kernels, and the per-channel steps that both
// devices share (bn_act.h). On CUDA the dtype switch in load/store is the same for a whole
// warp, so it costs no divergence.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include "aigc_fast/hostdevice.h"

namespace aigc_fast {

enum class DType : int32_t { kFloat, kDouble, kHalf, kBFloat16 };

// `data` is null for an output nobody asked for (store then does nothing).
struct Ref {
  void* data;
  DType dtype;
};

inline Ref ref(const at::Tensor& t) {
  const at::ScalarType s = t.scalar_type();
  const DType d = s == at::kDouble ? DType::kDouble
                  : s == at::kHalf ? DType::kHalf
                  : s == at::kBFloat16 ? DType::kBFloat16
                                       : DType::kFloat;
  // mutable_data_ptr: outputs and running statistics are written through a Ref, and a
  // copy-on-write storage (a lazy clone) must get its own copy before that, not be written
  // under its sharers. (An input's is materialized too: rare, and never wrong.)
  return Ref{t.numel() > 0 ? t.mutable_data_ptr() : nullptr, d};
}

// A Ref with no data for an undefined tensor (an absent optional input or output).
inline Ref optional_ref(const at::Tensor& t) { return t.defined() ? ref(t) : Ref{nullptr, DType::kFloat}; }

template <typename T>
AIGC_HD T load(Ref r, int64_t i) {
  switch (r.dtype) {
    case DType::kDouble: return static_cast<T>(static_cast<const double*>(r.data)[i]);
    case DType::kHalf: return static_cast<T>(static_cast<float>(static_cast<const at::Half*>(r.data)[i]));
    case DType::kBFloat16: return static_cast<T>(static_cast<float>(static_cast<const at::BFloat16*>(r.data)[i]));
    default: return static_cast<T>(static_cast<const float*>(r.data)[i]);
  }
}

template <typename T>
AIGC_HD void store(Ref r, int64_t i, T v) {
  if (r.data == nullptr) return;
  switch (r.dtype) {
    case DType::kDouble: static_cast<double*>(r.data)[i] = static_cast<double>(v); break;
    case DType::kHalf: static_cast<at::Half*>(r.data)[i] = static_cast<at::Half>(static_cast<float>(v)); break;
    case DType::kBFloat16: static_cast<at::BFloat16*>(r.data)[i] = static_cast<at::BFloat16>(static_cast<float>(v)); break;
    default: static_cast<float*>(r.data)[i] = static_cast<float>(v);
  }
}

}  // namespace aigc_fast
