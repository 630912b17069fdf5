// The bias + activation op as the CPU and CUDA kernels see it (bias_act.cpp checks the
// arguments and lays the tensors out). Kernels read x in memory order, as [outer, channels,
// inner] with inner = x.stride(dim): true of every dense layout, NCHW (inner = H * W) and
// channels_last (inner = 1) alike, so the output keeps the input's memory format.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <type_traits>
#include <vector>

#include "channel_act.h"

namespace aigc_fast {

struct BiasAct {
  at::Tensor x;     // dense (contiguous or channels_last)
  at::Tensor bias;  // [channels], contiguous, any float dtype; undefined for none
  Act act;
  double slope;     // leaky_relu's negative slope
  int64_t channels, inner;
  at::Tensor y;     // output, laid out like x
};

// bias_act as channel_act.h's pass with no mean or scale: y = act(x + bias) (affine = false).
inline ChannelAffineAct bias_only(const BiasAct& op) {
  return ChannelAffineAct{op.x, op.channels, op.inner, at::Tensor(), at::Tensor(), op.bias, op.act, op.slope, op.y};
}

// Backward from the output alone: grad_x = grad_y * f'(v), with f'(v) read from y. Where
// sum_bias, the bias gradient sums dz = grad_y * f'(v) by channel in the math type, before
// dz is rounded to a 16-bit grad_x: the CPU kernel in the same pass (bias_sums) where its
// walk allows (channel_walk.h, can_sum_channels); otherwise a kernel writes dz for a vendor
// sum where grad_x cannot hold it (dz), or leaves grad_x itself to be summed.
struct BiasActGrad {
  at::Tensor grad_y, y;  // same layout
  Act act;
  double slope;
  int64_t channels = 1, inner = 1;  // the bias's channels, as in BiasAct
  bool sum_bias = false;
  at::Tensor grad_x;     // laid out like y
  at::Tensor bias_sums;  // set by a kernel that summed: float64 [channels]
  at::Tensor dz;         // set by a kernel that wrote dz: the math type, laid out like y
};

// For a kernel that cannot sum the bias gradient in its pass: op.dz in the math type where
// grad_x, in a 16-bit type, cannot hold the unrounded products (else grad_x itself is summed).
void request_unrounded_dz(BiasActGrad& op);

// The dimensions of an ndim-d tensor a bias gradient along `dim` sums over.
inline std::vector<int64_t> dims_except(int64_t ndim, int64_t dim) {
  std::vector<int64_t> dims;
  for (int64_t d = 0; d < ndim; ++d) {
    if (d != dim) dims.push_back(d);
  }
  return dims;
}

// The bias gradient from dz (the math type): summed over every dimension but `dim`, in
// the bias's dtype. (An empty dimension list would mean "all dimensions" to sum: a 1-d dz
// is its own bias gradient, cloned so it never shares the input gradient's memory.)
inline at::Tensor bias_grad_from(const at::Tensor& dz, int64_t dim, at::ScalarType bias_dtype) {
  const std::vector<int64_t> dims = dims_except(dz.dim(), dim);
  return (dims.empty() ? dz.clone() : dz.sum(dims)).to(bias_dtype);
}

// dim as an index of t's dimensions, a negative one counting from the end as in torch (so
// the op takes what the Python wrapper and the fake kernels take); a clear error otherwise.
inline int64_t wrap_channel_dim(int64_t dim, const at::Tensor& t, const char* name) {
  TORCH_CHECK(dim >= -t.dim() && dim < t.dim(), "dim must index a dimension of ", name, " (", t.dim(), "-d), got ",
              dim);
  return dim < 0 ? dim + t.dim() : dim;
}

void bias_act_cpu(BiasAct& op);
void bias_act_grad_cpu(BiasActGrad& op);
#ifdef AIGC_FAST_WITH_CUDA
void bias_act_cuda(BiasAct& op);
void bias_act_grad_cuda(BiasActGrad& op);
#endif

}  // namespace aigc_fast
