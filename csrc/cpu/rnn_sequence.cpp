// Whole-sequence recurrence on CPU for rnn / lstm / gru layers (one layer, one direction): the input
// projection of all steps is one torch GEMM done before; here the time loop runs in C++, each step one fused
// pass (R.h GEMV tiles + gate math, OpenMP over hidden-unit blocks) from crossfuse/cell_cpu_small.h.
#include <vector>
#include "crossfuse/cell_cpu_small.h"
#include "crossfuse/rnn_cpu.h"

namespace crossfuse {

void cell_step_cpu(const SmallCellArgs&);  // csrc/cpu/cell_step.cpp: one instantiation of the step kernels

void rnn_sequence_cpu(const SeqArgs& s) {
  const int64_t T = s.T, B = s.B, H = s.H, BH = B * H;
  std::vector<uint8_t> active(s.lengths ? B : 0);
  for (int64_t step = 0; step < T; ++step) {
    const int64_t t = s.reverse ? T - 1 - step : step, p = s.reverse ? t + 1 : t - 1;
    if (s.lengths)  // a row past its length keeps its state (forward) or has not started (reverse)
      for (int64_t b = 0; b < B; ++b) active[b] = t < s.lengths[b];
    SmallCellArgs a;
    a.kind = s.kind; a.B = B; a.I = 0; a.H = H;
    a.hx = step == 0 ? s.h0 : s.hs + p * BH;
    a.cx = step == 0 ? s.c0 : (s.cs ? s.cs + p * BH : nullptr);
    a.sh = a.sc = a.shy = a.scy = H;
    a.w_hh = s.w_hh; a.b_hh = s.b_hh;
    a.gi_pre = s.gi + t * s.sgt; a.sgi = s.sgb;
    a.hy = s.hs + t * BH;
    a.cy = s.cs ? s.cs + t * BH : nullptr;
    a.ws = s.ws ? s.ws + t * 4 * BH : nullptr; a.sws = 4 * H;
    a.active = s.lengths ? active.data() : nullptr;
    cell_step_cpu(a);
  }
}

}  // namespace crossfuse
