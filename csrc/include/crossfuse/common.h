// Shared by the CPU (.cpp) and CUDA (.cu) kernels: tensor views, dtype codes, conversions.
#pragma once
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>

#if defined(__CUDACC__)
#define CF_HD __host__ __device__ __forceinline__
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#else
#define CF_HD inline
#endif
// Kernel bodies written against a context (crossfuse/rnn_persistent.h, crossfuse/cell_step_cuda.h): device
// functions in the CUDA build, host functions in the CPU build that runs them on host threads.
#if defined(__CUDACC__)
#define CF_DEV __device__ __forceinline__
#else
#define CF_DEV inline
#endif

// CPU hot loops are compiled three times, for x86-64-v4 (AVX-512), x86-64-v3 (AVX2 and FMA together) and the
// baseline, and picked at load time: one wheel, full speed where the instructions exist. (target_clones("avx2,fma")
// would make two clones, AVX2 without FMA and FMA without AVX2, and the resolver prefers the first: no fused
// multiply-adds.)
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__) && !defined(__CUDACC__)
#define CF_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#define CF_X86_CLONES 1
#else
#define CF_CPU_CLONES
#define CF_X86_CLONES 0
#endif

namespace crossfuse {

// The thread count of a CPU kernel's parallel region: the caller's (Python passes torch.get_num_threads(), so
// torch.set_num_threads governs crossfuse too, in any thread and whichever OpenMP runtime each was built
// with), or the OpenMP default where it passes 0 (csrc/cpu/gemm.cpp).
int cpu_threads(int requested);

// Dtype codes, the same numbers as crossfuse/_backend.py DTYPE_CODES.
enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// A strided 2-D view (rows, cols) of a tensor owned by torch. Strides in elements; 64-bit offsets.
// data == nullptr means "absent" (an optional argument).
struct View {
  void* data = nullptr;
  int64_t s0 = 0, s1 = 0;
  CF_HD bool present() const { return data != nullptr; }
  CF_HD int64_t off(int64_t r, int64_t c) const { return r * s0 + c * s1; }
};

struct Half { uint16_t bits; };
struct BFloat16 { uint16_t bits; };

CF_HD float bits_to_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
CF_HD uint32_t float_to_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

CF_HD float to_float(float x) { return x; }
CF_HD float to_float(BFloat16 x) { return bits_to_float(uint32_t(x.bits) << 16); }
CF_HD float to_float(Half h) {
#if defined(__CUDA_ARCH__)
  __half_raw r; r.x = h.bits; return __half2float(__half(r));
#else
  uint32_t sign = uint32_t(h.bits & 0x8000) << 16, exp = (h.bits >> 10) & 0x1f, man = h.bits & 0x3ff;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));
  if (exp == 0) {  // zero or subnormal: exact as man * 2^-24
    float v = float(man) * 5.9604644775390625e-08f;
    return sign ? -v : v;
  }
  return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
#endif
}

template <typename T> CF_HD T from_float(float x);
template <> CF_HD float from_float<float>(float x) { return x; }
template <> CF_HD BFloat16 from_float<BFloat16>(float x) {
  uint32_t u = float_to_bits(x);
  BFloat16 r;
  if ((u & 0x7fffffffu) > 0x7f800000u) { r.bits = uint16_t((u >> 16) | 0x40); return r; }  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest even
  r.bits = uint16_t(u >> 16);
  return r;
}
template <> CF_HD Half from_float<Half>(float x) {
  Half r;
#if defined(__CUDA_ARCH__)
  __half_raw raw = __half_raw(__float2half_rn(x)); r.bits = raw.x;
#else
  uint32_t u = float_to_bits(x), sign = (u >> 16) & 0x8000u, a = u & 0x7fffffffu;
  if (a > 0x7f800000u) { r.bits = uint16_t(sign | 0x7e00u); return r; }
  if (a >= 0x477ff000u) { r.bits = uint16_t(sign | 0x7c00u); return r; }  // rounds to inf
  if (a < 0x38800000u) {  // subnormal half: let the FPU round via a magic add
    float f = bits_to_float(a) + 0.5f;
    r.bits = uint16_t(sign | (float_to_bits(f) - 0x3f000000u));
    return r;
  }
  uint32_t mant_odd = (a >> 13) & 1u;
  a += 0xc8000fffu + mant_odd;  // rebias exponent (-112 << 23) and round to nearest even
  r.bits = uint16_t(sign | (a >> 13));
#endif
  return r;
}

template <typename T> CF_HD float ld(const void* base, int64_t off) {
  return to_float(static_cast<const T*>(base)[off]);
}
template <typename T> CF_HD void st(void* base, int64_t off, float v) {
  static_cast<T*>(base)[off] = from_float<T>(v);
}

// exp/sigmoid/tanh in fp32. The CPU path uses a branch-free polynomial exp so loops vectorize;
// CUDA uses the hardware-accurate expf.
CF_HD float cf_exp(float x) {
#if defined(__CUDA_ARCH__)
  return expf(x);
#else
  x = x < -87.3f ? -87.3f : (x > 88.3f ? 88.3f : x);
  float n = __builtin_floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - n * 0.693359375f;          // ln2 split in two for an exact reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  return p * bits_to_float(uint32_t(int32_t(n) + 127) << 23);
#endif
}
CF_HD float cf_sigmoid(float x) { return 1.0f / (1.0f + cf_exp(-x)); }
CF_HD float cf_tanh(float x) {
#if defined(__CUDA_ARCH__)
  return tanhf(x);
#else
  // tanh(x) = sign(x) * (1 - e) / (1 + e), e = exp(-2|x|): no cancellation for large |x|;
  // for small |x| a short odd polynomial keeps the relative error at fp32 level.
  float a = x < 0 ? -x : x;
  float e = cf_exp(-2.0f * a);
  float t = (1.0f - e) / (1.0f + e);
  float x2 = x * x;
  float small = a * (1.0f + x2 * (-0.333333333f + x2 * (0.133333333f + x2 * (-0.0539682540f + x2 * 0.0218694885f))));
  t = a < 0.125f ? small : t;
  return x < 0 ? -t : t;
#endif
}

// Calls f with a value of the storage type for a dtype code (host side).
template <typename F>
inline void dispatch_dtype(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); break;
    case kFloat16: f(Half{}); break;
    case kBFloat16: f(BFloat16{}); break;
    default: throw std::invalid_argument("crossfuse: unsupported dtype code " + std::to_string(dtype));
  }
}

}  // namespace crossfuse
