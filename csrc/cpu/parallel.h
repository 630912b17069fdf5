// The CPU kernels' parallel loop: at::parallel_for over work units, but on the calling
// thread when the work is small. Waking the OpenMP pool costs more than a small op's work,
// and on a busy machine a parallel region waits for its slowest thread: a 128x20 latent
// forked across two threads measured milliseconds inside a loaded training step.
#pragma once

#include <ATen/Parallel.h>

#include <cstdint>

#if defined(__clang__) && defined(_OPENMP)
#include <omp.h>
#endif

namespace aigc_fast {

// Below this many elements a kernel runs on the calling thread.
constexpr int64_t kParallelMinElements = 32768;

// Runs body(first, last) over [0, units), in parallel only when there is enough work, each
// thread's share at least grain units.
template <typename F>
void for_units(int64_t units, int64_t elements, const F& body, int64_t grain = 1) {
  if (elements < kParallelMinElements) return body(int64_t(0), units);
#if defined(__clang__) && defined(_OPENMP)
  // clang links LLVM's libomp beside torch's libgomp, and torch.set_num_threads sets only
  // libgomp's count: at::parallel_for's region (no num_threads clause) would take libomp's
  // default, every core. Handed over per call, as torch's setting may change.
  omp_set_num_threads(at::get_num_threads());
#endif
  at::parallel_for(0, units, grain, body);
}

}  // namespace aigc_fast
