// fp32 GEMM (crossfuse/gemm_cpu.h): the BLIS loop nest. B is packed in KC x NC blocks of 16-column panels,
// A in MC x KC blocks of 6-row panels. With AVX2 a 6x16 register tile (12 accumulators, two B vectors, two A
// broadcasts: all 16 ymm registers) runs over each pair of panels; with AVX-512 a 6x32 tile takes an A panel and
// two B panels (12 zmm accumulators: one B vector per panel). Threads take disjoint slices of C (columns when
// there are more column panels than row panels, else rows), each with its own packing.
#include "crossfuse/gemm_cpu.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "crossfuse/common.h"
#include "crossfuse/cpu_isa.h"
#if CF_X86_CLONES
#include <immintrin.h>
#endif
#if defined(_OPENMP)
#include <omp.h>
#endif

namespace crossfuse {
namespace {

constexpr int MR = 6, NR = 16;
#ifndef CF_GEMM_KC
#define CF_GEMM_KC 256
#endif
#ifndef CF_GEMM_MC
#define CF_GEMM_MC 96
#endif
#ifndef CF_GEMM_NC
#define CF_GEMM_NC 2048
#endif
constexpr int64_t KC = CF_GEMM_KC;  // a 16 x KC B panel (16 KB) stays in L1 across the A panels
constexpr int64_t MC = CF_GEMM_MC;  // an MC x KC A block (96 KB) stays in L2 across the B panels
constexpr int64_t NC = CF_GEMM_NC;  // a KC x NC B block (2 MB) in L3
static_assert(MC % MR == 0 && NC % NR == 0, "blocks are whole panels");

struct Job {
  int64_t K;
  float alpha, beta;
  const float* A;
  int64_t rsa, csa;
  const float* B;
  int64_t rsb, csb;
  float* C;
  int64_t ldc;
  const float* bias;  // added to every row of C, or null
  int isa;            // crossfuse/cpu_isa.h: 4 the AVX-512 tile, 3 the AVX2 + FMA one, 0 the generic one
};

// C tile (m x n of MR x NR) = alpha * acc + beta * C (+ bias); beta == 0 leaves C unread.
inline void store_tile(const float* acc, float* C, int64_t ldc, int64_t m, int64_t n, float alpha, float beta,
                       const float* bias) {
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < n; ++j) {
      float v = alpha * acc[i * NR + j];
      if (bias) v += bias[j];
      C[i * ldc + j] = beta == 0.f ? v : v + beta * C[i * ldc + j];
    }
}

void kernel_generic(int64_t kc, const float* Ap, const float* Bp, float* C, int64_t ldc, int64_t m, int64_t n,
                    float alpha, float beta, const float* bias) {
  float acc[MR * NR] = {};
  for (int64_t k = 0; k < kc; ++k)
    for (int i = 0; i < MR; ++i)
      for (int j = 0; j < NR; ++j) acc[i * NR + j] += Ap[k * MR + i] * Bp[k * NR + j];
  store_tile(acc, C, ldc, m, n, alpha, beta, bias);
}

#if CF_X86_CLONES
// The 6x16 tile's loop by hand: 12 accumulators (ymm0-11), the two B vectors (ymm12-13) and alternating A
// broadcasts (ymm14-15) take all 16 registers. Compiled, GCC spilled a B vector and reloaded it for every FMA
// pair; by hand the loop runs at 92% of a core's FMA peak on cached panels (measured). acc receives the 12
// vectors in row-major 6x16 order.
__attribute__((target("arch=x86-64-v3"))) inline void tile_loop_v3(int64_t kc, const float* Ap, const float* Bp,
                                                                   float* acc) {
#define CF_K(o)                                                                                  \
  "vmovaps " #o "*64(%[b]), %%ymm12\n\t"                                                         \
  "vmovaps " #o "*64+32(%[b]), %%ymm13\n\t"                                                      \
  "vbroadcastss " #o "*24(%[a]), %%ymm14\n\t"                                                    \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm0\n\t"                                                     \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm1\n\t"                                                     \
  "vbroadcastss " #o "*24+4(%[a]), %%ymm15\n\t"                                                  \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm2\n\t"                                                     \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm3\n\t"                                                     \
  "vbroadcastss " #o "*24+8(%[a]), %%ymm14\n\t"                                                  \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm4\n\t"                                                     \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm5\n\t"                                                     \
  "vbroadcastss " #o "*24+12(%[a]), %%ymm15\n\t"                                                 \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm6\n\t"                                                     \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm7\n\t"                                                     \
  "vbroadcastss " #o "*24+16(%[a]), %%ymm14\n\t"                                                 \
  "vfmadd231ps %%ymm12, %%ymm14, %%ymm8\n\t"                                                     \
  "vfmadd231ps %%ymm13, %%ymm14, %%ymm9\n\t"                                                     \
  "vbroadcastss " #o "*24+20(%[a]), %%ymm15\n\t"                                                 \
  "vfmadd231ps %%ymm12, %%ymm15, %%ymm10\n\t"                                                    \
  "vfmadd231ps %%ymm13, %%ymm15, %%ymm11\n\t"
  int64_t k4 = kc / 4, k1 = kc % 4;
  asm volatile(
      "vxorps %%ymm0, %%ymm0, %%ymm0\n\t" "vxorps %%ymm1, %%ymm1, %%ymm1\n\t" "vxorps %%ymm2, %%ymm2, %%ymm2\n\t"
      "vxorps %%ymm3, %%ymm3, %%ymm3\n\t" "vxorps %%ymm4, %%ymm4, %%ymm4\n\t" "vxorps %%ymm5, %%ymm5, %%ymm5\n\t"
      "vxorps %%ymm6, %%ymm6, %%ymm6\n\t" "vxorps %%ymm7, %%ymm7, %%ymm7\n\t" "vxorps %%ymm8, %%ymm8, %%ymm8\n\t"
      "vxorps %%ymm9, %%ymm9, %%ymm9\n\t" "vxorps %%ymm10, %%ymm10, %%ymm10\n\t"
      "vxorps %%ymm11, %%ymm11, %%ymm11\n\t"
      "test %[k4], %[k4]\n\t"
      "jz 2f\n\t"
      "1:\n\t"
      "prefetcht0 384(%[a])\n\t"
      CF_K(0) CF_K(1) CF_K(2) CF_K(3)
      "add $96, %[a]\n\t"
      "add $256, %[b]\n\t"
      "dec %[k4]\n\t"
      "jnz 1b\n\t"
      "2:\n\t"
      "test %[k1], %[k1]\n\t"
      "jz 4f\n\t"
      "3:\n\t"
      CF_K(0)
      "add $24, %[a]\n\t"
      "add $64, %[b]\n\t"
      "dec %[k1]\n\t"
      "jnz 3b\n\t"
      "4:\n\t"
      "vmovaps %%ymm0, (%[c])\n\t" "vmovaps %%ymm1, 32(%[c])\n\t" "vmovaps %%ymm2, 64(%[c])\n\t"
      "vmovaps %%ymm3, 96(%[c])\n\t" "vmovaps %%ymm4, 128(%[c])\n\t" "vmovaps %%ymm5, 160(%[c])\n\t"
      "vmovaps %%ymm6, 192(%[c])\n\t" "vmovaps %%ymm7, 224(%[c])\n\t" "vmovaps %%ymm8, 256(%[c])\n\t"
      "vmovaps %%ymm9, 288(%[c])\n\t" "vmovaps %%ymm10, 320(%[c])\n\t" "vmovaps %%ymm11, 352(%[c])\n\t"
      : [a] "+r"(Ap), [b] "+r"(Bp), [k4] "+r"(k4), [k1] "+r"(k1)
      : [c] "r"(acc)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
#undef CF_K
}

__attribute__((target("arch=x86-64-v3"))) void kernel_v3(int64_t kc, const float* Ap, const float* Bp, float* C,
                                                         int64_t ldc, int64_t m, int64_t n, float alpha,
                                                         float beta, const float* bias) {
  alignas(32) float acc[MR * NR];
  // C's rows are read (beta != 0) or written after the loop: fetched under it, not stalled on after it
  for (int64_t i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + n - 1), _MM_HINT_T0);
  }
  tile_loop_v3(kc, Ap, Bp, acc);
  if (m == MR && n == NR) {
    const __m256 va = _mm256_set1_ps(alpha), vb = _mm256_set1_ps(beta), z = _mm256_setzero_ps();
    const __m256 b0 = bias ? _mm256_loadu_ps(bias) : z, b1 = bias ? _mm256_loadu_ps(bias + 8) : z;
    for (int i = 0; i < MR; ++i) {
      float* row = C + i * ldc;
      __m256 r0 = _mm256_fmadd_ps(va, _mm256_load_ps(acc + i * NR), b0),
             r1 = _mm256_fmadd_ps(va, _mm256_load_ps(acc + i * NR + 8), b1);
      if (beta != 0.f) {
        r0 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row), r0);
        r1 = _mm256_fmadd_ps(vb, _mm256_loadu_ps(row + 8), r1);
      }
      _mm256_storeu_ps(row, r0);
      _mm256_storeu_ps(row + 8, r1);
    }
    return;
  }
  store_tile(acc, C, ldc, m, n, alpha, beta, bias);
}

// The 6x32 tile over the A panel Ap and the B panels B0 and B1 (columns 16-31; unread when n <= 16): 12 zmm
// accumulators, 2 B loads and 6 broadcasts (folded into the FMAs) per 12 FMAs. Masked loads and stores take
// the partial tiles at the edges of C.
__attribute__((target("arch=x86-64-v4"))) void kernel_v4(int64_t kc, const float* Ap, const float* B0,
                                                         const float* B1, float* C, int64_t ldc, int64_t m,
                                                         int64_t n, float alpha, float beta, const float* bias) {
  __m512 c0[MR], c1[MR];
  for (int i = 0; i < MR; ++i) c0[i] = c1[i] = _mm512_setzero_ps();
  for (int64_t i = 0; i < m; ++i) {
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(C + i * ldc + n - 1), _MM_HINT_T0);
  }
  if (n > NR) {
#pragma GCC unroll 4
    for (int64_t k = 0; k < kc; ++k) {
      const __m512 b0 = _mm512_load_ps(B0 + k * NR), b1 = _mm512_load_ps(B1 + k * NR);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        const __m512 a = _mm512_set1_ps(Ap[k * MR + i]);
        c0[i] = _mm512_fmadd_ps(a, b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(a, b1, c1[i]);
      }
    }
  } else {  // one panel: two sets of accumulators over alternate k (6 chains alone wait on the FMA latency)
    int64_t k = 0;
    for (; k + 2 <= kc; k += 2) {
      const __m512 b0 = _mm512_load_ps(B0 + k * NR), b1 = _mm512_load_ps(B0 + (k + 1) * NR);
#pragma GCC unroll 6
      for (int i = 0; i < MR; ++i) {
        c0[i] = _mm512_fmadd_ps(_mm512_set1_ps(Ap[k * MR + i]), b0, c0[i]);
        c1[i] = _mm512_fmadd_ps(_mm512_set1_ps(Ap[(k + 1) * MR + i]), b1, c1[i]);
      }
    }
    for (; k < kc; ++k) {
      const __m512 b0 = _mm512_load_ps(B0 + k * NR);
      for (int i = 0; i < MR; ++i) c0[i] = _mm512_fmadd_ps(_mm512_set1_ps(Ap[k * MR + i]), b0, c0[i]);
    }
    for (int i = 0; i < MR; ++i) {
      c0[i] = _mm512_add_ps(c0[i], c1[i]);
      c1[i] = _mm512_setzero_ps();
    }
  }
  const __mmask16 m0 = n >= NR ? __mmask16(0xFFFF) : __mmask16((1u << n) - 1);
  const __mmask16 m1 = n >= 2 * NR ? __mmask16(0xFFFF) : (n > NR ? __mmask16((1u << (n - NR)) - 1) : __mmask16(0));
  const __m512 va = _mm512_set1_ps(alpha), vb = _mm512_set1_ps(beta);
  const __m512 bias0 = bias ? _mm512_maskz_loadu_ps(m0, bias) : _mm512_setzero_ps();
  const __m512 bias1 = bias && m1 ? _mm512_maskz_loadu_ps(m1, bias + NR) : _mm512_setzero_ps();
  for (int64_t i = 0; i < m; ++i) {
    float* row = C + i * ldc;
    __m512 r0 = _mm512_fmadd_ps(va, c0[i], bias0), r1 = _mm512_fmadd_ps(va, c1[i], bias1);
    if (beta != 0.f) {
      r0 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m0, row), r0);
      if (m1) r1 = _mm512_fmadd_ps(vb, _mm512_maskz_loadu_ps(m1, row + NR), r1);
    }
    _mm512_mask_storeu_ps(row, m0, r0);
    if (m1) _mm512_mask_storeu_ps(row + NR, m1, r1);
  }
}

// pack_b's transposed case (columns contiguous along k, csb > 1, rsb == 1) for a full panel: 8x8 blocks
// transposed in registers, where the scalar loop stores one float at a time.
__attribute__((target("arch=x86-64-v3"))) void pack_b_t_v3(const float* src, int64_t csb, int64_t kc, float* dst) {
  int64_t k = 0;
  for (; k + 8 <= kc; k += 8) {
    if (k % 16 == 0 && k + 64 < kc)  // 16 column streams: more than the hardware prefetcher follows
      for (int j = 0; j < NR; ++j) _mm_prefetch(reinterpret_cast<const char*>(src + j * csb + k + 64), _MM_HINT_T0);
    for (int half = 0; half < 2; ++half) {
      const float* s = src + half * 8 * csb + k;
      __m256 r0 = _mm256_loadu_ps(s), r1 = _mm256_loadu_ps(s + csb), r2 = _mm256_loadu_ps(s + 2 * csb),
             r3 = _mm256_loadu_ps(s + 3 * csb), r4 = _mm256_loadu_ps(s + 4 * csb), r5 = _mm256_loadu_ps(s + 5 * csb),
             r6 = _mm256_loadu_ps(s + 6 * csb), r7 = _mm256_loadu_ps(s + 7 * csb);
      __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1), t2 = _mm256_unpacklo_ps(r2, r3),
             t3 = _mm256_unpackhi_ps(r2, r3), t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5),
             t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
      r0 = _mm256_shuffle_ps(t0, t2, 0x44);
      r1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      r2 = _mm256_shuffle_ps(t1, t3, 0x44);
      r3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      r4 = _mm256_shuffle_ps(t4, t6, 0x44);
      r5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      r6 = _mm256_shuffle_ps(t5, t7, 0x44);
      r7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      float* d = dst + k * NR + half * 8;
      _mm256_store_ps(d + 0 * NR, _mm256_permute2f128_ps(r0, r4, 0x20));
      _mm256_store_ps(d + 1 * NR, _mm256_permute2f128_ps(r1, r5, 0x20));
      _mm256_store_ps(d + 2 * NR, _mm256_permute2f128_ps(r2, r6, 0x20));
      _mm256_store_ps(d + 3 * NR, _mm256_permute2f128_ps(r3, r7, 0x20));
      _mm256_store_ps(d + 4 * NR, _mm256_permute2f128_ps(r0, r4, 0x31));
      _mm256_store_ps(d + 5 * NR, _mm256_permute2f128_ps(r1, r5, 0x31));
      _mm256_store_ps(d + 6 * NR, _mm256_permute2f128_ps(r2, r6, 0x31));
      _mm256_store_ps(d + 7 * NR, _mm256_permute2f128_ps(r3, r7, 0x31));
    }
  }
  for (; k < kc; ++k)
    for (int j = 0; j < NR; ++j) dst[k * NR + j] = src[j * csb + k];
}

#endif

// Ap[panel][k][i] for rows [0, mc) (zero past mc) and depths [0, kc) of A (already offset).
void pack_a(const float* A, int64_t rsa, int64_t csa, int64_t mc, int64_t kc, float* Ap) {
  for (int64_t ir = 0; ir < mc; ir += MR) {
    const int64_t m = std::min<int64_t>(MR, mc - ir);
    float* dst = Ap + ir * kc;
    const float* src = A + ir * rsa;
    if (m == MR && csa == 1) {  // rows read along k, one stream each
      for (int i = 0; i < MR; ++i)
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + i] = src[i * rsa + k];
      continue;
    }
    for (int64_t k = 0; k < kc; ++k) {
      int64_t i = 0;
      for (; i < m; ++i) dst[k * MR + i] = src[i * rsa + k * csa];
      for (; i < MR; ++i) dst[k * MR + i] = 0.f;
    }
  }
}

// Bp[panel][k][j] for columns [0, nc) (zero past nc) and depths [0, kc) of B (already offset).
void pack_b(const float* B, int64_t rsb, int64_t csb, int64_t kc, int64_t nc, float* Bp, bool v3) {
  // Rows of B contiguous: each row is read whole, one stream, and dealt out to the full panels (read a panel at
  // a time, each row's 64 bytes came from a line that the prefetcher had not fetched: 2-19% slower GEMMs).
  const int64_t full = csb == 1 ? nc / NR * NR : 0;
  for (int64_t k = 0; k < kc && full; ++k)
    for (int64_t jr = 0; jr < full; jr += NR)
      for (int j = 0; j < NR; ++j) Bp[jr * kc + k * NR + j] = B[k * rsb + jr + j];
  for (int64_t jr = full; jr < nc; jr += NR) {
    const int64_t n = std::min<int64_t>(NR, nc - jr);
    float* dst = Bp + jr * kc;
    const float* src = B + jr * csb;
    if (csb == 1) {  // the last, partial panel
      for (int64_t k = 0; k < kc; ++k) {
        std::memcpy(dst + k * NR, src + k * rsb, sizeof(float) * n);
        std::fill(dst + k * NR + n, dst + (k + 1) * NR, 0.f);
      }
#if CF_X86_CLONES
    } else if (rsb == 1 && n == NR && v3) {
      pack_b_t_v3(src, csb, kc, dst);
#endif
    } else {  // a transposed B: read each column along k (contiguous when rsb == 1), write strided into L1
      for (int64_t j = 0; j < n; ++j)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = src[k * rsb + j * csb];
      for (int64_t j = n; j < NR; ++j)
        for (int64_t k = 0; k < kc; ++k) dst[k * NR + j] = 0.f;
    }
  }
}

// 64-byte aligned scratch, grown as needed, one per thread.
float* scratch(std::vector<float>& buf, int64_t n) {
  if (int64_t(buf.size()) < n + 16) buf.resize(n + 16);
  auto p = reinterpret_cast<uintptr_t>(buf.data());
  return reinterpret_cast<float*>((p + 63) & ~uintptr_t(63));
}

// C[m0:m1, n0:n1] on one thread.
void gemm_slice(const Job& j, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  thread_local std::vector<float> abuf, bbuf;
  float* Ap = scratch(abuf, MC * KC);
  float* Bp = scratch(bbuf, KC * NC);
  const bool v3 = j.isa >= 3;
#if CF_X86_CLONES
  auto kernel = v3 ? kernel_v3 : kernel_generic;
  const bool v4 = j.isa >= 4;
#else
  auto kernel = kernel_generic;
  const bool v4 = false;
#endif
  for (int64_t jc = n0; jc < n1; jc += NC) {
    const int64_t nc = std::min(NC, n1 - jc);
    for (int64_t pc = 0; pc < j.K; pc += KC) {
      const int64_t kc = std::min(KC, j.K - pc);
      const float beta = pc == 0 ? j.beta : 1.f;
      const float* bias = pc == 0 && j.bias ? j.bias + jc : nullptr;  // once, with the first depth block
      pack_b(j.B + pc * j.rsb + jc * j.csb, j.rsb, j.csb, kc, nc, Bp, v3);
      for (int64_t ic = m0; ic < m1; ic += MC) {
        const int64_t mc = std::min(MC, m1 - ic);
        pack_a(j.A + ic * j.rsa + pc * j.csa, j.rsa, j.csa, mc, kc, Ap);
#if CF_X86_CLONES
        if (v4) {
          for (int64_t jr = 0; jr < nc; jr += 2 * NR)
            for (int64_t ir = 0; ir < mc; ir += MR)
              kernel_v4(kc, Ap + ir * kc, Bp + jr * kc, Bp + (jr + NR) * kc, j.C + (ic + ir) * j.ldc + jc + jr,
                        j.ldc, std::min<int64_t>(MR, mc - ir), std::min<int64_t>(2 * NR, nc - jr), j.alpha, beta,
                        bias ? bias + jr : nullptr);
          continue;
        }
#endif
        for (int64_t jr = 0; jr < nc; jr += NR)
          for (int64_t ir = 0; ir < mc; ir += MR)
            kernel(kc, Ap + ir * kc, Bp + jr * kc, j.C + (ic + ir) * j.ldc + jc + jr, j.ldc,
                   std::min<int64_t>(MR, mc - ir), std::min<int64_t>(NR, nc - jr), j.alpha, beta,
                   bias ? bias + jr : nullptr);
      }
    }
  }
}

}  // namespace

int cpu_threads(int requested) {
#if defined(_OPENMP)
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

void sgemm_cpu(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
               const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc, const float* bias,
               int nthreads, bool generic) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0 || alpha == 0.f) {
    for (int64_t i = 0; i < M; ++i)
      for (int64_t jj = 0; jj < N; ++jj)
        C[i * ldc + jj] = (beta == 0.f ? 0.f : beta * C[i * ldc + jj]) + (bias ? bias[jj] : 0.f);
    return;
  }
  const Job job{K, alpha, beta, A, rsa, csa, B, rsb, csb, C, ldc, bias, generic ? 0 : cpu_isa()};
  int nt = cpu_threads(nthreads);
  // Each thread packs all of the operand the split does not divide: split the one whose duplicate packing costs
  // more (B once per depth block, A once per column block of a thread's share), as long as it has the panels.
  const int64_t mp = (M + MR - 1) / MR, np = (N + NR - 1) / NR;
  const int64_t col_blocks = (N / std::max(nt, 1) + NC - 1) / NC;
  const bool by_cols = np >= nt && (mp < nt || M * col_blocks <= N);
  nt = int(std::min<int64_t>({int64_t(nt), by_cols ? np : mp, std::max<int64_t>(1, M * N * K >> 18)}));
  if (nt <= 1) return gemm_slice(job, 0, M, 0, N);
#if defined(_OPENMP)
#pragma omp parallel num_threads(nt)
  {
    const int64_t t = omp_get_thread_num(), n = omp_get_num_threads();
    const int64_t panels = by_cols ? np : mp, lo = panels * t / n, hi = panels * (t + 1) / n;
    if (by_cols)
      gemm_slice(job, 0, M, lo * NR, std::min(N, hi * NR));
    else
      gemm_slice(job, lo * MR, std::min(M, hi * MR), 0, N);
  }
#endif
}

namespace {
BlasSgemm g_blas = nullptr;
}

void set_blas_sgemm(BlasSgemm f) { g_blas = f; }
bool has_blas_sgemm() { return g_blas != nullptr; }

void sgemm_one_thread(int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t rsa, int64_t csa,
                      const float* B, int64_t rsb, int64_t csb, float beta, float* C, int64_t ldc) {
  // Row-major C = A B is column-major C^T = B^T A^T: B comes first. A row-major operand (unit column stride) is
  // its transpose in column-major order, so it goes as 'N'; a column-major one as 'T'.
  const int64_t limit = int64_t(1) << 31;
  const bool ok = g_blas && M > 0 && N > 0 && K > 0 && M < limit && N < limit && K < limit && ldc < limit &&
                  ldc >= std::max<int64_t>(N, 1) && (csa == 1 || rsa == 1) && (csb == 1 || rsb == 1);
  if (ok) {
    const bool bn = csb == 1, an = csa == 1;
    const int64_t ldb = bn ? rsb : csb, lda = an ? rsa : csa;
    // the leading dimension covers the rows of the operand as BLAS reads it
    if (ldb >= std::max<int64_t>(bn ? N : K, 1) && lda >= std::max<int64_t>(an ? K : M, 1) && ldb < limit &&
        lda < limit) {
      const int m = int(N), n = int(M), k = int(K), l1 = int(ldb), l2 = int(lda), l3 = int(ldc);
      g_blas(bn ? "N" : "T", an ? "N" : "T", &m, &n, &k, &alpha, B, &l1, A, &l2, &beta, C, &l3);
      return;
    }
  }
  sgemm_cpu(M, N, K, alpha, A, rsa, csa, B, rsb, csb, beta, C, ldc, nullptr, 1);
}

}  // namespace crossfuse
