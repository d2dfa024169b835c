// crossfuse._C: the C++/CUDA kernels. No libtorch: Python passes pointers, sizes, strides, dtype codes
// and the CUDA stream; tensors are allocated by torch on the Python side.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <algorithm>
#include <vector>
#if defined(__linux__)
#include <sys/mman.h>
#endif
#include "crossfuse/cell.h"
#include "crossfuse/cell_cpu_small.h"
#include "crossfuse/cell_step_cuda.h"
#include "crossfuse/contrastive_cpu.h"
#include "crossfuse/cpu_isa.h"
#include "crossfuse/fusions_cpu.h"
#include "crossfuse/gemm_cpu.h"
#include "crossfuse/rnn_cpu.h"
#include "crossfuse/rnn_persistent.h"

#ifdef CROSSFUSE_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;
using namespace crossfuse;

namespace crossfuse {
void rnn_cell_cpu(const CellArgs&, bool);
void lstm_cell_cpu(const CellArgs&, bool);
void gru_cell_cpu(const CellArgs&, bool);
void cell_step_cpu(const SmallCellArgs&);
void rnn_persistent_emulate_cpu(int kind, int dtype, const PersistentArgs& a, bool backward, int nthreads);
void rnn_sequence_cpu(const SeqArgs&);
void rnn_sequence_backward_cpu(const SeqBwdArgs&);
void cell_step_emulate_cpu(int kind, int dtype, const StepArgs& a, int nthreads);
#ifdef CROSSFUSE_WITH_CUDA
void cell_step_cuda(int kind, int dtype, const StepArgs& a, cudaStream_t stream);
void rnn_cell_cuda(const CellArgs&, bool, cudaStream_t);
void lstm_cell_cuda(const CellArgs&, bool, cudaStream_t);
void gru_cell_cuda(const CellArgs&, bool, cudaStream_t);
void rnn_persistent_cuda(int kind, int dtype, const PersistentArgs& a, bool backward, cudaStream_t stream);
void rnn_persistent_limits_cuda(int64_t& sms, int64_t& smem, bool& cooperative);
#endif
}  // namespace crossfuse

namespace {

// slots: 3 ints per CellSlot (data pointer, row stride, column stride); pointer 0 = absent.
CellArgs make_cell_args(int kind, int dtype, int64_t B, int64_t H, bool backward, const std::vector<int64_t>& slots) {
  if (slots.size() != 3 * kNumCellSlots)
    throw std::invalid_argument("crossfuse cell: expected " + std::to_string(3 * kNumCellSlots) + " slot values, got " +
                                std::to_string(slots.size()));
  if (B < 0 || H < 0) throw std::invalid_argument("crossfuse cell: negative size");
  if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("crossfuse cell: wrong kind " + std::to_string(kind));
  CellArgs a;
  a.kind = kind; a.dtype = dtype; a.B = B; a.H = H;
  for (int s = 0; s < kNumCellSlots; ++s)
    a.v[s] = View{reinterpret_cast<void*>(slots[3 * s]), slots[3 * s + 1], slots[3 * s + 2]};
  // What every kernel dereferences without checking; absent states and biases read as zeros.
  std::vector<int> need = backward ? std::vector<int>{kDgi} : std::vector<int>{kGi, kHy};
  if (backward && (kind == kLstm || kind == kGru)) need.push_back(kWs);
  if (backward && kind < kLstm) need.push_back(kHy);
  if (backward && kind == kGru) need.push_back(kDgh);
  if (!backward && kind == kLstm) need.push_back(kCy);
  if (B * H > 0)
    for (int s : need)
      if (!a.v[s].present()) throw std::invalid_argument("crossfuse cell: missing argument slot " + std::to_string(s));
  return a;
}

// The persistent recurrence (crossfuse/rnn_persistent.h): plan = (T, B, H, U, blocks, BC, KC); p = (gi, sgt, sgb,
// w, sw, bhh, lens, hs, cs, ws, st, dout, h0, c0, dgi, dgh), pointers 0 = absent, strides in elements.
PersistentArgs make_persistent_args(int kind, int dtype, bool backward, const std::vector<int64_t>& plan, bool reverse,
                                    const std::vector<int64_t>& p, int nthreads) {
  if (plan.size() != 7 || p.size() != 16)
    throw std::invalid_argument("rnn_persistent: expected 7 plan values and 16 pointers or strides");
  if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("rnn_persistent: wrong kind " + std::to_string(kind));
  if (dtype < kFloat32 || dtype > kBFloat16) throw std::invalid_argument("rnn_persistent: wrong dtype code");
  PersistentArgs a;
  a.T = plan[0]; a.B = plan[1]; a.H = plan[2]; a.U = plan[3]; a.blocks = plan[4]; a.BC = plan[5]; a.KC = plan[6];
  if (a.T < 0 || a.B <= 0 || a.H <= 0 || a.U <= 0 || a.BC <= 0 || a.KC <= 0 || a.blocks * a.U < a.H ||
      (a.blocks - 1) * a.U >= a.H ||
      nthreads <= 0 || nthreads > 1024 ||
      persistent_tiles(a.BC, cell_gates(kind) * a.U) > int64_t(kPersistentTiles) * nthreads)
    throw std::invalid_argument("rnn_persistent: inconsistent plan for " + std::to_string(nthreads) + " threads");
  auto q = [&](int i) { return reinterpret_cast<void*>(p[i]); };
  a.reverse = reverse;
  a.gi = q(0); a.sgt = p[1]; a.sgb = p[2]; a.w = q(3); a.sw = p[4]; a.bhh = q(5);
  a.lens = static_cast<const int64_t*>(q(6)); a.hs = q(7); a.cs = q(8); a.ws = static_cast<float*>(q(9));
  a.st = static_cast<float*>(q(10)); a.dout = q(11); a.h0 = q(12); a.c0 = q(13); a.dgi = q(14); a.dgh = q(15);
  const bool gated = kind == kLstm || kind == kGru;
  const bool ok = a.w && a.hs && a.st && (kind != kLstm || a.cs) &&
                  (backward ? a.dgi && (!gated || a.ws) && (kind != kGru || a.dgh) : a.gi != nullptr);
  if (!ok) throw std::invalid_argument("rnn_persistent: missing pointer");
  return a;
}

template <void (*F)(const CellArgs&, bool)>
void cpu_entry(int kind, int dtype, int64_t B, int64_t H, bool backward, const std::vector<int64_t>& slots,
               int nthreads) {
  CellArgs a = make_cell_args(kind, dtype, B, H, backward, slots);
  a.threads = nthreads;
  if (B * H == 0) return;
  py::gil_scoped_release nogil;
  F(a, backward);
}

#ifdef CROSSFUSE_WITH_CUDA
template <void (*F)(const CellArgs&, bool, cudaStream_t)>
void cuda_entry(int kind, int dtype, int64_t B, int64_t H, bool backward, const std::vector<int64_t>& slots,
                uintptr_t stream) {
  CellArgs a = make_cell_args(kind, dtype, B, H, backward, slots);
  if (B * H == 0) return;
  F(a, backward, reinterpret_cast<cudaStream_t>(stream));
}
#endif

// The single-launch cell step's arguments (crossfuse/cell_step_cuda.h): pointers x, hx, cx, w_ih, w_hh, b_ih, b_hh,
// hy, cy (0 = absent) and the row strides of x, hx, cx.
StepArgs make_step_args(int kind, int dtype, int64_t B, int64_t I, int64_t H, const std::vector<uintptr_t>& p,
                        const std::vector<int64_t>& strides) {
  if (p.size() != 9 || strides.size() != 3) throw std::invalid_argument("cell_step: expected 9 pointers and 3 strides");
  if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("cell_step: wrong kind");
  if (dtype < kFloat32 || dtype > kBFloat16) throw std::invalid_argument("cell_step: wrong dtype code");
  if (B < 0 || B > kStepMaxBatch || I < 0 || H < 0)
    throw std::invalid_argument("cell_step: batch must be in [0, " + std::to_string(kStepMaxBatch) + "]");
  if (B * H > 0 && (!p[0] || !p[3] || !p[7] || (p[1] && !p[4]) || (kind == kLstm && !p[8])))
    throw std::invalid_argument("cell_step: missing pointer");
  StepArgs a;
  a.B = B; a.I = I; a.H = H;
  auto c = [](uintptr_t q) { return reinterpret_cast<const void*>(q); };
  a.x = c(p[0]); a.hx = c(p[1]); a.cx = c(p[2]); a.w_ih = c(p[3]); a.w_hh = c(p[4]); a.b_ih = c(p[5]); a.b_hh = c(p[6]);
  a.hy = reinterpret_cast<void*>(p[7]); a.cy = reinterpret_cast<void*>(p[8]);
  a.sx = strides[0]; a.sh = strides[1]; a.sc = strides[2];
  return a;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "crossfuse native kernels";
  const char* sig = "kind, dtype, B, H, backward, slots, nthreads";
  auto cpu = m.def_submodule("cpu", "CPU kernels");
  // Every CPU entry with a parallel region takes `nthreads` last: Python passes torch.get_num_threads() (0 would
  // mean OpenMP's default), so that torch.set_num_threads governs crossfuse too, in every thread.
  cpu.def("rnn_cell", &cpu_entry<rnn_cell_cpu>, sig);
  cpu.def("lstm_cell", &cpu_entry<lstm_cell_cpu>, sig);
  cpu.def("gru_cell", &cpu_entry<gru_cell_cpu>, sig);
  cpu.attr("cell_step_max_batch") = kSmallStepMaxBatch;
  // fp32, rows contiguous: GEMVs and gate math in one call. Pointers 0 = absent; ws (B, 4H) contiguous receives the
  // activated gates for the backward (LSTM i f g o, GRU r z n hn), as the gate kernels' forward writes them.
  cpu.def("cell_step", [](int kind, int64_t B, int64_t I, int64_t H, uintptr_t x, int64_t sx, uintptr_t hx, int64_t sh,
                          uintptr_t cx, int64_t sc, uintptr_t w_ih, uintptr_t w_hh, uintptr_t b_ih, uintptr_t b_hh,
                          uintptr_t w_ih_packed, uintptr_t w_hh_packed, uintptr_t hy, int64_t shy, uintptr_t cy,
                          int64_t scy, uintptr_t ws, int nthreads) {
    if (B < 0 || B > kSmallStepMaxBatch || I < 0 || H < 0)
      throw std::invalid_argument("cell_step: batch must be in [0, " + std::to_string(kSmallStepMaxBatch) + "]");
    if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("cell_step: wrong kind");
    if (B * H > 0 && (!x || !w_ih || !hy || (hx && !w_hh) || (kind == kLstm && !cy)))
      throw std::invalid_argument("cell_step: missing pointer");
    SmallCellArgs a;
    a.kind = kind; a.B = B; a.I = I; a.H = H;
    auto f = [](uintptr_t p) { return reinterpret_cast<const float*>(p); };
    a.x = f(x); a.hx = f(hx); a.cx = f(cx); a.w_ih = f(w_ih); a.w_hh = f(w_hh); a.b_ih = f(b_ih); a.b_hh = f(b_hh);
    a.hy = reinterpret_cast<float*>(hy); a.cy = reinterpret_cast<float*>(cy);
    a.sx = sx; a.sh = sh; a.sc = sc; a.shy = shy; a.scy = scy; a.threads = nthreads;
    if (kind == kLstm || kind == kGru) {
      a.ws = reinterpret_cast<float*>(ws); a.sws = 4 * H;
    }
    a.w_ih_packed = f(w_ih_packed); a.w_packed = f(w_hh_packed);
    if (B * H == 0) return;
    py::gil_scoped_release nogil;
    cell_step_cpu(a);
  });
  // A cell weight (G*H, K), row-major, repacked by blocks of hidden units (8 of each gate; an RNN's 32) for
  // cell_step (w_ih_packed / w_hh_packed) and rnn_sequence (w_packed) of a `kind`: out holds
  // cell_packed_floats(kind, H, K) floats.
  cpu.def("pack_cell_weight", [](int kind, int64_t H, int64_t K, uintptr_t w, uintptr_t out) {
    if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("pack_cell_weight: wrong kind");
    if (H < 0 || K < 0) throw std::invalid_argument("pack_cell_weight: negative size");
    if (H * K > 0 && (!w || !out)) throw std::invalid_argument("pack_cell_weight: missing pointer");
    py::gil_scoped_release nogil;
    const int64_t bu = packed_block_units(kind);
    pack_units_cpu(reinterpret_cast<const float*>(w), kind == kLstm ? 4 : (kind == kGru ? 3 : 1), H, K, 0,
                   (H + bu - 1) / bu, reinterpret_cast<float*>(out), step_packed_gates(kind));
  });
  cpu.def("cell_packed_gates", [](int kind) { return step_packed_gates(kind); });
  // floats in pack_cell_weight's `out`
  cpu.def("cell_packed_floats", [](int kind, int64_t H, int64_t K) { return packed_floats(kind, H, K); });
  // whether rnn_sequence runs on a packed w_hh (and takes w_packed) for these sizes and threads
  cpu.def("sequence_packs", [](int kind, int64_t T, int64_t B, int64_t H, int threads) {
    const bool pack = sequence_packs(kind, T, B, H);
    return pack && !rows_forward(kind, B, pack, cpu_threads(threads));
  });
  cpu.attr("cell_pass_rows") = kSmallMaxBatch;  // batch rows per pass over a block's weights (GRU's copies: up to it)
  // The cuda backend's single-launch cell step run on host threads (a test double: `nthreads` threads per block).
  cpu.def("cell_step_emulate", [](int kind, int dtype, int64_t B, int64_t I, int64_t H, const std::vector<uintptr_t>& p,
                                  const std::vector<int64_t>& strides, int nthreads) {
    StepArgs a = make_step_args(kind, dtype, B, I, H, p, strides);
    if (nthreads < 1 || nthreads > 1024) throw std::invalid_argument("cell_step_emulate: nthreads in [1, 1024]");
    py::gil_scoped_release nogil;
    cell_step_emulate_cpu(kind, dtype, a, nthreads);
  });
  m.attr("cell_step_max_batch") = kStepMaxBatch;
  // One layer, one direction, fp32: the time loop of rnn/lstm/gru (kind as in cell_step). gi (T, B, G*H) holds the
  // input gates x W_ih^T (b_ih folded in, or passed to be added per step); hs/cs (T, B, H) receive the states,
  // ws (T, B, 4H) the activated gates; w_packed (0 = none): w_hh already packed, packed_gates gates per k;
  // gi_rows (0 = none; lengths that never increase): gi holds only the rows going at each step (SeqArgs).
  cpu.def("rnn_sequence", [](int kind, int64_t T, int64_t B, int64_t H, uintptr_t gi, int64_t sgt, int64_t sgb,
                             uintptr_t w_hh, uintptr_t b_ih, uintptr_t b_hh, uintptr_t h0, uintptr_t c0,
                             uintptr_t lengths, bool reverse, uintptr_t hs, uintptr_t cs, uintptr_t ws,
                             int nthreads, uintptr_t w_packed, int64_t packed_gates, uintptr_t gi_rows) {
    if (T < 0 || B < 0 || H < 0) throw std::invalid_argument("rnn_sequence: negative size");
    if (gi_rows && !lengths) throw std::invalid_argument("rnn_sequence: gi_rows needs lengths");
    if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("rnn_sequence: wrong kind");
    if (T * B * H > 0 && (!gi || !w_hh || !hs || (kind == kLstm && !cs)))
      throw std::invalid_argument("rnn_sequence: missing pointer");
    SeqArgs s;
    s.kind = kind; s.T = T; s.B = B; s.H = H;
    auto f = [](uintptr_t p) { return reinterpret_cast<const float*>(p); };
    s.gi = f(gi); s.sgt = sgt; s.sgb = sgb; s.w_hh = f(w_hh); s.b_ih = f(b_ih); s.b_hh = f(b_hh);
    s.h0 = f(h0); s.c0 = f(c0);
    s.lengths = reinterpret_cast<const int64_t*>(lengths);
    s.reverse = reverse;
    s.hs = reinterpret_cast<float*>(hs); s.cs = reinterpret_cast<float*>(cs); s.ws = reinterpret_cast<float*>(ws);
    s.threads = nthreads;
    s.w_packed = f(w_packed); s.packed_gates = packed_gates;
    s.gi_rows = reinterpret_cast<const int64_t*>(gi_rows);
    if (T * B * H == 0) return;
    py::gil_scoped_release nogil;
    rnn_sequence_cpu(s);
  });
  // Product pooling (crossfuse/fusions_cpu.h): sizes, flags, z's row stride and second-stage offset, then pointers u0, u1, v0, v1, z, dz, du0, du1, dv0,
  // dv1, b0, b1, c0, c1 (0 = absent; v0/v1 only for a second stage; z for the forward, dz and du/dv for the
  // backward; the biases of u0, u1, v0, v1).
  cpu.def("product_pool", [](int64_t G, int64_t N, int64_t S, int64_t R, int64_t rep0, int64_t rep1,
                             bool rank_major, bool relu, bool backward, int64_t zs, int64_t z2,
                             const std::vector<uintptr_t>& p, int nthreads) {
    if (p.size() != 14) throw std::invalid_argument("product_pool: expected 14 pointers");
    if (G < 0 || N < 0 || S < 0 || R < 0 || rep0 < 1 || rep1 < 1 || (rep0 > 1 && rep1 > 1) ||
        (N % rep0) || (N % rep1))
      throw std::invalid_argument("product_pool: bad sizes");
    PoolArgs a;
    a.G = G; a.N = N; a.S = S; a.R = R; a.rep0 = rep0; a.rep1 = rep1; a.rank_major = rank_major; a.relu = relu;
    a.zs = zs; a.z2 = z2; a.threads = nthreads;
    auto c = [](uintptr_t q) { return reinterpret_cast<const float*>(q); };
    auto w = [](uintptr_t q) { return reinterpret_cast<float*>(q); };
    a.u0 = c(p[0]); a.u1 = c(p[1]); a.v0 = c(p[2]); a.v1 = c(p[3]); a.z = w(p[4]); a.dz = c(p[5]);
    a.du0 = w(p[6]); a.du1 = w(p[7]); a.dv0 = w(p[8]); a.dv1 = w(p[9]);
    a.b0 = c(p[10]); a.b1 = c(p[11]); a.c0 = c(p[12]); a.c1 = c(p[13]);
    const bool two = a.v0 != nullptr;
    if (G * N * S * R == 0) return;
    if (!a.u0 || !a.u1 || (two && !a.v1) || (!backward && !a.z) ||
        (backward && (!a.dz || !a.du0 || !a.du1 || (two && (!a.dv0 || !a.dv1)))))
      throw std::invalid_argument("product_pool: missing pointer");
    py::gil_scoped_release nogil;
    product_pool_cpu(a, backward);
  });
  // The projections with the pooling, whole groups per thread (crossfuse/fusions_cpu.h PoolGemmArgs): sizes,
  // flags, z's row stride and second-stage offset, then pointers x0, x1, w[4], keep[4], z, dz, dx0, dx1, dw[4],
  // db[4], b0, b1, c0, c1 (0 = absent).
  cpu.def("product_pool_grouped", [](int64_t G, int64_t N, int64_t S, int64_t R, int64_t rep0, int64_t rep1,
                                     int64_t K0, int64_t K1, bool rank_major, bool relu, bool backward, int64_t zs,
                                     int64_t z2, const std::vector<uintptr_t>& p, int nthreads) {
    if (p.size() != 26) throw std::invalid_argument("product_pool_grouped: expected 26 pointers");
    if (G < 0 || N < 0 || S < 0 || R < 0 || K0 < 1 || K1 < 1 || rep0 < 1 || rep1 < 1 || (rep0 > 1 && rep1 > 1) ||
        (N % rep0) || (N % rep1))
      throw std::invalid_argument("product_pool_grouped: bad sizes");
    auto c = [](uintptr_t q) { return reinterpret_cast<const float*>(q); };
    auto w = [](uintptr_t q) { return reinterpret_cast<float*>(q); };
    PoolGemmArgs g;
    PoolArgs& a = g.pool;
    a.G = G; a.N = N; a.S = S; a.R = R; a.rep0 = rep0; a.rep1 = rep1; a.rank_major = rank_major; a.relu = relu;
    a.zs = zs; a.z2 = z2; a.threads = nthreads;
    g.x0 = c(p[0]); g.x1 = c(p[1]); g.K0 = K0; g.K1 = K1;
    for (int k = 0; k < 4; ++k) {
      g.w[k] = c(p[2 + k]);
      g.keep[k] = w(p[6 + k]);
      g.dw[k] = w(p[14 + k]);
      g.db[k] = w(p[18 + k]);
    }
    a.z = w(p[10]); a.dz = c(p[11]); g.dx0 = w(p[12]); g.dx1 = w(p[13]);
    a.b0 = c(p[22]); a.b1 = c(p[23]); a.c0 = c(p[24]); a.c1 = c(p[25]);
    const int P = g.w[2] ? 2 : 1;
    if (G * N * S * R == 0) return;
    for (int k = 0; k < 2 * P; ++k)
      if (!g.w[k] || (backward && !g.keep[k])) throw std::invalid_argument("product_pool_grouped: missing pointer");
    if (!g.x0 || !g.x1 || (P == 2 && !g.w[3]) || (!backward && !a.z) || (backward && !a.dz))
      throw std::invalid_argument("product_pool_grouped: missing pointer");
    py::gil_scoped_release nogil;
    product_pool_grouped_cpu(g, backward);
  });
  // Signed square root and L2 normalisation over groups of columns (crossfuse/fusions_cpu.h): sizes, eps, then
  // pointers z and y forward; z, dy and dz backward (fp32, rows contiguous).
  cpu.def("signed_sqrt_normalize", [](int64_t N, int64_t C, int64_t groups, float eps, uintptr_t z, uintptr_t y,
                                      int nthreads) {
    if (N < 0 || C < 0 || groups < 1 || C % groups) throw std::invalid_argument("signed_sqrt_normalize: bad sizes");
    if (N * C == 0) return;
    if (!z || !y) throw std::invalid_argument("signed_sqrt_normalize: missing pointer");
    py::gil_scoped_release nogil;
    signed_sqrt_normalize_cpu(reinterpret_cast<const float*>(z), reinterpret_cast<float*>(y), N, C, groups, eps,
                              nthreads);
  });
  cpu.def("signed_sqrt_normalize_backward", [](int64_t N, int64_t C, int64_t groups, float eps, uintptr_t z,
                                               uintptr_t dy, uintptr_t dz, int nthreads) {
    if (N < 0 || C < 0 || groups < 1 || C % groups)
      throw std::invalid_argument("signed_sqrt_normalize_backward: bad sizes");
    if (N * C == 0) return;
    if (!z || !dy || !dz) throw std::invalid_argument("signed_sqrt_normalize_backward: missing pointer");
    py::gil_scoped_release nogil;
    signed_sqrt_normalize_backward_cpu(reinterpret_cast<const float*>(z), reinterpret_cast<const float*>(dy),
                                       reinterpret_cast<float*>(dz), N, C, groups, eps, nthreads);
  });
  // The contrastive losses' passes over a chunk of raw scores (crossfuse/contrastive_cpu.h): the kind (SigLIP or
  // CLIP), sizes, scale, bias, then pointers s, la, lb and the outputs (0 = no column statistics).
  auto chunk_args = [](bool siglip, int64_t r, int64_t n, int64_t ld, float scale, float bias, uintptr_t s,
                       uintptr_t la, uintptr_t lb, int nthreads) {
    if (r < 0 || n < 0 || ld < n) throw std::invalid_argument("contrastive_chunk: bad sizes");
    if (r * n && (!s || !la || !lb)) throw std::invalid_argument("contrastive_chunk: missing pointer");
    ContrastiveChunk c;
    c.s = reinterpret_cast<const float*>(s); c.r = r; c.n = n; c.ld = ld; c.scale = scale; c.bias = bias;
    c.la = reinterpret_cast<const int64_t*>(la); c.lb = reinterpret_cast<const int64_t*>(lb);
    c.threads = nthreads;
    c.siglip = siglip;
    return c;
  };
  cpu.def("contrastive_chunk_forward", [chunk_args](bool siglip, int64_t r, int64_t n, int64_t ld, float scale,
                                                    float bias, uintptr_t s, uintptr_t la, uintptr_t lb,
                                                    uintptr_t row, uintptr_t col, int nthreads) {
    const ContrastiveChunk c = chunk_args(siglip, r, n, ld, scale, bias, s, la, lb, nthreads);
    if (r && !row) throw std::invalid_argument("contrastive_chunk_forward: missing pointer");
    py::gil_scoped_release nogil;
    contrastive_chunk_forward_cpu(c, reinterpret_cast<float*>(row), reinterpret_cast<float*>(col));
  });
  cpu.def("contrastive_chunk_dscores", [chunk_args](bool siglip, int64_t r, int64_t n, int64_t ld, float scale,
                                                    float bias, uintptr_t s, uintptr_t la, uintptr_t lb, uintptr_t ds,
                                                    uintptr_t row_st, uintptr_t wr, int64_t nr, uintptr_t col_st,
                                                    uintptr_t wc, int64_t nc, float eps, int nthreads) {
    const ContrastiveChunk c = chunk_args(siglip, r, n, ld, scale, bias, s, la, lb, nthreads);
    if (r * n && (!ds || !row_st || !wr || (col_st && !wc)))
      throw std::invalid_argument("contrastive_chunk_dscores: missing pointer");
    py::gil_scoped_release nogil;
    contrastive_chunk_dscores_cpu(c, reinterpret_cast<float*>(ds), reinterpret_cast<const float*>(row_st),
                                  reinterpret_cast<const float*>(wr), nr, reinterpret_cast<const float*>(col_st),
                                  reinterpret_cast<const float*>(wc), nc, eps);
  });
  // Ask for transparent huge pages on the whole 2 MB pages inside [ptr, ptr + nbytes), before they are first
  // touched: a fresh buffer of tens of MB then faults in 2 MB at a time, where its 4 KB faults cost about as much
  // as a pass of the GEMM that fills it. False where nothing was advised (no such page inside, not Linux).
  cpu.def("advise_huge_pages", [](uintptr_t ptr, int64_t nbytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
    constexpr uintptr_t kHuge = uintptr_t(1) << 21;
    const uintptr_t end = ptr + uintptr_t(std::max<int64_t>(nbytes, 0));
    const uintptr_t lo = (ptr + kHuge - 1) & ~(kHuge - 1), hi = end & ~(kHuge - 1);
    return hi > lo && madvise(reinterpret_cast<void*>(lo), hi - lo, MADV_HUGEPAGE) == 0;
#else
    (void)ptr; (void)nbytes;
    return false;
#endif
  }, py::arg("ptr"), py::arg("nbytes"));
  // The x86 level the hand-written CPU kernels run at (crossfuse/cpu_isa.h): 4 AVX-512, 3 AVX2 + FMA, 0 baseline.
  cpu.def("isa", [] { return cpu_isa(); });
  cpu.def("isa_detected", [] { return cpu_isa_detected(); });
  cpu.def("is_intel", [] { return cpu_is_intel(); });
  cpu.def("set_isa_cap", [](int cap) { return set_cpu_isa_cap(cap); }, py::arg("cap"));
  // fp32 C = alpha A B + beta C (+ bias per column) (crossfuse/gemm_cpu.h): sizes, then each operand's pointer and
  // strides in elements, the bias pointer (0 = none).
  cpu.def("sgemm", [](int64_t M, int64_t N, int64_t K, float alpha, uintptr_t A, int64_t rsa, int64_t csa,
                      uintptr_t B, int64_t rsb, int64_t csb, float beta, uintptr_t C, int64_t ldc, uintptr_t bias,
                      int nthreads, bool generic) {
    if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("sgemm: negative size");
    if (M * N == 0) return;
    if (!C || (K > 0 && (!A || !B))) throw std::invalid_argument("sgemm: missing pointer");
    py::gil_scoped_release nogil;
    sgemm_cpu(M, N, K, alpha, reinterpret_cast<const float*>(A), rsa, csa, reinterpret_cast<const float*>(B), rsb,
              csb, beta, reinterpret_cast<float*>(C), ldc, reinterpret_cast<const float*>(bias), nthreads, generic);
  }, py::arg("M"), py::arg("N"), py::arg("K"), py::arg("alpha"), py::arg("A"), py::arg("rsa"), py::arg("csa"),
     py::arg("B"), py::arg("rsb"), py::arg("csb"), py::arg("beta"), py::arg("C"), py::arg("ldc"), py::arg("bias") = 0,
     py::arg("nthreads") = 0, py::arg("generic") = false);
  // A BLAS sgemm_ (Fortran interface) to run the single-threaded products through (crossfuse/gemm_cpu.h); 0 clears.
  cpu.def("set_blas_sgemm", [](uintptr_t f) { set_blas_sgemm(reinterpret_cast<BlasSgemm>(f)); }, py::arg("f"));
  cpu.def("has_blas_sgemm", [] { return has_blas_sgemm(); });
  // sgemm on the calling thread, through that BLAS where set (no bias): the arguments of sgemm above.
  cpu.def("sgemm_one_thread", [](int64_t M, int64_t N, int64_t K, float alpha, uintptr_t A, int64_t rsa, int64_t csa,
                                 uintptr_t B, int64_t rsb, int64_t csb, float beta, uintptr_t C, int64_t ldc) {
    if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("sgemm_one_thread: negative size");
    if (M * N == 0) return;
    if (!C || (K > 0 && (!A || !B))) throw std::invalid_argument("sgemm_one_thread: missing pointer");
    py::gil_scoped_release nogil;
    sgemm_one_thread(M, N, K, alpha, reinterpret_cast<const float*>(A), rsa, csa, reinterpret_cast<const float*>(B),
                     rsb, csb, beta, reinterpret_cast<float*>(C), ldc);
  });
  // Its backward: pointers as named in crossfuse/rnn_cpu.h SeqBwdArgs, all fp32 and contiguous, 0 = absent.
  cpu.def("rnn_sequence_backward", [](int kind, int64_t T, int64_t B, int64_t H, uintptr_t dout, uintptr_t dhT,
                                      uintptr_t dcT, uintptr_t hs, uintptr_t cs, uintptr_t ws, uintptr_t h0,
                                      uintptr_t c0, uintptr_t w_hh, uintptr_t lengths, bool reverse, uintptr_t dgi,
                                      uintptr_t dgh, uintptr_t dh0, uintptr_t dc0, int nthreads) {
    if (T < 0 || B < 0 || H < 0) throw std::invalid_argument("rnn_sequence_backward: negative size");
    if (kind < kRnnTanh || kind > kGru) throw std::invalid_argument("rnn_sequence_backward: wrong kind");
    if (T * B * H > 0 && (!hs || !w_hh || !dgi || ((kind == kLstm || kind == kGru) && !ws) ||
                          (kind == kGru && !dgh) || (kind == kLstm && !cs)))
      throw std::invalid_argument("rnn_sequence_backward: missing pointer");
    SeqBwdArgs s;
    auto f = [](uintptr_t p) { return reinterpret_cast<const float*>(p); };
    auto w = [](uintptr_t p) { return reinterpret_cast<float*>(p); };
    s.kind = kind; s.T = T; s.B = B; s.H = H;
    s.dout = f(dout); s.dhT = f(dhT); s.dcT = f(dcT); s.hs = f(hs); s.cs = f(cs); s.ws = f(ws); s.h0 = f(h0);
    s.c0 = f(c0); s.w_hh = f(w_hh); s.lengths = reinterpret_cast<const int64_t*>(lengths); s.reverse = reverse;
    s.dgi = w(dgi); s.dgh = w(dgh); s.dh0 = w(dh0); s.dc0 = w(dc0); s.threads = nthreads;
    if (T * B * H == 0) return;
    py::gil_scoped_release nogil;
    rnn_sequence_backward_cpu(s);
  });
  // The CUDA persistent recurrence's plan (None where R does not fit on-chip), and its bodies run on host threads
  // (a test double: `nthreads` host threads per block).
  m.def("rnn_persistent_plan", [](int G, int64_t B, int64_t H, int nthreads, int64_t smem_bytes, int64_t sms,
                                  int64_t min_units, int64_t max_kc) -> py::object {
    PersistentArgs a;
    if (!persistent_plan(G, B, H, nthreads, smem_bytes, sms, min_units, a, max_kc)) return py::none();
    return py::make_tuple(a.U, a.blocks, a.BC, a.KC, 4 * persistent_smem_floats(G, H, a.U, a.BC, a.KC, nthreads));
  });
  m.attr("rnn_persistent_threads") = kPersistentThreads;
  m.attr("rnn_persistent_max_kc") = kPersistentMaxKC;
  cpu.def("rnn_persistent_emulate", [](int kind, int dtype, bool backward, const std::vector<int64_t>& plan,
                                       bool reverse, const std::vector<int64_t>& p, int nthreads) {
    PersistentArgs a = make_persistent_args(kind, dtype, backward, plan, reverse, p, nthreads);
    py::gil_scoped_release nogil;
    rnn_persistent_emulate_cpu(kind, dtype, a, backward, nthreads);
  });
#ifdef _OPENMP
  m.attr("openmp") = true;
#else
  m.attr("openmp") = false;
#endif
#ifdef CROSSFUSE_WITH_CUDA
  auto cuda = m.def_submodule("cuda", "CUDA kernels");
  cuda.def("cell_step", [](int kind, int dtype, int64_t B, int64_t I, int64_t H, const std::vector<uintptr_t>& p,
                           const std::vector<int64_t>& strides, uintptr_t stream) {
    cell_step_cuda(kind, dtype, make_step_args(kind, dtype, B, I, H, p, strides),
                   reinterpret_cast<cudaStream_t>(stream));
  });
  cuda.def("rnn_cell", &cuda_entry<rnn_cell_cuda>);
  cuda.def("lstm_cell", &cuda_entry<lstm_cell_cuda>);
  cuda.def("gru_cell", &cuda_entry<gru_cell_cuda>);
  m.attr("cuda_archs") = CROSSFUSE_CUDA_ARCHS;
  cuda.def("rnn_persistent", [](int kind, int dtype, bool backward, const std::vector<int64_t>& plan, bool reverse,
                                 const std::vector<int64_t>& p, uintptr_t stream) {
    PersistentArgs a = make_persistent_args(kind, dtype, backward, plan, reverse, p, kPersistentThreads);
    rnn_persistent_cuda(kind, dtype, a, backward, reinterpret_cast<cudaStream_t>(stream));
  });
  // (SMs, shared memory per block with opt-in, cooperative launch) of the current device
  cuda.def("rnn_persistent_limits", []() {
    int64_t sms = 0, smem = 0;
    bool coop = false;
    rnn_persistent_limits_cuda(sms, smem, coop);
    return py::make_tuple(sms, smem, coop);
  });
  cuda.def("device_count", []() {
    int n = 0;
    return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
  });
#else
  m.attr("cuda_archs") = "";
#endif
}
