"""cross_attention benchmark: the cross-modal shapes of DESIGN.md, forward and forward+backward, against
F.scaled_dot_product_attention (with a boolean mask where the shape needs one), flex_attention where this
torch has it, and the eager reference. On CPU only the reference and SDPA run, on shrunken shapes (the Triton
interpreter is not a performance path)."""
import torch
import torch.nn.functional as F

import crossfuse
from crossfuse import _backend
from crossfuse.bench.runner import Case
from crossfuse.reference.cross_attention import visibility

# name, B, Hq, Hkv, Lq, Lk, D, mask kind
GPU_SHAPES = [
    ("text->image", 128, 12, 12, 77, 257, 64, "none"),
    ("text->image padded", 128, 12, 12, 77, 257, 64, "lengths"),
    ("Q-Former", 64, 12, 12, 32, 577, 64, "none"),
    ("Flamingo media", 8, 16, 16, 2048, 6 * 64, 128, "media"),
    ("image->text padded", 256, 12, 12, 36, 20, 64, "lengths"),
    ("long", 4, 16, 16, 4096, 4096, 128, "none"),
    ("GQA text->image", 128, 12, 4, 77, 257, 64, "lengths"),
]
QUICK = {"text->image padded", "Flamingo media", "long"}


def _masks(kind, B, Lq, Lk, device, gen):
    if kind == "lengths":  # random lengths, at least a quarter of the keys
        return {"kv_lengths": torch.randint(Lk // 4, Lk + 1, (B,), generator=gen).to(device)}
    if kind == "media":  # 6 images, each seen by the text after it until the next one (OpenFlamingo)
        T_img, n = 6, Lk // 6
        locs = torch.zeros(B, Lq, dtype=torch.bool)
        for b in range(B):
            locs[b, torch.randperm(Lq, generator=gen)[:T_img].sort().values] = True
        qs = (locs.long().cumsum(-1) - 1).to(device)
        ks = torch.arange(T_img).repeat_interleave(n).expand(B, Lk).to(device)
        return {"q_segment_ids": qs, "kv_segment_ids": ks}
    return {}


def _visible_pairs(kw, B, Lq, Lk, device):
    vis = visibility(B, Lq, Lk, device, kw.get("key_padding_mask"), kw.get("kv_lengths"), kw.get("q_segment_ids"),
                     kw.get("kv_segment_ids"))
    return B * Lq * Lk if vis is None else int(vis.sum())


def _sdpa(q, k, v, kw, Hq):
    B, _, Lq, _ = q.shape
    Lk = k.shape[2]
    vis = visibility(B, Lq, Lk, q.device, kw.get("key_padding_mask"), kw.get("kv_lengths"), kw.get("q_segment_ids"),
                     kw.get("kv_segment_ids"))
    group = Hq // k.shape[1]
    if vis is not None:
        # SDPA gives NaN for a query with no key; a peer that must not, keeps one key visible (not counted)
        vis = vis.clone()
        vis[..., 0] |= ~vis.any(-1)

    def run(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=vis, enable_gqa=group > 1)
    return run


def _flex(q, k, v, kw, Hq):
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    B, _, Lq, _ = q.shape
    Lk = k.shape[2]
    lengths, qs, ks = kw.get("kv_lengths"), kw.get("q_segment_ids"), kw.get("kv_segment_ids")

    def mask_mod(b, h, i, j):
        ok = j >= 0
        if lengths is not None:
            ok = ok & (j < lengths[b])
        if qs is not None:
            ok = ok & (qs[b, i] == ks[b, j]) & (qs[b, i] >= 0)
        return ok
    block = create_block_mask(mask_mod, B, None, Lq, Lk, device=q.device) if kw else None
    compiled = torch.compile(flex_attention)
    group = Hq // k.shape[1]
    return lambda q, k, v: compiled(q, k, v, block_mask=block, enable_gqa=group > 1)


def cases(device, quick):
    gen = torch.Generator().manual_seed(0)
    dtypes = [torch.float16, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    shapes = GPU_SHAPES
    if quick:
        shapes = [s for s in shapes if s[0] in QUICK]
    triton_ok = device.type == "cuda" and _backend.unavailable_reason("triton", "cuda") is None
    out = []
    for name, B, Hq, Hkv, Lq, Lk, D, kind in shapes:
        if device.type == "cpu":  # shrink: the reference materialises the scores
            B, Lq, Lk = max(1, B // 32), min(Lq, 512), min(Lk, 512)
        kw = _masks(kind, B, Lq, Lk, device, gen)
        pairs = _visible_pairs(kw, B, Lq, Lk, device)
        for dtype in dtypes:
            mk = lambda H, L: torch.randn(B, L, H, D, device=device, dtype=dtype).transpose(1, 2)  # noqa: E731
            q, k, v = mk(Hq, Lq), mk(Hkv, Lk), mk(Hkv, Lk)
            fns = {"sdpa": _sdpa(q, k, v, kw, Hq),
                   "reference": lambda q, k, v: crossfuse.ops.cross_attention(q, k, v, backend="reference", **kw)}
            if triton_ok:
                fns["triton"] = lambda q, k, v: crossfuse.ops.cross_attention(q, k, v, backend="triton", **kw)
                flex = None if quick else _flex(q, k, v, kw, Hq)  # its compile takes minutes: full runs only
                if flex is not None:
                    fns["flex_attention"] = flex
            flops = 4 * pairs * Hq * D  # QK^T and PV over the visible pairs
            nbytes = (q.numel() * 2 + k.numel() * 2) * q.element_size()
            for backward in (False, True):
                impls = {}
                for impl, fn in fns.items():
                    leaves = [t.detach().requires_grad_(backward) for t in (q, k, v)]
                    impls[impl] = _step(fn, leaves, backward)
                out.append(Case(op="cross_attention", shape=f"{name} B={B} H={Hq}/{Hkv} {Lq}x{Lk} D={D}",
                                mode="fwd+bwd" if backward else "fwd", dtype=str(dtype).replace("torch.", ""),
                                impls=impls, peer="sdpa", flops=flops * (3.5 if backward else 1),
                                bytes=nbytes * (2 if backward else 1), meta={"B": B, "Lq": Lq, "Lk": Lk, "D": D}))
    return out


def _step(fn, leaves, backward):
    if not backward:
        def fwd():
            with torch.no_grad():
                return fn(*leaves)
        return fwd

    def fwd_bwd():
        fn(*leaves).sum().backward()
    return fwd_bwd
