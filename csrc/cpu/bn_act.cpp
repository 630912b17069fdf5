// CPU kernels of aigc_fast::bn_act's statistics and backward (its normalize pass is
// cpu/bias_act.cpp's affine_act). The walks are channel_walk.h's; the per-element math is
// batch_norm.h's. Results do not depend on the thread count: partials are formed over
// fixed pieces and merged in a fixed order, in float64.
#include "../bn_act.h"

#include <algorithm>
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
  for (int64_t c = 0; c < g.channels; ++c) bn_forward_channel_batch(op.step, c, moments[c]);
}

// ---- backward ----

// The per-channel coefficients of the backward (batch_norm.h), in this order.
enum Param { kShift, kA, kB, kC, kParams };

template <typename T>
ChannelParams<T, kParams> grad_params(const BnActGrad& op) {
  ChannelParams<T, kParams> params;
  params.values = {channel_values<T>(op.shift, op.channels, T(0)), channel_values<T>(op.a, op.channels, T(0)),
                   channel_values<T>(op.b, op.channels, T(0)), channel_values<T>(op.c, op.channels, T(0))};
  return params;
}

// Calls body(dy, y, x) on the chunk's inputs in the storage type S (x null in the
// memory-saving mode): the tensors' own memory, or copies in S where a tensor holds another
// type (S is then the math type; see with_storage).
template <typename S, typename Body>
void with_grad_inputs(const BnActGrad& op, int64_t begin, int64_t len, const Body& body) {
  alignas(64) S dy_buf[kChunk], y_buf[kChunk], x_buf[kChunk];
  const S* dy = load(op.grad_y, begin, len, dy_buf);
  const S* y = load(op.y, begin, len, y_buf);
  const S* x = op.x.defined() ? load(op.x, begin, len, x_buf) : nullptr;
  body(dy, y, x);
}

template <typename T, typename F>
void with_grad_storage(const BnActGrad& op, const F& f) {
  with_storage<T>({&op.grad_y, &op.y, &op.x, &op.grad_x}, f);
}

// sum(dz) and sum(dz * (u - S)) over one piece of a channel's run.
template <bool kFromOutput, Act A, typename T, typename S>
AIGC_CPU_CLONES void piece_sums(const S* dy, const S* y, const S* x, int64_t n, T shift, T slope, T& sum_dz,
                                T& sum_dz_centered) {
  T s1 = 0, s2 = 0;
  _Pragma("omp simd reduction(+ : s1, s2)")
  for (int64_t i = 0; i < n; ++i) {
    T dz, centered;
    dz_and_centered<kFromOutput, A>(math<T>(dy[i]), math<T>(y[i]), kFromOutput ? T(0) : math<T>(x[i]), shift, slope,
                                    dz, centered);
    s1 += dz;
    s2 += dz * centered;
  }
  sum_dz = s1;
  sum_dz_centered = s2;
}

template <bool kFromOutput, Act A, typename T, typename S>
void sums_by_runs(const BnActGrad& op, const Geometry& g, const T* shifts, T slope, double* sums) {
  reduce_runs(g, [&](int64_t channel, int64_t begin, int64_t len) {
    with_grad_inputs<S>(op, begin, len, [&](const S* dy, const S* y, const S* x) {
      T s1, s2;
      piece_sums<kFromOutput, A>(dy, y, x, len, shifts[channel], slope, s1, s2);
      sums[channel * 2] += double(s1);
      sums[channel * 2 + 1] += double(s2);
    });
  });
}

// Short runs: per-element sums over a block's rows (the shift as a row pattern), folded
// into per-channel float64 partials of the block's group, groups then added in order. For
// the panel's channels c: shifts[c] in, sums[c * 2] and sums[c * 2 + 1] out.
template <bool kFromOutput, Act A, typename T, typename S>
void sums_by_rows(const BnActGrad& op, const Panel& panel, const T* shifts, T slope, double* sums) {
  const Geometry& g = panel.g;
  const int64_t row = g.row(), groups = row_groups(g);
  std::vector<T> shift_row(row);
  fill_row(g, shift_row.data(), [&](int64_t c) { return shifts[c]; });
  std::vector<double> partial(groups * g.channels * 2, 0.0);
  reduce_rows(g, [&](int64_t group, int64_t row0, int64_t rows) {
    const int64_t len = rows * row;
    const S* dy = panel.rows(op.grad_y, row0, rows, scratch<S, 0>(len).data());
    const S* y = panel.rows(op.y, row0, rows, scratch<S, 1>(len).data());
    const S* x = op.x.defined() ? panel.rows(op.x, row0, rows, scratch<S, 2>(len).data()) : nullptr;
    T* s1 = scratch<T, 3>(row).data();
    T* s2 = scratch<T, 4>(row).data();
    std::fill(s1, s1 + row, T(0));
    std::fill(s2, s2 + row, T(0));
    const T* shift = shift_row.data();
    for (int64_t r = 0; r < rows; ++r) {
      const S *dyr = dy + r * row, *yr = y + r * row, *xr = x == nullptr ? nullptr : x + r * row;
      simd_for(row, [&](int64_t j) {
        T dz, centered;
        dz_and_centered<kFromOutput, A>(math<T>(dyr[j]), math<T>(yr[j]), kFromOutput ? T(0) : math<T>(xr[j]), shift[j],
                                        slope, dz, centered);
        s1[j] += dz;
        s2[j] += dz * centered;
      });
    }
    double* into = &partial[group * g.channels * 2];
    fold_row(g, s1, into, 2);
    fold_row(g, s2, into + 1, 2);
  });
  for (int64_t group = 0; group < groups; ++group) {
    for (int64_t i = 0; i < g.channels * 2; ++i) sums[i] += partial[group * g.channels * 2 + i];
  }
}

template <bool kFromOutput, Act A, typename T>
void sums(BnActGrad& op) {
  const Geometry g{op.y.numel(), op.channels, op.inner};
  const std::vector<T> shifts = channel_values<T>(op.shift, op.channels, T(0));
  const T slope = static_cast<T>(op.slope);
  // Per-channel sums of dz and dz * (u - S), float64, interleaved: [c * 2], [c * 2 + 1].
  std::vector<double> sums(g.channels * 2, 0.0);
  with_grad_storage<T>(op, [&](auto stored) {
    using S = decltype(stored);
    if (reduce_by_rows(g)) {
      for_each_panel(g, [&](const Panel& panel) {
        sums_by_rows<kFromOutput, A, T, S>(op, panel, shifts.data() + panel.first, slope, sums.data() + panel.first * 2);
      });
    } else {
      sums_by_runs<kFromOutput, A, T, S>(op, g, shifts.data(), slope, sums.data());
    }
  });
  for (int64_t c = 0; c < g.channels; ++c) bn_backward_channel(op.step, c, sums[c * 2], sums[c * 2 + 1]);
}

template <bool kFromOutput, Act A, typename T, typename S>
void grad_input_in(BnActGrad& op) {
  ChannelParams<T, kParams> params = grad_params<T>(op);
  const T slope = static_cast<T>(op.slope);
  map_channels(Geometry{op.y.numel(), op.channels, op.inner}, params, [&](int64_t begin, int64_t len, const auto& segments) {
    with_grad_inputs<S>(op, begin, len, [&](const S* dy, const S* y, const S* x) {
      alignas(64) S dx_buf[kChunk];
      S* dx = output(op.grad_x, begin, dx_buf);
      segments([&](int64_t pos, int64_t n, auto step, const auto& p, auto*) {
        constexpr int64_t P = decltype(step)::value;
        const S *dys = dy + pos, *ys = y + pos, *xs = x == nullptr ? nullptr : x + pos;
        const T *shift = p[kShift], *a = p[kA], *b = p[kB], *c = p[kC];
        S* dxs = dx + pos;
        simd_for(n, [&](int64_t i) {
          T dz, centered;
          dz_and_centered<kFromOutput, A>(math<T>(dys[i]), math<T>(ys[i]), kFromOutput ? T(0) : math<T>(xs[i]),
                                          shift[i * P], slope, dz, centered);
          put(dxs, i, bn_grad_input(dz, centered, a[i * P], b[i * P], c[i * P]));
        });
      });
      store(dx, op.grad_x, begin, len);
    });
  });
}

template <bool kFromOutput, Act A, typename T>
void grad_input(BnActGrad& op) {
  with_grad_storage<T>(op, [&](auto stored) { grad_input_in<kFromOutput, A, T, decltype(stored)>(op); });
}

}  // namespace

void channel_stats_cpu(ChannelStats& op) {
  op.x.scalar_type() == at::kDouble ? stats<double>(op) : stats<float>(op);
}

void forward_channels_cpu(const BnForwardChannels& step, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) bn_forward_channel_eval(step, c);
}

void backward_channels_cpu(const BnBackwardChannels& step, int64_t channels) {
  for (int64_t c = 0; c < channels; ++c) bn_backward_channel(step, c, 0.0, 0.0);
}

void bn_act_sums_cpu(BnActGrad& op) {
  with_grad_kernel(op, [&](auto from_output, auto act, auto type) {
    sums<decltype(from_output)::value, decltype(act)::value, decltype(type)>(op);
  });
}

void bn_act_grad_input_cpu(BnActGrad& op) {
  with_grad_kernel(op, [&](auto from_output, auto act, auto type) {
    grad_input<decltype(from_output)::value, decltype(act)::value, decltype(type)>(op);
  });
}

}  // namespace aigc_fast
