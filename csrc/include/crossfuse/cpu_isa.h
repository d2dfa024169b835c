// The x86 level the hand-written CPU kernels run at: 4 (AVX-512 F/BW/DQ/VL: x86-64-v4), 3 (AVX2 + FMA:
// x86-64-v3) or 0 (baseline). The highest the CPU has, capped by CROSSFUSE_CPU_ISA=v4|v3|baseline at load and by
// set_cpu_isa_cap (the tests run each level's kernels on one machine). The compiler's clones (CF_CPU_CLONES) are
// picked at load time by the CPU alone.
#pragma once

namespace crossfuse {

extern int g_cpu_isa;  // csrc/cpu/isa.cpp
inline int cpu_isa() { return g_cpu_isa; }
int cpu_isa_detected();
// Caps the level (0, 3 or 4; never above what the CPU has); returns the level now in force.
int set_cpu_isa_cap(int cap);
// An Intel CPU (where torch's MKL GEMM beat crossfuse's with AVX-512; see crossfuse.ops._gemm).
bool cpu_is_intel();

}  // namespace crossfuse
