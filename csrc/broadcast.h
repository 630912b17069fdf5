// Broadcasting a per-row or per-channel vector over a tensor in the autograd code, with the
// shape built from symbolic sizes: a concrete size read there would specialize a graph
// torch.compile traces with dynamic shapes on it, one recompile per batch size.
#pragma once

#include <ATen/core/Tensor.h>

#include <vector>

namespace aigc_fast {

// v ([like.size(dim)]) reshaped to broadcast along dimension dim of like.
inline at::Tensor along_dim(const at::Tensor& v, const at::Tensor& like, int64_t dim) {
  std::vector<c10::SymInt> shape(like.dim(), 1);
  shape[dim] = like.sym_size(dim);
  return v.reshape_symint(shape);
}

}  // namespace aigc_fast
