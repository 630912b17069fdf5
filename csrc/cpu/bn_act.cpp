// CPU kernels of aigc_fast::bn_act's statistics and backward (its normalize pass is
// cpu/bias_act.cpp's affine_act). The walks are channel_walk.h's; the per-element math is
// batch_norm.h's. Results do not depend on the thread count: partials are formed over
// fixed pieces and merged in a fixed order, in float64.
#include "../bn_act.h"

#include <algorithm>
#include <type_traits>
#include <vector>

#include "channel_walk.h"
#include "isa.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

// ---- statistics: per-channel mean and biased variance ----

// Sums are taken of x - shift, shift an element of the same channel (the first of the
// piece or block): for data far from zero (mean 1e4, std 1) the float32 sum of x itself
// would round at the scale of the mean, the shifted sum at the scale of the spread.
//
// The moments of one run piece: its mean from the shifted sum, then the squared deviations
// from that mean rounded to T, corrected to the exact mean (m2 = sum (x - mu)^2 - n d^2).
template <typename T, typename S>
AIGC_CPU_CLONES void piece_moments(const S* x, int64_t n, Moments& into) {
  const T shift = math<T>(x[0]);
  T sum = 0;
  AIGC_SIMD_SUM(sum)
  for (int64_t i = 0; i < n; ++i) sum += math<T>(x[i]) - shift;
  const double mean = double(shift) + double(sum) / double(n);
  const T mu = static_cast<T>(mean);
  T m2 = 0;
  AIGC_SIMD_SUM(m2)
  for (int64_t i = 0; i < n; ++i) m2 += (math<T>(x[i]) - mu) * (math<T>(x[i]) - mu);
  const double d = mean - double(mu);
  merge_moments(into, double(n), mean, double(m2) - double(n) * d * d);
}

template <typename T, typename S>
void stats_by_runs(const ChannelStats& op, const Geometry& g, Moments* moments) {
  reduce_runs(g, [&](int64_t channel, int64_t begin, int64_t len) {
    alignas(64) S buf[kChunk];
    piece_moments<T>(load(op.x, begin, len, buf), len, moments[channel]);
  });
}

// Short runs: the same two passes over a block of whole rows (in cache), with per-element
// sums over the rows (shifted by the block's first row) folded into channel means, then
// per-element squared deviations from the row pattern of those means. Into moments[c] for
// the panel's channels c.
template <typename T, typename S>
void stats_by_rows(const ChannelStats& op, const Panel& panel, Moments* moments) {
  const Geometry& g = panel.g;
  const int64_t row = g.row(), groups = row_groups(g);
  std::vector<Moments> partial(groups * g.channels, Moments{0, 0, 0});
  reduce_rows(g, [&](int64_t group, int64_t row0, int64_t rows) {
    S* x_buf = scratch<S, 0>(rows * row).data();
    T* s = scratch<T, 1>(row).data();
    T* d = scratch<T, 2>(row).data();
    T* mu = scratch<T, 3>(row).data();
    double* channel_mean = scratch<double, 4>(g.channels).data();
    double* channel_m2 = scratch<double, 5>(g.channels).data();
    std::fill(channel_mean, channel_mean + g.channels, 0.0);
    std::fill(channel_m2, channel_m2 + g.channels, 0.0);
    const S* x = panel.rows(op.x, row0, rows, x_buf);
    column_sums(1, rows, row, s, [&](int64_t r, int64_t j) { return math<T>(x[r * row + j]) - math<T>(x[j]); });
    const double count = double(rows * g.inner);
    fold_row(g, x, channel_mean);  // the shift, once per row of the block
    for (int64_t c = 0; c < g.channels; ++c) channel_mean[c] *= double(rows);
    fold_row(g, s, channel_mean);
    for (int64_t c = 0; c < g.channels; ++c) channel_mean[c] /= count;
    fill_row(g, mu, [&](int64_t c) { return channel_mean[c]; });
    column_sums(0, rows, row, d, [&](int64_t r, int64_t j) {
      const T v = math<T>(x[r * row + j]) - mu[j];
      return v * v;
    });
    fold_row(g, d, channel_m2);
    for (int64_t c = 0; c < g.channels; ++c) {
      const double dm = channel_mean[c] - double(static_cast<T>(channel_mean[c]));
      merge_moments(partial[group * g.channels + c], count, channel_mean[c], channel_m2[c] - count * dm * dm);
    }
  });
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t c = 0; c < g.channels; ++c) {
      const Moments& p = partial[group * g.channels + c];
      merge_moments(moments[c], p.count, p.mean, p.m2);
    }
  }
}

template <typename T>
void stats(ChannelStats& op) {
  const Geometry g{op.x.numel(), op.channels, op.inner};
  std::vector<Moments> moments(g.channels, Moments{0, 0, 0});
  with_storage<T>({&op.x}, [&](auto stored) {
    using S = decltype(stored);
    if (reduce_by_rows(g)) {
      for_each_panel(g, [&](const Panel& panel) { stats_by_rows<T, S>(op, panel, moments.data() + panel.first); });
    } else {
      stats_by_runs<T, S>(op, g, moments.data());
    }
  });
  for (int64_t c = 0; c < g.channels; ++c) {
    if (moments_overflowed(moments[c])) {
      moments[c] = exact_channel_moments(ref(op.x), g.numel, g.channels, g.inner, c, moments[c]);
    }
    bn_forward_channel_batch(op.step, c, moments[c]);
  }
}

// ---- backward ----

// What batch_norm.h's dz_and_centered reads per channel, for every channel.
template <typename T>
struct GradChannels {
  std::vector<T> shift, scale, beta;
  T cut;

  GradChannel<T> operator[](int64_t c) const { return {shift[c], scale[c], beta[c], cut}; }
};

template <typename T>
GradChannels<T> grad_channels(const BnActGrad& op) {
  GradChannels<T> ch{channel_values<T>(op.shift, op.channels, T(0)), std::vector<T>(op.channels),
                     channel_values<T>(op.beta, op.channels, T(0)), output_cut<T>(op.y.scalar_type())};
  for (int64_t c = 0; c < op.channels; ++c) {
    ch.scale[c] = static_cast<T>(bn_scale(op.step.weight, c, load<double>(op.step.invstd, c)));
  }
  return ch;
}

// One element's dz and u - S, reading only the tensors F needs (the others may be null).
template <GradFrom F, Act A, typename T, typename S>
inline __attribute__((always_inline)) void grad_element(const S* dy, const S* y, const S* x, int64_t i,
                                                        const GradChannel<T>& ch, T slope, T& dz, T& centered) {
  dz_and_centered<F, A>(math<T>(dy[i]), reads_output(F) ? math<T>(y[i]) : T(0),
                        reads_input(F) ? math<T>(x[i]) : T(0), ch, slope, dz, centered);
}

// Calls body(dy, y, x) on the chunk's inputs in the storage type S, null where F does not
// read them: the tensors' own memory, or copies in S where a tensor holds another type (S is
// then the math type; see with_storage).
template <GradFrom F, typename S, typename Body>
void with_grad_inputs(const BnActGrad& op, int64_t begin, int64_t len, const Body& body) {
  alignas(64) S dy_buf[kChunk], y_buf[kChunk], x_buf[kChunk];
  const S* dy = load(op.grad_y, begin, len, dy_buf);
  const S* y = reads_output(F) ? load(op.y, begin, len, y_buf) : nullptr;
  const S* x = reads_input(F) ? load(op.x, begin, len, x_buf) : nullptr;
  body(dy, y, x);
}

template <typename T, typename F>
void with_grad_storage(const BnActGrad& op, const F& f) {
  with_storage<T>({&op.grad_y, &op.y, &op.x, &op.grad_x}, f);
}

// sum(dz) and sum(dz * (u - S)) over one piece of a channel's run.
template <GradFrom F, Act A, typename T, typename S>
AIGC_CPU_CLONES void piece_sums(const S* dy, const S* y, const S* x, int64_t n, GradChannel<T> ch, T slope, T& sum_dz,
                                T& sum_dz_centered) {
  T s1 = 0, s2 = 0;
  _Pragma("omp simd reduction(+ : s1, s2)")
  for (int64_t i = 0; i < n; ++i) {
    T dz, centered;
    grad_element<F, A>(dy, y, x, i, ch, slope, dz, centered);
    s1 += dz;
    s2 += dz * centered;
  }
  sum_dz = s1;
  sum_dz_centered = s2;
}

template <GradFrom F, Act A, typename T, typename S>
void sums_by_runs(const BnActGrad& op, const Geometry& g, const GradChannels<T>& ch, T slope, double* sums) {
  reduce_runs(g, [&](int64_t channel, int64_t begin, int64_t len) {
    with_grad_inputs<F, S>(op, begin, len, [&](const S* dy, const S* y, const S* x) {
      T s1, s2;
      piece_sums<F, A>(dy, y, x, len, ch[channel], slope, s1, s2);
      sums[channel * 2] += double(s1);
      sums[channel * 2 + 1] += double(s2);
    });
  });
}

// One block of rows of the short-run sums: the inputs F reads (rows x row elements each, the
// others null; a row is `channels` runs of `inner` elements), the channels' values (those
// of the panel, from ch's channel `first` on), and the per-element sums out.
template <typename T, typename S>
struct SumsBlock {
  const S *dy, *y, *x;
  int64_t rows, channels, inner;
  const GradChannels<T>* ch;
  int64_t first;
  T slope;
  T *s1, *s2;  // [channels * inner]
};

// Element j of rows 0 .. kRows - 1 (kRows 1 or 4; rows `row` elements apart) added into its
// per-element sums in row order, so the bits of a row-by-row loop, with its accumulators
// loaded and stored once for the kRows rows. (The rows are written out: g++ 12 kept the
// caller's loop scalar around a loop over them.)
template <int64_t kRows, GradFrom F, Act A, typename T, typename S>
inline __attribute__((always_inline)) void add_rows(const S* dy, const S* y, const S* x, int64_t row, int64_t j,
                                                    const GradChannel<T>& ch, T slope, T* s1, T* s2) {
  static_assert(kRows == 1 || kRows == 4, "add_rows takes one row or four");
  T a1 = s1[j], a2 = s2[j];
  T dz, centered;
  grad_element<F, A>(dy, y, x, j, ch, slope, dz, centered);
  a1 += dz;
  a2 += dz * centered;
  if constexpr (kRows == 4) {
    grad_element<F, A>(dy, y, x, j + row, ch, slope, dz, centered);
    a1 += dz;
    a2 += dz * centered;
    grad_element<F, A>(dy, y, x, j + 2 * row, ch, slope, dz, centered);
    a1 += dz;
    a2 += dz * centered;
    grad_element<F, A>(dy, y, x, j + 3 * row, ch, slope, dz, centered);
    a1 += dz;
    a2 += dz * centered;
  }
  s1[j] = a1;
  s2[j] = a2;
}

// Rows [r0, r0 + kRows) of a block added into its per-element sums (add_rows). A channel's
// values are scalars over its run (NCHW), or read per element where runs are single
// elements (channels_last).
template <int64_t kRows, GradFrom F, Act A, typename T, typename S>
AIGC_CPU_CLONES void sums_rows(const SumsBlock<T, S>& b, int64_t r0) {
  const int64_t row = b.channels * b.inner;
  const S* dy = b.dy + r0 * row;
  const S* y = reads_output(F) ? b.y + r0 * row : nullptr;
  const S* x = reads_input(F) ? b.x + r0 * row : nullptr;
  const T *shift = b.ch->shift.data() + b.first, *scale = b.ch->scale.data() + b.first;
  const T* beta = b.ch->beta.data() + b.first;
  T *s1 = b.s1, *s2 = b.s2;
  const T cut = b.ch->cut, slope = b.slope;
  if (b.inner == 1) {
    AIGC_SIMD
    for (int64_t c = 0; c < b.channels; ++c) {
      const GradChannel<T> ch{shift[c], scale[c], beta[c], cut};
      add_rows<kRows, F, A>(dy, y, x, row, c, ch, slope, s1, s2);
    }
    return;
  }
  for (int64_t c = 0; c < b.channels; ++c) {
    const GradChannel<T> ch{shift[c], scale[c], beta[c], cut};
    const int64_t first = c * b.inner;
    AIGC_SIMD
    for (int64_t i = first; i < first + b.inner; ++i) add_rows<kRows, F, A>(dy, y, x, row, i, ch, slope, s1, s2);
  }
}

// A block's per-element sums, four rows at a time where it has them: a row at a time, the
// input-only backward (three per-channel values an element, read as row patterns then) ran
// its sums pass slower than reading y had at in-cache sizes (bench/NOTES.md).
template <GradFrom F, Act A, typename T, typename S>
void sums_block(const SumsBlock<T, S>& b) {
  std::fill(b.s1, b.s1 + b.channels * b.inner, T(0));
  std::fill(b.s2, b.s2 + b.channels * b.inner, T(0));
  int64_t r = 0;
  for (; r + 4 <= b.rows; r += 4) sums_rows<4, F, A>(b, r);
  for (; r < b.rows; ++r) sums_rows<1, F, A>(b, r);
}

// Short runs: per-element sums over a block's rows (sums_block), folded into per-channel
// float64 partials of the block's group, groups then added in order. For the panel's
// channels c (ch[panel.first + c]): sums[c * 2] and sums[c * 2 + 1] out.
template <GradFrom F, Act A, typename T, typename S>
void sums_by_rows(const BnActGrad& op, const Panel& panel, const GradChannels<T>& ch, T slope, double* sums) {
  const Geometry& g = panel.g;
  const int64_t row = g.row(), groups = row_groups(g);
  std::vector<double> partial(groups * g.channels * 2, 0.0);
  reduce_rows(g, [&](int64_t group, int64_t row0, int64_t rows) {
    const int64_t len = rows * row;
    SumsBlock<T, S> block{};
    block.dy = panel.rows(op.grad_y, row0, rows, scratch<S, 0>(len).data());
    block.y = reads_output(F) ? panel.rows(op.y, row0, rows, scratch<S, 1>(len).data()) : nullptr;
    block.x = reads_input(F) ? panel.rows(op.x, row0, rows, scratch<S, 2>(len).data()) : nullptr;
    block.rows = rows;
    block.channels = g.channels;
    block.inner = g.inner;
    block.ch = &ch;
    block.first = panel.first;
    block.slope = slope;
    block.s1 = scratch<T, 3>(row).data();
    block.s2 = scratch<T, 4>(row).data();
    sums_block<F, A>(block);
    double* into = &partial[group * g.channels * 2];
    fold_row(g, block.s1, into, 2);
    fold_row(g, block.s2, into + 1, 2);
  });
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t i = 0; i < g.channels * 2; ++i) sums[i] += partial[group * g.channels * 2 + i];
  }
}

template <GradFrom F, Act A, typename T>
void sums(BnActGrad& op) {
  const Geometry g{op.y.numel(), op.channels, op.inner};
  const GradChannels<T> ch = grad_channels<T>(op);
  const T slope = static_cast<T>(op.slope);
  // Per-channel sums of dz and dz * (u - S), float64, interleaved: [c * 2], [c * 2 + 1].
  std::vector<double> sums(g.channels * 2, 0.0);
  with_grad_storage<T>(op, [&](auto stored) {
    using S = decltype(stored);
    if (reduce_by_rows(g)) {
      for_each_panel(g, [&](const Panel& panel) {
        sums_by_rows<F, A, T, S>(op, panel, ch, slope, sums.data() + panel.first * 2);
      });
    } else {
      sums_by_runs<F, A, T, S>(op, g, ch, slope, sums.data());
    }
  });
  for (int64_t c = 0; c < g.channels; ++c) bn_backward_channel(op.step, c, sums[c * 2], sums[c * 2 + 1]);
}

// The dx pass's per-channel values: S, beta (kInput), then batch_norm.h's A, B and C (A is
// the forward's scale: bn_scale).
enum Param { kShift, kBeta, kA, kB, kC, kParams };

template <GradFrom F, Act A, typename T, typename S>
void grad_input_in(BnActGrad& op) {
  ChannelParams<T, kParams> params;
  params.values = {channel_values<T>(op.shift, op.channels, T(0)), channel_values<T>(op.beta, op.channels, T(0)),
                   channel_values<T>(op.a, op.channels, T(0)), channel_values<T>(op.b, op.channels, T(0)),
                   channel_values<T>(op.c, op.channels, T(0))};
  const T slope = static_cast<T>(op.slope), cut = output_cut<T>(op.y.scalar_type());
  const auto pass = [&](auto batch_stats) {
    constexpr bool kBatchStats = decltype(batch_stats)::value;
    map_channels(Geometry{op.y.numel(), op.channels, op.inner}, params, [&](int64_t begin, int64_t len, const auto& segments) {
      with_grad_inputs<F, S>(op, begin, len, [&](const S* dy, const S* y, const S* x) {
        alignas(64) S dx_buf[kChunk];
        S* dx = output(op.grad_x, begin, dx_buf);
        segments([&](int64_t pos, int64_t n, auto step, const auto& p, auto*) {
          constexpr int64_t P = decltype(step)::value;
          const S *dys = dy + pos, *ys = y == nullptr ? nullptr : y + pos, *xs = x == nullptr ? nullptr : x + pos;
          const T *shift = p[kShift], *beta = p[kBeta], *a = p[kA], *b = p[kB], *c = p[kC];
          S* dxs = dx + pos;
          simd_for(n, [&, cut, slope](int64_t i) {
            T dz, centered;
            grad_element<F, A>(dys, ys, xs, i, GradChannel<T>{shift[i * P], a[i * P], beta[i * P], cut}, slope, dz,
                               centered);
            put(dxs, i, bn_grad_input<kBatchStats>(dz, centered, a[i * P], b[i * P], c[i * P]));
          });
        });
        store(dx, op.grad_x, begin, len);
      });
    });
  };
  // (Hoisted out of the loops: a per-element choice cost the in-cache sizes up to ~10%.)
  op.step.training ? pass(std::true_type{}) : pass(std::false_type{});
}

template <GradFrom F, Act A, typename T>
void grad_input(BnActGrad& op) {
  with_grad_storage<T>(op, [&](auto stored) { grad_input_in<F, A, T, decltype(stored)>(op); });
}

}  // namespace

void channel_stats_cpu(ChannelStats& op) {
  with_math_type(op.x, [&](auto type) { stats<decltype(type)>(op); });
}

void forward_channels_cpu(const BnForwardChannels& step, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) bn_forward_channel_eval(step, c);
}

void backward_channels_cpu(const BnBackwardChannels& step, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) bn_backward_channel(step, c, 0.0, 0.0);
}

void bn_act_sums_cpu(BnActGrad& op) {
  with_grad_kernel<true>(op, [&](auto from, auto act, auto type) {
    sums<decltype(from)::value, decltype(act)::value, decltype(type)>(op);
  });
}

void bn_act_grad_input_cpu(BnActGrad& op) {
  with_grad_kernel<true>(op, [&](auto from, auto act, auto type) {
    grad_input<decltype(from)::value, decltype(act)::value, decltype(type)>(op);
  });
}

}  // namespace aigc_fast
