"""gru_cell in Triton: torch.nn.GRUCell's gate math (r, z, n), forward and backward.
The workspace holds r, z, n and hn = gh_n + b_hn in fp32 (B, 4H) for the backward."""
import triton
import triton.language as tl

from crossfuse.kernels._common import aot_specs, launch_elementwise, load, row_col, sigmoid, store, tanh

FWD = ("gi", "gh", "bih", "bhh", "hx", "hy", "ws")
BWD = ("dhy", "hx", "ws", "dgi", "dgh", "dhx")


@triton.jit
def gru_cell_fwd_kernel(gi, gi_s0, gi_s1, gh, gh_s0, gh_s1, bih, bih_s0, bih_s1, bhh, bhh_s0, bhh_s1,
                        hx, hx_s0, hx_s1, hy, hy_s0, hy_s1, ws, ws_s0, ws_s1, B, H,
                        HAS_GI: tl.constexpr, HAS_GH: tl.constexpr, HAS_BIH: tl.constexpr,
                        HAS_BHH: tl.constexpr, HAS_HX: tl.constexpr, HAS_HY: tl.constexpr,
                        HAS_WS: tl.constexpr, BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    i_r = load(gi, gi_s0, gi_s1, b, j, m, True) + load(bih, bih_s0, bih_s1, b, j, m, HAS_BIH)
    i_z = load(gi, gi_s0, gi_s1, b, j + H, m, True) + load(bih, bih_s0, bih_s1, b, j + H, m, HAS_BIH)
    i_n = load(gi, gi_s0, gi_s1, b, j + 2 * H, m, True) + load(bih, bih_s0, bih_s1, b, j + 2 * H, m, HAS_BIH)
    h_r = load(gh, gh_s0, gh_s1, b, j, m, HAS_GH) + load(bhh, bhh_s0, bhh_s1, b, j, m, HAS_BHH)
    h_z = load(gh, gh_s0, gh_s1, b, j + H, m, HAS_GH) + load(bhh, bhh_s0, bhh_s1, b, j + H, m, HAS_BHH)
    h_n = load(gh, gh_s0, gh_s1, b, j + 2 * H, m, HAS_GH) + load(bhh, bhh_s0, bhh_s1, b, j + 2 * H, m, HAS_BHH)
    r = sigmoid(i_r + h_r)
    z = sigmoid(i_z + h_z)
    n = tanh(i_n + r * h_n)
    h = load(hx, hx_s0, hx_s1, b, j, m, HAS_HX)
    store(hy, hy_s0, hy_s1, b, j, m, (1.0 - z) * n + z * h)
    store(ws, ws_s0, ws_s1, b, j, m, r, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + H, m, z, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + 2 * H, m, n, HAS_WS)
    store(ws, ws_s0, ws_s1, b, j + 3 * H, m, h_n, HAS_WS)


@triton.jit
def gru_cell_bwd_kernel(dhy, dhy_s0, dhy_s1, hx, hx_s0, hx_s1, ws, ws_s0, ws_s1, dgi, dgi_s0, dgi_s1,
                        dgh, dgh_s0, dgh_s1, dhx, dhx_s0, dhx_s1, B, H,
                        HAS_DHY: tl.constexpr, HAS_HX: tl.constexpr, HAS_WS: tl.constexpr,
                        HAS_DGI: tl.constexpr, HAS_DGH: tl.constexpr, HAS_DHX: tl.constexpr,
                        BLOCK: tl.constexpr):
    b, j, m = row_col(B, H, BLOCK)
    r = load(ws, ws_s0, ws_s1, b, j, m, True)
    z = load(ws, ws_s0, ws_s1, b, j + H, m, True)
    n = load(ws, ws_s0, ws_s1, b, j + 2 * H, m, True)
    h_n = load(ws, ws_s0, ws_s1, b, j + 3 * H, m, True)
    h = load(hx, hx_s0, hx_s1, b, j, m, HAS_HX)
    dh = load(dhy, dhy_s0, dhy_s1, b, j, m, HAS_DHY)
    dn = dh * (1.0 - z) * (1.0 - n * n)
    dz = dh * (h - n) * z * (1.0 - z)
    dr = dn * h_n * r * (1.0 - r)
    store(dgi, dgi_s0, dgi_s1, b, j, m, dr)
    store(dgi, dgi_s0, dgi_s1, b, j + H, m, dz)
    store(dgi, dgi_s0, dgi_s1, b, j + 2 * H, m, dn)
    store(dgh, dgh_s0, dgh_s1, b, j, m, dr)
    store(dgh, dgh_s0, dgh_s1, b, j + H, m, dz)
    store(dgh, dgh_s0, dgh_s1, b, j + 2 * H, m, dn * r)
    store(dhx, dhx_s0, dhx_s1, b, j, m, dh * z, HAS_DHX)


def launch(kind, backward, B, H, views):
    if backward:
        launch_elementwise(gru_cell_bwd_kernel, BWD, views, B, H)
    else:
        launch_elementwise(gru_cell_fwd_kernel, FWD, views, B, H)


AOT_SPECS = (aot_specs("gru_cell_fwd", gru_cell_fwd_kernel, FWD)
             + aot_specs("gru_cell_bwd", gru_cell_bwd_kernel, BWD))
