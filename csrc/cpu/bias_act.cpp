// CPU kernels of aigc_fast::bias_act. The tensor is walked in memory order, in chunks that
// run in parallel. Where each channel is a run of at least kMinRun elements (NCHW), a
// chunk splits into runs that add one bias value; where runs are short (channels_last:
// one element per channel, then the next pixel), a chunk of whole pixels adds a repeating
// bias pattern, or, for rows wider than a chunk, slices of the bias itself. Either way the
// inner loop is a plain vectorizable loop over the shared activation formulas.
#include "../bias_act.h"

#include <algorithm>
#include <vector>

#include "isa.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kMinRun = 16;

template <Act A, typename T>
AIGC_CPU_CLONES void add_scalar_act(const T* x, T bias, T slope, int64_t n, T* y) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) y[i] = act_forward<A>(x[i] + bias, slope);
}

template <Act A, typename T>
AIGC_CPU_CLONES void add_row_act(const T* x, const T* bias, T slope, int64_t n, T* y) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) y[i] = act_forward<A>(x[i] + bias[i], slope);
}

template <Act A, typename T>
AIGC_CPU_CLONES void act_grad(const T* grad_y, const T* y, T slope, int64_t n, T* grad_x) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) grad_x[i] = grad_y[i] * act_grad_from_output<A>(y[i], slope);
}

template <typename T>
std::vector<T> bias_values(const BiasAct& op) {
  std::vector<T> values(op.channels, T(-0.0));  // x + (-0) is x for every x, -0 included
  if (op.bias.defined()) {
    std::vector<T> scratch(op.channels);
    const T* b = load(op.bias, 0, op.channels, scratch.data());
    std::copy(b, b + op.channels, values.begin());
  }
  return values;
}

// Walks x in chunks of kChunk elements (in parallel), giving each chunk's input and output
// in the math type to body(x, y, begin, len); converts on load and store as needed.
template <typename T, typename Body>
void each_chunk(BiasAct& op, const Body& body) {
  const int64_t n = op.x.numel();
  for_units((n + kChunk - 1) / kChunk, n, [&](int64_t first, int64_t last) {
    alignas(64) T x_buf[kChunk], y_buf[kChunk];
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t begin = chunk * kChunk, len = std::min(kChunk, n - begin);
      const T* x = load(op.x, begin, len, x_buf);
      T* y = output(op.y, begin, y_buf);
      body(x, y, begin, len);
      store(y, op.y, begin, len);
    }
  });
}

template <Act A, typename T>
void forward_runs(BiasAct& op) {
  const std::vector<T> bias = bias_values<T>(op);
  const T slope = static_cast<T>(op.slope);
  each_chunk<T>(op, [&](const T* x, T* y, int64_t begin, int64_t len) {
    for (int64_t pos = 0; pos < len;) {  // runs of one channel
      const int64_t run = (begin + pos) / op.inner;
      const int64_t end = std::min(len, (run + 1) * op.inner - begin);
      add_scalar_act<A>(x + pos, bias[run % op.channels], slope, end - pos, y + pos);
      pos = end;
    }
  });
}

template <Act A, typename T>
void forward_rows(BiasAct& op) {
  const std::vector<T> bias = bias_values<T>(op);
  const T slope = static_cast<T>(op.slope);
  // A row (channels * inner elements) is one pixel's channels; a chunk is as many whole
  // rows as fit in kChunk, and its bias pattern (element j: channel (j / inner) % channels)
  // is built once, so each chunk is one vector loop however few channels there are.
  const int64_t row = op.channels * op.inner, rows = op.x.numel() / row;
  const int64_t rows_per_chunk = std::max<int64_t>(1, kChunk / row), chunk = rows_per_chunk * row;
  std::vector<T> pattern(chunk);
  for (int64_t j = 0; j < chunk; ++j) pattern[j] = bias[(j / op.inner) % op.channels];
  const int64_t chunks = (rows + rows_per_chunk - 1) / rows_per_chunk;
  for_units(chunks, op.x.numel(), [&](int64_t first, int64_t last) {
    std::vector<T> x_scratch(chunk), y_scratch(chunk);
    for (int64_t c = first; c < last; ++c) {
      const int64_t begin = c * chunk, len = std::min(chunk, op.x.numel() - begin);
      const T* x = load(op.x, begin, len, x_scratch.data());
      T* y = output(op.y, begin, y_scratch.data());
      add_row_act<A>(x, pattern.data(), slope, len, y);
      store(y, op.y, begin, len);
    }
  });
}

// inner == 1 and more channels than a chunk holds (a very wide last dimension): chunks of
// the flat tensor, split where a row ends, add the matching slice of the bias itself.
template <Act A, typename T>
void forward_slices(BiasAct& op) {
  const std::vector<T> bias = bias_values<T>(op);
  const T slope = static_cast<T>(op.slope);
  each_chunk<T>(op, [&](const T* x, T* y, int64_t begin, int64_t len) {
    for (int64_t pos = 0; pos < len;) {
      const int64_t c = (begin + pos) % op.channels, piece = std::min(len - pos, op.channels - c);
      add_row_act<A>(x + pos, bias.data() + c, slope, piece, y + pos);
      pos += piece;
    }
  });
}

template <Act A, typename T>
void backward(BiasActGrad& op) {
  const T slope = static_cast<T>(op.slope);
  const int64_t n = op.y.numel();
  for_units((n + kChunk - 1) / kChunk, n, [&](int64_t first, int64_t last) {
    alignas(64) T g_buf[kChunk], y_buf[kChunk], dx_buf[kChunk];
    for (int64_t chunk = first; chunk < last; ++chunk) {
      const int64_t begin = chunk * kChunk, len = std::min(kChunk, n - begin);
      T* dx = output(op.grad_x, begin, dx_buf);
      act_grad<A>(load(op.grad_y, begin, len, g_buf), load(op.y, begin, len, y_buf), slope, len, dx);
      store(dx, op.grad_x, begin, len);
    }
  });
}

}  // namespace

template <Act A, typename T>
void forward(BiasAct& op) {
  const bool short_runs = op.bias.defined() && op.inner < kMinRun;
  if (!short_runs) return forward_runs<A, T>(op);
  if (op.channels * op.inner <= kChunk) return forward_rows<A, T>(op);
  if (op.inner == 1) return forward_slices<A, T>(op);
  forward_runs<A, T>(op);  // short runs of a huge row: rare, correct, not fast
}

void bias_act_cpu(BiasAct& op) {
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    op.x.scalar_type() == at::kDouble ? forward<A, double>(op) : forward<A, float>(op);
  });
}

void bias_act_grad_cpu(BiasActGrad& op) {
  with_act(op.act, [&](auto act) {
    constexpr Act A = decltype(act)::value;
    op.y.scalar_type() == at::kDouble ? backward<A, double>(op) : backward<A, float>(op);
  });
}

}  // namespace aigc_fast
