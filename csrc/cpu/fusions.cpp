// Product pooling on CPU, fp32: the pointwise part of Block / Mutan / MFB / MFH around torch's batched GEMMs
// (kernels/fusions.py has the math). Projections U are (G, N_side, R*S), contiguous, before the activation;
// output row n reads side-0 row n / rep0 and side-1 row n / rep1 (one side may be broadcast over regions).
// One pass over the projections each way: the forward never writes the (N, R*S) product, the backward writes
// dU once, with the broadcast side's rows summed over their regions on the spot.
#include "crossfuse/fusions_cpu.h"

#include <algorithm>
#include <vector>

#include "crossfuse/common.h"

namespace crossfuse {
namespace {

// Below this many projection elements a parallel region costs more than the pass (the threads' wake-up).
constexpr int64_t kParallelMin = 1 << 16;

template <bool RELU>
inline float act(float u) { return RELU ? (u > 0.f ? u : 0.f) : u; }
// Row g of the four (G, R*S) biases (of u0, u1, v0, v1), a row of zeros for an absent one.
struct BiasRows {
  const float *b0, *b1, *c0, *c1;
  BiasRows(const PoolArgs& a, int64_t g, int64_t RS, const float* zeros)
      : b0(a.b0 ? a.b0 + g * RS : zeros), b1(a.b1 ? a.b1 + g * RS : zeros),
        c0(a.c0 ? a.c0 + g * RS : zeros), c1(a.c1 ? a.c1 + g * RS : zeros) {}
};
template <bool RELU>
inline float gate(float u, float d) { return RELU ? (u > 0.f ? d : 0.f) : d; }

template <bool RM, bool RELU, bool TWO>
void pool_fwd(const PoolArgs& a) {
  const int64_t G = a.G, N = a.N, S = a.S, R = a.R, RS = R * S;
  const int64_t N0 = N / a.rep0, N1 = N / a.rep1;
  const std::vector<float> zeros(RS, 0.f);
  const int nt = G * N * RS >= kParallelMin ? cpu_threads(a.threads) : 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < N; ++n) {
      const BiasRows br(a, g, RS, zeros.data());
      const float* __restrict b0 = br.b0;
      const float* __restrict b1 = br.b1;
      const float* __restrict c0 = br.c0;
      const float* __restrict c1 = br.c1;
      const float* __restrict u0 = a.u0 + (g * N0 + n / a.rep0) * RS;
      const float* __restrict u1 = a.u1 + (g * N1 + n / a.rep1) * RS;
      const float* __restrict v0 = TWO ? a.v0 + (g * N0 + n / a.rep0) * RS : nullptr;
      const float* __restrict v1 = TWO ? a.v1 + (g * N1 + n / a.rep1) * RS : nullptr;
      float* __restrict z = a.z + n * a.zs + g * S;
      float* __restrict z2 = z + a.z2;
      std::fill(z, z + S, 0.f);
      if (TWO) std::fill(z2, z2 + S, 0.f);
      if (RM) {  // row(r, j) = r*S + j: the inner loop runs along j, unit stride
        for (int64_t r = 0; r < R; ++r) {
          const int64_t o = r * S;
          for (int64_t j = 0; j < S; ++j) {
            const int64_t i = o + j;
            const float p = act<RELU>(u0[i] + b0[i]) * act<RELU>(u1[i] + b1[i]);
            z[j] += p;
            if (TWO) z2[j] += act<RELU>(v0[i] + c0[i]) * act<RELU>(v1[i] + c1[i]) * p;
          }
        }
      } else {  // row(r, j) = j*R + r: each output sums R neighbours
        for (int64_t j = 0; j < S; ++j) {
          float s = 0.f, s2 = 0.f;
          for (int64_t r = 0; r < R; ++r) {
            const int64_t i = j * R + r;
            const float p = act<RELU>(u0[i] + b0[i]) * act<RELU>(u1[i] + b1[i]);
            s += p;
            if (TWO) s2 += act<RELU>(v0[i] + c0[i]) * act<RELU>(v1[i] + c1[i]) * p;
          }
          z[j] = s;
          if (TWO) z2[j] = s2;
        }
      }
    }
}

// BC: which side is broadcast (0 or 1; -1 none). Its dU row collects the sum over the rep rows that read it.
template <bool RM, bool RELU, bool TWO, int BC>
void pool_bwd(const PoolArgs& a) {
  const int64_t G = a.G, N = a.N, S = a.S, R = a.R, RS = R * S;
  const int64_t rep = std::max(a.rep0, a.rep1), outer = N / rep;
  const int64_t N0 = N / a.rep0, N1 = N / a.rep1;
  const std::vector<float> zeros(RS, 0.f);
  const int nt = G * N * RS >= kParallelMin ? cpu_threads(a.threads) : 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t o = 0; o < outer; ++o) {
      const BiasRows br(a, g, RS, zeros.data());
      const float* __restrict b0 = br.b0;
      const float* __restrict b1 = br.b1;
      const float* __restrict c0 = br.c0;
      const float* __restrict c1 = br.c1;
      if (BC == 0) {
        std::fill(a.du0 + (g * N0 + o) * RS, a.du0 + (g * N0 + o + 1) * RS, 0.f);
        if (TWO) std::fill(a.dv0 + (g * N0 + o) * RS, a.dv0 + (g * N0 + o + 1) * RS, 0.f);
      } else if (BC == 1) {
        std::fill(a.du1 + (g * N1 + o) * RS, a.du1 + (g * N1 + o + 1) * RS, 0.f);
        if (TWO) std::fill(a.dv1 + (g * N1 + o) * RS, a.dv1 + (g * N1 + o + 1) * RS, 0.f);
      }
      for (int64_t t = 0; t < rep; ++t) {
        const int64_t n = o * rep + t, i0 = (g * N0 + n / a.rep0) * RS, i1 = (g * N1 + n / a.rep1) * RS;
        const float* __restrict u0 = a.u0 + i0;
        const float* __restrict u1 = a.u1 + i1;
        const float* __restrict v0 = TWO ? a.v0 + i0 : nullptr;
        const float* __restrict v1 = TWO ? a.v1 + i1 : nullptr;
        float* __restrict du0 = a.du0 + i0;
        float* __restrict du1 = a.du1 + i1;
        float* __restrict dv0 = TWO ? a.dv0 + i0 : nullptr;
        float* __restrict dv1 = TWO ? a.dv1 + i1 : nullptr;
        const float* __restrict dz = a.dz + n * a.zs + g * S;
        const float* __restrict dz2 = dz + a.z2;
        for (int64_t r = 0; r < R; ++r)
          for (int64_t j = 0; j < S; ++j) {
            const int64_t i = RM ? r * S + j : j * R + r;
            const float p0 = u0[i] + b0[i], p1 = u1[i] + b1[i];
            const float a0 = act<RELU>(p0), a1 = act<RELU>(p1);
            float dp = dz[j];
            if (TWO) {
              const float q0 = v0[i] + c0[i], q1 = v1[i] + c1[i];
              const float e0a = act<RELU>(q0), e1a = act<RELU>(q1), dq = dz2[j] * a0 * a1;
              dp += dz2[j] * e0a * e1a;
              const float e0 = gate<RELU>(q0, dq * e1a), e1 = gate<RELU>(q1, dq * e0a);
              if (BC == 0) dv0[i] += e0; else dv0[i] = e0;
              if (BC == 1) dv1[i] += e1; else dv1[i] = e1;
            }
            const float d0 = gate<RELU>(p0, dp * a1), d1 = gate<RELU>(p1, dp * a0);
            if (BC == 0) du0[i] += d0; else du0[i] = d0;
            if (BC == 1) du1[i] += d1; else du1[i] = d1;
          }
      }
    }
}

template <bool RM, bool RELU, bool TWO>
void pool_bwd_bc(const PoolArgs& a) {
  if (a.rep0 > 1) pool_bwd<RM, RELU, TWO, 0>(a);
  else if (a.rep1 > 1) pool_bwd<RM, RELU, TWO, 1>(a);
  else pool_bwd<RM, RELU, TWO, -1>(a);
}

}  // namespace

void product_pool_cpu(const PoolArgs& a, bool backward) {
  const bool two = a.v0 != nullptr;
#define CF_POOL(RM, RELU, TWO) \
  return backward ? pool_bwd_bc<RM, RELU, TWO>(a) : pool_fwd<RM, RELU, TWO>(a)
  if (a.rank_major) {
    if (a.relu) { if (two) CF_POOL(true, true, true); CF_POOL(true, true, false); }
    if (two) CF_POOL(true, false, true);
    CF_POOL(true, false, false);
  }
  if (a.relu) { if (two) CF_POOL(false, true, true); CF_POOL(false, true, false); }
  if (two) CF_POOL(false, false, true);
  CF_POOL(false, false, false);
#undef CF_POOL
}

}  // namespace crossfuse
