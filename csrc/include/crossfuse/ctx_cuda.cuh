// The device side of the kernel bodies written against a context (crossfuse/rnn_persistent.h,
// crossfuse/cell_step_cuda.h): CUDA ids, barriers, dynamic shared memory and loads past L1. The CPU build runs
// the same bodies with crossfuse/ctx_host.h's host-thread context.
#pragma once
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include "crossfuse/common.h"

namespace crossfuse {

struct DevCtx {
  __device__ int block() const { return blockIdx.x; }
  __device__ int thread() const { return threadIdx.x; }
  __device__ int threads() const { return blockDim.x; }
  __device__ float* shared() {
    extern __shared__ float cf_dynamic_smem[];
    return cf_dynamic_smem;
  }
  __device__ void sync() { __syncthreads(); }
  __device__ void grid_sync() { cooperative_groups::this_grid().sync(); }
  // State other blocks wrote since this one last read it: from L2, past this SM's L1.
  __device__ float ld_l2(const float* p) { return __ldcg(p); }
  __device__ float ld_l2(const Half* p) { return to_float(Half{__ldcg(reinterpret_cast<const unsigned short*>(p))}); }
  __device__ float ld_l2(const BFloat16* p) {
    return to_float(BFloat16{__ldcg(reinterpret_cast<const unsigned short*>(p))});
  }
};

}  // namespace crossfuse
