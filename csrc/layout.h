// How ops whose kernels walk tensors in memory order choose layouts (mirrored for
// torch.compile's fake kernels by aigc_fast/_layout.py). Contiguous and channels_last
// tensors are read as they are, and their outputs and gradients get the same layout;
// anything else is copied to contiguous first. A tensor read alongside another must be in
// the same memory order; its strides may still differ in size-1 dimensions (a [B, 1, H, W]
// tensor is both contiguous and channels_last), which memory order ignores, so those are
// not copied.
#pragma once

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <algorithm>
#include <optional>

namespace aigc_fast {

// The memory format t is dense in, contiguous first; none for other layouts.
inline std::optional<at::MemoryFormat> dense_format(const at::Tensor& t) {
  for (const auto format : {at::MemoryFormat::Contiguous, at::MemoryFormat::ChannelsLast,
                            at::MemoryFormat::ChannelsLast3d}) {
    if (t.is_contiguous(format)) return format;
  }
  return std::nullopt;
}

// The elements of one channel that lie together in a dense tensor's memory order, for an
// [outer, channels, inner] view along `dim`: t.stride(dim) (H * W for NCHW's channels, 1 for
// channels_last's); the whole tensor for a single channel, whose size-1 dimension may carry
// any stride.
inline int64_t channel_run(const at::Tensor& t, int64_t dim) {
  return t.size(dim) > 1 ? t.stride(dim) : std::max<int64_t>(t.numel(), 1);
}

inline at::Tensor in_memory_order(const at::Tensor& t) {
  return dense_format(t).has_value() ? t : t.contiguous();
}

// A new tensor shaped as t (which is in_memory_order already), for an elementwise op's
// output: with the strides of the format t is dense in, contiguous first. Where t's strides
// are ambiguous (a size-1 dimension: a [B, 1, H, W] conv output in channels_last), that
// gives the strides ATen's elementwise ops give (torch.tanh(t)'s), not t's own as
// empty_like would: torch.compile guards on strides, and a D fed both a fused G's images
// and real ones otherwise compiled twice.
inline at::Tensor empty_in_format_of(const at::Tensor& t) {
  return at::empty(t.sizes(), t.options().memory_format(dense_format(t).value_or(at::MemoryFormat::Contiguous)));
}

// t in the memory order of `ref` (which is in_memory_order already).
inline at::Tensor in_order_of(const at::Tensor& t, const at::Tensor& ref) {
  return t.contiguous(dense_format(ref).value_or(at::MemoryFormat::Contiguous));
}

}  // namespace aigc_fast
