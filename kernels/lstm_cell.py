"""lstm_cell in Triton: the fused gate math (i, f, g, o) and state update, forward and backward.
The workspace holds the activated gates in fp32 (B, 4H) for the backward."""
import triton
import triton.language as tl

from crossfuse.kernels._common import aot_specs, launch_elementwise, load, row_col, sigmoid, store, tanh

FWD = ("gi", "gh", "bih", "bhh", "cx", "hy", "cy", "ws")
BWD = ("dhy", "dcy", "cx", "ws", "dgi", "dcx")


@triton.jit
def _pre(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1, b, col, m,
         HAS_GH: tl.constexpr, HAS_BIH: tl.constexpr, HAS_BHH: tl.constexpr):
    return (load(gi, gi_s0, gi_s1, b, col, m, True) + load(gh, gh_s0, gh_s1, b, col, m, HAS_GH)
            + load(bih, bih_s0, bih_s1, b, col, m, HAS_BIH) + load(bhh, bhh_s0, bhh_s1, b, col, m, HAS_BHH))


@triton.jit
def lstm_cell_fwd_kernel(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                         cx, cx_s0, cx_s1, hy, hy_s0, hy_s1, cy, cy_s0, cy_s1, ws, ws_s0, ws_s1, B, H,
                         HAS_GI: tl.constexpr, HAS_GH: tl.constexpr, HAS_BIH: tl.constexpr,
                         HAS_BHH: tl.constexpr, HAS_CX: tl.constexpr, HAS_HY: tl.constexpr,
                         HAS_CY: tl.constexpr, HAS_WS: tl.constexpr, BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    i = sigmoid(_pre(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                     b, j, m, HAS_GH, HAS_BIH, HAS_BHH))
    f = sigmoid(_pre(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                     b, j + H, m, HAS_GH, HAS_BIH, HAS_BHH))
    g = tanh(_pre(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                  b, j + 2 * H, m, HAS_GH, HAS_BIH, HAS_BHH))
    o = sigmoid(_pre(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                     b, j + 3 * H, m, HAS_GH, HAS_BIH, HAS_BHH))
    c2 = f * load(cx, cx_s0, cx_s1, b, j, m, HAS_CX) + i * g
    store(hy, hy_s0, hy_s1, b, j, m, o * tanh(c2))
    store(cy, cy_s0, cy_s1, b, j, m, c2)
    store(ws, ws_s0, ws_s1, b, j, m, i, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + H, m, f, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + 2 * H, m, g, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + 3 * H, m, o, HAS_WS)


@triton.jit
def lstm_cell_bwd_kernel(dhy, dhy_s0, dhy_s1, dcy, dcy_s0, dcy_s1, cx, cx_s0, cx_s1, ws, ws_s0, ws_s1,
                         dgi, dgi_s0, dgi_s1, dcx, dcx_s0, dcx_s1, B, H,
                         HAS_DHY: tl.constexpr, HAS_DCY: tl.constexpr, HAS_CX: tl.constexpr,
                         HAS_WS: tl.constexpr, HAS_DGI: tl.constexpr, HAS_DCX: tl.constexpr,
                         BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    i = load(ws, ws_s0, ws_s1, b, j, m, True)
    f = load(ws, ws_s0, ws_s1, b, j + H, m, True)
    g = load(ws, ws_s0, ws_s1, b, j + 2 * H, m, True)
    o = load(ws, ws_s0, ws_s1, b, j + 3 * H, m, True)
    c = load(cx, cx_s0, cx_s1, b, j, m, HAS_CX)
    dh = load(dhy, dhy_s0, dhy_s1, b, j, m, HAS_DHY)
    tc = tanh(f * c + i * g)
    dc2 = load(dcy, dcy_s0, dcy_s1, b, j, m, HAS_DCY) + dh * o * (1.0 - tc * tc)
    store(dgi, dgi_s0, dgi_s1, b, j, m, dc2 * g * i * (1.0 - i))
    store(dgi, dgi_s0, dgi_s1, b, j + H, m, dc2 * c * f * (1.0 - f))
    store(dgi, dgi_s0, dgi_s1, b, j + 2 * H, m, dc2 * i * (1.0 - g * g))
    store(dgi, dgi_s0, dgi_s1, b, j + 3 * H, m, dh * tc * o * (1.0 - o))
    store(dcx, dcx_s0, dcx_s1, b, j, m, dc2 * f, HAS_DCX)


def launch(kind, backward, B, H, views):
    if backward:
        launch_elementwise(lstm_cell_bwd_kernel, BWD, views, B, H)
    else:
        launch_elementwise(lstm_cell_fwd_kernel, FWD, views, B, H)


AOT_SPECS = (aot_specs("lstm_cell_fwd", lstm_cell_fwd_kernel, FWD)
             + aot_specs("lstm_cell_bwd", lstm_cell_bwd_kernel, BWD))
