// Arguments of the CPU whole-sequence recurrence (csrc/cpu/rnn_sequence.cpp). fp32, rows contiguous.
#pragma once
#include <cstdint>

namespace crossfuse {

// Sequences from this many steps run on w_hh packed by unit block (see sequence_packs).
constexpr int64_t kPackMinSteps = 4;  // the repack costs about one step's weight traffic
// Whether the recurrence of `kind` runs on a packed w_hh (csrc/cpu/rnn_sequence.cpp), unless rows_forward.
bool sequence_packs(int kind, int64_t T, int64_t B, int64_t H);
// Whether the forward splits the rows over `threads` threads, a GEMM per step (csrc/cpu/rnn_sequence.cpp).
bool rows_forward(int kind, int64_t B, bool pack, int threads);

struct SeqArgs {
  int kind = 0;
  int64_t T = 0, B = 0, H = 0;
  const float* gi = nullptr;  // (T, B, G*H) input gates x W_ih^T; step t at gi + t*sgt, row b + b*sgb
  int64_t sgt = 0, sgb = 0;
  const float *w_hh = nullptr, *b_hh = nullptr;
  const float* b_ih = nullptr;  // added per step, or null where gi holds it already
  const float *h0 = nullptr, *c0 = nullptr;  // (B, H), or null for zeros
  const int64_t* lengths = nullptr;          // (B,), or null: every row runs all T steps
  bool reverse = false;
  float *hs = nullptr, *cs = nullptr;  // (T, B, H) state after each step (cs: LSTM only)
  float* ws = nullptr;                 // (T, B, 4H) activated gates for the backward, or null
  int threads = 0;                     // see cpu_threads (crossfuse/common.h)
  // The caller's copy of w_hh packed by unit block (pack_units_cpu, packed_gates gates per k), or null: used
  // where the sequence runs on packed weights with that many gates per k, instead of packing them again.
  const float* w_packed = nullptr;
  int64_t packed_gates = 0;
  // With lengths that never increase, gi may hold only the rows still going at each step, one step after the
  // other (a PackedSequence's layout): step t's first row at gi + gi_rows[t] * sgb. Null: gi + t * sgt.
  const int64_t* gi_rows = nullptr;
};

void rnn_sequence_cpu(const SeqArgs& s);

// The reverse-time loop of the backward: per step the gate backward (from the saved activated gates) and
// dh_prev = dgh W_hh. Weight gradients are left to large GEMMs over dgi / dgh afterwards.
struct SeqBwdArgs {
  int kind = 0;
  int64_t T = 0, B = 0, H = 0;
  const float* dout = nullptr;  // (T, B, H) contiguous, or null
  const float *dhT = nullptr, *dcT = nullptr;
  const float *hs = nullptr, *cs = nullptr, *ws = nullptr, *h0 = nullptr, *c0 = nullptr, *w_hh = nullptr;
  const int64_t* lengths = nullptr;
  bool reverse = false;
  float *dgi = nullptr, *dgh = nullptr;  // (T, B, G*H); dgh GRU only (the recurrent side differs there)
  float *dh0 = nullptr, *dc0 = nullptr;  // (B, H)
  int threads = 0;                       // see cpu_threads (crossfuse/common.h)
};

void rnn_sequence_backward_cpu(const SeqBwdArgs& s);

}  // namespace crossfuse
