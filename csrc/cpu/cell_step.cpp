// The small-batch single-call cell step shared by rnn_cell, lstm_cell and gru_cell (crossfuse/cell_cpu_small.h).
#include "crossfuse/cell_cpu_small.h"

namespace crossfuse {
void cell_step_cpu(const SmallCellArgs& a) { run_small_cell(a); }
void cell_step_range_cpu(const SmallCellArgs& a, int64_t j0, int64_t j1) { run_small_cell_range(a, j0, j1); }
}  // namespace crossfuse
