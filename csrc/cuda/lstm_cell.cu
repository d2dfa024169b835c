// lstm_cell on CUDA: the fused gate math, forward and backward (driver in crossfuse/cell_cuda.cuh).
#include "crossfuse/cell_cuda.cuh"

namespace crossfuse {
void lstm_cell_cuda(const CellArgs& a, bool backward, cudaStream_t stream) {
  run_cell_cuda_kinds<kLstm>(a, backward, stream);
}
}  // namespace crossfuse
