// The Python extension module aigc_fast._C. Importing it runs the TORCH_LIBRARY static
// registrations of every op; the module itself exposes nothing (no pybind11), and the op
// `build_info` reports whether CUDA kernels are compiled in, which CPU kernels will run and
// whether they run threaded.
#include <Python.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <string>

#include "cpu/isa.h"
#include "cpu/philox_x86.h"

namespace aigc_fast {
namespace {

// The clone ifunc picks for this CPU (the same test: GCC's CPU levels).
std::string cpu_isa() {
#ifdef AIGC_HAVE_CPU_CLONES
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "x86-64-v4 (AVX-512)";
  if (__builtin_cpu_supports("x86-64-v3")) return "x86-64-v3 (AVX2+FMA)";
  return "x86-64 (SSE2)";
#elif defined(__clang__)  // correct, but slower (docs/install.md)
  return "clang build (no per-CPU clones: on x86-64 a g++ build measured 3-14x faster)";
#elif defined(__x86_64__)
  return "x86-64 (SSE2, for every CPU: the AVX2 and AVX-512 clones need g++ on Linux)";
#else
  return "generic";
#endif
}

// Which lanes the CPU kernels draw Philox noise in (AIGC_FAST_PHILOX caps it).
std::string philox_lanes() {
#ifdef AIGC_HAVE_PHILOX_X86
  switch (philox_path()) {
    case PhiloxPath::kAvx512:
      return "avx512";
    case PhiloxPath::kAvx2:
      return "avx2";
    case PhiloxPath::kPortable:
      break;
  }
#endif
  return "portable";
}

std::string build_info() {
  std::string info = "cpu_kernels=" + cpu_isa() + ";philox=" + philox_lanes();
#ifdef AIGC_HAVE_PHILOX_X86
  info += ";philox_paths=avx512 avx2 portable";
#else
  info += ";philox_paths=portable";  // the vector-lane paths need g++ on x86-64
#endif
#ifdef INTRA_OP_PARALLEL  // ATen's parallel_for is threaded here (for OpenMP: only if built with it)
#ifdef _OPENMP
  info += ";cpu_threading=openmp";
#else
  info += ";cpu_threading=torch's own pool";
#endif
#else
  info += ";cpu_threading=none (built without OpenMP: one thread)";
#endif
#ifdef AIGC_FAST_WITH_CUDA
  info += ";cuda=1";
#else
  info += ";cuda=0";
#endif
  return info;
}

}  // namespace

TORCH_LIBRARY(aigc_fast, m) { m.def("build_info() -> str", &build_info); }

}  // namespace aigc_fast

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C", "aigc_fast compiled kernels", -1,
                               nullptr};
  return PyModule_Create(&module);
}
