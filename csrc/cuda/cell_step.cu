// The single-launch cell step (crossfuse/cell_step_cuda.h) on the caller's stream.
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>
#include "crossfuse/cell_step_cuda.h"
#include "crossfuse/ctx_cuda.cuh"

namespace crossfuse {
namespace {

template <typename T, int KIND>
__global__ void __launch_bounds__(kStepThreads, 1) cell_step_kernel(StepArgs a) {
  DevCtx cx;
  cell_step_body<T, KIND>(a, cx);
}

}  // namespace

void cell_step_cuda(int kind, int dtype, const StepArgs& a, cudaStream_t stream) {
  if (a.B * a.H == 0) return;
  const int64_t blocks = step_blocks(kind, a.H, kStepThreads);
  if (blocks > 0x7fffffff) throw std::invalid_argument("cell_step: hidden size too large for one launch");
  const size_t smem = size_t(4 * step_smem_floats(kind, kStepThreads));
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_kind(kind, [&](auto k) {
      cell_step_kernel<T, decltype(k)::value><<<unsigned(blocks), kStepThreads, smem, stream>>>(a);
    });
  });
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw std::runtime_error(std::string("cell_step: launch: ") + cudaGetErrorString(err));
}

}  // namespace crossfuse
