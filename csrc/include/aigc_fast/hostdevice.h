// One macro lets every formula in include/ compile for both the CPU kernels (g++)
// and the CUDA kernels (nvcc). Functions are force-inlined so that each CPU ISA
// clone (see cpu/isa.h) gets its own vectorized copy and no out-of-line copy is
// shared between clones built for different instruction sets.
#pragma once

#if defined(__CUDACC__)
#define AIGC_HD __host__ __device__ __forceinline__
#else
#define AIGC_HD inline __attribute__((always_inline))
#endif
