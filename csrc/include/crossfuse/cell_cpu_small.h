// CPU single-call cell step for small batches (fp32; for autograd it also writes the activated gates, `ws`): the
// two GEMVs and the gate math in one pass. At batch <= 16 torch's GEMM dispatch and the extra passes over the
// gates cost more than the math;
// here each thread owns blocks of hidden units, reads their weight rows once per pair of batch rows and
// applies the gates while the results are in registers/L1.
#pragma once
#include <algorithm>
#include <vector>
#include "crossfuse/cell.h"
#include "crossfuse/cpu_isa.h"
#if defined(_OPENMP)
#include <omp.h>
#endif



namespace crossfuse {

struct SmallCellArgs {
  int kind = 0;
  int64_t B = 0, I = 0, H = 0;
  const float *x = nullptr, *hx = nullptr, *cx = nullptr, *w_ih = nullptr, *w_hh = nullptr, *b_ih = nullptr,
              *b_hh = nullptr;  // rows contiguous; x (B, I), hx/cx (B, H), w_ih (G*H, I), w_hh (G*H, H)
  float *hy = nullptr, *cy = nullptr;
  int64_t sx = 0, sh = 0, sc = 0, shy = 0, scy = 0;  // row strides
  // Sequence use (crossfuse/rnn_cpu.h): input gates precomputed (B, G*H) with b_ih folded in (x, w_ih unused);
  // `ws` (B, 4H) receives the activated gates (LSTM i f g o; GRU r z n hn) for the backward; rows b with
  // `active[b] == 0` keep their state (hy = hx, cy = cx) and get zero gates.
  const float* gi_pre = nullptr;
  const float* gi_next = nullptr;  // the next step's gi_pre (same strides), prefetched block by block
  float* ws = nullptr;
  const uint8_t* active = nullptr;
  int64_t sgi = 0, sws = 0;
  // w_hh repacked by unit block (pack_units_cpu), or null for the row-dot GEMV. A single step (no gi_pre)
  // takes it only with w_ih_packed, w_ih packed the same way, both with step_packed_gates(kind) gates per k (the cpu
  // backend caches the two copies per weight pair).
  const float* w_packed = nullptr;
  const float* w_ih_packed = nullptr;
  bool w_packed_padded = false;  // sequence use, GRU: w_packed has step_packed_gates(kGru) gates per k
  int threads = 0;  // the single-call step's parallel region: see cpu_threads (crossfuse/common.h)
};

constexpr int kSmallMaxBatch = 16;       // batch rows per pass over a block's weight rows
constexpr int kSmallStepMaxBatch = 64;  // the single-call step's limit (the weight blocks stay in L2 across passes)
constexpr int kSmallUnits = 8;  // hidden units per block: 8 weight rows per gate
#ifndef CF_SMALL_PAR_MACS
#define CF_SMALL_PAR_MACS (1 << 15)
#endif
constexpr int64_t kSmallParallelMacs = CF_SMALL_PAR_MACS;  // below this, one thread beats the fork-join

namespace small {
typedef float v8f __attribute__((vector_size(32)));
typedef float v4f __attribute__((vector_size(16)));
#define CF_AI __attribute__((always_inline)) inline

CF_AI v8f load8(const float* p) { v8f v; __builtin_memcpy(&v, p, 32); return v; }
CF_AI void store8(float* p, v8f v) { __builtin_memcpy(p, &v, 32); }
CF_AI void store4(float* p, v4f v) { __builtin_memcpy(p, &v, 16); }
// Pairwise sums within 128-bit halves (vhaddps): [a0+a1, a2+a3, b0+b1, b2+b3 | same for the upper half].
CF_AI v8f hadd(v8f a, v8f b) {
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) + __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}
// The eight horizontal sums of a0..a7 as one vector (lane i = sum of ai): a transposing reduction costs about
// one instruction per sum, where eight separate reductions cost seven each.
CF_AI v8f hsum8x8(const v8f* a) {
  v8f u0 = hadd(hadd(a[0], a[1]), hadd(a[2], a[3])), u1 = hadd(hadd(a[4], a[5]), hadd(a[6], a[7]));
  return __builtin_shufflevector(u0, u1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(u0, u1, 4, 5, 6, 7, 12, 13, 14, 15);
}
CF_AI float hsum(v8f v) {
  v4f s = __builtin_shufflevector(v, v, 0, 1, 2, 3) + __builtin_shufflevector(v, v, 4, 5, 6, 7);
  s += __builtin_shufflevector(s, s, 2, 3, 0, 1);
  return s[0] + s[1];
}

// The four horizontal sums of a0..a3 (lane i = sum of ai).
CF_AI v4f hsum4x8(const v8f* a) {
  v8f u = hadd(hadd(a[0], a[1]), hadd(a[2], a[3]));
  return __builtin_shufflevector(u, u, 0, 1, 2, 3) + __builtin_shufflevector(u, u, 4, 5, 6, 7);
}

typedef float v16f __attribute__((vector_size(64)));
CF_AI v16f load16(const float* p) { v16f v; __builtin_memcpy(&v, p, 64); return v; }
template <int W> struct Vec { typedef v8f type; static v8f load(const float* p) { return load8(p); } };
template <> struct Vec<16> { typedef v16f type; static v16f load(const float* p) { return load16(p); } };

// Dot products of NR weight rows (stride K) with NB input rows (stride sa): NR * NB = 8 or 12 independent
// accumulators (one chain would be latency-bound; 12 also keep each weight slice for 3 rows); writes
// out[b * ldo + r]. PIN keeps each weight slice in a register (see tile below). W: floats per vector, 8 or 16
// (AVX-512: the accumulators fold to 8 lanes for the reduction and a last 8-wide step). (Tiles of up to 8 batch
// rows, which AVX-512's 32 registers would hold, measured slower: GCC then folds every input load into its FMA.)
template <int NR, int NB, bool PIN, int W = 8>
CF_AI void tile_body(const float* w, const float* a, int64_t sa, int64_t K, float* out, int ldo) {
  constexpr int N = NR * NB;
  static_assert(N == 8 || (N == 12 && NR == 4), "8 or 12 accumulators");
  using V = typename Vec<W>::type;
  V acc[N] = {};
  int64_t k = 0;
  for (; k + W <= K; k += W) {
    V av[NB];
    for (int b = 0; b < NB; ++b) av[b] = Vec<W>::load(a + b * sa + k);
    for (int r = 0; r < NR; ++r) {
      V wv = Vec<W>::load(w + r * K + k);
      if constexpr (PIN) asm("" : "+v"(wv));
      for (int b = 0; b < NB; ++b) acc[b * NR + r] += wv * av[b];
    }
  }
  v8f acc8[N];
  for (int q = 0; q < N; ++q) {
    if constexpr (W == 16)
      acc8[q] = __builtin_shufflevector(acc[q], acc[q], 0, 1, 2, 3, 4, 5, 6, 7) +
                __builtin_shufflevector(acc[q], acc[q], 8, 9, 10, 11, 12, 13, 14, 15);
    else
      acc8[q] = acc[q];
  }
  if (W == 16 && k + 8 <= K) {
    for (int r = 0; r < NR; ++r)
      for (int b = 0; b < NB; ++b) acc8[b * NR + r] += load8(w + r * K + k) * load8(a + b * sa + k);
    k += 8;
  }
  float sums[N];  // index b * NR + r
  store8(sums, hsum8x8(acc8));
  if constexpr (N == 12) store4(sums + 8, hsum4x8(acc8 + 8));
  for (int b = 0; b < NB; ++b)
    for (int r = 0; r < NR; ++r)
      for (int64_t t = k; t < K; ++t) sums[b * NR + r] += w[r * K + t] * a[b * sa + t];
  for (int b = 0; b < NB; ++b) __builtin_memcpy(out + b * ldo, sums + b * NR, sizeof(float) * NR);
}

#if CF_X86_CLONES
// GCC folds a weight load used NB times into each of the NB multiply-adds, so the loads, not the FMAs, bound
// the loop; an empty asm pins the slice in a ymm register, which only an AVX function may hold.
template <int NR, int NB>
__attribute__((target("arch=x86-64-v3"))) void tile_v3(const float* w, const float* a, int64_t sa, int64_t K,
                                                        float* out, int ldo) {
  tile_body<NR, NB, true>(w, a, sa, K, out, ldo);
}
inline bool has_v3() { return cpu_isa() >= 3; }
inline bool has_v4() { return cpu_isa() >= 4; }

template <int NR, int NB>
__attribute__((target("arch=x86-64-v4"))) void tile_v4(const float* w, const float* a, int64_t sa, int64_t K,
                                                        float* out, int ldo) {
  tile_body<NR, NB, (NB > 1), 16>(w, a, sa, K, out, ldo);
}
#endif

template <int NR, int NB>
CF_AI void tile(const float* w, const float* a, int64_t sa, int64_t K, float* out, int ldo) {
#if CF_X86_CLONES
  if (has_v4()) return tile_v4<NR, NB>(w, a, sa, K, out, ldo);
  if (NB > 1 && has_v3()) return tile_v3<NR, NB>(w, a, sa, K, out, ldo);
#endif
  tile_body<NR, NB, false>(w, a, sa, K, out, ldo);
}

CF_AI void dot1(const float* w, const float* a, int64_t K, float* out) {
  v8f acc = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) acc += load8(w + k) * load8(a + k);
  float s = hsum(acc);
  for (; k < K; ++k) s += w[k] * a[k];
  *out = s;
}

// out[b * ldo + r] = dot(w + r * K, a + b * sa) for R rows and B batch rows: 4-row tiles over 3 and 2 batch
// rows (as many 3s as leave B exactly covered), 8x1 tiles for a single row, single-row tails.
CF_AI void rows_dot(const float* w, int64_t R, const float* a, int64_t sa, int64_t B, int64_t K, float* out, int ldo) {
  const int64_t pairs = B < 2 ? 0 : (B % 3 == 0 ? 0 : (B % 3 == 2 ? 1 : 2));
  const int64_t triples = B < 2 ? 0 : (B - 2 * pairs) / 3, covered = 3 * triples + 2 * pairs;
  int64_t r = 0;
  for (; r + 4 <= R; r += 4) {  // the 4 rows stay in L1 while every batch group passes over them
    int64_t b = 0;
    for (int64_t i = 0; i < triples; ++i, b += 3) tile<4, 3>(w + r * K, a + b * sa, sa, K, out + b * ldo + r, ldo);
    for (int64_t i = 0; i < pairs; ++i, b += 2) tile<4, 2>(w + r * K, a + b * sa, sa, K, out + b * ldo + r, ldo);
  }
  for (; r < R; ++r)
    for (int64_t b = 0; b < covered; ++b) dot1(w + r * K, a + b * sa, K, out + b * ldo + r);
  if (covered < B) {  // a single batch row
    for (r = 0; r + 8 <= R; r += 8) tile<8, 1>(w + r * K, a + covered * sa, sa, K, out + covered * ldo + r, ldo);
    for (; r < R; ++r) dot1(w + r * K, a + covered * sa, K, out + covered * ldo + r);
  }
}

// The recurrent GEMV on weights packed by unit block (pack_units_cpu): P[k][g][u] holds G x kSmallUnits
// weights per k, so out[g][b][:] = sum_k h[b][k] P[k][g][:] accumulates whole 8-unit vectors (no horizontal
// sums) from one contiguous weight stream. NB rows x G gates of accumulators, in KS sets over alternate k (a
// single row has too few independent chains otherwise); `first` starts them at zero, else they continue from
// out (a chunk of k at a time).
template <int G, int NB, bool PIN>
CF_AI void packed_body(const float* P, const float* h, int64_t sh, int64_t k0, int64_t k1, float* out, bool first) {
  constexpr int S = G * 8, O = kSmallMaxBatch * 8, KS = NB == 1 ? 2 : 1;
  v8f acc[KS][NB][G];
  for (int s = 0; s < KS; ++s)
    for (int b = 0; b < NB; ++b)
      for (int g = 0; g < G; ++g) acc[s][b][g] = first || s ? v8f{} : load8(out + g * O + b * 8);
  auto step = [&](int s, int64_t k) __attribute__((always_inline)) {
    v8f hb[NB];
    for (int b = 0; b < NB; ++b) {
      if constexpr (PIN) {  // a broadcast from memory is a load alone, where GCC would load, then shuffle
        asm("vbroadcastss %1, %0" : "=x"(hb[b]) : "m"(h[b * sh + k]));
      } else {
        const v4f x = {h[b * sh + k], 0.f, 0.f, 0.f};
        hb[b] = __builtin_shufflevector(x, x, 0, 0, 0, 0, 0, 0, 0, 0);
      }
    }
    for (int g = 0; g < G; ++g) {
      v8f w = load8(P + k * S + g * 8);
      if constexpr (PIN) asm("" : "+x"(w));
      for (int b = 0; b < NB; ++b) acc[s][b][g] += w * hb[b];
    }
  };
  int64_t k = k0;
  for (; k + KS <= k1; k += KS)
    for (int s = 0; s < KS; ++s) step(s, k + s);
  for (; k < k1; ++k) step(0, k);
  for (int b = 0; b < NB; ++b)
    for (int g = 0; g < G; ++g) store8(out + g * O + b * 8, KS == 2 ? acc[0][b][g] + acc[KS - 1][b][g] : acc[0][b][g]);
}

#if CF_X86_CLONES
template <int G, int NB>
__attribute__((target("arch=x86-64-v3"))) void packed_v3(const float* P, const float* h, int64_t sh, int64_t k0,
                                                         int64_t k1, float* out, bool first) {
  packed_body<G, NB, true>(P, h, sh, k0, k1, out, first);
}
#endif

template <int G, int NB>
CF_AI void packed_tile(const float* P, const float* h, int64_t sh, int64_t k0, int64_t k1, float* out, bool first) {
#if CF_X86_CLONES
  if (has_v3()) return packed_v3<G, NB>(P, h, sh, k0, k1, out, first);
#endif
  packed_body<G, NB, false>(P, h, sh, k0, k1, out, first);
}

#if CF_X86_CLONES
// LSTM's 4 gates x 3 rows: 12 accumulators (ymm0-11), the rows' broadcasts (ymm12-14) and one weight vector
// (ymm15) take all 16 registers, which the compiler does not manage without spilling; by hand, 7 loads per
// 12 FMAs. Accumulates n steps of k into out[g][b] (gate stride kSmallMaxBatch * 8 floats, row stride 8).
__attribute__((target("arch=x86-64-v3"))) inline void packed_lstm_rows3(const float* P, const float* h, int64_t sh,
                                                                        int64_t n, float* out) {
  static_assert(kSmallMaxBatch * 8 * 4 == 512, "the gate stride below is 512 bytes");
  const int64_t shb = sh * 4;
  asm volatile(
      "vmovups (%[o]), %%ymm0\n\t" "vmovups 512(%[o]), %%ymm1\n\t" "vmovups 1024(%[o]), %%ymm2\n\t"
      "vmovups 1536(%[o]), %%ymm3\n\t" "vmovups 32(%[o]), %%ymm4\n\t" "vmovups 544(%[o]), %%ymm5\n\t"
      "vmovups 1056(%[o]), %%ymm6\n\t" "vmovups 1568(%[o]), %%ymm7\n\t" "vmovups 64(%[o]), %%ymm8\n\t"
      "vmovups 576(%[o]), %%ymm9\n\t" "vmovups 1088(%[o]), %%ymm10\n\t" "vmovups 1600(%[o]), %%ymm11\n\t"
      "1:\n\t"
      "vbroadcastss (%[h]), %%ymm12\n\t"
      "vbroadcastss (%[h],%[s]), %%ymm13\n\t"
      "vbroadcastss (%[h],%[s],2), %%ymm14\n\t"
      "vmovups (%[p]), %%ymm15\n\t"
      "vfmadd231ps %%ymm15, %%ymm12, %%ymm0\n\t"
      "vfmadd231ps %%ymm15, %%ymm13, %%ymm4\n\t"
      "vfmadd231ps %%ymm15, %%ymm14, %%ymm8\n\t"
      "vmovups 32(%[p]), %%ymm15\n\t"
      "vfmadd231ps %%ymm15, %%ymm12, %%ymm1\n\t"
      "vfmadd231ps %%ymm15, %%ymm13, %%ymm5\n\t"
      "vfmadd231ps %%ymm15, %%ymm14, %%ymm9\n\t"
      "vmovups 64(%[p]), %%ymm15\n\t"
      "vfmadd231ps %%ymm15, %%ymm12, %%ymm2\n\t"
      "vfmadd231ps %%ymm15, %%ymm13, %%ymm6\n\t"
      "vfmadd231ps %%ymm15, %%ymm14, %%ymm10\n\t"
      "vmovups 96(%[p]), %%ymm15\n\t"
      "vfmadd231ps %%ymm15, %%ymm12, %%ymm3\n\t"
      "vfmadd231ps %%ymm15, %%ymm13, %%ymm7\n\t"
      "vfmadd231ps %%ymm15, %%ymm14, %%ymm11\n\t"
      "add $4, %[h]\n\t"
      "sub $-128, %[p]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      "vmovups %%ymm0, (%[o])\n\t" "vmovups %%ymm1, 512(%[o])\n\t" "vmovups %%ymm2, 1024(%[o])\n\t"
      "vmovups %%ymm3, 1536(%[o])\n\t" "vmovups %%ymm4, 32(%[o])\n\t" "vmovups %%ymm5, 544(%[o])\n\t"
      "vmovups %%ymm6, 1056(%[o])\n\t" "vmovups %%ymm7, 1568(%[o])\n\t" "vmovups %%ymm8, 64(%[o])\n\t"
      "vmovups %%ymm9, 576(%[o])\n\t" "vmovups %%ymm10, 1088(%[o])\n\t" "vmovups %%ymm11, 1600(%[o])\n\t"
      "vzeroupper\n\t"
      : [p] "+r"(P), [h] "+r"(h), [n] "+r"(n)
      : [s] "r"(shb), [o] "r"(out)
      : "memory", "cc", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15");
}
#endif

#if CF_X86_CLONES
// LSTM's packed GEMV with AVX-512: a k's 32 weights (4 gates x 8 units) are two 16-float vectors (gates 0-1,
// 2-3), so NB rows take 2 NB accumulators (up to 16 of the 32 registers) and the broadcasts fold into the
// multiply-adds. One or two rows split k over KS accumulator sets: two chains alone wait on the FMA latency.
template <int NB>
__attribute__((target("arch=x86-64-v4"))) void packed_lstm_v4(const float* P, const float* h, int64_t sh,
                                                              int64_t k0, int64_t k1, float* out, bool first) {
  constexpr int O = kSmallMaxBatch * 8, KS = NB == 1 ? 4 : (NB == 2 ? 3 : (NB <= 4 ? 2 : 1));
  v16f acc[KS][NB][2];
  for (int s = 0; s < KS; ++s)
    for (int b = 0; b < NB; ++b)
      for (int v = 0; v < 2; ++v) {
        v16f x = {};
        if (!first && s == 0) {
          const v8f lo = load8(out + 2 * v * O + b * 8), hi = load8(out + (2 * v + 1) * O + b * 8);
          x = __builtin_shufflevector(lo, hi, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        }
        acc[s][b][v] = x;
      }
  auto step = [&](int s, int64_t k) __attribute__((always_inline)) {
    // The weights 16 steps of k (2 KB) ahead, within the range: where they no longer fit in L2 (H=512 on 2
    // threads) the stream otherwise waits on each line (LSTM T=100 B=8 H=512 forward 15-16 -> 13.4-14.2 ms).
    if (k + 16 < k1) {
      __builtin_prefetch(P + (k + 16) * 32, 0, 3);
      __builtin_prefetch(P + (k + 16) * 32 + 16, 0, 3);
    }
    v16f w0 = load16(P + k * 32), w1 = load16(P + k * 32 + 16);
    // in registers: GCC otherwise folds the loads into each row's multiply-add (3 rows: 3 loads of each, and the
    // loop bound by the load ports, 30 us against 21 at 4 rows for B=3 H=256)
    if constexpr (NB > 1) asm("" : "+v"(w0), "+v"(w1));
    for (int b = 0; b < NB; ++b) {
      const float x = h[b * sh + k];
      acc[s][b][0] += w0 * x;
      acc[s][b][1] += w1 * x;
    }
  };
  int64_t k = k0;
  for (; k + KS <= k1; k += KS)
    for (int s = 0; s < KS; ++s) step(s, k + s);
  for (; k < k1; ++k) step(0, k);
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < 2; ++v) {
      v16f x = acc[0][b][v];
      for (int s = 1; s < KS; ++s) x += acc[s][b][v];
      store8(out + 2 * v * O + b * 8, __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7));
      store8(out + (2 * v + 1) * O + b * 8, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15));
    }
}

// Rows [0, B) in groups of up to 8 (16 accumulators).
inline void packed_lstm_rows_v4(const float* P, const float* h, int64_t sh, int64_t B, int64_t k0, int64_t k1,
                                float* out, bool first) {
  for (int64_t b = 0; b < B; b += 8) {
    const float* hb = h + b * sh;
    float* ob = out + b * 8;
    switch (std::min<int64_t>(8, B - b)) {
      case 1: packed_lstm_v4<1>(P, hb, sh, k0, k1, ob, first); break;
      case 2: packed_lstm_v4<2>(P, hb, sh, k0, k1, ob, first); break;
      case 3: packed_lstm_v4<3>(P, hb, sh, k0, k1, ob, first); break;
      case 4: packed_lstm_v4<4>(P, hb, sh, k0, k1, ob, first); break;
      case 5: packed_lstm_v4<5>(P, hb, sh, k0, k1, ob, first); break;
      case 6: packed_lstm_v4<6>(P, hb, sh, k0, k1, ob, first); break;
      case 7: packed_lstm_v4<7>(P, hb, sh, k0, k1, ob, first); break;
      default: packed_lstm_v4<8>(P, hb, sh, k0, k1, ob, first); break;
    }
  }
}

// LSTM's GEMVs for one block of 8 units and NB rows (AVX-512, packed copies): x's (a single step's; a sequence's
// input gates are gi_pre) and h's into one set of register accumulators, stored to pre[gate][row][u0 + unit] (row
// stride C) for the gate math.
template <int NB, int64_t C>
__attribute__((target("arch=x86-64-v4"))) void lstm_gemv_v4(const SmallCellArgs& a, int64_t blk, float* pre,
                                                             int64_t u0) {
  constexpr int KS = NB == 1 ? 4 : (NB == 2 ? 3 : (NB <= 4 ? 2 : 1));
  v16f acc[KS][NB][2] = {};
  auto pass = [&](const float* P, const float* h, int64_t sh, int64_t K) __attribute__((always_inline)) {
    auto step = [&](int s, int64_t k) __attribute__((always_inline)) {
      // (no software prefetch, unlike packed_lstm_v4: from L2 it cost 1 us of 11.5 at B=2 H=256, and at H=512,
      // where the weights come from L3, it made no difference)
      v16f w0 = load16(P + k * 32), w1 = load16(P + k * 32 + 16);
      if constexpr (NB > 1) asm("" : "+v"(w0), "+v"(w1));  // see packed_lstm_v4
      for (int b = 0; b < NB; ++b) {
        const float x = h[b * sh + k];
        acc[s][b][0] += w0 * x;
        acc[s][b][1] += w1 * x;
      }
    };
    int64_t k = 0;
    for (; k + KS <= K; k += KS)
      for (int s = 0; s < KS; ++s) step(s, k + s);
    for (; k < K; ++k) step(0, k);
  };
  if (!a.gi_pre) pass(a.w_ih_packed + blk * a.I * 32, a.x, a.sx, a.I);
  if (a.hx) pass(a.w_packed + blk * a.H * 32, a.hx, a.sh, a.H);
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < 2; ++v) {
      v16f x = acc[0][b][v];
      for (int s = 1; s < KS; ++s) x += acc[s][b][v];
      store8(pre + (2 * v * 8 + b) * C + u0, __builtin_shufflevector(x, x, 0, 1, 2, 3, 4, 5, 6, 7));
      store8(pre + ((2 * v + 1) * 8 + b) * C + u0, __builtin_shufflevector(x, x, 8, 9, 10, 11, 12, 13, 14, 15));
    }
}

// LSTM's step for rows [0, B), B <= 8, hidden units [j0, j1) (j0 a multiple of 8) with AVX-512 and packed copies
// (a single step's two, or a sequence step's w_packed and its input gates gi_pre): the GEMVs of C units' blocks,
// then the gate math over those C units as long vector loops. Gate math block by block (lstm_block) waited on its
// chain of activations 16 times per 128 units, and a single step's accumulators went through memory between its
// two GEMVs (one thread's 128 units of B=2 H=256: 12.6-13.5 -> 10.5-11.5 us, the GEMVs alone 9.2).
template <int NB>
__attribute__((target("arch=x86-64-v4"))) void lstm_step_range_v4(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  constexpr int64_t C = 128;
  alignas(64) float pre[4][8][C];  // gate, row, unit
  alignas(64) float bias[4][C], zeros[C] = {};
  const int64_t H = a.H;
  for (int64_t c0 = j0; c0 < j1; c0 += C) {
    const int64_t n = std::min(C, j1 - c0);
    if (a.gi_pre)  // the fresh input gates, asked for first: they arrive under the GEMVs
      for (int b = 0; b < NB; ++b)
        for (int k = 0; k < 4; ++k)
          for (int64_t u = 0; u < n; u += 16) __builtin_prefetch(a.gi_pre + b * a.sgi + k * H + c0 + u, 0, 3);
    for (int64_t u = 0; u < n; u += 8) lstm_gemv_v4<NB, C>(a, (c0 + u) / 8, &pre[0][0][0], u);
    for (int k = 0; k < 4; ++k)
      for (int64_t u = 0; u < n; ++u)
        bias[k][u] = (a.b_ih ? a.b_ih[k * H + c0 + u] : 0.f) + (a.b_hh ? a.b_hh[k * H + c0 + u] : 0.f);
    for (int b = 0; b < NB; ++b)
      for (int k = 0; k < 4; ++k) {
        float* p = pre[k][b];
        if (a.gi_pre) {  // in lstm_block's order: gi + (gh + bias)
          const float* gi = a.gi_pre + b * a.sgi + k * H + c0;
          for (int64_t u = 0; u < n; ++u) p[u] = gi[u] + (p[u] + bias[k][u]);
        } else {
          for (int64_t u = 0; u < n; ++u) p[u] += bias[k][u];
        }
      }
    for (int b = 0; b < NB; ++b) {
      float *i = pre[0][b], *f = pre[1][b], *g = pre[2][b], *o = pre[3][b];
      const float* cp = a.cx ? a.cx + b * a.sc + c0 : zeros;
      float *cn = a.cy + b * a.scy + c0, *hn = a.hy + b * a.shy + c0;
      // in two loops, as lstm_block's
      for (int64_t l = 0; l < n; ++l) {
        i[l] = cf_sigmoid(i[l]); f[l] = cf_sigmoid(f[l]); g[l] = cf_tanh(g[l]); o[l] = cf_sigmoid(o[l]);
        cn[l] = f[l] * cp[l] + i[l] * g[l];
      }
      for (int64_t l = 0; l < n; ++l) hn[l] = o[l] * cf_tanh(cn[l]);
      if (a.ws)
        for (int k = 0; k < 4; ++k) __builtin_memcpy(a.ws + b * a.sws + k * H + c0, pre[k][b], n * sizeof(float));
    }
  }
}

inline void lstm_step_range_rows_v4(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  switch (a.B) {
    case 1: lstm_step_range_v4<1>(a, j0, j1); break;
    case 2: lstm_step_range_v4<2>(a, j0, j1); break;
    case 3: lstm_step_range_v4<3>(a, j0, j1); break;
    case 4: lstm_step_range_v4<4>(a, j0, j1); break;
    case 5: lstm_step_range_v4<5>(a, j0, j1); break;
    case 6: lstm_step_range_v4<6>(a, j0, j1); break;
    case 7: lstm_step_range_v4<7>(a, j0, j1); break;
    default: lstm_step_range_v4<8>(a, j0, j1); break;
  }
}
#endif

// out[g][b][u] (row stride kSmallMaxBatch * 8 per gate) for B <= kSmallMaxBatch rows of h: k in chunks whose
// weights stay in L1 while the rows pass over them: LSTM rows in threes by hand (above), then in pairs (2 x G
// accumulators and the broadcasts fit the registers), a last single row.
template <int G>
CF_AI void packed_gates(const float* P, const float* h, int64_t sh, int64_t B, int64_t K, float* out,
                        bool accumulate = false) {
  // One pass of rows (B <= 8 with AVX-512) needs no chunks: the accumulators stay in registers over all of K.
  const int64_t KC = G == 4 && B <= 8 && cpu_isa() >= 4 ? K : 64;
  for (int64_t k0 = 0; k0 < K; k0 += KC) {
    const int64_t k1 = std::min(K, k0 + KC);
    int64_t b = 0;
#if CF_X86_CLONES
    if (G == 4 && has_v4()) {
      packed_lstm_rows_v4(P, h, sh, B, k0, k1, out, k0 == 0 && !accumulate);
      continue;
    }
    if (G == 4 && has_v3()) {
      if (k0 == 0 && !accumulate)
        for (int64_t r = 0; r < B - B % 3; ++r)
          for (int g = 0; g < G; ++g) store8(out + g * kSmallMaxBatch * 8 + r * 8, v8f{});
      for (; b + 3 <= B; b += 3) packed_lstm_rows3(P + k0 * G * 8, h + b * sh + k0, sh, k1 - k0, out + b * 8);
    }
#endif
    if constexpr (G == 3)  // 9 accumulators: the compiler keeps them in registers
      for (; b + 3 <= B; b += 3) packed_tile<G, 3>(P, h + b * sh, sh, k0, k1, out + b * 8, k0 == 0 && !accumulate);
    for (; b + 2 <= B; b += 2) packed_tile<G, 2>(P, h + b * sh, sh, k0, k1, out + b * 8, k0 == 0 && !accumulate);
    if (b < B) packed_tile<G, 1>(P, h + b * sh, sh, k0, k1, out + b * 8, k0 == 0 && !accumulate);
  }
}
#undef CF_AI
}  // namespace small

// An Elman RNN's one-gate weight packs by blocks of 4 x kSmallUnits units, unit 32 * block + q in LSTM's slot
// (gate q / 8, unit q % 8) of a unit block: its GEMV then runs on the LSTM kernels, whole vectors of units and
// no horizontal sums (the row-dot GEMV ran RNNCell B=8 H=256 at 105 GFLOP/s, LSTM's packed one at 250).
constexpr int64_t kRnnPackUnits = 4 * kSmallUnits;
// Hidden units per block of a packed copy: an RNN's 32, LSTM's and GRU's 8 (of 4 gates, GRU's 3 padded or not).
constexpr int64_t packed_block_units(int kind) { return kind == kLstm || kind == kGru ? kSmallUnits : kRnnPackUnits; }

// A weight (G*H, K) row-major (w_hh: K = H; w_ih: K = input size) into P[block][k][g][u] for the unit blocks
// [blk0, blk1), with GP >= G gates per k (those past G, and units past H, get zero weights): the layout
// small::packed_gates<GP> streams. One gate (G = 1, GP = 4): the RNN's blocks of kRnnPackUnits units above.
inline void pack_units_cpu(const float* w, int64_t G, int64_t H, int64_t K, int64_t blk0, int64_t blk1, float* P,
                           int64_t GP = 0) {
  constexpr int U = kSmallUnits;
  GP = GP > G ? GP : G;
  const bool rnn = G == 1 && GP == 4;
  // The destination in order (k outer): its writes stream, and the GP x U source rows are read as as many
  // sequential streams (k inner wrote with a stride of GP x U floats: 2.5x slower at H=256).
  // A padded row (past H, or a padding gate) reads a row of zeros.
  std::vector<float> zeros(K, 0.f);
  const int64_t n = GP * U;
  for (int64_t blk = blk0; blk < blk1; ++blk) {
    float* dst = P + blk * K * n;
    const float* rows[4 * kSmallUnits];
    for (int64_t g = 0; g < GP; ++g)
      for (int u = 0; u < U; ++u) {
        const int64_t j = rnn ? blk * kRnnPackUnits + g * U + u : blk * U + u;
        rows[g * U + u] = j < H && (rnn || g < G) ? w + ((rnn ? 0 : g * H) + j) * K : zeros.data();
      }
    int64_t k = 0;
    for (; k + 4 <= K; k += 4, dst += 4 * n)  // 4 consecutive values of each row at a time
      for (int64_t q = 0; q < n; ++q) {
        const float* r = rows[q] + k;
        dst[q] = r[0]; dst[n + q] = r[1]; dst[2 * n + q] = r[2]; dst[3 * n + q] = r[3];
      }
    for (; k < K; ++k, dst += n)
      for (int64_t q = 0; q < n; ++q) dst[q] = rows[q][k];
  }
}

// Gates per k in a single step's packed copies (w_ih_packed, w_hh_packed): GRU's 3 padded to 4, so that its
// rows of 32 weights run on the LSTM kernels' whole 512-bit vectors (the fourth gate's products are wasted); an
// RNN's 4 slots of 8 units.
constexpr int64_t step_packed_gates(int) { return 4; }
// Floats in the packed copy of a (G*H, K) weight of `kind` with step_packed_gates(kind) gates per k.
constexpr int64_t packed_floats(int kind, int64_t H, int64_t K) {
  return (H + packed_block_units(kind) - 1) / packed_block_units(kind) * K * 4 * kSmallUnits;
}
// Whether an RNN step runs on packed weights: a sequence's step with a state (w_packed, gi_pre), or a single step
// with both copies (or w_ih's alone and no state).
inline bool rnn_packed(const SmallCellArgs& a) {
  return a.gi_pre ? a.w_packed && a.hx : a.w_ih_packed && a.I > 0 && (!a.hx || a.w_packed);
}

// The LSTM gate math of a whole block (B rows x U units, every row active, a previous state) as one flat loop
// over its B * U lanes: the vectorised activations of several rows overlap, where a loop per row of U lanes
// runs one long dependency chain at a time. g[k] holds the gate pre-activations without the biases.
CF_CPU_CLONES inline void lstm_block(const SmallCellArgs& a, int64_t u0, int64_t r0, int64_t B,
                                     float (*g)[kSmallMaxBatch][kSmallUnits], float (*gh)[kSmallMaxBatch][kSmallUnits],
                                     const float (*bias)[kSmallUnits]) {
  constexpr int U = kSmallUnits;
  float c[kSmallMaxBatch][U], c2[kSmallMaxBatch][U], h2[kSmallMaxBatch][U];
  for (int64_t b = 0; b < B; ++b) {
    if (a.cx)
      __builtin_memcpy(c[b], a.cx + (r0 + b) * a.sc + u0, sizeof c[b]);
    else
      for (int u = 0; u < U; ++u) c[b][u] = 0.f;
    for (int k = 0; k < 4; ++k)
      for (int u = 0; u < U; ++u) g[k][b][u] += (gh ? gh[k][b][u] : 0.f) + bias[k][u];
  }
  float *i = &g[0][0][0], *f = &g[1][0][0], *gg = &g[2][0][0], *o = &g[3][0][0];
  float *cp = &c[0][0], *cn = &c2[0][0], *hn = &h2[0][0];
  // lstm_fwd in two loops: a lane's whole chain (four activations, c', then tanh(c')) is longer than the
  // reorder window holds, so one loop runs its vectors one after another; split, each loop's iterations overlap
  // (gate math 35-40% faster on 64-128 lanes, microbenchmark)
  for (int64_t l = 0; l < B * U; ++l) {
    i[l] = cf_sigmoid(i[l]); f[l] = cf_sigmoid(f[l]); gg[l] = cf_tanh(gg[l]); o[l] = cf_sigmoid(o[l]);
    cn[l] = f[l] * cp[l] + i[l] * gg[l];
  }
  for (int64_t l = 0; l < B * U; ++l) hn[l] = o[l] * cf_tanh(cn[l]);
  for (int64_t b = 0; b < B; ++b) {
    const int64_t rb = r0 + b;
    __builtin_memcpy(a.hy + rb * a.shy + u0, h2[b], sizeof h2[b]);
    __builtin_memcpy(a.cy + rb * a.scy + u0, c2[b], sizeof c2[b]);
    if (a.ws)
      for (int k = 0; k < 4; ++k) __builtin_memcpy(a.ws + rb * a.sws + k * a.H + u0, g[k][b], sizeof g[k][b]);
  }
}

// rnn_packed's step for the hidden units [j0, j1) (j0 a multiple of kRnnPackUnits), a block of them at a time,
// batch rows in chunks of kSmallMaxBatch: the block's pre-activations accumulate in acc[q / 8][row][q % 8] (the
// input part first: gi_pre, or the packed x GEMV), then the activation runs over the block's 32 lanes.
template <int KIND>
CF_CPU_CLONES void rnn_packed_range(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  constexpr int U = kSmallUnits, W = kRnnPackUnits;
  const int64_t H = a.H, I = a.I;
  alignas(64) float acc[4][kSmallMaxBatch][U];
  alignas(64) float bias[W], pre[W], out[W];
  for (int64_t u0 = j0; u0 < j1; u0 += W) {
    const int64_t n = std::min<int64_t>(W, j1 - u0), blk = u0 / W;
    for (int q = 0; q < W; ++q)
      bias[q] = q < n ? (a.b_ih ? a.b_ih[u0 + q] : 0.f) + (a.b_hh ? a.b_hh[u0 + q] : 0.f) : 0.f;
    for (int64_t r0 = 0; r0 < a.B; r0 += kSmallMaxBatch) {
      const int64_t B = std::min<int64_t>(kSmallMaxBatch, a.B - r0);
      const float* hx = a.hx ? a.hx + r0 * a.sh : nullptr;
      if (a.gi_pre) {
        for (int64_t b = 0; b < B; ++b) {
          const float* src = a.gi_pre + (r0 + b) * a.sgi + u0;
          for (int q = 0; q < W; ++q) acc[q / U][b][q % U] = q < n ? src[q] : 0.f;
          if (a.gi_next) __builtin_prefetch(a.gi_next + (r0 + b) * a.sgi + u0, 0, 3);
        }
        small::packed_gates<4>(a.w_packed + blk * H * W, hx, a.sh, B, H, &acc[0][0][0], true);
      } else {
        small::packed_gates<4>(a.w_ih_packed + blk * I * W, a.x + r0 * a.sx, a.sx, B, I, &acc[0][0][0]);
        if (hx) small::packed_gates<4>(a.w_packed + blk * H * W, hx, a.sh, B, H, &acc[0][0][0], true);
      }
      for (int64_t b = 0; b < B; ++b) {
        const int64_t rb = r0 + b;
        float* hy = a.hy + rb * a.shy + u0;
        if (a.active && !a.active[rb]) {  // past this row's length: the state carries over unchanged
          for (int64_t q = 0; q < n; ++q) hy[q] = a.hx ? a.hx[rb * a.sh + u0 + q] : 0.f;
          continue;
        }
        for (int q = 0; q < W; ++q) pre[q] = acc[q / U][b][q % U] + bias[q];
        for (int q = 0; q < W; ++q) out[q] = rnn_act(KIND, pre[q]);
        for (int64_t q = 0; q < n; ++q) hy[q] = out[q];
      }
    }
  }
}

// Hidden units [j0, j1), in blocks of U, batch rows in chunks of kSmallMaxBatch: the gate pre-activations of
// a block land in gi/gh[gate][batch][unit], then the gate math runs over the U units of a row as one
// (vectorisable) loop.
template <int KIND>
CF_CPU_CLONES void small_cell_range(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  constexpr int G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1);
  constexpr int GP = int(step_packed_gates(KIND));  // the single step's packed copies' gates (GRU's padded)
  constexpr int U = kSmallUnits;
  if constexpr (G == 1) {
    if (rnn_packed(a)) return rnn_packed_range<KIND>(a, j0, j1);
  }
#if CF_X86_CLONES
  if constexpr (KIND == kLstm) {
    if (a.B <= 8 && !a.active && (a.gi_pre || (a.w_ih_packed && a.I > 0)) && (!a.hx || a.w_packed) &&
        small::has_v4())
      return small::lstm_step_range_rows_v4(a, j0, j1);
  }
#endif
  const int64_t H = a.H, I = a.I;
  // 32-byte aligned, so that the gate math's vector loads can forward from whole-vector stores
  alignas(32) float gi[GP > G ? GP : G][kSmallMaxBatch][U];
  alignas(32) float gh[GP > G ? GP : G][kSmallMaxBatch][U];
  float bi[G][U], bh[G][U], hprev[U], cprev[U], h2[U], c2[U];
  for (int64_t u0 = j0; u0 < j1; u0 += U) {
    const int64_t n = std::min<int64_t>(U, j1 - u0);
    for (int64_t r0 = 0; r0 < a.B; r0 += kSmallMaxBatch) {
      const int64_t B = std::min<int64_t>(kSmallMaxBatch, a.B - r0);
      const float* hx = a.hx ? a.hx + r0 * a.sh : nullptr;
      const bool packed = G > 1 && hx && a.w_packed && a.gi_pre;
      // (GRU's padded copies only up to one pass of rows: at B=64 H=1024 they ran 7% slower at the AVX2 level,
      // and with AVX-512 15-20% slower once other work had taken the weights out of cache)
      const bool packed_x = (KIND == kLstm || (KIND == kGru && a.B <= kSmallMaxBatch)) && a.w_ih_packed &&
                            !a.gi_pre && I > 0 && (!hx || a.w_packed);
      const bool merged = packed_x && KIND == kLstm;  // LSTM sums its two GEMVs: one set of accumulators
      auto load_gi = [&](int k, const float* ahead) {
        const int64_t row = k * H + u0;
        for (int64_t b = 0; b < B; ++b) {
          const float* src = a.gi_pre + (r0 + b) * a.sgi + row;
          if (ahead) __builtin_prefetch(ahead + (r0 + b) * a.sgi + k * H, 0, 3);
          if (n == U)
            *reinterpret_cast<small::v8f*>(gi[k][b]) = small::load8(src);
          else
            for (int u = 0; u < U; ++u) gi[k][b][u] = u < n ? src[u] : 0.f;
        }
      };
      if constexpr (G > 1) {
        if (packed) {
          // Fresh input gates are not in cache: their loads go first, to complete under the GEMV, and ask
          // for the block that comes next (this step's, or the next step's first).
          const float* ahead = u0 + U < j1 ? a.gi_pre + u0 + U : (a.gi_next ? a.gi_next + j0 : nullptr);
          for (int k = 0; k < G; ++k) load_gi(k, ahead);
          if (GP > G && a.w_packed_padded)
            small::packed_gates<GP>(a.w_packed + (u0 / U) * H * GP * U, hx, a.sh, B, H, &gh[0][0][0]);
          else
            small::packed_gates<G>(a.w_packed + (u0 / U) * H * G * U, hx, a.sh, B, H, &gh[0][0][0]);
        } else if (packed_x) {
          small::packed_gates<GP>(a.w_ih_packed + (u0 / U) * I * GP * U, a.x + r0 * a.sx, a.sx, B, I, &gi[0][0][0]);
          if (hx)  // LSTM: into the same accumulators, with no gh to store and add
            small::packed_gates<GP>(a.w_packed + (u0 / U) * H * GP * U, hx, a.sh, B, H,
                                    merged ? &gi[0][0][0] : &gh[0][0][0], merged);
        }
      }
      for (int k = 0; k < G; ++k) {
        const int64_t row = k * H + u0;
        if (!packed && !packed_x) {
          if (a.gi_pre) {
            // the next step's slice of this block, to L2 (the weights stream through L1)
            if (a.gi_next)
              for (int64_t b = 0; b < B; ++b) __builtin_prefetch(a.gi_next + (r0 + b) * a.sgi + row, 0, 2);
            load_gi(k, nullptr);
          } else {
            small::rows_dot(a.w_ih + row * I, n, a.x + r0 * a.sx, a.sx, B, I, &gi[k][0][0], U);
          }
          if (hx) small::rows_dot(a.w_hh + row * H, n, hx, a.sh, B, H, &gh[k][0][0], U);
        }
        for (int u = 0; u < U; ++u) {
          bi[k][u] = a.b_ih && u < n ? a.b_ih[row + u] : 0.f;
          bh[k][u] = a.b_hh && u < n ? a.b_hh[row + u] : 0.f;
        }
      }
      if (KIND == kLstm && n == U && hx && !a.active) {
        float sum_b[G][U];
        for (int k = 0; k < G; ++k)
          for (int u = 0; u < U; ++u) sum_b[k][u] = bi[k][u] + bh[k][u];
        lstm_block(a, u0, r0, B, gi, merged ? nullptr : gh, sum_b);
        continue;
      }
      for (int64_t b = 0; b < B; ++b) {
        const int64_t rb = r0 + b;
        for (int u = 0; u < U; ++u) {  // lanes past n are padding: computed on zeros, never stored
          hprev[u] = a.hx && u < n ? a.hx[rb * a.sh + u0 + u] : 0.f;
          cprev[u] = a.cx && u < n ? a.cx[rb * a.sc + u0 + u] : 0.f;
          for (int k = 0; k < G; ++k) {
            if (!a.hx || u >= n || merged) gh[k][b][u] = 0.f;
            if (u >= n) gi[k][b][u] = 0.f;
          }
        }
        float* hy = a.hy + rb * a.shy + u0;
        float* cy = KIND == kLstm ? a.cy + rb * a.scy + u0 : nullptr;
        float* ws = a.ws ? a.ws + rb * a.sws + u0 : nullptr;
        if (a.active && !a.active[rb]) {  // past this row's length: the state carries over unchanged
          for (int64_t u = 0; u < n; ++u) hy[u] = hprev[u];
          if (KIND == kLstm) for (int64_t u = 0; u < n; ++u) cy[u] = cprev[u];
          if (ws) for (int k = 0; k < 4; ++k) for (int64_t u = 0; u < n; ++u) ws[k * H + u] = 0.f;
          continue;
        }
        float g0[U], g1[U], g2[U], g3[U];
        for (int u = 0; u < U; ++u) {
          if (KIND == kLstm) {
            g0[u] = gi[0][b][u] + gh[0][b][u] + bi[0][u] + bh[0][u];
            g1[u] = gi[1][b][u] + gh[1][b][u] + bi[1][u] + bh[1][u];
            g2[u] = gi[2][b][u] + gh[2][b][u] + bi[2][u] + bh[2][u];
            g3[u] = gi[3][b][u] + gh[3][b][u] + bi[3][u] + bh[3][u];
            lstm_fwd(g0[u], g1[u], g2[u], g3[u], cprev[u], c2[u], h2[u]);
          } else if (KIND == kGru) {
            g0[u] = gi[0][b][u] + gh[0][b][u] + bi[0][u] + bh[0][u];
            g1[u] = gi[1][b][u] + gh[1][b][u] + bi[1][u] + bh[1][u];
            g2[u] = gi[2][b][u] + bi[2][u];
            g3[u] = gh[2][b][u] + bh[2][u];
            h2[u] = gru_fwd(g0[u], g1[u], g2[u], g3[u], hprev[u]);
          } else {
            h2[u] = rnn_act(KIND, gi[0][b][u] + gh[0][b][u] + bi[0][u] + bh[0][u]);
          }
        }
        for (int64_t u = 0; u < n; ++u) hy[u] = h2[u];
        if (KIND == kLstm) for (int64_t u = 0; u < n; ++u) cy[u] = c2[u];
        if (ws && (KIND == kLstm || KIND == kGru)) {
          for (int64_t u = 0; u < n; ++u) {
            ws[u] = g0[u]; ws[H + u] = g1[u]; ws[2 * H + u] = g2[u]; ws[3 * H + u] = g3[u];
          }
        }
      }
    }
  }
}

template <int KIND>
void small_cell(const SmallCellArgs& a) {
  const int64_t macs = a.B * a.H * (KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1)) * ((a.gi_pre ? 0 : a.I) + a.H);
#if defined(_OPENMP)
  // each thread's units: whole blocks of the packed copies
  const int64_t bu = KIND != kLstm && KIND != kGru && rnn_packed(a) ? kRnnPackUnits : kSmallUnits;
  const int64_t blocks = (a.H + bu - 1) / bu;
  const int threads = macs >= kSmallParallelMacs && blocks >= 2 ? cpu_threads(a.threads) : 1;
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      const int64_t nt = omp_get_num_threads(), t = omp_get_thread_num();
      const int64_t per = (blocks + nt - 1) / nt, b0 = t * per, b1 = std::min(blocks, b0 + per);
      if (b0 < b1) small_cell_range<KIND>(a, b0 * bu, std::min(a.H, b1 * bu));
    }
    return;
  }
#endif
  (void)macs;
  small_cell_range<KIND>(a, 0, a.H);
}

// Hidden units [j0, j1) only, on the calling thread (a caller that runs its own parallel region).
inline void run_small_cell_range(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  dispatch_kind(a.kind, [&](auto k) { small_cell_range<decltype(k)::value>(a, j0, j1); });
}

inline void run_small_cell(const SmallCellArgs& a) {
  dispatch_kind(a.kind, [&](auto k) { small_cell<decltype(k)::value>(a); });
}

}  // namespace crossfuse
