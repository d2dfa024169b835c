#include "crossfuse/cpu_isa.h"

#include <cstdlib>
#include <cstring>

#include "crossfuse/common.h"

namespace crossfuse {

int cpu_isa_detected() {
#if CF_X86_CLONES
  static const int level = __builtin_cpu_supports("x86-64-v4") ? 4 : (__builtin_cpu_supports("x86-64-v3") ? 3 : 0);
  return level;
#else
  return 0;
#endif
}

bool cpu_is_intel() {
#if CF_X86_CLONES
  static const bool intel = __builtin_cpu_is("intel");
  return intel;
#else
  return false;
#endif
}

namespace {
// A level the kernels have (0, 3, 4), at most `cap` and at most the CPU's.
int capped(int cap) {
  const int hw = cpu_isa_detected();
  const int level = cap >= 4 ? 4 : (cap >= 3 ? 3 : 0);
  return level < hw ? level : hw;
}

// CROSSFUSE_CPU_ISA: "v4", "v3" or "baseline"; unset, empty or anything else leaves the CPU's own level.
int initial_level() {
  const char* env = std::getenv("CROSSFUSE_CPU_ISA");
  if (env != nullptr && std::strcmp(env, "baseline") == 0) return capped(0);
  if (env != nullptr && std::strcmp(env, "v3") == 0) return capped(3);
  return capped(4);
}
}  // namespace

int set_cpu_isa_cap(int cap) { return g_cpu_isa = capped(cap); }

int g_cpu_isa = initial_level();

}  // namespace crossfuse
