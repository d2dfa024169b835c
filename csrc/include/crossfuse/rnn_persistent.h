// The recurrence of one layer and direction as one cooperative CUDA launch (csrc/cuda/rnn_persistent.cu) with
// the recurrent weights on-chip for the whole sequence. Block b of `blocks` owns U hidden units: it keeps their
// rows of R (forward: the G*U rows, k-major) or columns (backward: R[:, units]) in shared memory as fp32, and the
// blocks meet at a grid barrier once per step (forward: the next R.h reads every unit's state; backward:
// dh_prev = dG R reads every unit's gate gradients). Semantics as kernels/rnn.py: the input gates come
// precomputed (b_ih folded in), the state lives in an fp32 scratch, rows stop at their length.
//
// The bodies are written once against a context (ids, barriers, loads past L1) so that the CPU build runs them
// too, each CUDA thread a host thread (csrc/cpu/rnn_persistent_emulate.cpp): the tests check their indexing,
// barriers and math there, on a machine with no GPU.
#pragma once
#include "crossfuse/cell.h"

namespace crossfuse {

constexpr int kPersistentThreads = 256;  // the CUDA launch's block size
// A thread accumulates tiles of kTileRows batch rows x kTileCols outputs: per reduction step it loads
// kTileRows + kTileCols staged values for kTileRows * kTileCols multiply-adds (shared memory, not the FMA
// units, bounds a one-output-per-thread loop); up to kPersistentTiles tiles per thread per batch chunk.
constexpr int kTileRows = 4, kTileCols = 4, kPersistentTiles = 2;
constexpr int kPersistentKC = 32;        // reduction columns staged per pass: at least this many,
constexpr int kPersistentMaxKC = 1024;   // at most this many

struct PersistentArgs {
  int64_t T = 0, B = 0, H = 0;
  int64_t U = 0, blocks = 0, BC = 0, KC = 0;  // the plan: units per block, blocks, batch chunk, staged columns
  bool reverse = false;
  const void *gi = nullptr, *w = nullptr, *bhh = nullptr;  // gi (T, B, G*H) rows at sgt/sgb; w (G*H, H) rows at sw
  int64_t sgt = 0, sgb = 0, sw = 0;
  const int64_t* lens = nullptr;  // (B,) or null
  void *hs = nullptr, *cs = nullptr;  // (T, B, H) contiguous
  float* ws = nullptr;                // (T, B, 4H) activated gates (LSTM i f g o, GRU r z n hn), or null
  // fp32 scratch. Forward (2, 2, B, H): h and c by step parity, the initial state in [0][0] and [1][0].
  // Backward (5, B, H): dh and dc by step parity (dhT, dcT in [0] and [2]), then GRU's direct dh term.
  float* st = nullptr;
  const void *dout = nullptr, *h0 = nullptr, *c0 = nullptr;  // backward: (T, B, H) and (B, H) contiguous, or null
  void *dgi = nullptr, *dgh = nullptr;                       // backward: (T, B, G*H) contiguous (dgh: GRU)
};

CF_HD int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
// Row strides of the staged operands: whole column tiles, odd (consecutive rows in different banks).
CF_HD int64_t persistent_stride(int64_t cols) { return round_up(cols, kTileCols) + 1; }
// Output tiles of a batch chunk of `rows` rows and `cols` outputs per row.
CF_HD int64_t persistent_tiles(int64_t rows, int64_t cols) {
  return ((rows + kTileRows - 1) / kTileRows) * ((cols + kTileCols - 1) / kTileCols);
}

// Hidden units of the block starting at unit j0: U, fewer in the last block, none past H.
CF_HD int64_t persistent_units(int64_t H, int64_t U, int64_t j0) { return H - j0 < U ? (H - j0 > 0 ? H - j0 : 0) : U; }

// Shared-memory floats of a plan (the larger of forward and backward: the same plan serves both).
inline int64_t persistent_smem_floats(int G, int64_t H, int64_t U, int64_t BC, int64_t KC, int nthreads) {
  const int64_t rows = round_up(BC, kTileRows);
  const int64_t fwd = H * persistent_stride(G * U) + rows * G * U, bwd = G * H * persistent_stride(U);
  return (fwd > bwd ? fwd : bwd) + rows * (KC + 1) + int64_t(nthreads) * kTileRows * kTileCols;
}

// The plan for B rows and H units on `sms` SMs with `smem_bytes` of shared memory per block: the fewest units per
// block (at least min_units) with every block co-resident at one per SM, and as many reduction columns staged per
// pass as fit (fewer passes, fewer barriers); false where R does not fit on-chip.
inline bool persistent_plan(int G, int64_t B, int64_t H, int nthreads, int64_t smem_bytes, int64_t sms,
                            int64_t min_units, PersistentArgs& p, int64_t max_kc = kPersistentMaxKC) {
  if (G <= 0 || B <= 0 || H <= 0 || nthreads <= 0 || sms <= 0) return false;
  int64_t U = (H + sms - 1) / sms;
  U = U < min_units ? min_units : U;
  U = U > H ? H : U;
  // batch rows per chunk: every output tile of a chunk in the threads' registers
  int64_t BC = kTileRows * (int64_t(kPersistentTiles) * nthreads / persistent_tiles(kTileRows, G * U));
  if (BC == 0) return false;
  BC = BC > 64 ? 64 : BC;
  BC = BC > B ? B : BC;
  p.U = U;
  p.blocks = (H + U - 1) / U;
  p.BC = BC;
  if (p.blocks > sms) return false;
  const int64_t longest = G * H;  // the backward's reduction; the forward's is H
  for (int64_t KC = max_kc; KC >= kPersistentKC; KC /= 2) {
    if (KC / 2 >= longest && KC > kPersistentKC) continue;  // no wider than the reduction needs
    p.KC = KC;
    if (4 * persistent_smem_floats(G, H, U, BC, KC, nthreads) <= smem_bytes) return true;
  }
  return false;
}

// The largest power of two ks <= 32 with n * ks <= nthreads: threads per output tile, splitting its reduction.
CF_HD int64_t persistent_split(int64_t n, int nthreads) {
  int64_t ks = 1;
  while (ks < 32 && n * ks * 2 <= nthreads) ks *= 2;
  return ks;
}

// xs[b * sx + k] = src[b * ld + k] for b < rows, k < kc (0 for kc <= k < KC), read past L1. Each thread has
// kStage loads in flight before it stores: a load-then-store loop would wait out L2's latency once per value.
constexpr int kStage = 8;
template <class Ctx, typename T>
CF_DEV void persistent_stage(Ctx& cx, float* xs, int64_t sx, int64_t rows, int64_t KC, int64_t kc, const T* src,
                             int64_t ld) {
  const int64_t n = rows * KC, NT = cx.threads();
  for (int64_t i0 = cx.thread(); i0 < n; i0 += NT * kStage) {
    float v[kStage];
#pragma unroll
    for (int q = 0; q < kStage; ++q) {
      const int64_t i = i0 + q * NT, b = i / KC, k = i - b * KC;
      v[q] = i < n && k < kc ? cx.ld_l2(src + b * ld + k) : 0.f;
    }
#pragma unroll
    for (int q = 0; q < kStage; ++q) {
      const int64_t i = i0 + q * NT, b = i / KC, k = i - b * KC;
      if (i < n) xs[b * sx + k] = v[q];
    }
  }
}

// One pass over a staged chunk of the reduction: acc[i] (the tile grp + i * (NT / ks) of output rows x cols)
// += sum over k = kl, kl + ks, ... < kc of x[row * sx + k] * a[k * sa + col]. Rows and columns past the chunk's
// are computed from whatever the padding holds and never handed out.
template <class Ctx>
CF_DEV void persistent_dot(Ctx& cx, float (*acc)[kTileRows][kTileCols], int64_t rows, int64_t cols, int64_t ks,
                           const float* a, int64_t sa, const float* x, int64_t sx, int64_t kc) {
  const int64_t ng = cx.threads() / ks, grp = cx.thread() / ks, kl = cx.thread() % ks;
  const int64_t nct = (cols + kTileCols - 1) / kTileCols, n = persistent_tiles(rows, cols);
#pragma unroll
  for (int i = 0; i < kPersistentTiles; ++i) {
    const int64_t q = grp + i * ng;
    if (q < n) {
      const int64_t rt = q / nct, ct = q - rt * nct;
      const float *ap = a + ct * kTileCols, *xp = x + rt * kTileRows * sx;
      for (int64_t k = kl; k < kc; k += ks) {
        float w[kTileCols], v[kTileRows];
#pragma unroll
        for (int c = 0; c < kTileCols; ++c) w[c] = ap[k * sa + c];
#pragma unroll
        for (int r = 0; r < kTileRows; ++r) v[r] = xp[r * sx + k];
#pragma unroll
        for (int r = 0; r < kTileRows; ++r)
#pragma unroll
          for (int c = 0; c < kTileCols; ++c) acc[i][r][c] += v[r] * w[c];
      }
    }
  }
}

// Hands each output's sum to fn(row, col, sum), once per output: the ks partial sums of a tile meet in `red`.
template <class Ctx, class F>
CF_DEV void persistent_reduce(Ctx& cx, float (*acc)[kTileRows][kTileCols], int64_t rows, int64_t cols, int64_t ks,
                              float* red, F&& fn) {
  const int64_t ng = cx.threads() / ks, grp = cx.thread() / ks, kl = cx.thread() % ks;
  const int64_t nct = (cols + kTileCols - 1) / kTileCols, n = persistent_tiles(rows, cols);
  constexpr int E = kTileRows * kTileCols;
  if (ks > 1) {  // n <= ng: one tile per group, in acc[0]
#pragma unroll
    for (int e = 0; e < E; ++e) red[cx.thread() * E + e] = acc[0][e / kTileCols][e % kTileCols];
    cx.sync();
    if (kl == 0 && grp < n)
      for (int e = 0; e < E; ++e) {
        float s = 0.f;
        for (int64_t l = 0; l < ks; ++l) s += red[(grp * ks + l) * E + e];
        acc[0][e / kTileCols][e % kTileCols] = s;
      }
    if (kl != 0) return;
  }
#pragma unroll
  for (int i = 0; i < kPersistentTiles; ++i) {
    const int64_t q = grp + i * ng;
    if (q >= n) continue;
    const int64_t rt = q / nct, ct = q - rt * nct;
    for (int r = 0; r < kTileRows; ++r)
      for (int c = 0; c < kTileCols; ++c) {
        const int64_t row = rt * kTileRows + r, col = ct * kTileCols + c;
        if (row < rows && col < cols) fn(row, col, acc[i][r][c]);
      }
  }
}

template <typename T, int KIND, class Ctx>
CF_DEV void persistent_forward(const PersistentArgs& a, Ctx& cx) {
  constexpr int G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1);
  const int64_t H = a.H, B = a.B, BH = B * H, U = a.U, BC = a.BC, KC = a.KC, R = G * U, SW = persistent_stride(R),
                SX = KC + 1;
  const int NT = cx.threads(), tid = cx.thread();
  const int64_t j0 = cx.block() * U, nu = persistent_units(H, U, j0);
  float* Wsm = cx.shared();      // [k][r], r = g * U + u
  float* gat = Wsm + H * SW;                     // [b][r]: R.h of the batch chunk
  float* xs = gat + round_up(BC, kTileRows) * R;  // [b][k]: the staged state columns
  float* red = xs + round_up(BC, kTileRows) * SX; // [thread][tile element]
  const T* W = static_cast<const T*>(a.w);
  for (int64_t i = tid; i < R * H; i += NT) {
    const int64_t r = i / H, k = i - r * H, g = r / U, u = r - g * U;
    Wsm[k * SW + r] = u < nu ? to_float(W[(g * H + j0 + u) * a.sw + k]) : 0.f;
  }
  const T* bh = static_cast<const T*>(a.bhh);
  for (int64_t s = 0; s < a.T; ++s) {
    const int64_t t = a.reverse ? a.T - 1 - s : s, src = s & 1;
    const float *SH = a.st + src * BH, *SC = a.st + (2 + src) * BH;
    float *DH = a.st + (1 - src) * BH, *DC = a.st + (3 - src) * BH;
    for (int64_t b0 = 0; b0 < B; b0 += BC) {
      const int64_t bc = B - b0 < BC ? B - b0 : BC, ks = persistent_split(persistent_tiles(bc, R), NT);
      float acc[kPersistentTiles][kTileRows][kTileCols] = {};
      for (int64_t k0 = 0; k0 < H; k0 += KC) {
        const int64_t kc = H - k0 < KC ? H - k0 : KC;
        cx.sync();  // the previous pass (or chunk's gate math) is done with xs and gat
        persistent_stage(cx, xs, SX, bc, KC, kc, SH + b0 * H + k0, H);
        cx.sync();
        persistent_dot(cx, acc, bc, R, ks, Wsm + k0 * SW, SW, xs, SX, kc);
      }
      persistent_reduce(cx, acc, bc, R, ks, red, [&](int64_t b, int64_t r, float v) { gat[b * R + r] = v; });
      cx.sync();
      for (int64_t i = tid; i < bc * nu; i += NT) {
        const int64_t b = i / nu, u = i - b * nu, row = b0 + b, j = j0 + u, oh = row * H + j;
        const T* gi = static_cast<const T*>(a.gi) + t * a.sgt + row * a.sgb;
        const float* rh = gat + b * R + u;
        auto bias = [&](int g) { return bh ? to_float(bh[g * H + j]) : 0.f; };
        auto pre = [&](int g) { return to_float(gi[g * H + j]) + rh[g * U] + bias(g); };
        const bool on = a.lens == nullptr || t < a.lens[row];
        const float hp = cx.ld_l2(SH + oh);
        float h2, c2 = 0.f, cp = 0.f, w0 = 0.f, w1 = 0.f, w2 = 0.f, w3 = 0.f;
        if (KIND == kLstm) {
          w0 = pre(0); w1 = pre(1); w2 = pre(2); w3 = pre(3);
          cp = SC[oh];
          lstm_fwd(w0, w1, w2, w3, cp, c2, h2);
        } else if (KIND == kGru) {
          w0 = pre(0); w1 = pre(1); w2 = to_float(gi[2 * H + j]); w3 = rh[2 * U] + bias(2);
          h2 = gru_fwd(w0, w1, w2, w3, hp);
        } else {
          h2 = rnn_act(KIND, pre(0));
        }
        if (!on) {  // past its length a row keeps its state (forward) or has not started (reverse)
          h2 = hp; c2 = cp; w0 = w1 = w2 = w3 = 0.f;
        }
        DH[oh] = h2;
        st<T>(a.hs, t * BH + oh, h2);
        if (KIND == kLstm) {
          DC[oh] = c2;
          st<T>(a.cs, t * BH + oh, c2);
        }
        if (G > 1 && a.ws) {
          float* w = a.ws + (t * B + row) * 4 * H + j;
          w[0] = w0; w[H] = w1; w[2 * H] = w2; w[3 * H] = w3;
        }
      }
    }
    cx.grid_sync();  // the next step's R.h reads every unit of this one's state
  }
}

template <typename T, int KIND, class Ctx>
CF_DEV void persistent_backward(const PersistentArgs& a, Ctx& cx) {
  constexpr int G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1);
  const int64_t H = a.H, B = a.B, BH = B * H, GH = G * H, U = a.U, BC = a.BC, KC = a.KC, SW = persistent_stride(U),
                SX = KC + 1;
  const int NT = cx.threads(), tid = cx.thread();
  const int64_t j0 = cx.block() * U, nu = persistent_units(H, U, j0);
  float* Wsm = cx.shared();   // [r][u] = R[r][j0 + u]
  float* xs = Wsm + GH * SW;  // [b][k]: staged gate gradients
  float* red = xs + round_up(BC, kTileRows) * SX;
  const T* W = static_cast<const T*>(a.w);
  for (int64_t i = tid; i < GH * U; i += NT) {
    const int64_t r = i / U, u = i - r * U;
    Wsm[r * SW + u] = u < nu ? to_float(W[r * a.sw + j0 + u]) : 0.f;
  }
  const T *dout = static_cast<const T*>(a.dout), *hs = static_cast<const T*>(a.hs), *cs = static_cast<const T*>(a.cs);
  const T *h0 = static_cast<const T*>(a.h0), *c0 = static_cast<const T*>(a.c0);
  const int64_t first = a.reverse ? a.T - 1 : 0;
  float* direct = a.st + 4 * BH;
  for (int64_t s = 0; s < a.T; ++s) {
    const int64_t t = a.reverse ? s : a.T - 1 - s, p = a.reverse ? t + 1 : t - 1, src = s & 1;
    const float *SDH = a.st + src * BH, *SDC = a.st + (2 + src) * BH;
    float *NDH = a.st + (1 - src) * BH, *NDC = a.st + (3 - src) * BH;
    T* dgi = static_cast<T*>(a.dgi) + t * B * GH;
    cx.sync();  // this block's dh and dc of the step before are written
    for (int64_t i = tid; i < B * nu; i += NT) {  // the gate gradients of this block's units
      const int64_t b = i / nu, j = j0 + (i - b * nu), oh = b * H + j;
      const bool on = a.lens == nullptr || t < a.lens[b];
      float dh = SDH[oh];
      if (dout && on) dh += to_float(dout[t * BH + oh]);
      T* dg = dgi + b * GH;
      if (KIND == kLstm) {
        const float* w = a.ws + (t * B + b) * 4 * H + j;
        float gi_ = w[0], gf = w[H], gg = w[2 * H], go = w[3 * H], dcp;
        const float cp = t == first ? (c0 ? to_float(c0[oh]) : 0.f) : to_float(cs[p * BH + oh]);
        lstm_bwd(gi_, gf, gg, go, cp, dh, SDC[oh], dcp);
        if (!on) { gi_ = gf = gg = go = 0.f; dcp = SDC[oh]; }
        NDC[oh] = dcp;
        st<T>(dg, j, gi_); st<T>(dg, H + j, gf); st<T>(dg, 2 * H + j, gg); st<T>(dg, 3 * H + j, go);
      } else if (KIND == kGru) {
        const float* w = a.ws + (t * B + b) * 4 * H + j;
        const float hp = t == first ? (h0 ? to_float(h0[oh]) : 0.f) : to_float(hs[p * BH + oh]);
        float dr, dz, dn, dhn, dd;
        gru_bwd(w[0], w[H], w[2 * H], w[3 * H], hp, dh, dr, dz, dn, dhn, dd);
        if (!on) dr = dz = dn = dhn = 0.f;
        direct[oh] = dd;
        T* dgh = static_cast<T*>(a.dgh) + t * B * GH + b * GH;
        st<T>(dg, j, dr); st<T>(dg, H + j, dz); st<T>(dg, 2 * H + j, dn);
        st<T>(dgh, j, dr); st<T>(dgh, H + j, dz); st<T>(dgh, 2 * H + j, dhn);
      } else {
        float d = dh * rnn_act_grad(KIND, to_float(hs[t * BH + oh]));
        st<T>(dg, j, on ? d : 0.f);
      }
    }
    cx.grid_sync();  // dh_prev below reads every unit's gate gradients
    const T* DG = static_cast<const T*>(KIND == kGru ? a.dgh : a.dgi) + t * B * GH;
    for (int64_t b0 = 0; b0 < B; b0 += BC) {  // dh_prev[:, units] = dG R[:, units]
      const int64_t bc = B - b0 < BC ? B - b0 : BC, ks = persistent_split(persistent_tiles(bc, U), NT);
      float acc[kPersistentTiles][kTileRows][kTileCols] = {};
      for (int64_t r0 = 0; r0 < GH; r0 += KC) {
        const int64_t rc = GH - r0 < KC ? GH - r0 : KC;
        cx.sync();
        persistent_stage(cx, xs, SX, bc, KC, rc, DG + b0 * GH + r0, GH);
        cx.sync();
        persistent_dot(cx, acc, bc, U, ks, Wsm + r0 * SW, SW, xs, SX, rc);
      }
      persistent_reduce(cx, acc, bc, U, ks, red, [&](int64_t b, int64_t u, float v) {
        const int64_t row = b0 + b, oh = row * H + j0 + u;
        if (u >= nu) return;
        if (KIND == kGru) v += direct[oh];
        if (a.lens != nullptr && !(t < a.lens[row])) v = SDH[oh];  // outside its steps a row passes dh through
        NDH[oh] = v;
      });
    }
  }
}

}  // namespace crossfuse
