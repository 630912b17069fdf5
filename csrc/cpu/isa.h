// CPU kernels are compiled once per x86-64 level and the best one for the running CPU is
// picked when the library loads (GCC function multi-versioning via ifunc). The wheel thus
// runs on any x86-64 CPU, and uses AVX-512 or AVX2+FMA where present. The math headers
// are force-inlined into each clone, so every clone vectorizes the same IEEE operations.
#pragma once

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__linux__)
#define AIGC_HAVE_CPU_CLONES 1
#define AIGC_CPU_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define AIGC_CPU_CLONES
#endif

// Ask the vectorizer for a SIMD loop even when it cannot prove the body is worth it.
#define AIGC_SIMD _Pragma("omp simd")
#define AIGC_SIMD_SUM(var) _Pragma(AIGC_STRINGIFY(omp simd reduction(+ : var)))
#define AIGC_SIMD_OR(var) _Pragma(AIGC_STRINGIFY(omp simd reduction(| : var)))
#define AIGC_STRINGIFY(x) #x
