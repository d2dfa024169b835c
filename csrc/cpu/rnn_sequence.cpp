// Whole-sequence recurrence on CPU for rnn / lstm / gru layers (one layer, one direction): the input
// projection of all steps is one torch GEMM done before; here the time loop runs in C++, each step one fused
// pass (R.h GEMV tiles + gate math, OpenMP over hidden-unit blocks) from crossfuse/cell_cpu_small.h.
#include <algorithm>
#include <stdexcept>
#include <utility>
#include <vector>
#include "crossfuse/cell_cpu.h"
#include "crossfuse/cell_cpu_small.h"
#include "crossfuse/gemm_cpu.h"
#include "crossfuse/rnn_cpu.h"

namespace crossfuse {

void cell_step_range_cpu(const SmallCellArgs&, int64_t, int64_t);  // csrc/cpu/cell_step.cpp

// GRU's copy (its 3 gates padded to 4 with AVX-512) past one pass of rows only up to this hidden size: on the Xeon
// dev VM, forward T=50 B=32/64 H=512 1.17/0.97x -> 1.25/1.01x torch.nn's, but T=20 B=64 H=1024 0.99 -> 0.93x.
constexpr int64_t kGruPackMaxHidden = 512;

// Past one pass of rows too: there the row-dot GEMV's 4 x 3 tiles ran LSTM T=50 B=32 H=512 at 0.75x torch.nn's
// forward (packed: 0.94x), B=64 0.69x (0.84x), T=50 B=256 H=256 0.61x (0.87x); RNN T=50 B=256 H=256 0.66x (0.97x).
bool sequence_packs(int kind, int64_t T, int64_t B, int64_t H) {
  return T >= kPackMinSteps && (B <= kSmallMaxBatch || kind != kGru || H <= kGruPackMaxHidden);
}

namespace {
// (threads, this thread's index) inside a parallel region; (1, 0) without OpenMP.
std::pair<int64_t, int64_t> thread_slot() {
#if defined(_OPENMP)
  return {omp_get_num_threads(), omp_get_thread_num()};
#else
  return {1, 0};
#endif
}

// Lengths that never increase (a PackedSequence in its packed order): each step's active rows are then a prefix.
bool prefix_lengths(const int64_t* lengths, int64_t B) {
  bool ok = lengths != nullptr;
  for (int64_t b = 1; ok && b < B; ++b) ok = lengths[b] <= lengths[b - 1];
  return ok;
}

// The rows still going at step t: with prefix lengths, the first active_rows(...) of them.
int64_t active_rows(const int64_t* lengths, int64_t B, int64_t t) {
  int64_t rows = 0;
  while (rows < B && t < lengths[rows]) ++rows;
  return rows;
}

// Step t's input gates (its first row).
const float* seq_gi_at(const SeqArgs& s, int64_t t) {
  return s.gi_rows ? s.gi + s.gi_rows[t] * s.sgb : s.gi + t * s.sgt;
}

// Rows [b0, b1) of step t keep their state (past their length, or before it in reverse): hy = hx, cy = cx (zeros
// without one), no gates.
void carry_rows(const SeqArgs& s, int64_t t, const float* hx, const float* cx, int64_t b0, int64_t b1, int64_t j0,
                int64_t j1) {
  const int64_t H = s.H, BH = s.B * H;
  for (int64_t b = b0; b < b1; ++b) {
    float* hy = s.hs + t * BH + b * H;
    if (hx) std::copy(hx + b * H + j0, hx + b * H + j1, hy + j0); else std::fill(hy + j0, hy + j1, 0.f);
    if (s.cs) {
      float* cy = s.cs + t * BH + b * H;
      if (cx) std::copy(cx + b * H + j0, cx + b * H + j1, cy + j0); else std::fill(cy + j0, cy + j1, 0.f);
    }
    if (s.ws) {
      float* w = s.ws + t * 4 * BH + b * 4 * H;
      for (int k = 0; k < 4; ++k) std::fill(w + k * H + j0, w + k * H + j1, 0.f);
    }
  }
}

// Many rows: each thread takes its own rows through the whole sequence (a row's state never reads another's: no
// barrier), per step gh = h W_hh^T for them as one GEMM on the BLAS torch shares, then cell_cpu.h's gate math.
template <int KIND>
void sequence_by_rows(const SeqArgs& s, int threads, bool prefix) {
  const int64_t T = s.T, B = s.B, H = s.H, BH = B * H, GH = cell_gates(KIND) * H;
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    const auto [nt, id] = thread_slot();
    const int64_t per = (B + nt - 1) / nt, r0 = std::min(B, id * per), r1 = std::min(B, r0 + per);
    std::vector<float> gh(std::max<int64_t>(r1 - r0, 0) * GH);
    for (int64_t step = 0; step < T && r0 < r1; ++step) {
      const int64_t t = s.reverse ? T - 1 - step : step, p = s.reverse ? t + 1 : t - 1;
      const float* hx = step == 0 ? s.h0 : s.hs + p * BH;
      const float* cx = step == 0 ? s.c0 : (s.cs ? s.cs + p * BH : nullptr);
      const int64_t go = prefix ? std::clamp(active_rows(s.lengths, B, t), r0, r1) : r1;  // rows [r0, go) step
      if (hx && go > r0)
        sgemm_one_thread(go - r0, GH, H, 1.f, hx + r0 * H, H, 1, s.w_hh, 1, H, 0.f, gh.data(), GH);
      CellArgs a;
      a.kind = KIND; a.dtype = kFloat32; a.B = B; a.H = H; a.threads = 1;
      a.v[kGi] = View{const_cast<float*>(seq_gi_at(s, t)), s.sgb, 1};
      if (hx) a.v[kGh] = View{gh.data() - r0 * GH, GH, 1};  // indexed by the rows' own numbers
      a.v[kBih] = View{const_cast<float*>(s.b_ih), 0, 1};
      a.v[kBhh] = View{const_cast<float*>(s.b_hh), 0, 1};
      a.v[kHx] = View{const_cast<float*>(hx), H, 1};
      a.v[kCx] = View{const_cast<float*>(cx), H, 1};
      a.v[kHy] = View{s.hs + t * BH, H, 1};
      a.v[kCy] = View{s.cs ? s.cs + t * BH : nullptr, H, 1};
      a.v[kWs] = View{s.ws ? s.ws + t * 4 * BH : nullptr, 4 * H, 1};
      if (go > r0) cell_forward_rows<float, KIND>(a, r0, go);
      carry_rows(s, t, hx, cx, go, r1, 0, H);
      if (s.lengths && !prefix)  // unsorted lengths: the rows past theirs (computed above) keep their state
        for (int64_t b = r0; b < r1; ++b)
          if (t >= s.lengths[b]) carry_rows(s, t, hx, cx, b, b + 1, 0, H);
    }
  }
}
}  // namespace

// Whether the forward runs sequence_by_rows: with the BLAS torch shares, from 64 rows a thread (an RNN's, 32; 16
// where w_hh would not be packed: GRU past hidden 512). On the Xeon VM, forward vs torch.nn, row split against the
// packed GEMV: LSTM T=50 B=256 H=256 0.95x against 0.87x, T=50 B=128 H=256 0.88 / 0.81, T=20 B=128 H=512 0.87 /
// 0.89, but B=32 H=512 0.69 / 0.94 (every step's GEMM packs W_hh for few rows); GRU T=20 B=128 H=512 1.03 / 0.97,
// T=20 B=64 H=1024 0.99 / 0.93 (row-dot GEMV); RNN T=50 B=256 H=256 1.34 / 0.97, B=64 H=512 1.24 / 1.10, B=32 H=512
// 1.33 / 1.51.
bool rows_forward(int kind, int64_t B, bool pack, int threads) {
  const int64_t rows = B / std::max(threads, 1);
  return has_blas_sgemm() && (rows >= 64 || (cell_gates(kind) == 1 && rows >= 32) || (!pack && rows >= 16));
}

// One parallel region for the whole sequence: each thread owns a range of hidden-unit blocks for every step
// and the threads meet at one barrier per step (the next step reads every unit of this one's state), where a
// region per step would fork and join T times. (A split by batch rows, with no barrier, measured slower once
// the rows go through the GEMV in threes, which wants every row on each thread: 5-22% at B 4-8, H 128-256.)
void rnn_sequence_cpu(const SeqArgs& s) {
  const int64_t T = s.T, B = s.B, H = s.H, BH = B * H;
  const int64_t G = s.kind == kLstm ? 4 : (s.kind == kGru ? 3 : 1);
  // Over several steps, repack R by unit block once (each thread its own blocks), so that each step streams it
  // contiguously and sums whole vectors of units (an RNN's blocks of kRnnPackUnits as LSTM's 4 gates).
  const bool pack = sequence_packs(s.kind, T, B, H);
  const int64_t bu = pack && G == 1 ? kRnnPackUnits : kSmallUnits;  // units per block; a thread owns whole blocks
  const int64_t blocks = (H + bu - 1) / bu;
  const int threads = B * G * H * H >= kSmallParallelMacs && blocks >= 2 ? cpu_threads(s.threads) : 1;
  (void)threads;
  // GRU's 3 gates padded to 4 with AVX-512: its rows of 32 weights then run on the LSTM's 512-bit kernel (on the
  // Xeon dev VM, GRU forward T=100 B=8 H=256 3.5-3.6 ms against 4.25, T=100 B=16 H=512 25.7-26.2 against 28.9-29.1)
  const bool padded = pack && G == 3 && cpu_isa() >= 4;
  const int64_t GP = padded || G == 1 ? step_packed_gates(s.kind) : G;
  // With prefix lengths a step runs on its active rows alone and the others carry their state (random lengths:
  // about half the rows' work).
  const bool prefix = prefix_lengths(s.lengths, B);
  if (s.gi_rows && !prefix) throw std::invalid_argument("rnn_sequence: gi_rows needs lengths that never increase");
  if (rows_forward(s.kind, B, pack, cpu_threads(s.threads))) {
    dispatch_kind(s.kind, [&](auto k) { sequence_by_rows<decltype(k)::value>(s, cpu_threads(s.threads), prefix); });
    return;
  }
  const float* given = pack && s.w_packed && s.packed_gates == GP ? s.w_packed : nullptr;
  std::vector<float> packed(pack && !given ? blocks * H * GP * kSmallUnits : 0);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    const auto [nt, id] = thread_slot();
    const int64_t per = (blocks + nt - 1) / nt, j0 = std::min(H, id * per * bu), j1 = std::min(H, (id + 1) * per * bu);
    std::vector<uint8_t> active(s.lengths ? B : 0);
    if (pack && !given) {  // a thread reads only its own blocks: no barrier needed before the first step
      pack_units_cpu(s.w_hh, G, H, H, j0 / bu, (j1 + bu - 1) / bu, packed.data(), GP);
    }
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = s.reverse ? T - 1 - step : step, p = s.reverse ? t + 1 : t - 1;
      const int64_t rows = prefix ? active_rows(s.lengths, B, t) : B;  // the step's rows: the prefix, or all
      if (!prefix && s.lengths)  // a row past its length keeps its state (forward) or has not started (reverse)
        for (int64_t b = 0; b < B; ++b) active[b] = t < s.lengths[b];
      SmallCellArgs a;
      a.kind = s.kind; a.B = rows; a.I = 0; a.H = H;
      a.hx = step == 0 ? s.h0 : s.hs + p * BH;
      a.cx = step == 0 ? s.c0 : (s.cs ? s.cs + p * BH : nullptr);
      a.sh = a.sc = a.shy = a.scy = H;
      a.w_hh = s.w_hh; a.b_hh = s.b_hh; a.b_ih = s.b_ih;
      a.gi_pre = seq_gi_at(s, t); a.sgi = s.sgb;
      if (step + 1 < T) a.gi_next = seq_gi_at(s, s.reverse ? t - 1 : t + 1);
      a.hy = s.hs + t * BH;
      a.cy = s.cs ? s.cs + t * BH : nullptr;
      a.ws = s.ws ? s.ws + t * 4 * BH : nullptr; a.sws = 4 * H;
      a.active = s.lengths && !prefix ? active.data() : nullptr;
      a.w_packed = pack ? (given ? given : packed.data()) : nullptr;
      a.w_packed_padded = padded;
      if (step > 0 && j0 < j1)  // the other threads' units of the last state: in flight together, not one by one
        for (int64_t i = 0; i < BH; i += 16) __builtin_prefetch(a.hx + i, 0, 3);
      if (j0 < j1 && rows > 0) cell_step_range_cpu(a, j0, j1);
      if (j0 < j1) carry_rows(s, t, a.hx, a.cx, rows, B, j0, j1);  // past the prefix: this thread's units
#if defined(_OPENMP)
#pragma omp barrier
#endif
    }
  }
}

namespace {

// dh[b, k] = sum_g d[b, g] W[g, k] (+ add[b, k]) for k in [k0, k1): W row-major (GH, H); 16 columns x 4 rows of
// accumulators, each weight row slice loaded once per 4 batch rows.
CF_CPU_CLONES void rows_times_w(const float* d, int64_t B, int64_t GH, const float* W, int64_t H, int64_t k0,
                                int64_t k1, float* dh) {
  typedef float v8f __attribute__((vector_size(32)));
  auto ld = [](const float* p) { v8f v; __builtin_memcpy(&v, p, 32); return v; };
  auto st = [](float* p, v8f v) { __builtin_memcpy(p, &v, 32); };
  int64_t k = k0;
  for (; k + 16 <= k1; k += 16) {
    for (int64_t b0 = 0; b0 < B; b0 += 4) {
      const int64_t nb = std::min<int64_t>(4, B - b0);
      v8f acc[4][2] = {};
      for (int64_t g = 0; g < GH; ++g) {
        const v8f w0 = ld(W + g * H + k), w1 = ld(W + g * H + k + 8);
        for (int64_t b = 0; b < 4; ++b) {
          if (b < nb) {
            const float s = d[(b0 + b) * GH + g];
            acc[b][0] += w0 * s;
            acc[b][1] += w1 * s;
          }
        }
      }
      for (int64_t b = 0; b < nb; ++b) {
        st(dh + (b0 + b) * H + k, acc[b][0]);
        st(dh + (b0 + b) * H + k + 8, acc[b][1]);
      }
    }
  }
  for (; k < k1; ++k)
    for (int64_t b = 0; b < B; ++b) {
      float acc = 0.f;
      for (int64_t g = 0; g < GH; ++g) acc += d[b * GH + g] * W[g * H + k];
      dh[b * H + k] = acc;
    }
}

#if CF_X86_CLONES
// rows_times_w with 512-bit vectors: NB rows x 64 columns (4 vectors) of accumulators, each weight row slice
// loaded once per NB rows and the row's factor broadcast into the multiply-adds. The 256-bit tiles above ran the
// LSTM backward's dh = dG W_hh at about half the forward recurrence's speed (65 us a step at B=8 H=256).
template <int NB>
__attribute__((target("arch=x86-64-v4"))) void rows_times_w64(const float* d, int64_t GH, const float* W, int64_t H,
                                                              int64_t k, float* dh) {
  typedef float v16f __attribute__((vector_size(64)));
  auto ld = [](const float* p) { v16f v; __builtin_memcpy(&v, p, 64); return v; };
  v16f acc[NB][4] = {};
  for (int64_t g = 0; g < GH; ++g) {
    const float* w = W + g * H + k;
    const v16f w0 = ld(w), w1 = ld(w + 16), w2 = ld(w + 32), w3 = ld(w + 48);
    for (int b = 0; b < NB; ++b) {
      const float s = d[b * GH + g];
      acc[b][0] += w0 * s;
      acc[b][1] += w1 * s;
      acc[b][2] += w2 * s;
      acc[b][3] += w3 * s;
    }
  }
  for (int b = 0; b < NB; ++b)
    for (int v = 0; v < 4; ++v) __builtin_memcpy(dh + b * H + k + 16 * v, &acc[b][v], 64);
}

// The columns [k0, k1) of dh = d W: 64-column blocks on the 512-bit tiles where the level allows, the rest on
// rows_times_w.
void rows_times_w_any(const float* d, int64_t B, int64_t GH, const float* W, int64_t H, int64_t k0, int64_t k1,
                      float* dh) {
  if (cpu_isa() >= 4) {
    for (; k0 + 64 <= k1; k0 += 64)
      for (int64_t b = 0; b < B; b += 4) {
        const float* db = d + b * GH;
        float* out = dh + b * H;
        switch (std::min<int64_t>(4, B - b)) {
          case 1: rows_times_w64<1>(db, GH, W, H, k0, out); break;
          case 2: rows_times_w64<2>(db, GH, W, H, k0, out); break;
          case 3: rows_times_w64<3>(db, GH, W, H, k0, out); break;
          default: rows_times_w64<4>(db, GH, W, H, k0, out); break;
        }
      }
  }
  if (k0 < k1) rows_times_w(d, B, GH, W, H, k0, k1, dh);
}
#else
inline void rows_times_w_any(const float* d, int64_t B, int64_t GH, const float* W, int64_t H, int64_t k0,
                             int64_t k1, float* dh) {
  rows_times_w(d, B, GH, W, H, k0, k1, dh);
}
#endif

// Gate backward of step t for rows [b0, b1): writes dgi/dgh rows, the direct dh (GRU) into dh_direct and dc_prev
// (LSTM); inactive rows get zero gates. `zeros`: H zeros, the state before the first step when none is given.
template <int KIND>
CF_CPU_CLONES void gates_backward(const SeqBwdArgs& s, int64_t t, const float* dh_t, const float* dc, const float* hprev,
                                  const float* cprev, const uint8_t* active, float* dh_direct, float* dc_prev,
                                  const float* zeros, int64_t b0, int64_t b1) {
  const int64_t H = s.H, G = KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1), GH = G * H, BH = s.B * H;
  for (int64_t b = b0; b < b1; ++b) {
    float* dgi = s.dgi + t * s.B * GH + b * GH;
    float* dgh = KIND == kGru ? s.dgh + t * s.B * GH + b * GH : nullptr;
    const float* dh = dh_t + b * H;
    if (active && !active[b]) {
      std::fill(dgi, dgi + GH, 0.f);
      if (dgh) std::fill(dgh, dgh + GH, 0.f);
      if (KIND == kGru) std::fill(dh_direct + b * H, dh_direct + (b + 1) * H, 0.f);
      if (KIND == kLstm) std::copy(dc + b * H, dc + (b + 1) * H, dc_prev + b * H);
      continue;
    }
    // On the span functions, whose __restrict lets the loops vectorise (written with the row pointers here, they
    // ran scalar: the LSTM's gate backward took as long as its dh = dG W_hh, T=100 B=8 H=256 backward 4.4 ms).
    if (KIND == kLstm) {
      std::copy(s.ws + t * 4 * BH + b * 4 * H, s.ws + t * 4 * BH + (b + 1) * 4 * H, dgi);  // the saved gates stay
      detail::lstm_bwd_span(dgi, dgi + H, dgi + 2 * H, dgi + 3 * H, cprev ? cprev + b * H : zeros, dh, dc + b * H,
                            dc_prev + b * H, H);
    } else if (KIND == kGru) {
      detail::gru_bwd_span(s.ws + t * 4 * BH + b * 4 * H, hprev ? hprev + b * H : zeros, dh, dgi, dgh,
                           dh_direct + b * H, H);
    } else {
      detail::rnn_bwd_span<KIND>(s.hs + t * BH + b * H, dh, dgi, H);
    }
  }
}

// Whether a thread's rows of dh = dG W_hh (W_hh: GH x H) run as one GEMM on the BLAS torch shares: the 4-row tiles
// stream W_hh from L2 once per 4 rows (or from memory, once it outgrows L2), where the GEMM keeps blocks of it in
// cache. LSTM reverse-time loop on the Xeon VM, T=100: B=8 H=512 18.8 -> 13.8 ms, B=16 H=512 39 -> 18.3 ms, B=4
// H=256 1.84 -> 1.57 ms, T=50 B=64 H=512 82 -> 26 ms; 4 rows of a W_hh up to 1 MB stay on the tiles (B=8 H=256
// 1.95 ms against 2.03, H=128 0.53 against 0.59). Without that BLAS, crossfuse's GEMM would repack W_hh every step.
bool rows_gemm(int64_t rows, int64_t GH, int64_t H) {
  return has_blas_sgemm() && rows > 0 && (rows != 4 || GH * H > (int64_t(1) << 18));
}

// One parallel region for the whole reverse-time loop, split by rows where each thread gets two or more, with
// no barrier (a row's gradients never read another row's); else the gate math by rows and dh_prev = dG R by
// columns, with a barrier after each.
template <int KIND>
void sequence_backward(const SeqBwdArgs& s) {
  const int64_t T = s.T, B = s.B, H = s.H, BH = B * H, GH = (KIND == kLstm ? 4 : (KIND == kGru ? 3 : 1)) * H;
  std::vector<float> dh(BH), dh_t(BH), dh_next(BH), direct(BH), zeros(H), dcs[2] = {std::vector<float>(BH),
                                                                                   std::vector<float>(BH)};
  if (s.dhT) std::copy(s.dhT, s.dhT + BH, dh.begin());
  if (s.dcT) std::copy(s.dcT, s.dcT + BH, dcs[0].begin());
  const int64_t first = s.reverse ? T - 1 : 0;
  const int threads = BH * GH >= (1 << 15) ? cpu_threads(s.threads) : 1;
  const bool by_rows = threads > 1 && B >= 2 * threads;
  // With prefix lengths dh = dG W_hh runs on a step's active rows alone (the others' dh carries over unread).
  const bool prefix = prefix_lengths(s.lengths, B);
#if defined(_OPENMP)
#pragma omp parallel num_threads(threads) if (threads > 1)
#endif
  {
    const auto [nt, id] = thread_slot();
    const int64_t bb = (B + nt - 1) / nt, r0 = std::min(B, id * bb), r1 = std::min(B, r0 + bb);
    const int64_t kk = by_rows ? H : ((H + nt - 1) / nt + 15) / 16 * 16, k0 = by_rows ? 0 : std::min(H, id * kk),
                  k1 = std::min(H, k0 + kk);
    std::vector<uint8_t> active(s.lengths ? B : 0);
    auto sync = [&] {
#if defined(_OPENMP)
      if (!by_rows) {
#pragma omp barrier
      }
#endif
    };
    for (int64_t step = 0; step < T; ++step) {
      const int64_t t = s.reverse ? step : T - 1 - step, p = s.reverse ? t + 1 : t - 1;
      const float* hprev = t == first ? s.h0 : s.hs + p * BH;
      const float* cprev = t == first ? s.c0 : (s.cs ? s.cs + p * BH : nullptr);
      const float* dc = dcs[step % 2].data();
      float* dc_prev = dcs[(step + 1) % 2].data();
      if (s.lengths)
        for (int64_t b = 0; b < B; ++b) active[b] = t < s.lengths[b];
      for (int64_t b = r0; b < r1; ++b) {
        const bool on = !s.lengths || active[b];
        for (int64_t j = 0; j < H; ++j)
          dh_t[b * H + j] = dh[b * H + j] + (on && s.dout ? s.dout[t * BH + b * H + j] : 0.f);
      }
      if (r0 < r1)
        gates_backward<KIND>(s, t, dh_t.data(), dc, hprev, cprev, s.lengths ? active.data() : nullptr,
                             direct.data(), dc_prev, zeros.data(), r0, r1);
      sync();
      const float* dgh = KIND == kGru ? s.dgh + t * B * GH : s.dgi + t * B * GH;
      const int64_t rows = prefix ? active_rows(s.lengths, B, t) : B;
      if (by_rows) {
        const int64_t r1a = std::min(r1, rows);
        if (rows_gemm(r1a - r0, GH, H))
          sgemm_one_thread(r1a - r0, H, GH, 1.f, dgh + r0 * GH, GH, 1, s.w_hh, H, 1, 0.f, dh_next.data() + r0 * H, H);
        else if (r0 < r1a)
          rows_times_w_any(dgh + r0 * GH, r1a - r0, GH, s.w_hh, H, 0, H, dh_next.data() + r0 * H);
      } else if (k0 < k1 && rows > 0) {
        rows_times_w_any(dgh, rows, GH, s.w_hh, H, k0, k1, dh_next.data());
      }
      sync();
      for (int64_t b = r0; b < r1; ++b) {
        const bool on = !s.lengths || active[b];
        for (int64_t j = 0; j < H; ++j) {
          const int64_t i = b * H + j;
          dh[i] = on ? dh_next[i] + (KIND == kGru ? direct[i] : 0.f) : dh_t[i];
        }
      }
    }
  }
  if (s.dh0) std::copy(dh.begin(), dh.end(), s.dh0);
  if (s.dc0 && KIND == kLstm) std::copy(dcs[T % 2].begin(), dcs[T % 2].end(), s.dc0);
}

}  // namespace

void rnn_sequence_backward_cpu(const SeqBwdArgs& s) {
  dispatch_kind(s.kind, [&](auto k) { sequence_backward<decltype(k)::value>(s); });
}

}  // namespace crossfuse
