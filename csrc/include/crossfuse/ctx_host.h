// The host side of the kernel bodies written against a context (crossfuse/rnn_persistent.h,
// crossfuse/cell_step_cuda.h): each CUDA thread a host thread, __syncthreads and the grid barrier as host
// barriers. A test double for a machine with no GPU (csrc/cpu/*_emulate.cpp); only the tests call it.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include "crossfuse/common.h"

namespace crossfuse {

class Barrier {
 public:
  explicit Barrier(int n) : n_(n) {}
  void wait() {  // the mutex orders every thread's writes before the barrier against reads after it
    std::unique_lock<std::mutex> lock(m_);
    const int64_t gen = gen_;
    if (++count_ == n_) {
      count_ = 0;
      ++gen_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return gen_ != gen; });
    }
  }

 private:
  std::mutex m_;
  std::condition_variable cv_;
  int n_, count_ = 0;
  int64_t gen_ = 0;
};

struct HostCtx {
  int b, t, nt;
  float* smem;
  Barrier *block_bar, *grid_bar;
  int block() const { return b; }
  int thread() const { return t; }
  int threads() const { return nt; }
  float* shared() { return smem; }
  void sync() { block_bar->wait(); }
  void grid_sync() { grid_bar->wait(); }
  template <typename T>
  float ld_l2(const T* p) { return to_float(*p); }
};

}  // namespace crossfuse
