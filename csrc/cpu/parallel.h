// The CPU kernels' parallel loop: at::parallel_for over work units, but on the calling
// thread when the work is small. Waking the OpenMP pool costs more than a small op's work,
// and on a busy machine a parallel region waits for its slowest thread: a 128x20 latent
// forked across two threads measured milliseconds inside a loaded training step.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

namespace aigc_fast {

// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMinElements = 32768;

// Runs body(first, last) over [0, units), in parallel only when there is enough work.
template <typename F>
void for_units(int64_t units, int64_t elements, const F& body) {
  if (elements < kParallelMinElements) return body(int64_t(0), units);
  at::parallel_for(0, units, 1, body);
}

}  // namespace aigc_fast
