"""The VAE's reparameterisation and its KL term in one pass per row: z = mu + exp(logvar / 2) * eps and
kl = -1/2 sum_j (1 + logvar - mu^2 - exp(logvar)); backward likewise fused."""
import inspect

import torch
import triton
import triton.language as tl

from crossfuse.kernels._common import store  # rounds to nearest even for bf16 (the interpreter truncates)

_TL = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}
BLOCK = 1024  # columns per chunk; a row is walked in chunks, so any latent size works
WARPS = 4


@triton.jit
def _fwd_kernel(MU, LV, EPS, Z, KL, N, s_mu, s_lv, s_eps, s_z, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    kl = tl.zeros([BLOCK], tl.float32)
    for c0 in range(0, N, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = cols < N
        mu = tl.load(MU + row * s_mu + cols, mask=m, other=0.0).to(tl.float32)
        lv = tl.load(LV + row * s_lv + cols, mask=m, other=0.0).to(tl.float32)
        eps = tl.load(EPS + row * s_eps + cols, mask=m, other=0.0).to(tl.float32)
        store(Z, s_z, 1, row, cols, m, mu + tl.exp(0.5 * lv) * eps)
        kl += tl.where(m, 1.0 + lv - mu * mu - tl.exp(lv), 0.0)
    tl.store(KL + row, -0.5 * tl.sum(kl, 0))


@triton.jit
def _bwd_kernel(MU, LV, EPS, DZ, DKL, DMU, DLV, N, s_mu, s_lv, s_eps, s_dz, s_dmu, s_dlv, HAS_DZ: tl.constexpr,
                BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    dkl = tl.load(DKL + row)
    for c0 in range(0, N, BLOCK):
        cols = c0 + tl.arange(0, BLOCK)
        m = cols < N
        mu = tl.load(MU + row * s_mu + cols, mask=m, other=0.0).to(tl.float32)
        lv = tl.load(LV + row * s_lv + cols, mask=m, other=0.0).to(tl.float32)
        dmu = dkl * mu
        dlv = dkl * 0.5 * (tl.exp(lv) - 1.0)
        if HAS_DZ:
            eps = tl.load(EPS + row * s_eps + cols, mask=m, other=0.0).to(tl.float32)
            dz = tl.load(DZ + row * s_dz + cols, mask=m, other=0.0).to(tl.float32)
            dmu += dz
            dlv += dz * eps * 0.5 * tl.exp(0.5 * lv)
        store(DMU, s_dmu, 1, row, cols, m, dmu)
        store(DLV, s_dlv, 1, row, cols, m, dlv)


def forward(mu, logvar, eps, z, kl):
    R, N = mu.shape
    if R:
        _fwd_kernel[(R,)](mu, logvar, eps, z, kl, N, mu.stride(0), logvar.stride(0), eps.stride(0), z.stride(0),
                          BLOCK=BLOCK, num_warps=WARPS)


def backward(mu, logvar, eps, dz, dkl, dmu, dlv):
    R, N = mu.shape
    if R:
        _bwd_kernel[(R,)](mu, logvar, eps, dz if dz is not None else mu, dkl, dmu, dlv, N, mu.stride(0),
                          logvar.stride(0), eps.stride(0), dz.stride(0) if dz is not None else 0, dmu.stride(0),
                          dlv.stride(0), HAS_DZ=dz is not None, BLOCK=BLOCK, num_warps=WARPS)


def _aot_specs():
    specs = []
    for dtype, t in _TL.items():
        for name, kernel in (("reparameterize_kl_fwd", _fwd_kernel), ("reparameterize_kl_bwd", _bwd_kernel)):
            sig = {}
            for p in inspect.signature(kernel.fn).parameters:
                if p in ("HAS_DZ", "BLOCK"):
                    sig[p] = "constexpr"
                elif p in ("KL", "DKL"):
                    sig[p] = "*fp32"
                elif p in ("MU", "LV", "EPS", "Z", "DZ", "DMU", "DLV"):
                    sig[p] = "*" + t
                else:
                    sig[p] = "i32"
            const = {"BLOCK": BLOCK, **({"HAS_DZ": True} if kernel is _bwd_kernel else {})}
            specs.append(dict(name=name, kernel=kernel, signature=sig, constexprs=const, num_warps=WARPS,
                              num_stages=1, config=f"{str(dtype)[6:]} BLOCK={BLOCK} w{WARPS}"))
    return specs


AOT_SPECS = _aot_specs()
