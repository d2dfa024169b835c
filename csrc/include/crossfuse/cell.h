// Fused recurrent-cell gate math, shared by the CPU and CUDA backends.
// The GEMMs gi = x W_ih^T and gh = h W_hh^T are done by the caller; these kernels add the biases,
// apply the activations and update the state in fp32, forward and backward.
#pragma once
#include <type_traits>
#include "crossfuse/common.h"

namespace crossfuse {

enum CellKind : int { kRnnTanh = 0, kRnnRelu = 1, kRnnSigmoid = 2, kLstm = 3, kGru = 4 };

CF_HD int cell_gates(int kind) { return kind == kLstm ? 4 : (kind == kGru ? 3 : 1); }

// Calls f(std::integral_constant<int, KIND>) for a kind code (host side): one switch for every templated launcher.
template <typename F>
inline void dispatch_kind(int kind, F&& f) {
  switch (kind) {
    case kRnnTanh: f(std::integral_constant<int, kRnnTanh>{}); break;
    case kRnnRelu: f(std::integral_constant<int, kRnnRelu>{}); break;
    case kRnnSigmoid: f(std::integral_constant<int, kRnnSigmoid>{}); break;
    case kLstm: f(std::integral_constant<int, kLstm>{}); break;
    case kGru: f(std::integral_constant<int, kGru>{}); break;
    default: throw std::invalid_argument("crossfuse: wrong cell kind " + std::to_string(kind));
  }
}

// Argument slots, in the order Python packs them (crossfuse/ops/_cell.py SLOTS).
enum CellSlot : int {
  kGi, kGh, kBih, kBhh, kHx, kCx, kHy, kCy, kWs, kDhy, kDcy, kDgi, kDgh, kDhx, kDcx, kNumCellSlots
};

struct CellArgs {
  int kind = 0, dtype = 0;
  int64_t B = 0, H = 0;
  View v[kNumCellSlots];
  int threads = 0;  // CPU: see cpu_threads (crossfuse/common.h)
};

// ---- pointwise math on fp32 values -------------------------------------------------------
CF_HD float rnn_act(int kind, float x) {
  if (kind == kRnnTanh) return cf_tanh(x);
  if (kind == kRnnRelu) return x > 0.f ? x : 0.f;
  return cf_sigmoid(x);
}
// Derivative expressed through the output y = act(x).
CF_HD float rnn_act_grad(int kind, float y) {
  if (kind == kRnnTanh) return 1.f - y * y;
  if (kind == kRnnRelu) return y > 0.f ? 1.f : 0.f;
  return y * (1.f - y);
}

// LSTM: pre-activations (i, f, g, o) in; activated gates out in place; returns (c', h').
CF_HD void lstm_fwd(float& i, float& f, float& g, float& o, float c, float& c2, float& h2) {
  i = cf_sigmoid(i); f = cf_sigmoid(f); g = cf_tanh(g); o = cf_sigmoid(o);
  c2 = f * c + i * g;
  h2 = o * cf_tanh(c2);
}
// LSTM backward from the activated gates; writes pre-activation grads into i, f, g, o.
CF_HD void lstm_bwd(float& i, float& f, float& g, float& o, float c, float dh, float dc2, float& dc) {
  float c2 = f * c + i * g, tc = cf_tanh(c2);
  dc2 += dh * o * (1.f - tc * tc);
  float di = dc2 * g * i * (1.f - i);
  float df = dc2 * c * f * (1.f - f);
  float dg = dc2 * i * (1.f - g * g);
  float dO = dh * tc * o * (1.f - o);
  dc = dc2 * f;
  i = di; f = df; g = dg; o = dO;
}

// GRU (torch.nn.GRUCell): r, z gates; n = tanh(in + r * hn) with hn = gh_n + b_hn; h' = (1-z) n + z h.
// Inputs: xr = gi_r+gh_r+b, xz likewise, xn = gi_n + b_in, hn. Outputs r, z, n in place.
CF_HD float gru_fwd(float& r, float& z, float& n, float hn, float h) {
  r = cf_sigmoid(r); z = cf_sigmoid(z); n = cf_tanh(n + r * hn);
  return (1.f - z) * n + z * h;
}
// Writes d(pre r), d(pre z), d(gi_n), d(gh_n) and the direct dh.
CF_HD void gru_bwd(float r, float z, float n, float hn, float h, float dh2,
                   float& dr, float& dz, float& dgin, float& dghn, float& dh) {
  float dn = dh2 * (1.f - z) * (1.f - n * n);
  dz = dh2 * (h - n) * z * (1.f - z);
  dgin = dn;
  dghn = dn * r;
  dr = dn * hn * r * (1.f - r);
  dh = dh2 * z;
}

}  // namespace crossfuse
