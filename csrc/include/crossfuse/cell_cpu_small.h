// CPU single-call cell step for small batches (fp32, no autograd): the two GEMVs and the gate math in one
// pass. At batch <= 16 torch's GEMM dispatch and the extra passes over the gates cost more than the math;
// here each thread owns a range of hidden units, reads their weight rows once for the whole batch and
// applies the gates while the rows are hot.
#pragma once
#include <algorithm>
#include "crossfuse/cell.h"
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
};

constexpr int kSmallMaxBatch = 16;

typedef float v8f __attribute__((vector_size(32)));

namespace detail {
inline v8f load8(const float* p) { v8f v; __builtin_memcpy(&v, p, 32); return v; }
inline float hsum8(v8f v) {
  float s = 0.f;
  for (int i = 0; i < 8; ++i) s += v[i];
  return s;
}
}  // namespace detail

// out[b] = dot(a + b * sa, w) for b < NB (NB <= 4), length K: one weight load feeds NB FMAs.
template <int NB>
__attribute__((always_inline)) inline void dotn(const float* a, int64_t sa, const float* w, int64_t K, float* out) {
  using namespace detail;
  v8f acc[NB] = {};
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    v8f wv = load8(w + k);
    for (int b = 0; b < NB; ++b) acc[b] += load8(a + b * sa + k) * wv;
  }
  for (int b = 0; b < NB; ++b) {
    float s = hsum8(acc[b]);
    for (int64_t t = k; t < K; ++t) s += a[b * sa + t] * w[t];
    out[b] = s;
  }
}

__attribute__((always_inline)) inline void dot_batch(const float* a, int64_t sa, int64_t B, const float* w, int64_t K,
                                                     float* out) {
  int64_t b = 0;
  for (; b + 4 <= B; b += 4) dotn<4>(a + b * sa, sa, w, K, out + b);
  switch (B - b) {
    case 3: dotn<3>(a + b * sa, sa, w, K, out + b); break;
    case 2: dotn<2>(a + b * sa, sa, w, K, out + b); break;
    case 1: dotn<1>(a + b * sa, sa, w, K, out + b); break;
    default: break;
  }
}

template <int KIND>
CF_CPU_CLONES void small_cell_range(const SmallCellArgs& a, int64_t j0, int64_t j1) {
  constexpr int G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1);
  const int64_t B = a.B, H = a.H;
  float gi[G][kSmallMaxBatch], gh[G][kSmallMaxBatch];
  for (int64_t j = j0; j < j1; ++j) {
    for (int k = 0; k < G; ++k) {
      const int64_t row = k * H + j;
      dot_batch(a.x, a.sx, B, a.w_ih + row * a.I, a.I, gi[k]);
      if (a.hx) dot_batch(a.hx, a.sh, B, a.w_hh + row * H, H, gh[k]);
      else std::fill(gh[k], gh[k] + B, 0.f);
      const float bi = a.b_ih ? a.b_ih[row] : 0.f, bh = a.b_hh ? a.b_hh[row] : 0.f;
      for (int64_t b = 0; b < B; ++b) { gi[k][b] += bi; gh[k][b] += bh; }
    }
    for (int64_t b = 0; b < B; ++b) {
      float* hy = a.hy + b * a.shy + j;
      if (KIND == kLstm) {
        float i = gi[0][b] + gh[0][b], f = gi[1][b] + gh[1][b], g = gi[2][b] + gh[2][b], o = gi[3][b] + gh[3][b];
        float c2, h2;
        lstm_fwd(i, f, g, o, a.cx ? a.cx[b * a.sc + j] : 0.f, c2, h2);
        *hy = h2;
        a.cy[b * a.scy + j] = c2;
      } else if (KIND == kGru) {
        float r = gi[0][b] + gh[0][b], z = gi[1][b] + gh[1][b], n = gi[2][b];
        *hy = gru_fwd(r, z, n, gh[2][b], a.hx ? a.hx[b * a.sh + j] : 0.f);
      } else {
        *hy = rnn_act(KIND, gi[0][b] + gh[0][b]);
      }
    }
  }
}

template <int KIND>
void small_cell(const SmallCellArgs& a) {
  const int64_t macs = a.B * a.H * (KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1)) * (a.I + a.H);
#if defined(_OPENMP)
  if (macs >= (1 << 19) && a.H >= 16) {
#pragma omp parallel
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t chunk = (a.H + nt - 1) / nt, j0 = t * chunk, j1 = std::min(a.H, j0 + chunk);
      if (j0 < j1) small_cell_range<KIND>(a, j0, j1);
    }
    return;
  }
#endif
  (void)macs;
  small_cell_range<KIND>(a, 0, a.H);
}

inline void run_small_cell(const SmallCellArgs& a) {
  switch (a.kind) {
    case kRnnTanh: small_cell<kRnnTanh>(a); break;
    case kRnnRelu: small_cell<kRnnRelu>(a); break;
    case kRnnSigmoid: small_cell<kRnnSigmoid>(a); break;
    case kLstm: small_cell<kLstm>(a); break;
    case kGru: small_cell<kGru>(a); break;
    default: throw std::invalid_argument("crossfuse: wrong cell kind " + std::to_string(a.kind));
  }
}

}  // namespace crossfuse
