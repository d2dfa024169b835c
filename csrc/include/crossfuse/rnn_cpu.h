// Arguments of the CPU whole-sequence recurrence (csrc/cpu/rnn_sequence.cpp). fp32, rows contiguous.
#pragma once
#include <cstdint>

namespace crossfuse {

struct SeqArgs {
  int kind = 0;
  int64_t T = 0, B = 0, H = 0;
  const float* gi = nullptr;  // (T, B, G*H) input gates with b_ih folded in; step t at gi + t*sgt, row b + b*sgb
  int64_t sgt = 0, sgb = 0;
  const float *w_hh = nullptr, *b_hh = nullptr;
  const float *h0 = nullptr, *c0 = nullptr;  // (B, H), or null for zeros
  const int64_t* lengths = nullptr;          // (B,), or null: every row runs all T steps
  bool reverse = false;
  float *hs = nullptr, *cs = nullptr;  // (T, B, H) state after each step (cs: LSTM only)
  float* ws = nullptr;                 // (T, B, 4H) activated gates for the backward, or null
};

void rnn_sequence_cpu(const SeqArgs& s);

}  // namespace crossfuse
