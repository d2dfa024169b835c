// rnn_cell on CPU: the fused gate math, forward and backward (driver in crossfuse/cell_cpu.h).
#include "crossfuse/cell_cpu.h"

namespace crossfuse {
void rnn_cell_cpu(const CellArgs& a, bool backward) { run_cell_cpu_kinds<kRnnTanh, kRnnRelu, kRnnSigmoid>(a, backward); }
}  // namespace crossfuse
