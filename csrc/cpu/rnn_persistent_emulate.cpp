// The CUDA persistent recurrence's bodies (crossfuse/rnn_persistent.h) run on the CPU, each CUDA thread a host
// thread, __syncthreads and the grid barrier as host barriers: a test double for a machine with no GPU. Slow by
// design (blocks x threads OS threads); only the tests call it.
#include <limits>
#include <memory>
#include <thread>
#include <vector>
#include "crossfuse/ctx_host.h"
#include "crossfuse/rnn_persistent.h"

namespace crossfuse {
namespace {

template <typename T, int KIND>
void emulate(const PersistentArgs& a, bool backward, int nthreads) {
  const int G = cell_gates(KIND), nb = int(a.blocks);
  const int64_t floats = persistent_smem_floats(G, a.H, a.U, a.BC, a.KC, nthreads);
  std::vector<std::vector<float>> smem(nb, std::vector<float>(floats, std::numeric_limits<float>::quiet_NaN()));
  std::vector<std::unique_ptr<Barrier>> bars;
  for (int b = 0; b < nb; ++b) bars.emplace_back(new Barrier(nthreads));
  Barrier grid(nb * nthreads);
  std::vector<std::thread> threads;
  for (int b = 0; b < nb; ++b)
    for (int t = 0; t < nthreads; ++t)
      threads.emplace_back([&, b, t] {
        HostCtx cx{b, t, nthreads, smem[b].data(), bars[b].get(), &grid};
        if (backward)
          persistent_backward<T, KIND>(a, cx);
        else
          persistent_forward<T, KIND>(a, cx);
      });
  for (auto& th : threads) th.join();
}

}  // namespace

void rnn_persistent_emulate_cpu(int kind, int dtype, const PersistentArgs& a, bool backward, int nthreads) {
  dispatch_dtype(dtype, [&](auto tag) {
    dispatch_kind(kind, [&](auto k) { emulate<decltype(tag), decltype(k)::value>(a, backward, nthreads); });
  });
}

}  // namespace crossfuse
