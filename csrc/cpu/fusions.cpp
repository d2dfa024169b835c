// Product pooling on CPU, fp32: the pointwise part of Block / Mutan / MFB / MFH (kernels/fusions.py has the
// math). Projections U are (G, N_side, R*S), contiguous, before the activation; output row n reads side-0 row
// n / rep0 and side-1 row n / rep1 (one side may be broadcast over regions). One pass over the projections each
// way: the forward never writes the (N, R*S) product, the backward writes dU once, with the broadcast side's rows
// summed over their regions on the spot. product_pool_cpu is that pass alone, around the caller's GEMMs;
// product_pool_grouped_cpu runs the GEMMs too, whole groups per thread.
#include "crossfuse/fusions_cpu.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "crossfuse/common.h"
#include "crossfuse/gemm_cpu.h"

namespace crossfuse {
namespace {

// Below this many projection elements a parallel region costs more than the pass (the threads' wake-up).
constexpr int64_t kParallelMin = 1 << 16;

template <bool RELU>
inline float act(float u) { return RELU ? (u > 0.f ? u : 0.f) : u; }
template <bool RELU>
inline float gate(float u, float d) { return RELU ? (u > 0.f ? d : 0.f) : d; }

// One group's projections (rows of R*S, side 0's rows n / rep0, side 1's n / rep1), its biases (never null: a
// row of zeros for an absent one) and, in the backward, where its dU go.
struct GroupRows {
  const float *u0, *u1, *v0, *v1;
  const float *b0, *b1, *c0, *c1;
  float *du0, *du1, *dv0, *dv1;
};

GroupRows group_rows(const PoolArgs& a, int64_t g, const float* zeros) {
  const int64_t RS = a.R * a.S, o0 = g * (a.N / a.rep0) * RS, o1 = g * (a.N / a.rep1) * RS;
  auto at = [](auto* p, int64_t o) { return p ? p + o : nullptr; };
  auto bias = [&](const float* b) { return b ? b + g * RS : zeros; };
  return {at(a.u0, o0), at(a.u1, o1), at(a.v0, o0), at(a.v1, o1), bias(a.b0), bias(a.b1), bias(a.c0), bias(a.c1),
          at(a.du0, o0), at(a.du1, o1), at(a.dv0, o0), at(a.dv1, o1)};
}

// The one-stage rank-major inner loops (Block's, Mutan's) over S unit-stride columns, built for each x86 level:
// z += act(u0 + b0) * act(u1 + b1); and back, du0 = gate(u0 + b0, dz act(u1 + b1)) and du1 likewise, each
// added to (acc0, acc1: a broadcast side's row collects its regions) or stored.
CF_CPU_CLONES void pool_fwd_span(const float* __restrict u0, const float* __restrict b0, const float* __restrict u1,
                                 const float* __restrict b1, float* __restrict z, int64_t S, bool relu) {
  if (relu)
    for (int64_t j = 0; j < S; ++j) z[j] += act<true>(u0[j] + b0[j]) * act<true>(u1[j] + b1[j]);
  else
    for (int64_t j = 0; j < S; ++j) z[j] += (u0[j] + b0[j]) * (u1[j] + b1[j]);
}

CF_CPU_CLONES void pool_bwd_span(const float* __restrict u0, const float* __restrict b0, const float* __restrict u1,
                                 const float* __restrict b1, const float* __restrict dz, float* __restrict du0,
                                 float* __restrict du1, int64_t S, bool relu, bool acc0, bool acc1) {
  for (int64_t j = 0; j < S; ++j) {
    const float p0 = u0[j] + b0[j], p1 = u1[j] + b1[j];
    const float d0 = relu ? (p0 > 0.f ? dz[j] * act<true>(p1) : 0.f) : dz[j] * p1;
    const float d1 = relu ? (p1 > 0.f ? dz[j] * act<true>(p0) : 0.f) : dz[j] * p0;
    du0[j] = (acc0 ? du0[j] : 0.f) + d0;
    du1[j] = (acc1 ? du1[j] : 0.f) + d1;
  }
}

// A row of R*S floats of the calling thread's: the one-stage j*R + r layout (MFB's) runs the spans above over the
// whole row, through the products (forward) or dz spread to each product (backward).
inline float* row_scratch(int64_t n) {
  thread_local std::vector<float> row;
  if (int64_t(row.size()) < n) row.resize(n);
  return row.data();
}

// z's rows [n0, n1) in group g's columns.
template <bool RM, bool RELU, bool TWO>
void pool_fwd_rows(const PoolArgs& a, const GroupRows& p, int64_t g, int64_t n0, int64_t n1) {
  const int64_t S = a.S, R = a.R, RS = R * S;
  const float* __restrict b0 = p.b0;
  const float* __restrict b1 = p.b1;
  const float* __restrict c0 = p.c0;
  const float* __restrict c1 = p.c1;
  for (int64_t n = n0; n < n1; ++n) {
    const float* __restrict u0 = p.u0 + n / a.rep0 * RS;
    const float* __restrict u1 = p.u1 + n / a.rep1 * RS;
    const float* __restrict v0 = TWO ? p.v0 + n / a.rep0 * RS : nullptr;
    const float* __restrict v1 = TWO ? p.v1 + n / a.rep1 * RS : nullptr;
    float* __restrict z = a.z + n * a.zs + g * S;
    float* __restrict z2 = z + a.z2;
    std::fill(z, z + S, 0.f);
    if (TWO) std::fill(z2, z2 + S, 0.f);
    if (RM && !TWO) {
      for (int64_t r = 0; r < R; ++r) pool_fwd_span(u0 + r * S, b0 + r * S, u1 + r * S, b1 + r * S, z, S, RELU);
    } else if (!TWO) {  // row(r, j) = j*R + r: the products in a row, then each output sums R neighbours
      float* q = row_scratch(RS);
      std::fill(q, q + RS, 0.f);
      pool_fwd_span(u0, b0, u1, b1, q, RS, RELU);
      for (int64_t j = 0; j < S; ++j) {
        float sum = 0.f;
        for (int64_t r = 0; r < R; ++r) sum += q[j * R + r];
        z[j] = sum;
      }
    } else if (RM) {  // row(r, j) = r*S + j: the inner loop runs along j, unit stride
      for (int64_t r = 0; r < R; ++r) {
        const int64_t o = r * S;
        for (int64_t j = 0; j < S; ++j) {
          const int64_t i = o + j;
          const float q = act<RELU>(u0[i] + b0[i]) * act<RELU>(u1[i] + b1[i]);
          z[j] += q;
          if (TWO) z2[j] += act<RELU>(v0[i] + c0[i]) * act<RELU>(v1[i] + c1[i]) * q;
        }
      }
    } else {  // row(r, j) = j*R + r: each output sums R neighbours (two stages)
      for (int64_t j = 0; j < S; ++j) {
        float s = 0.f, s2 = 0.f;
        for (int64_t r = 0; r < R; ++r) {
          const int64_t i = j * R + r;
          const float q = act<RELU>(u0[i] + b0[i]) * act<RELU>(u1[i] + b1[i]);
          s += q;
          if (TWO) s2 += act<RELU>(v0[i] + c0[i]) * act<RELU>(v1[i] + c1[i]) * q;
        }
        z[j] = s;
        if (TWO) z2[j] = s2;
      }
    }
  }
}

// dU of group g for the outer rows [o0, o1) (rep = the broadcast factor: each outer row is rep rows of z).
// BC: which side is broadcast (0 or 1; -1 none). Its dU row collects the sum over the rep rows that read it.
template <bool RM, bool RELU, bool TWO, int BC>
void pool_bwd_rows(const PoolArgs& a, const GroupRows& p, int64_t g, int64_t o0, int64_t o1) {
  const int64_t S = a.S, R = a.R, RS = R * S, rep = std::max(a.rep0, a.rep1);
  const float* __restrict b0 = p.b0;
  const float* __restrict b1 = p.b1;
  const float* __restrict c0 = p.c0;
  const float* __restrict c1 = p.c1;
  for (int64_t o = o0; o < o1; ++o) {
    if (BC == 0) {
      std::fill(p.du0 + o * RS, p.du0 + (o + 1) * RS, 0.f);
      if (TWO) std::fill(p.dv0 + o * RS, p.dv0 + (o + 1) * RS, 0.f);
    } else if (BC == 1) {
      std::fill(p.du1 + o * RS, p.du1 + (o + 1) * RS, 0.f);
      if (TWO) std::fill(p.dv1 + o * RS, p.dv1 + (o + 1) * RS, 0.f);
    }
    for (int64_t t = 0; t < rep; ++t) {
      const int64_t n = o * rep + t, i0 = n / a.rep0 * RS, i1 = n / a.rep1 * RS;
      const float* __restrict u0 = p.u0 + i0;
      const float* __restrict u1 = p.u1 + i1;
      const float* __restrict v0 = TWO ? p.v0 + i0 : nullptr;
      const float* __restrict v1 = TWO ? p.v1 + i1 : nullptr;
      float* __restrict du0 = p.du0 + i0;
      float* __restrict du1 = p.du1 + i1;
      float* __restrict dv0 = TWO ? p.dv0 + i0 : nullptr;
      float* __restrict dv1 = TWO ? p.dv1 + i1 : nullptr;
      const float* __restrict dz = a.dz + n * a.zs + g * S;
      const float* __restrict dz2 = dz + a.z2;
      if (RM && !TWO) {
        for (int64_t r = 0; r < R; ++r)
          pool_bwd_span(u0 + r * S, b0 + r * S, u1 + r * S, b1 + r * S, dz, du0 + r * S, du1 + r * S, S, RELU,
                        BC == 0, BC == 1);
        continue;
      }
      if (!TWO) {  // j*R + r: dz spread to the products of each output
        float* dzx = row_scratch(RS);
        for (int64_t j = 0; j < S; ++j) std::fill(dzx + j * R, dzx + (j + 1) * R, dz[j]);
        pool_bwd_span(u0, b0, u1, b1, dzx, du0, du1, RS, RELU, BC == 0, BC == 1);
        continue;
      }
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

// Rows [lo, hi) of group g: z's rows forward, outer rows backward.
template <bool RM, bool RELU, bool TWO>
void pool_rows(const PoolArgs& a, const GroupRows& p, int64_t g, int64_t lo, int64_t hi, bool backward) {
  if (!backward) return pool_fwd_rows<RM, RELU, TWO>(a, p, g, lo, hi);
  if (a.rep0 > 1) return pool_bwd_rows<RM, RELU, TWO, 0>(a, p, g, lo, hi);
  if (a.rep1 > 1) return pool_bwd_rows<RM, RELU, TWO, 1>(a, p, g, lo, hi);
  pool_bwd_rows<RM, RELU, TWO, -1>(a, p, g, lo, hi);
}

void pool_rows_any(const PoolArgs& a, const GroupRows& p, int64_t g, int64_t lo, int64_t hi, bool backward) {
  const bool two = p.v0 != nullptr;
#define CF_POOL(RM, RELU, TWO) return pool_rows<RM, RELU, TWO>(a, p, g, lo, hi, backward)
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

// db = the sums of du's rows (rows x n, contiguous).
CF_CPU_CLONES void column_sums(const float* __restrict du, int64_t rows, int64_t n, float* __restrict db) {
  std::fill(db, db + n, 0.f);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < n; ++i) db[i] += du[r * n + i];
}

// Per-thread scratch of up to kKeptScratch floats, grown as needed and kept between calls (a buffer of megabytes
// fresh from malloc is mapped anew, and faulted in page by page, on every call); a bigger one is the caller's.
constexpr int64_t kKeptScratch = int64_t(4) << 20;
float* thread_scratch(int64_t n, std::vector<float>& own) {
  thread_local std::vector<float> kept;
  std::vector<float>& buf = n <= kKeptScratch ? kept : own;
  if (int64_t(buf.size()) < n) buf.resize(n);
  return buf.data();
}

}  // namespace

void product_pool_cpu(const PoolArgs& a, bool backward) {
  const int64_t G = a.G, N = a.N, RS = a.R * a.S, rows = backward ? N / std::max(a.rep0, a.rep1) : N;
  const std::vector<float> zeros(RS, 0.f);
  const int nt = G * N * RS >= kParallelMin ? cpu_threads(a.threads) : 1;
#pragma omp parallel for collapse(2) schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t g = 0; g < G; ++g)
    for (int64_t n = 0; n < rows; ++n) pool_rows_any(a, group_rows(a, g, zeros.data()), g, n, n + 1, backward);
}

void product_pool_grouped_cpu(const PoolGemmArgs& w, bool backward) {
  const PoolArgs& a = w.pool;
  const int64_t G = a.G, N = a.N, RS = a.R * a.S, N0 = N / a.rep0, N1 = N / a.rep1;
  const int64_t rows[2] = {N0, N1}, K[2] = {w.K0, w.K1};
  const float* x[2] = {w.x0, w.x1};
  float* dx[2] = {w.dx0, w.dx1};
  const int P = w.w[2] ? 2 : 1;  // projections per side: u (and v)
  const int64_t most = std::max(N0, N1) * RS;
  const std::vector<float> zeros(RS, 0.f);
  const int nt = std::max(1, int(std::min<int64_t>(G, cpu_threads(a.threads))));
  // Groups are independent in both directions (their own columns of x, dx and z, their own weights), so each
  // thread runs whole groups: single-threaded GEMMs, the pooling on projections still in its cache, no barrier.
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt) if (nt > 1)
  for (int64_t g = 0; g < G; ++g) {
    std::vector<float> own;
    float* scratch = thread_scratch(2 * P * most, own);
    GroupRows p = group_rows(a, g, zeros.data());
    const float** us[4] = {&p.u0, &p.u1, &p.v0, &p.v1};
    float** dus[4] = {&p.du0, &p.du1, &p.dv0, &p.dv1};
    for (int k = 0; k < 2 * P; ++k) {
      const int s = k % 2;
      float* kept = w.keep[k] ? w.keep[k] + g * rows[s] * RS : nullptr;  // (G, rows of side s, R*S)
      if (backward) {
        *us[k] = kept;
        *dus[k] = scratch + k * most;
      } else {  // the projections go where the backward will read them, else to the thread's scratch
        float* u = kept ? kept : scratch + k * most;
        sgemm_one_thread(rows[s], RS, K[s], 1.f, x[s] + g * K[s], G * K[s], 1, w.w[k] + g * RS * K[s], 1, K[s], 0.f,
                         u, RS);
        *us[k] = u;
      }
    }
    pool_rows_any(a, p, g, 0, backward ? N / std::max(a.rep0, a.rep1) : N, backward);
    if (!backward) continue;
    for (int k = 0; k < 2 * P; ++k) {
      const int s = k % 2;
      const float* du = *dus[k];
      if (dx[s])  // v's share adds to u's
        sgemm_one_thread(rows[s], K[s], RS, 1.f, du, RS, 1, w.w[k] + g * RS * K[s], K[s], 1, k < 2 ? 0.f : 1.f,
                         dx[s] + g * K[s], G * K[s]);
      if (w.dw[k])
        sgemm_one_thread(RS, K[s], rows[s], 1.f, du, 1, RS, x[s] + g * K[s], G * K[s], 1, 0.f,
                         w.dw[k] + g * RS * K[s], K[s]);
      if (w.db[k]) column_sums(du, rows[s], RS, w.db[k] + g * RS);
    }
  }
}

namespace {

inline float signed_sqrt(float v) { return std::copysign(std::sqrt(std::fabs(v)), v); }

// One slice of L values, s = sign(z) sqrt|z|. Computed as F.normalize does (the norm from the squares of s,
// divisions by it): a slice with one nonzero value then gives y = +-1 and a zero gradient exactly, where a
// rounding residue would be amplified by ds/dz = 1 / (2 |s|) at a tiny z.
CF_CPU_CLONES void ssn_slice(const float* __restrict z, float* __restrict y, int64_t L, float eps) {
  float sum = 0.f;
  for (int64_t i = 0; i < L; ++i) {
    const float v = signed_sqrt(z[i]);
    sum += v * v;
  }
  const float d = std::max(std::sqrt(sum), eps);
  for (int64_t i = 0; i < L; ++i) y[i] = signed_sqrt(z[i]) / d;
}

CF_CPU_CLONES void ssn_slice_backward(const float* __restrict z, const float* __restrict dy, float* __restrict dz,
                                      int64_t L, float eps) {
  float sum = 0.f;
  for (int64_t i = 0; i < L; ++i) {
    const float v = signed_sqrt(z[i]);
    sum += v * v;
  }
  const float norm = std::sqrt(sum), d = std::max(norm, eps);
  // ds = (dy - y (y . dy)) / d with y = s / d; below eps d is the constant eps: ds = dy / eps
  float ydy = 0.f;
  if (norm > eps)
    for (int64_t i = 0; i < L; ++i) ydy += signed_sqrt(z[i]) / d * dy[i];
  for (int64_t i = 0; i < L; ++i) {
    const float a = std::sqrt(std::fabs(z[i]));  // |s|; ds/dz = 1 / (2 |s|), and 0 at z = 0
    const float ds = (dy[i] - std::copysign(a, z[i]) / d * ydy) / d;
    dz[i] = a > 0.f ? ds / (2.f * a) : 0.f;
  }
}

}  // namespace

void signed_sqrt_normalize_cpu(const float* z, float* y, int64_t N, int64_t C, int64_t groups, float eps,
                               int threads) {
  const int64_t L = C / groups, slices = N * groups;
  const int nt = N * C >= kParallelMin ? cpu_threads(threads) : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t q = 0; q < slices; ++q) ssn_slice(z + q * L, y + q * L, L, eps);
}

void signed_sqrt_normalize_backward_cpu(const float* z, const float* dy, float* dz, int64_t N, int64_t C,
                                        int64_t groups, float eps, int threads) {
  const int64_t L = C / groups, slices = N * groups;
  const int nt = N * C >= kParallelMin ? cpu_threads(threads) : 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t q = 0; q < slices; ++q) ssn_slice_backward(z + q * L, dy + q * L, dz + q * L, L, eps);
}

}  // namespace crossfuse
