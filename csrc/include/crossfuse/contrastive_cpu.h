// CLIP's symmetric loss on CPU (csrc/cpu/contrastive_loss.cpp), fp32, one chunk of S's rows at a time: the
// caller's GEMM gives the raw chunk A_rows B^T; these passes apply scale and bias on the fly.
#pragma once
#include <cstdint>

namespace crossfuse {

struct ClipChunk {
  const float* s = nullptr;  // (r, n) raw scores A_rows B^T, row stride ld
  int64_t r = 0, n = 0, ld = 0;
  float scale = 1.f, bias = 0.f;
  const int64_t *la = nullptr, *lb = nullptr;  // labels of the chunk's rows (r) and of the columns (n)
  int threads = 0;                             // see cpu_threads (crossfuse/common.h)
};

// Forward: the rows' statistics into row (r, 6): lse, sum of S over positives, positive count, sum of S,
// softmax-weighted sum of S, 0; and, when col is not null, the columns folded into col (6, n): running max, sum
// of exp(S - max), sum of exp(S - max) S, sum over positives, positive count, sum of S.
void clip_chunk_forward_cpu(const ClipChunk& c, float* row, float* col);

// Backward: dS of the chunk, in place over c.s (same layout): the rows' direction's term (row statistics row_st
// (r, 6), weights wr, nr columns) plus, when col_st is not null, the columns' direction's (col_st (n, 6), wc, nc
// rows); d loss_i / d S_ij = exp(S_ij - lse_i) - (1 - eps) [same] / count_i - eps / n.
void clip_chunk_dscores_cpu(const ClipChunk& c, float* ds, const float* row_st, const float* wr, int64_t nr,
                            const float* col_st, const float* wc, int64_t nc, float eps);

}  // namespace crossfuse
