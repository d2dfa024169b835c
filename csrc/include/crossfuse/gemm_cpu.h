// fp32 GEMM for the cpu backend's projections (csrc/cpu/gemm.cpp): C = alpha * A B + beta * C with any
// strides on A and B (a transpose is a stride, never a copy) and C rows of unit column stride. On the dev VM's
// 2-core AMD EPYC (Zen 3) it ran nine of the fusions' and layers' shapes 1.10-1.51x as fast as torch.mm (MKL) in
// interleaved runs, at 122-145 GFLOP/s on 2 threads.
#pragma once
#include <cstdint>

namespace crossfuse {

// A element (i, k) at A[i * rsa + k * csa], B (k, j) at B[k * rsb + j * csb], C (i, j) at C[i * ldc + j];
// bias (N values, or null) is added to every row. beta == 0 does not read C (it may hold NaN). nthreads <= 0:
// OpenMP's default. `generic` runs the baseline (non-AVX2) kernels whatever the level in force (crossfuse/cpu_isa.h),
// which otherwise picks the AVX-512 or the AVX2 tile.
void sgemm_cpu(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
               const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc,
               const float* bias = nullptr, int nthreads = 0, bool generic = false);

// A BLAS sgemm_ (Fortran interface, 32-bit integers) found at run time in the process, e.g. the MKL inside
// torch's libtorch_cpu (crossfuse.ops._gemm hands it over where torch's GEMM is the faster one); 0 clears it.
using BlasSgemm = void (*)(const char*, const char*, const int*, const int*, const int*, const float*, const float*,
                           const int*, const float*, const int*, const float*, float*, const int*);
void set_blas_sgemm(BlasSgemm f);
bool has_blas_sgemm();
// sgemm_cpu on one thread, through that BLAS where it is set and the strides suit it (one unit stride per
// operand), for callers that already run one product per thread.
void sgemm_one_thread(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
                      const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc);

}  // namespace crossfuse
