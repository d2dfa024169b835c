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

int set_cpu_isa_cap(int cap) {
  const int hw = cpu_isa_detected();
  g_cpu_isa = cap < hw ? (cap >= 4 ? 4 : (cap >= 3 ? 3 : 0)) : hw;
  return g_cpu_isa;
}

namespace {
int initial_level() {
  const char* env = std::getenv("CROSSFUSE_CPU_ISA");
  const int hw = cpu_isa_detected();
  if (env == nullptr || *env == 0) return hw;
  const int cap = std::strcmp(env, "baseline") == 0 ? 0 : (std::strcmp(env, "v3") == 0 ? 3 : 4);
  return cap < hw ? cap : hw;
}
}  // namespace

int g_cpu_isa = initial_level();

}  // namespace crossfuse
