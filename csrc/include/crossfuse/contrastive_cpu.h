// The contrastive losses on CPU (csrc/cpu/contrastive_loss.cpp), fp32, one chunk of S's rows at a time: the
// caller's GEMM gives the raw chunk A_rows B^T; these passes apply scale and bias on the fly.
#pragma once
#include <cstdint>

namespace crossfuse {

struct ContrastiveChunk {
  const float* s = nullptr;  // (r, n) raw scores A_rows B^T, row stride ld
  int64_t r = 0, n = 0, ld = 0;
  float scale = 1.f, bias = 0.f;
  const int64_t *la = nullptr, *lb = nullptr;  // labels of the chunk's rows (r) and of the columns (n)
  bool siglip = false;                         // SigLIP's terms, else CLIP's
  int threads = 0;                             // see cpu_threads (crossfuse/common.h)
};

// Forward: the rows' statistics into row (r, 6). CLIP: lse, sum of S over positives, positive count, sum of S,
// softmax-weighted sum of S, 0; and, when col is not null, the columns folded into col (6, n): running max, sum
// of exp(S - max), sum of exp(S - max) S, sum over positives, positive count, sum of S. SigLIP (col null): loss,
// 0, positive count, 0, sum of G (S - bias), sum of G, with G = d loss / d S.
void contrastive_chunk_forward_cpu(const ContrastiveChunk& c, float* row, float* col);

// Backward: dS of the chunk, in place over c.s (same layout): the rows' direction's term (row statistics row_st
// (r, 6), weights wr, nr columns) plus, when col_st is not null, the columns' direction's (col_st (n, 6), wc, nc
// rows); CLIP's d loss_i / d S_ij = exp(S_ij - lse_i) - (1 - eps) [same] / count_i - eps / n, SigLIP's
// sigmoid(x) z with x = -z S, z = +1 on positives (one direction: col_st null).
void contrastive_chunk_dscores_cpu(const ContrastiveChunk& c, float* ds, const float* row_st, const float* wr,
                                   int64_t nr, const float* col_st, const float* wc, int64_t nc, float eps);

}  // namespace crossfuse
