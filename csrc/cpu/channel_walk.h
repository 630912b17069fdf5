// The walks shared by the CPU kernels of the per-channel ops (bias_act, bn_act). A tensor
// is read in memory order as [outer, channels, inner]: inner = H * W for NCHW, 1 for
// channels_last, so one walk serves both layouts and outputs keep the input's layout.
//
// Maps (one output element per input element, with per-channel parameters) go in chunks
// of at most kChunk elements, in parallel. Where a channel's elements come in runs of at
// least kMinRun (NCHW), a chunk splits into runs and the kernel sees each parameter as a
// scalar (step 0); where runs are short (channels_last, small NCHW maps), the kernel sees
// each parameter as a per-element pattern over whole rows, built once (step 1), so a chunk
// is one or two vector loops however few elements a channel has in a row.
//
// Reductions (per-channel sums) must not depend on the thread count: long runs are reduced
// one channel per task, runs in order; short runs go in fixed blocks of whole rows, each
// folded into per-channel partials of a fixed group of blocks, groups then merged in order
// (rows of many channels are cut into panels of channels, each reduced on its own).
#pragma once

#include <algorithm>
#include <array>
#include <type_traits>
#include <vector>

#include "isa.h"
#include "parallel.h"
#include "tiles.h"

namespace aigc_fast {
namespace {

constexpr int64_t kChunk = 4096;
constexpr int64_t kMinRun = 64;
// Patterns cover whole rows of at most this many elements (P of them stay in L2).
constexpr int64_t kMaxPatternRow = 16384;
// Reductions read runs shorter than this as rows (per-run overhead would dominate). Such a
// reduction goes in blocks of whole rows (at most kReduceBlock elements, 256 KB of float32,
// in L2) summed per element over at most kMaxRowsPerBlock rows in the math type (a float32
// sum's rounding grows with its length), then per channel in float64 (a fold per block, so
// long rows want several rows a block); blocks form groups of about kGroupElements, the
// unit of parallel work. Rows of many channels are reduced in panels (see Panel).
constexpr int64_t kMinReduceRun = 512;
constexpr int64_t kMaxRow = 32768;  // elements of a panel's row: 1024 channels of 32-element runs
constexpr int64_t kReduceBlock = 65536;
constexpr int64_t kMaxRowsPerBlock = 64;
constexpr int64_t kGroupElements = 131072;
// Long runs are reduced in pieces of this many elements (about 128 per SIMD lane).
constexpr int64_t kReducePiece = 1024;

// body(i) for i in [0, n) as one SIMD loop (body is inlined into each ISA clone).
template <typename F>
AIGC_CPU_CLONES void simd_for(int64_t n, const F& body) {
  AIGC_SIMD
  for (int64_t i = 0; i < n; ++i) body(i);
}

// sums[j] = the sum over rows r in [first, rows) of term(r, j), for j in [0, row), the rows
// added in order: the bits of a row-by-row loop into an array of accumulators. A strip of
// columns instead keeps its accumulators in registers down all the rows, which saves a
// load and a store of an accumulator per element (the statistics' passes ran 2-4x faster
// in a standalone test).
template <int64_t kMaxWidth, typename T, typename Term>
inline __attribute__((always_inline)) void column_strip(int64_t first, int64_t rows, int64_t j0, int64_t width,
                                                        T* sums, const Term& term) {
  T acc[kMaxWidth] = {};
  for (int64_t r = first; r < rows; ++r) {
    AIGC_SIMD
    for (int64_t jj = 0; jj < width; ++jj) acc[jj] += term(r, j0 + jj);
  }
  for (int64_t jj = 0; jj < width; ++jj) sums[j0 + jj] = acc[jj];
}

template <typename T, typename Term>
AIGC_CPU_CLONES void column_sums(int64_t first, int64_t rows, int64_t row, T* sums, const Term& term) {
  constexpr int64_t kStrip = 128 / int64_t(sizeof(T));  // four AVX2 registers of accumulators
  int64_t j0 = 0;
  for (; j0 + kStrip <= row; j0 += kStrip) column_strip<kStrip>(first, rows, j0, kStrip, sums, term);
  if (j0 < row) column_strip<kStrip>(first, rows, j0, row - j0, sums, term);
}

using Step0 = std::integral_constant<int64_t, 0>;  // a parameter is one value for the segment
using Step1 = std::integral_constant<int64_t, 1>;  // a parameter is one value per element

struct Geometry {
  int64_t numel, channels, inner;
  int64_t row() const { return channels * inner; }
  int64_t rows() const { return numel / row(); }
  int64_t channel_at(int64_t pos) const { return (pos / inner) % channels; }
};

// The values of a [channels] tensor in the math type; `fill` where the tensor is undefined.
template <typename T>
std::vector<T> channel_values(const at::Tensor& t, int64_t channels, T fill) {
  std::vector<T> values(channels, fill);
  if (t.defined()) {
    std::vector<T> scratch(channels);
    const T* v = load(t, 0, channels, scratch.data());
    std::copy(v, v + channels, values.begin());
  }
  return values;
}

// A row whose channel c segment holds value(c).
template <typename T, typename F>
void fill_row(const Geometry& g, T* row, const F& value) {
  for (int64_t c = 0; c < g.channels; ++c) std::fill(row + c * g.inner, row + (c + 1) * g.inner, static_cast<T>(value(c)));
}

// Per-channel values of P parameters, and (for short runs) their per-element pattern over
// whole rows.
template <typename T, size_t P>
struct ChannelParams {
  std::array<std::vector<T>, P> values;   // [channels] each
  std::array<std::vector<T>, P> pattern;  // one period of whole rows each, short runs only
};

// Adds each channel's segment of a row of per-element values (channel c: [c * inner,
// (c + 1) * inner)) into per_channel[c * stride], in float64.
// (A SIMD sum: in sequence, each float64 add waits for the last, and with a few rows per
// block this fold cost more than the block's per-element sums. With one element per
// channel, channels_last, a vector add across the channels: a SIMD sum of one element
// per channel cost ~3 ns a channel, as much as a block's per-element work.)
template <typename T>
AIGC_CPU_CLONES void fold_row(const Geometry& g, const T* values, double* per_channel, int64_t stride = 1) {
  if (g.inner == 1) {
    AIGC_SIMD
    for (int64_t c = 0; c < g.channels; ++c) per_channel[c * stride] += double(values[c]);
    return;
  }
  for (int64_t c = 0; c < g.channels; ++c) {
    const T* v = values + c * g.inner;
    double sum = 0;
    AIGC_SIMD_SUM(sum)
    for (int64_t i = 0; i < g.inner; ++i) sum += double(v[i]);
    per_channel[c * stride] += sum;
  }
}

// How map_channels cuts g. (With inner 1 the pattern of a long row is the parameters
// themselves: no size limit.) The pattern's period: as many whole rows as fit in a chunk
// (a chunk is then exactly one period), or one row longer than a chunk (chunks then split
// where a row ends); never more rows than the tensor has.
struct MapLayout {
  bool patterned;
  int64_t period;  // patterned only
  int64_t size;    // elements per chunk

  explicit MapLayout(const Geometry& g)
      : patterned(g.inner < kMinRun && g.channels > 1 && (g.row() <= kMaxPatternRow || g.inner == 1)),
        period(!patterned ? 0 : std::min(g.numel, g.row() <= kChunk ? g.row() * (kChunk / g.row()) : g.row())),
        size(patterned ? std::min(period, kChunk) : kChunk) {}

  // A summing map's accumulators per group: one per element of the period, or per channel.
  int64_t sum_width(const Geometry& g) const { return patterned ? period : g.channels; }
};

// Whether map_channels can sum over g: at most kGroupElements accumulators a group, so that
// a group's fold is never more work than its elements and the groups' partial sums hold at
// most numel doubles. (A 1-d tensor of 16M channels would otherwise want a 16M-double
// partial per group.)
inline bool can_sum_channels(const Geometry& g) { return MapLayout(g).sum_width(g) <= kGroupElements; }

// Calls chunk(begin, len, segments) for chunks of x (in parallel), where segments(seg)
// calls seg(pos, n, step, params, acc) for the chunk's pieces; params[k] points at parameter
// k's value (step 0) or at the value of element `pos` (step 1).
//
// With `sums` (where can_sum_channels), the map also sums a value per element by channel
// (bias_act's backward: the bias gradient from the pass that writes grad_x): acc points at
// the accumulator of the piece's channel (step 0, a double) or of element pos in the
// pattern (step 1, a T), into which seg adds its values (accumulate() below), and sums[c]
// receives channel c's total. Sums do not depend on the thread count: chunks go in fixed
// groups, each on one thread into accumulators of its own, folded per channel in float64
// at its end and merged in group order. Without `sums`, acc is null.
template <typename T, size_t P, typename Chunk>
void map_channels(const Geometry& g, ChannelParams<T, P>& params, const Chunk& chunk, double* sums = nullptr) {
  const MapLayout layout(g);
  const bool patterned = layout.patterned;
  const int64_t period = layout.period, size = layout.size;
  // The pattern is built per call, so it costs one fill per channel and row copies (a
  // division per element here was a 0.1-0.4 ms floor per call).
  for (size_t k = 0; patterned && k < P; ++k) {
    std::vector<T>& pattern = params.pattern[k];
    pattern.resize(period);
    fill_row(g, pattern.data(), [&](int64_t c) { return params.values[k][c]; });
    for (int64_t j = g.row(); j < period; j += g.row()) std::copy_n(pattern.data(), g.row(), pattern.data() + j);
  }
  // Chunk i, summing into pattern_acc (patterned) or run_acc (runs) when not null.
  const auto walk = [&](int64_t i, T* pattern_acc, double* run_acc) {
    const int64_t begin = i * size, len = std::min(size, g.numel - begin);
    chunk(begin, len, [&](const auto& seg) {
      std::array<const T*, P> p;
      for (int64_t pos = 0; pos < len;) {
        if (patterned) {
          const int64_t phase = (begin + pos) % period, n = std::min(len - pos, period - phase);
          for (size_t k = 0; k < P; ++k) p[k] = params.pattern[k].data() + phase;
          seg(pos, n, Step1{}, p, pattern_acc == nullptr ? nullptr : pattern_acc + phase);
          pos += n;
        } else {  // runs of one channel (or what of them lies in this chunk)
          const int64_t channel = g.channel_at(begin + pos);
          for (size_t k = 0; k < P; ++k) p[k] = params.values[k].data() + channel;
          const int64_t end = std::min(len, ((begin + pos) / g.inner + 1) * g.inner - begin);
          seg(pos, end - pos, Step0{}, p, run_acc == nullptr ? nullptr : run_acc + channel);
          pos = end;
        }
      }
    });
  };
  const int64_t chunks = (g.numel + size - 1) / size;
  if (sums == nullptr) {
    for_units(chunks, g.numel, [&](int64_t first, int64_t last) {
      for (int64_t i = first; i < last; ++i) walk(i, nullptr, nullptr);
    });
    return;
  }
  // Groups of at most kGroupElements, and about 16 of them where that is smaller (work to
  // spread over the threads), but never fewer elements than accumulators (see
  // can_sum_channels); the grouping depends on the shape alone. Each T accumulator gets one
  // addend per chunk of its group: at most kGroupElements / size <= 64 float32 adds before
  // the float64 fold (a chunk holds over 2048 elements unless the whole tensor is smaller).
  TORCH_INTERNAL_ASSERT(can_sum_channels(g) && g.numel % g.row() == 0);
  const int64_t least = (layout.sum_width(g) + size - 1) / size;
  const int64_t per_group = std::clamp<int64_t>(chunks / 16, least, std::max(least, kGroupElements / size));
  const int64_t groups = (chunks + per_group - 1) / per_group;
  std::vector<double> partial(groups * g.channels, 0.0);
  for_units(groups, g.numel, [&](int64_t first, int64_t last) {
    std::vector<T> pattern_acc(period);
    std::vector<double> run_acc(patterned ? 0 : g.channels), row(patterned ? g.row() : 0);
    for (int64_t group = first; group < last; ++group) {
      std::fill(pattern_acc.begin(), pattern_acc.end(), T(0));
      std::fill(run_acc.begin(), run_acc.end(), 0.0);
      for (int64_t i = group * per_group; i < std::min(chunks, (group + 1) * per_group); ++i) {
        walk(i, pattern_acc.data(), run_acc.data());
      }
      double* into = &partial[group * g.channels];
      if (patterned) {  // the period's rows added into one (float64), then folded by channel
        column_sums(0, period / g.row(), g.row(), row.data(),
                    [&](int64_t r, int64_t j) { return double(pattern_acc[r * g.row() + j]); });
        fold_row(g, row.data(), into);
      } else {
        std::copy(run_acc.begin(), run_acc.end(), into);
      }
    }
  });
  for (int64_t c = 0; c < g.channels; ++c) {
    double total = 0;
    for (int64_t group = 0; group < groups; ++group) total += partial[group * g.channels + c];
    sums[c] = total;
  }
}

// Adds value(i), i in [0, n), into a summing map's accumulator (map_channels): element by
// element into a pattern's (step 1), as one sum into a run's (step 0). value is called
// once per i, so it may also write an output.
template <int64_t P, typename T, typename A, typename F>
AIGC_CPU_CLONES void accumulate(A* acc, int64_t n, const F& value) {
  if constexpr (P == 0) {
    // (A copy of value: g++ 12 does not vectorize the reduction while it reads the
    // lambda's captures through a reference.)
    const F local = value;
    T sum = 0;
    AIGC_SIMD_SUM(sum)
    for (int64_t i = 0; i < n; ++i) sum += local(i);
    acc[0] += double(sum);
  } else {
    AIGC_SIMD
    for (int64_t i = 0; i < n; ++i) acc[i] += value(i);
  }
}

// Whether a reduction over g reads rows (short runs) or runs.
inline bool reduce_by_rows(const Geometry& g) { return g.inner < kMinReduceRun; }

// Rows are cut into panels (below) of at most kMaxPanelChannels channels and kMaxRow
// elements. Why that many channels at most: each block folds its sums
// into channels (a loop over the channels, ~3-4 ns each when the runs are single elements)
// and each group merges its partials (a division per channel): with more channels than
// kReduceBlock / kMaxRowsPerBlock = 1024, a block holds fewer than 64 rows and these
// per-channel steps outweigh the per-element ones ([256, 16384]: 23 ms against eager's 8).
// Read as runs instead, [128, 65536] took 1.4 s against eager's 82 ms.
constexpr int64_t kMaxPanelChannels = kReduceBlock / kMaxRowsPerBlock;

// Channels [first, first + g.channels) of every row of a tensor, reduced by rows as a tensor
// of their own (g) whose rows lie `stride` elements apart.
struct Panel {
  Geometry g;
  int64_t first, stride;

  // Rows [row0, row0 + rows) of the panel in T, one after another: t's own memory where it
  // holds them so, else copied into buf (rows * g.row() elements).
  template <typename T>
  const T* rows(const at::Tensor& t, int64_t row0, int64_t rows, T* buf) const {
    const int64_t width = g.row();
    if (width == stride) return load(t, row0 * stride, rows * stride, buf);
    for (int64_t r = 0; r < rows; ++r) {
      T* into = buf + r * width;
      const T* from = load(t, (row0 + r) * stride + first * g.inner, width, into);
      if (from != into) std::copy_n(from, width, into);
    }
    return buf;
  }
};

// panel(p) for the panels of g (g itself when it has few enough channels). With at least
// as many panels as threads, the panels go in parallel, each on one thread (the parallel
// loop inside runs on the calling thread): a panel of few rows is a single group. With
// fewer, they go one after another, each spreading its groups over the threads (2 panels
// of [2048, 2048] on 16 threads would otherwise use 2). Either way each panel's blocks and
// groups are fixed, so the results do not depend on the thread count.
template <typename F>
void for_each_panel(const Geometry& g, const F& panel) {
  const int64_t per_panel = std::min(kMaxPanelChannels, std::max<int64_t>(1, kMaxRow / g.inner));
  const int64_t panels = (g.channels + per_panel - 1) / per_panel;
  const auto some = [&](int64_t first_panel, int64_t last_panel) {
    for (int64_t i = first_panel; i < last_panel; ++i) {
      const int64_t first = i * per_panel, channels = std::min(per_panel, g.channels - first);
      panel(Panel{Geometry{g.rows() * channels * g.inner, channels, g.inner}, first, g.row()});
    }
  };
  if (panels < at::get_num_threads()) return some(0, panels);
  for_units(panels, g.numel, some);
}

// Long runs: run(channel, begin, len) for every piece (at most kReducePiece elements) of every run
// of the channel, in memory order, all pieces of a channel on one thread.
template <typename Run>
void reduce_runs(const Geometry& g, const Run& run) {
  const int64_t outer = g.rows();
  const int64_t work_per_channel = outer * g.inner;
  const auto body = [&](int64_t first, int64_t last) {
    for (int64_t channel = first; channel < last; ++channel) {
      for (int64_t o = 0; o < outer; ++o) {
        const int64_t start = (o * g.channels + channel) * g.inner;
        for (int64_t i = 0; i < g.inner; i += kReducePiece) {
          run(channel, start + i, std::min(kReducePiece, g.inner - i));
        }
      }
    }
  };
  for_units(g.channels, g.numel, body,
            std::max<int64_t>(1, kParallelMinElements / std::max<int64_t>(work_per_channel, 1)));
}

// Short runs: rows per block, and blocks per group.
inline int64_t rows_per_block(const Geometry& g) {
  return std::clamp<int64_t>(kReduceBlock / g.row(), 1, kMaxRowsPerBlock);
}

inline int64_t blocks_per_group(const Geometry& g) {
  return std::max<int64_t>(1, kGroupElements / (rows_per_block(g) * g.row()));
}

inline int64_t row_groups(const Geometry& g) {
  const int64_t blocks = (g.rows() + rows_per_block(g) - 1) / rows_per_block(g);
  return (blocks + blocks_per_group(g) - 1) / blocks_per_group(g);
}

// Short runs: block(group, row0, rows) for every block (rows [row0, row0 + rows) of g),
// groups in parallel, the blocks of a group in order on one thread.
template <typename Block>
void reduce_rows(const Geometry& g, const Block& block) {
  const int64_t per_block = rows_per_block(g), blocks = (g.rows() + per_block - 1) / per_block;
  const int64_t per_group = blocks_per_group(g);
  for_units(row_groups(g), g.numel, [&](int64_t first, int64_t last) {
    for (int64_t group = first; group < last; ++group) {
      for (int64_t b = group * per_group; b < std::min(blocks, (group + 1) * per_group); ++b) {
        const int64_t row0 = b * per_block;
        block(group, row0, std::min(per_block, g.rows() - row0));
      }
    }
  });
}

// A scratch vector per thread, kept between calls (blocks are small; no allocation each).
// kSlot tells apart the buffers of one T that a caller holds at once; callers with the same
// <T, kSlot> share one buffer.
template <typename T, int kSlot>
std::vector<T>& scratch(size_t size) {
  thread_local std::vector<T> buffer;
  if (buffer.size() < size) buffer.resize(size);
  return buffer;
}

}  // namespace
}  // namespace aigc_fast
