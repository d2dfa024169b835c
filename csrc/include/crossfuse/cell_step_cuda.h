// The cuda backend's single-launch cell step for small batches without autograd (csrc/cuda/cell_step.cu): one
// kernel does both GEMVs (x W_ih^T, h W_hh^T) and the gate math, where the general path launches two cuBLAS
// GEMMs and the gate kernel; at these sizes the GPU work takes microseconds and the launches are the time.
// Block b owns U hidden units (their G*U weight rows); W threads sum one row over k for up to kStepRows batch
// rows at once, their partial sums meet in shared memory, then the block's threads apply the gates.
//
// The body is written against a context (crossfuse/ctx_cuda.cuh, crossfuse/ctx_host.h) so that the CPU build
// runs it on host threads (csrc/cpu/cell_step_emulate.cpp) for the tests on a machine with no GPU.
#pragma once
#include "crossfuse/cell.h"

namespace crossfuse {

constexpr int kStepThreads = 256;  // the CUDA launch's block size
constexpr int kStepRows = 8;       // batch rows per pass: each thread's accumulators per part
constexpr int kStepMaxBatch = 32;  // the fast path's limit: each pass re-reads the block's weight rows

struct StepArgs {
  int64_t B = 0, I = 0, H = 0;
  // x (B, I), hx / cx (B, H): rows at sx / sh / sc, unit column stride; hx, cx, biases optional (null);
  // weights (G*H, I) and (G*H, H) and biases contiguous; hy, cy (B, H) contiguous (cy: LSTM).
  const void *x = nullptr, *hx = nullptr, *cx = nullptr, *w_ih = nullptr, *w_hh = nullptr, *b_ih = nullptr,
             *b_hh = nullptr;
  int64_t sx = 0, sh = 0, sc = 0;
  void *hy = nullptr, *cy = nullptr;
};

// Threads per weight row, hidden units per block and shared-memory floats, for blocks of `nthreads` threads.
CF_HD int step_row_threads(int nthreads) { return nthreads < 32 ? nthreads : 32; }
CF_HD int64_t step_units(int kind, int nthreads) {
  const int64_t per = (nthreads / step_row_threads(nthreads)) / cell_gates(kind);  // one pass over the rows
  return per > 0 ? per : 1;
}
CF_HD int64_t step_blocks(int kind, int64_t H, int nthreads) {
  const int64_t U = step_units(kind, nthreads);
  return (H + U - 1) / U;
}
CF_HD int64_t step_smem_floats(int kind, int nthreads) {
  return (cell_gates(kind) * step_units(kind, nthreads) + nthreads) * 2 * kStepRows;
}

template <typename T, int KIND, class Ctx>
CF_DEV void cell_step_body(const StepArgs& a, Ctx& cx) {
  constexpr int G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1);
  constexpr int P = 2 * kStepRows;  // a row's sums: the input part, then the recurrent part
  const int nt = cx.threads(), t = cx.thread(), W = step_row_threads(nt), groups = nt / W;
  const int grp = t / W, lane = t - grp * W;
  const int64_t U = step_units(KIND, nt), j0 = int64_t(cx.block()) * U, H = a.H;
  const int64_t units = H - j0 < U ? H - j0 : U, rows = G * units;
  float* res = cx.shared();  // [G * U][P]: the block's row sums
  float* red = res + G * U * P;  // [nthreads][P]: each thread's partial sums
  const T *x = static_cast<const T*>(a.x), *hx = static_cast<const T*>(a.hx), *c0 = static_cast<const T*>(a.cx);
  const T *wi = static_cast<const T*>(a.w_ih), *wh = static_cast<const T*>(a.w_hh);
  const T *bi = static_cast<const T*>(a.b_ih), *bh = static_cast<const T*>(a.b_hh);
  for (int64_t b0 = 0; b0 < a.B; b0 += kStepRows) {
    const int nb = a.B - b0 < kStepRows ? int(a.B - b0) : kStepRows;
    for (int64_t r0 = 0; r0 < rows; r0 += groups) {  // every thread takes every turn: the barriers match
      const int64_t r = r0 + grp;
      float acc[P];
      for (int q = 0; q < P; ++q) acc[q] = 0.f;
      if (r < rows) {
        const int64_t wrow = (r / units) * H + j0 + r % units;
        for (int64_t k = lane; k < a.I; k += W) {
          const float w = to_float(wi[wrow * a.I + k]);
          for (int b = 0; b < kStepRows; ++b)
            if (b < nb) acc[b] += w * to_float(x[(b0 + b) * a.sx + k]);
        }
        if (hx)
          for (int64_t k = lane; k < H; k += W) {
            const float w = to_float(wh[wrow * H + k]);
            for (int b = 0; b < kStepRows; ++b)
              if (b < nb) acc[kStepRows + b] += w * to_float(hx[(b0 + b) * a.sh + k]);
          }
      }
      for (int q = 0; q < P; ++q) red[int64_t(t) * P + q] = acc[q];
      cx.sync();
      if (r < rows)
        for (int q = lane; q < P; q += W) {
          float s = 0.f;
          for (int l = 0; l < W; ++l) s += red[int64_t(grp * W + l) * P + q];
          res[r * P + q] = s;
        }
      cx.sync();
    }
    for (int64_t p = t; p < nb * units; p += nt) {
      const int b = int(p / units);
      const int64_t u = p - b * units, j = j0 + u, row = b0 + b;
      auto part = [&](int g, int which) { return res[(g * units + u) * P + which * kStepRows + b]; };
      auto bias = [&](const T* v, int g) { return v ? to_float(v[g * H + j]) : 0.f; };
      auto gate = [&](int g) { return part(g, 0) + part(g, 1) + bias(bi, g) + bias(bh, g); };
      if (KIND == kLstm) {
        float i = gate(0), f = gate(1), g = gate(2), o = gate(3), c2, h2;
        lstm_fwd(i, f, g, o, c0 ? to_float(c0[row * a.sc + j]) : 0.f, c2, h2);
        st<T>(a.hy, row * H + j, h2);
        st<T>(a.cy, row * H + j, c2);
      } else if (KIND == kGru) {  // r scales only the recurrent part of n
        float r = gate(0), z = gate(1), n = part(2, 0) + bias(bi, 2);
        const float hn = part(2, 1) + bias(bh, 2);
        st<T>(a.hy, row * H + j, gru_fwd(r, z, n, hn, hx ? to_float(hx[row * a.sh + j]) : 0.f));
      } else {
        st<T>(a.hy, row * H + j, rnn_act(KIND, gate(0)));
      }
    }
    cx.sync();  // the next pass rewrites res
  }
}

}  // namespace crossfuse
