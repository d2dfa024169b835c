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

template <typename T>
void emulate_kind(int kind, const PersistentArgs& a, bool backward, int nthreads) {
  switch (kind) {
    case kRnnTanh: emulate<T, kRnnTanh>(a, backward, nthreads); break;
    case kRnnRelu: emulate<T, kRnnRelu>(a, backward, nthreads); break;
    case kRnnSigmoid: emulate<T, kRnnSigmoid>(a, backward, nthreads); break;
    case kLstm: emulate<T, kLstm>(a, backward, nthreads); break;
    case kGru: emulate<T, kGru>(a, backward, nthreads); break;
    default: throw std::invalid_argument("rnn_persistent: wrong kind " + std::to_string(kind));
  }
}

}  // namespace

void rnn_persistent_emulate_cpu(int kind, int dtype, const PersistentArgs& a, bool backward, int nthreads) {
  switch (dtype) {
    case kFloat32: emulate_kind<float>(kind, a, backward, nthreads); break;
    case kFloat16: emulate_kind<Half>(kind, a, backward, nthreads); break;
    case kBFloat16: emulate_kind<BFloat16>(kind, a, backward, nthreads); break;
    default: throw std::invalid_argument("rnn_persistent: wrong dtype code " + std::to_string(dtype));
  }
}

}  // namespace crossfuse
