// CPU driver for the fused cells: row by row, fp32 row buffers so the pointwise loops vectorize.
#pragma once
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>
#if defined(_OPENMP)
#include <omp.h>
#endif
#include "crossfuse/cell.h"

namespace crossfuse {

namespace detail {
template <typename T>
inline void load_row(const View& v, int64_t b, int64_t n, float* out, bool add) {
  if (!v.present()) { if (!add) std::fill(out, out + n, 0.f); return; }
  const T* p = static_cast<const T*>(v.data) + b * v.s0;
  const int64_t s = v.s1;
  if (s == 1) {
    if (add) for (int64_t j = 0; j < n; ++j) out[j] += to_float(p[j]);
    else     for (int64_t j = 0; j < n; ++j) out[j] = to_float(p[j]);
  } else {
    if (add) for (int64_t j = 0; j < n; ++j) out[j] += to_float(p[j * s]);
    else     for (int64_t j = 0; j < n; ++j) out[j] = to_float(p[j * s]);
  }
}
template <typename T>
inline void store_row(const View& v, int64_t b, int64_t n, const float* in) {
  if (!v.present()) return;
  T* p = static_cast<T*>(v.data) + b * v.s0;
  const int64_t s = v.s1;
  if (s == 1) for (int64_t j = 0; j < n; ++j) p[j] = from_float<T>(in[j]);
  else        for (int64_t j = 0; j < n; ++j) p[j * s] = from_float<T>(in[j]);
}
// Gate math over a span of hidden units. The row buffers share one allocation, so GCC would not vectorise
// these loops without __restrict (it gives up on versioning that many pointers).
CF_CPU_CLONES inline void lstm_fwd_span(float* __restrict i, float* __restrict f, float* __restrict g,
                                        float* __restrict o, const float* __restrict c, float* __restrict c2,
                                        float* __restrict h2, int64_t n) {
  for (int64_t j = 0; j < n; ++j) lstm_fwd(i[j], f[j], g[j], o[j], c[j], c2[j], h2[j]);
}
CF_CPU_CLONES inline void gru_fwd_span(float* __restrict r, float* __restrict z, float* __restrict nn,
                                       const float* __restrict hn, const float* __restrict h, float* __restrict out,
                                       int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = gru_fwd(r[j], z[j], nn[j], hn[j], h[j]);
}
template <int KIND>
CF_CPU_CLONES void rnn_fwd_span(const float* __restrict pre, float* __restrict out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = rnn_act(KIND, pre[j]);
}
CF_CPU_CLONES inline void lstm_bwd_span(float* __restrict i, float* __restrict f, float* __restrict g,
                                        float* __restrict o, const float* __restrict c, const float* __restrict dh,
                                        const float* __restrict dc, float* __restrict dcx, int64_t n) {
  for (int64_t j = 0; j < n; ++j) lstm_bwd(i[j], f[j], g[j], o[j], c[j], dh[j], dc[j], dcx[j]);
}
CF_CPU_CLONES inline void gru_bwd_span(const float* __restrict ws, const float* __restrict h,
                                       const float* __restrict dh, float* __restrict d, float* __restrict d2,
                                       float* __restrict dhx, int64_t H) {
  const float *r = ws, *z = ws + H, *nn = ws + 2 * H, *hn = ws + 3 * H;
  for (int64_t j = 0; j < H; ++j) {
    float dr, dz, dgin, dghn, dhd;
    gru_bwd(r[j], z[j], nn[j], hn[j], h[j], dh[j], dr, dz, dgin, dghn, dhd);
    d[j] = dr; d[H + j] = dz; d[2 * H + j] = dgin;
    d2[j] = dr; d2[H + j] = dz; d2[2 * H + j] = dghn;
    dhx[j] = dhd;
  }
}
template <int KIND>
CF_CPU_CLONES void rnn_bwd_span(const float* __restrict y, const float* __restrict dh, float* __restrict d, int64_t n) {
  for (int64_t j = 0; j < n; ++j) d[j] = dh[j] * rnn_act_grad(KIND, y[j]);
}
}  // namespace detail


template <typename T, int KIND>
CF_CPU_CLONES void cell_forward_rows(const CellArgs& a, int64_t b0, int64_t b1) {
  using namespace detail;
  const int64_t H = a.H, G = cell_gates(KIND), GH = G * H;
  const View* v = a.v;
  std::vector<float> buf(GH + 3 * H);
  float *pre = buf.data(), *h = pre + GH, *c = h + H, *out = c + H;
  for (int64_t b = b0; b < b1; ++b) {
    load_row<T>(v[kGi], b, GH, pre, false);
    if (KIND == kGru) {
      // gh's n-part is kept apart: it is scaled by r.
      load_row<T>(v[kGh], b, 2 * H, pre, true);
      load_row<T>(v[kBhh], 0, 2 * H, pre, true);
      load_row<T>(v[kBih], 0, GH, pre, true);
      View ghn = v[kGh], bhn = v[kBhh];
      if (ghn.present()) ghn.data = static_cast<T*>(ghn.data) + 2 * H * ghn.s1;
      if (bhn.present()) bhn.data = static_cast<T*>(bhn.data) + 2 * H * bhn.s1;
      load_row<T>(ghn, b, H, c, false);
      load_row<T>(bhn, 0, H, c, true);
      load_row<T>(v[kHx], b, H, h, false);
      float *r = pre, *z = pre + H, *n = pre + 2 * H;
      gru_fwd_span(r, z, n, c, h, out, H);
      store_row<T>(v[kHy], b, H, out);
      if (v[kWs].present()) {  // ws row: r, z, n, hn (fp32)
        float* w = static_cast<float*>(v[kWs].data) + b * v[kWs].s0;
        std::copy(pre, pre + GH, w);
        std::copy(c, c + H, w + GH);
      }
      continue;
    }
    load_row<T>(v[kGh], b, GH, pre, true);
    load_row<T>(v[kBih], 0, GH, pre, true);
    load_row<T>(v[kBhh], 0, GH, pre, true);
    if (KIND == kLstm) {
      load_row<T>(v[kCx], b, H, c, false);
      float *i = pre, *f = pre + H, *g = pre + 2 * H, *o = pre + 3 * H;
      lstm_fwd_span(i, f, g, o, c, h, out, H);
      store_row<T>(v[kHy], b, H, out);
      store_row<T>(v[kCy], b, H, h);
      if (v[kWs].present()) std::copy(pre, pre + GH, static_cast<float*>(v[kWs].data) + b * v[kWs].s0);
    } else {
      rnn_fwd_span<KIND>(pre, out, H);
      store_row<T>(v[kHy], b, H, out);
    }
  }
}

template <typename T, int KIND>
CF_CPU_CLONES void cell_backward_rows(const CellArgs& a, int64_t b0, int64_t b1) {
  using namespace detail;
  const int64_t H = a.H, G = cell_gates(KIND), GH = G * H;
  const View* v = a.v;
  std::vector<float> buf(2 * GH + 4 * H);
  float *d = buf.data(), *d2 = d + GH, *dh = d2 + GH, *dc = dh + H, *c = dc + H, *dhx = c + H;
  for (int64_t b = b0; b < b1; ++b) {
    load_row<T>(v[kDhy], b, H, dh, false);
    if (KIND == kLstm) {
      load_row<T>(v[kDcy], b, H, dc, false);
      load_row<T>(v[kCx], b, H, c, false);
      std::copy_n(static_cast<const float*>(v[kWs].data) + b * v[kWs].s0, GH, d);
      float *i = d, *f = d + H, *g = d + 2 * H, *o = d + 3 * H;
      lstm_bwd_span(i, f, g, o, c, dh, dc, dhx, H);
      store_row<T>(v[kDgi], b, GH, d);
      store_row<T>(v[kDcx], b, H, dhx);
    } else if (KIND == kGru) {
      load_row<T>(v[kHx], b, H, c, false);
      gru_bwd_span(static_cast<const float*>(v[kWs].data) + b * v[kWs].s0, c, dh, d, d2, dhx, H);
      store_row<T>(v[kDgi], b, GH, d);
      store_row<T>(v[kDgh], b, GH, d2);
      store_row<T>(v[kDhx], b, H, dhx);
    } else {
      load_row<T>(v[kHy], b, H, c, false);
      rnn_bwd_span<KIND>(c, dh, d, H);
      store_row<T>(v[kDgi], b, GH, d);
    }
  }
}

// Splits the batch over OpenMP threads when the work is large enough to pay for waking them.
template <typename T, int KIND>
void run_cell_cpu(const CellArgs& a, bool backward) {
  const int64_t work = a.B * a.H * cell_gates(KIND);
  auto body = [&](int64_t b0, int64_t b1) {
    if (backward) cell_backward_rows<T, KIND>(a, b0, b1);
    else cell_forward_rows<T, KIND>(a, b0, b1);
  };
#if defined(_OPENMP)
  const int threads = work >= (1 << 16) && a.B > 1 ? cpu_threads(a.threads) : 1;
  if (threads > 1) {
#pragma omp parallel num_threads(threads)
    {
      int nt = omp_get_num_threads(), t = omp_get_thread_num();
      int64_t chunk = (a.B + nt - 1) / nt, b0 = t * chunk, b1 = std::min(a.B, b0 + chunk);
      if (b0 < b1) body(b0, b1);
    }
    return;
  }
#endif
  (void)work;
  body(0, a.B);
}

}  // namespace crossfuse

namespace crossfuse {
// Runtime dtype and kind dispatch over the kinds one op owns.
template <int... KINDS>
void run_cell_cpu_kinds(const CellArgs& a, bool backward) {
  bool done = false;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    ((a.kind == KINDS ? (run_cell_cpu<T, KINDS>(a, backward), done = true) : false), ...);
  });
  if (!done) throw std::invalid_argument("crossfuse: wrong cell kind " + std::to_string(a.kind));
}
}  // namespace crossfuse
