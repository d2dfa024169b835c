// The cuda backend's single-launch cell step (crossfuse/cell_step_cuda.h) on host threads, block after block, each
// CUDA thread a host thread: a test double for a machine with no GPU; only the tests call it.
#include <limits>
#include <thread>
#include <vector>
#include "crossfuse/cell_step_cuda.h"
#include "crossfuse/ctx_host.h"

namespace crossfuse {

void cell_step_emulate_cpu(int kind, int dtype, const StepArgs& a, int nthreads) {
  if (a.B * a.H == 0) return;
  const int64_t blocks = step_blocks(kind, a.H, nthreads);
  dispatch_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    dispatch_kind(kind, [&](auto k) {
      for (int64_t b = 0; b < blocks; ++b) {
        // NaN-filled: a read of shared memory the block did not write shows in the result
        std::vector<float> smem(step_smem_floats(kind, nthreads), std::numeric_limits<float>::quiet_NaN());
        Barrier bar(nthreads);
        std::vector<std::thread> threads;
        for (int t = 0; t < nthreads; ++t)
          threads.emplace_back([&, t] {
            HostCtx cx{int(b), t, nthreads, smem.data(), &bar, nullptr};
            cell_step_body<T, decltype(k)::value>(a, cx);
          });
        for (auto& th : threads) th.join();
      }
    });
  });
}

}  // namespace crossfuse
