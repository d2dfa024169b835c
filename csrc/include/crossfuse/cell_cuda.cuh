// CUDA driver for the fused cells: one thread per (batch row, hidden unit), grid-stride loop,
// fp32 math, launched on the caller's stream.
#pragma once
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>
#include "crossfuse/cell.h"

namespace crossfuse {

template <typename T>
__device__ __forceinline__ float ldv(const View& v, int64_t b, int64_t c) {
  return v.present() ? ld<T>(v.data, v.off(b, c)) : 0.f;
}
template <typename T>
__device__ __forceinline__ void stv(const View& v, int64_t b, int64_t c, float x) {
  if (v.present()) st<T>(v.data, v.off(b, c), x);
}
__device__ __forceinline__ float* wsp(const View& v, int64_t b) {
  return static_cast<float*>(v.data) + b * v.s0;
}

template <typename T, int KIND>
__global__ void cell_forward_kernel(CellArgs a) {
  const int64_t H = a.H, n = a.B * H;
  const View* v = a.v;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / H, j = idx - b * H;
    // Bias views have s0 == 0, so row b reads the same vector.
    auto pre = [&](int k, bool with_h) {
      float x = ldv<T>(v[kGi], b, k * H + j) + ldv<T>(v[kBih], b, k * H + j);
      if (with_h) x += ldv<T>(v[kGh], b, k * H + j) + ldv<T>(v[kBhh], b, k * H + j);
      return x;
    };
    if (KIND == kLstm) {
      float i = pre(0, true), f = pre(1, true), g = pre(2, true), o = pre(3, true), c2, h2;
      lstm_fwd(i, f, g, o, ldv<T>(v[kCx], b, j), c2, h2);
      stv<T>(v[kHy], b, j, h2);
      stv<T>(v[kCy], b, j, c2);
      if (v[kWs].present()) { float* w = wsp(v[kWs], b); w[j] = i; w[H + j] = f; w[2 * H + j] = g; w[3 * H + j] = o; }
    } else if (KIND == kGru) {
      float r = pre(0, true), z = pre(1, true), nn = pre(2, false);
      float hn = ldv<T>(v[kGh], b, 2 * H + j) + ldv<T>(v[kBhh], b, 2 * H + j);
      float h2 = gru_fwd(r, z, nn, hn, ldv<T>(v[kHx], b, j));
      stv<T>(v[kHy], b, j, h2);
      if (v[kWs].present()) { float* w = wsp(v[kWs], b); w[j] = r; w[H + j] = z; w[2 * H + j] = nn; w[3 * H + j] = hn; }
    } else {
      stv<T>(v[kHy], b, j, rnn_act(KIND, pre(0, true)));
    }
  }
}

template <typename T, int KIND>
__global__ void cell_backward_kernel(CellArgs a) {
  const int64_t H = a.H, n = a.B * H;
  const View* v = a.v;
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < n; idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = idx / H, j = idx - b * H;
    const float dh = ldv<T>(v[kDhy], b, j);
    if (KIND == kLstm) {
      const float* w = wsp(v[kWs], b);
      float i = w[j], f = w[H + j], g = w[2 * H + j], o = w[3 * H + j], dc;
      lstm_bwd(i, f, g, o, ldv<T>(v[kCx], b, j), dh, ldv<T>(v[kDcy], b, j), dc);
      stv<T>(v[kDgi], b, j, i); stv<T>(v[kDgi], b, H + j, f);
      stv<T>(v[kDgi], b, 2 * H + j, g); stv<T>(v[kDgi], b, 3 * H + j, o);
      stv<T>(v[kDcx], b, j, dc);
    } else if (KIND == kGru) {
      const float* w = wsp(v[kWs], b);
      float dr, dz, dgin, dghn, dhd;
      gru_bwd(w[j], w[H + j], w[2 * H + j], w[3 * H + j], ldv<T>(v[kHx], b, j), dh, dr, dz, dgin, dghn, dhd);
      stv<T>(v[kDgi], b, j, dr); stv<T>(v[kDgi], b, H + j, dz); stv<T>(v[kDgi], b, 2 * H + j, dgin);
      stv<T>(v[kDgh], b, j, dr); stv<T>(v[kDgh], b, H + j, dz); stv<T>(v[kDgh], b, 2 * H + j, dghn);
      stv<T>(v[kDhx], b, j, dhd);
    } else {
      stv<T>(v[kDgi], b, j, dh * rnn_act_grad(KIND, ldv<T>(v[kHy], b, j)));
    }
  }
}

template <typename T, int KIND>
void launch_cell_cuda(const CellArgs& a, bool backward, cudaStream_t stream) {
  const int64_t n = a.B * a.H;
  if (n == 0) return;
  const int threads = 256;
  const int64_t blocks = (n + threads - 1) / threads;
  const int grid = int(blocks < 65535 * 8 ? blocks : 65535 * 8);
  if (backward) cell_backward_kernel<T, KIND><<<grid, threads, 0, stream>>>(a);
  else cell_forward_kernel<T, KIND><<<grid, threads, 0, stream>>>(a);
  cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("crossfuse cell kernel launch: ") + cudaGetErrorString(err));
}

template <int... KINDS>
void run_cell_cuda_kinds(const CellArgs& a, bool backward, cudaStream_t stream) {
  bool done = false;
  dispatch_dtype(a.dtype, [&](auto tag) {
    using T = decltype(tag);
    ((a.kind == KINDS ? (launch_cell_cuda<T, KINDS>(a, backward, stream), done = true) : false), ...);
  });
  if (!done) throw std::invalid_argument("crossfuse: wrong cell kind " + std::to_string(a.kind));
}

}  // namespace crossfuse
