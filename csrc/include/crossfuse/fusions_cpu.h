// Product pooling on CPU (csrc/cpu/fusions.cpp): the arguments Python passes, fp32, contiguous.
#pragma once
#include <cstdint>

namespace crossfuse {

struct PoolArgs {
  int64_t G = 0, N = 0, S = 0, R = 0, rep0 = 1, rep1 = 1;
  bool rank_major = true, relu = false;
  const float *u0 = nullptr, *u1 = nullptr;  // (G, N / rep, R*S) pre-activation projections
  const float *v0 = nullptr, *v1 = nullptr;  // MFH's second stage, or null
  // Biases (G, R*S) of u0, u1, v0, v1, added on the fly (the projections are stored without them), or null
  const float *b0 = nullptr, *b1 = nullptr, *c0 = nullptr, *c1 = nullptr;
  float* z = nullptr;                        // forward: rows of z (row stride zs) from column g*S on
  const float* dz = nullptr;                 // backward: like z
  int64_t zs = 0, z2 = 0;                    // z's row stride; the second stage's columns: z2 further on
  float *du0 = nullptr, *du1 = nullptr, *dv0 = nullptr, *dv1 = nullptr;  // backward: like u0 ... v1
  int threads = 0;  // see cpu_threads (crossfuse/common.h)
};

void product_pool_cpu(const PoolArgs& a, bool backward);

// The projections and the pooling together, for many groups: each thread takes whole groups, forward
// (u = x_g W_g^T, then the pool into z) or backward (dU from the kept u, then dx_g, dW_g, db_g). pool's sizes,
// flags, biases, z / dz and threads are read; its u / du pointers are not (keep holds the projections).
struct PoolGemmArgs {
  PoolArgs pool;
  const float *x0 = nullptr, *x1 = nullptr;  // (N / rep0, G*K0), (N / rep1, G*K1)
  int64_t K0 = 0, K1 = 0;
  const float* w[4] = {};  // (G, R*S, K) weights of u0, u1, v0, v1 (v: MFH's second stage, or null)
  float* keep[4] = {};     // (G, rows, R*S) projections without bias: written forward (null: not kept), read back
  float *dx0 = nullptr, *dx1 = nullptr;  // backward, or null where not needed: (rows, G*K)
  float* dw[4] = {};       // (G, R*S, K)
  float* db[4] = {};       // (G, R*S)
};

void product_pool_grouped_cpu(const PoolGemmArgs& a, bool backward);

// y = s / max(||s||, eps) with s = sign(z) sqrt|z|, the norm over each of `groups` equal slices of a row's C
// columns (rows contiguous, N of them); the backward recomputes s and the norms from z (F.normalize's gradient,
// and 0 where z is 0, as sqrt(relu(z)) - sqrt(relu(-z)) gives).
void signed_sqrt_normalize_cpu(const float* z, float* y, int64_t N, int64_t C, int64_t groups, float eps,
                               int threads);
void signed_sqrt_normalize_backward_cpu(const float* z, const float* dy, float* dz, int64_t N, int64_t C,
                                        int64_t groups, float eps, int threads);

}  // namespace crossfuse
