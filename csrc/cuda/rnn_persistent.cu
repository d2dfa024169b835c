// The persistent recurrence (crossfuse/rnn_persistent.h) as one cooperative launch per layer and direction: the
// grid barrier is cooperative_groups' grid sync, which cudaLaunchCooperativeKernel makes safe (every block
// resident; the launcher also checks the occupancy against the plan).
#include <cooperative_groups.h>
#include <cuda_runtime.h>
#include <stdexcept>
#include <string>
#include "crossfuse/ctx_cuda.cuh"
#include "crossfuse/rnn_persistent.h"

namespace crossfuse {
namespace {

template <typename T, int KIND>
__global__ void __launch_bounds__(kPersistentThreads, 1) persistent_forward_kernel(PersistentArgs a) {
  DevCtx cx;
  persistent_forward<T, KIND>(a, cx);
}

template <typename T, int KIND>
__global__ void __launch_bounds__(kPersistentThreads, 1) persistent_backward_kernel(PersistentArgs a) {
  DevCtx cx;
  persistent_backward<T, KIND>(a, cx);
}

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("rnn_persistent: ") + what + ": " + cudaGetErrorString(e));
}

template <typename T, int KIND>
void launch(const PersistentArgs& a, bool backward, int64_t smem_bytes, cudaStream_t stream) {
  const void* fn = backward ? reinterpret_cast<const void*>(&persistent_backward_kernel<T, KIND>)
                            : reinterpret_cast<const void*>(&persistent_forward_kernel<T, KIND>);
  check(cudaFuncSetAttribute(fn, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes)), "shared memory");
  int dev = 0, sms = 0, per_sm = 0;
  check(cudaGetDevice(&dev), "device");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "SM count");
  check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, kPersistentThreads, size_t(smem_bytes)),
        "occupancy");
  if (int64_t(per_sm) * sms < a.blocks)
    throw std::runtime_error("rnn_persistent: " + std::to_string(a.blocks) + " blocks cannot all be resident (" +
                             std::to_string(per_sm) + " per SM, " + std::to_string(sms) + " SMs)");
  PersistentArgs copy = a;
  void* args[] = {&copy};
  check(cudaLaunchCooperativeKernel(fn, dim3(unsigned(a.blocks)), dim3(kPersistentThreads), args, size_t(smem_bytes),
                                    stream),
        "launch");
}

}  // namespace

void rnn_persistent_cuda(int kind, int dtype, const PersistentArgs& a, bool backward, cudaStream_t stream) {
  const int64_t smem = 4 * persistent_smem_floats(cell_gates(kind), a.H, a.U, a.BC, a.KC, kPersistentThreads);
  dispatch_dtype(dtype, [&](auto tag) {
    dispatch_kind(kind, [&](auto k) { launch<decltype(tag), decltype(k)::value>(a, backward, smem, stream); });
  });
}

// (SMs, shared memory per block with opt-in, cooperative launch supported) of the current device.
void rnn_persistent_limits_cuda(int64_t& sms, int64_t& smem, bool& cooperative) {
  int dev = 0, v = 0;
  check(cudaGetDevice(&dev), "device");
  check(cudaDeviceGetAttribute(&v, cudaDevAttrMultiProcessorCount, dev), "SM count");
  sms = v;
  check(cudaDeviceGetAttribute(&v, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev), "shared memory");
  smem = v;
  check(cudaDeviceGetAttribute(&v, cudaDevAttrCooperativeLaunch, dev), "cooperative launch");
  cooperative = v != 0;
}

}  // namespace crossfuse
