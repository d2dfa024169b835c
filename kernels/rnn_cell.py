"""rnn_cell in Triton: h' = act(gi + gh + b_ih + b_hh) and its backward, one element per lane."""
import triton
import triton.language as tl

from crossfuse.kernels._common import aot_specs, launch_elementwise, load, rnn_act, rnn_act_backward, row_col, store

FWD = ("gi", "gh", "bih", "bhh", "hy")
BWD = ("dhy", "hy", "dgi")
ACTS = {"rnn_tanh": 0, "rnn_relu": 1, "rnn_sigmoid": 2}


@triton.jit
def rnn_cell_fwd_kernel(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                        hy, hy_s0, hy_s1, B, H, HAS_GI: tl.constexpr, HAS_GH: tl.constexpr,
                        HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr, HAS_HY: tl.constexpr,
                        ACT: tl.constexpr, BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    x = (load(gi, gi_s0, gi_s1, b, j, m, HAS_GI) + load(gh, gh_s0, gh_s1, b, j, m, HAS_GH)
         + load(bih, bih_s0, bih_s1, b, j, m, HAS_BIH) + load(bhh, bhh_s0, bhh_s1, b, j, m, HAS_BHH))
    store(hy, hy_s0, hy_s1, b, j, m, rnn_act(x, ACT))


@triton.jit
def rnn_cell_bwd_kernel(dhy, dhy_s0, dhy_s1, hy, hy_s0, hy_s1, dgi, dgi_s0, dgi_s1, B, H,
                        HAS_DHY: tl.constexpr, HAS_HY: tl.constexpr, HAS_DGI: tl.constexpr,
                        ACT: tl.constexpr, BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    y = load(hy, hy_s0, hy_s1, b, j, m, HAS_HY)
    dy = load(dhy, dhy_s0, dhy_s1, b, j, m, HAS_DHY)
    store(dgi, dgi_s0, dgi_s1, b, j, m, rnn_act_backward(dy, y, ACT))


def launch(kind, backward, B, H, views):
    act = {"ACT": ACTS[kind]}
    if backward:
        launch_elementwise(rnn_cell_bwd_kernel, BWD, views, B, H, act)
    else:
        launch_elementwise(rnn_cell_fwd_kernel, FWD, views, B, H, act)


AOT_SPECS = [s for a in ACTS.values() for s in
             aot_specs(f"rnn_cell_fwd[act={a}]", rnn_cell_fwd_kernel, FWD, extra_constexprs={"ACT": a})
             + aot_specs(f"rnn_cell_bwd[act={a}]", rnn_cell_bwd_kernel, BWD, extra_constexprs={"ACT": a})]
