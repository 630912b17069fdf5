// How the reparameterization kernels split work, identical on both devices. The tensor is
// viewed as [rows, row_len] (rows = size(0) when a per-row KL is wanted, else 1 row) and
// each row is cut into chunks of at most `chunk` elements. A tile (row, chunk) is the unit
// of parallel work: its KL partial sum is written to its own slot, and the slots of a row
// are added in chunk order, so results do not depend on the number of threads or blocks.
#pragma once

#include <cstdint>

#include "hostdevice.h"

namespace aigc_fast {

struct RowTiles {
  int64_t rows;
  int64_t row_len;
  int64_t chunk;
  int64_t chunks_per_row;

  static RowTiles make(int64_t rows, int64_t row_len, int64_t chunk) {
    const int64_t chunks = row_len == 0 ? 0 : (row_len + chunk - 1) / chunk;
    return RowTiles{rows, row_len, chunk, chunks};
  }
  AIGC_HD int64_t count() const { return rows * chunks_per_row; }
  AIGC_HD int64_t row(int64_t tile) const { return tile / chunks_per_row; }
  AIGC_HD int64_t begin(int64_t tile) const {
    return row(tile) * row_len + (tile % chunks_per_row) * chunk;
  }
  AIGC_HD int64_t end(int64_t tile) const {
    const int64_t row_end = (row(tile) + 1) * row_len;
    const int64_t chunk_end = begin(tile) + chunk;
    return chunk_end < row_end ? chunk_end : row_end;
  }
  // The sum of one row's tile slots (one value per tile), added in chunk order.
  template <typename T>
  AIGC_HD T row_total(const T* slots, int64_t row) const {
    T sum = T(0);
    for (int64_t c = 0; c < chunks_per_row; ++c) sum += slots[row * chunks_per_row + c];
    return sum;
  }
};

}  // namespace aigc_fast
