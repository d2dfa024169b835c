// The contrastive losses on CPU, the passes over a chunk of S between the caller's GEMMs: the rows' statistics,
// CLIP's columns' online logsumexp and dS, each a fused loop (the exp vectorizes: crossfuse/common.h cf_exp)
// where torch would make a pass over the chunk per operation.
#include "crossfuse/contrastive_cpu.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "crossfuse/common.h"

namespace crossfuse {
namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
constexpr int64_t kColBlock = 64;  // columns a thread folds at a time (its running sums stay in L1)

inline int threads_for(const ContrastiveChunk& c) {
  return c.r * c.n >= (1 << 15) ? cpu_threads(c.threads) : 1;
}

// SigLIP's loss term softplus(x) and d loss / d S with x = -z S (z = +1 on positives): one exp; the log of
// 1 + u, u in (0, 1], as 2 atanh(u / (2 + u)) (a series in z <= 1/3, to fp32 precision), so the loop vectorizes.
inline void siglip_terms(float s, bool same, float& sp, float& ds) {
  const float x = same ? -s : s, u = cf_exp(-std::fabs(x)), inv = 1.f / (1.f + u);
  const float z = u / (2.f + u), z2 = z * z;
  const float series = 1.f / 3 + z2 * (1.f / 5 + z2 * (1.f / 7 + z2 * (1.f / 9 + z2 * (1.f / 11))));
  const float lg = 2.f * z * (1.f + z2 * series);
  sp = std::max(x, 0.f) + lg;
  const float sig = x >= 0.f ? inv : u * inv;
  ds = same ? -sig : sig;
}

CF_CPU_CLONES void siglip_row_forward(const ContrastiveChunk& c, int64_t i, float* st) {
  const float* p = c.s + i * c.ld;
  const int64_t li = c.la[i];
  float loss = 0.f, cnt = 0.f, g1 = 0.f, g2 = 0.f;
#pragma omp simd reduction(+ : loss, cnt, g1, g2)
  for (int64_t j = 0; j < c.n; ++j) {
    const float v = p[j] * c.scale + c.bias;
    const bool same = c.lb[j] == li;
    float sp, ds;
    siglip_terms(v, same, sp, ds);
    loss += sp;
    cnt += same ? 1.f : 0.f;
    g1 += ds * (v - c.bias);
    g2 += ds;
  }
  st[0] = loss; st[1] = 0.f; st[2] = cnt; st[3] = 0.f; st[4] = g1; st[5] = g2;
}

CF_CPU_CLONES void rows_forward(const ContrastiveChunk& c, int64_t i, float* st) {
  const float* p = c.s + i * c.ld;
  const int64_t li = c.la[i];
  float mx = kNegInf, pos = 0.f, cnt = 0.f, tot = 0.f;
#pragma omp simd reduction(max : mx) reduction(+ : pos, cnt, tot)
  for (int64_t j = 0; j < c.n; ++j) {
    const float v = p[j] * c.scale + c.bias;
    const bool same = c.lb[j] == li;
    mx = std::max(mx, v);
    pos += same ? v : 0.f;
    cnt += same ? 1.f : 0.f;
    tot += v;
  }
  float l = 0.f, t = 0.f;
#pragma omp simd reduction(+ : l, t)
  for (int64_t j = 0; j < c.n; ++j) {
    const float v = p[j] * c.scale + c.bias, e = cf_exp(v - mx);
    l += e;
    t += e * v;
  }
  st[0] = c.n ? mx + std::log(l) : kNegInf;
  st[1] = pos;
  st[2] = cnt;
  st[3] = tot;
  st[4] = c.n ? t / l : 0.f;
  st[5] = 0.f;
}

// Columns [j0, j1) of the chunk folded into the running column statistics.
CF_CPU_CLONES void cols_forward(const ContrastiveChunk& c, int64_t j0, int64_t j1, float* col) {
  float *m = col, *l = col + c.n, *t = col + 2 * c.n, *pos = col + 3 * c.n, *cnt = col + 4 * c.n,
        *tot = col + 5 * c.n;
  float cm[kColBlock];
  const int64_t w = j1 - j0;
  std::fill(cm, cm + w, kNegInf);
  for (int64_t i = 0; i < c.r; ++i) {
    const float* p = c.s + i * c.ld + j0;
    const int64_t li = c.la[i];
#pragma omp simd
    for (int64_t q = 0; q < w; ++q) {
      const float v = p[q] * c.scale + c.bias;
      const bool same = c.lb[j0 + q] == li;
      cm[q] = std::max(cm[q], v);
      pos[j0 + q] += same ? v : 0.f;
      cnt[j0 + q] += same ? 1.f : 0.f;
      tot[j0 + q] += v;
    }
  }
  for (int64_t q = 0; q < w; ++q) {  // the new running max; the sums so far rescaled to it
    const float mn = std::max(m[j0 + q], cm[q]);
    const float a = m[j0 + q] == kNegInf ? 0.f : cf_exp(m[j0 + q] - mn);
    l[j0 + q] *= a;
    t[j0 + q] *= a;
    m[j0 + q] = mn;
  }
  for (int64_t i = 0; i < c.r; ++i) {
    const float* p = c.s + i * c.ld + j0;
#pragma omp simd
    for (int64_t q = 0; q < w; ++q) {
      const float v = p[q] * c.scale + c.bias, e = cf_exp(v - m[j0 + q]);
      l[j0 + q] += e;
      t[j0 + q] += e * v;
    }
  }
}

// Row i's dS: its own direction's term, plus the columns' direction's where cl (the columns' lse) is given.
CF_CPU_CLONES void dscores_row(const ContrastiveChunk& c, int64_t i, float* d, const float* st, float w, float eps,
                               float reps, const float* cl, const float* cw, const float* ci, float ceps) {
  const float* p = c.s + i * c.ld;
  const int64_t li = c.la[i];
  const float lse = st[0], inv = (1.f - eps) / std::max(st[2], 1.f);
  if (c.siglip) {  // both directions' terms are the same function of S_ij, each times its weight
#pragma omp simd
    for (int64_t j = 0; j < c.n; ++j) {
      float sp, ds;
      siglip_terms(p[j] * c.scale + c.bias, c.lb[j] == li, sp, ds);
      d[j] = ds * (cl ? w + cw[j] : w);
    }
  } else if (cl) {
#pragma omp simd
    for (int64_t j = 0; j < c.n; ++j) {
      const float v = p[j] * c.scale + c.bias;
      const bool same = c.lb[j] == li;
      const float own = (cf_exp(v - lse) - (same ? inv : 0.f) - reps) * w;
      d[j] = own + (cf_exp(v - cl[j]) - (same ? ci[j] : 0.f) - ceps) * cw[j];
    }
  } else {
#pragma omp simd
    for (int64_t j = 0; j < c.n; ++j) {
      const float v = p[j] * c.scale + c.bias;
      d[j] = (cf_exp(v - lse) - (c.lb[j] == li ? inv : 0.f) - reps) * w;
    }
  }
}

}  // namespace

void contrastive_chunk_forward_cpu(const ContrastiveChunk& c, float* row, float* col) {
  if (c.r == 0) return;
  const int nt = threads_for(c);
  const int64_t nblocks = col && !c.siglip ? (c.n + kColBlock - 1) / kColBlock : 0;
#pragma omp parallel num_threads(nt) if (nt > 1)
  {
#pragma omp for schedule(static) nowait
    for (int64_t i = 0; i < c.r; ++i) {
      if (c.siglip)
        siglip_row_forward(c, i, row + 6 * i);
      else
        rows_forward(c, i, row + 6 * i);
    }
#pragma omp for schedule(static)
    for (int64_t b = 0; b < nblocks; ++b)
      cols_forward(c, b * kColBlock, std::min(c.n, (b + 1) * kColBlock), col);
  }
}

void contrastive_chunk_dscores_cpu(const ContrastiveChunk& c, float* ds, const float* row_st, const float* wr,
                                   int64_t nr, const float* col_st, const float* wc, int64_t nc, float eps) {
  if (c.r == 0 || c.n == 0) return;
  const int nt = threads_for(c);
  // per column: its lse, weight, 1 / count and eps / rows; per row the same, at the row
  std::vector<float> clse(col_st ? c.n : 0), cw(col_st ? c.n : 0), cinv(col_st ? c.n : 0);
  for (int64_t j = 0; j < (col_st ? c.n : 0); ++j) {
    clse[j] = col_st[6 * j];
    cw[j] = wc[j];
    cinv[j] = (1.f - eps) / std::max(col_st[6 * j + 2], 1.f);
  }
  const float ceps = col_st ? eps / float(nc) : 0.f, reps = eps / float(nr);
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
  for (int64_t i = 0; i < c.r; ++i)
    dscores_row(c, i, ds + i * c.ld, row_st + 6 * i, wr[i], eps, reps, col_st ? clse.data() : nullptr, cw.data(),
                cinv.data(), ceps);
}

}  // namespace crossfuse
