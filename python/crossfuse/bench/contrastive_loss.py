"""contrastive_loss benchmark: the fused CLIP / SigLIP losses against open_clip-style eager losses (materialised
logits, the peer) and a chunked eager version, forward+backward; time and (on GPU) peak memory, and the extra
memory beyond the gradients the step returns."""
import torch
import torch.nn.functional as F

import crossfuse
from crossfuse import _backend
from crossfuse.bench.runner import Case

GPU_SHAPES = [(B, D) for B in (1024, 4096, 16384, 32768) for D in (512, 768, 1024)]
QUICK_GPU = [(4096, 512), (32768, 512)]
CPU_SHAPES = [(1024, 512), (4096, 512)]
QUICK_CPU = [(2048, 512)]


def _eager(kind):
    def clip(i, t, scale, bias):
        logits = scale * i @ t.t()
        labels = torch.arange(i.shape[0], device=i.device)
        return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels))

    def siglip(i, t, scale, bias):
        logits = scale * i @ t.t() + bias
        z = 2 * torch.eye(i.shape[0], device=i.device, dtype=logits.dtype) - 1
        return -F.logsigmoid(z * logits).sum() / i.shape[0]
    return clip if kind == "clip" else siglip


def _chunked(kind, chunk=1024):
    """The chunked eager loss: per row chunk, logits against every column (checkpointed so the backward
    recomputes them): O(chunk x B) memory, several kernel launches per chunk."""
    from torch.utils.checkpoint import checkpoint

    def rows(a, b, scale, bias, r0, siglip):
        s = scale * a @ b.t() + bias
        idx = torch.arange(r0, r0 + a.shape[0], device=a.device)
        if siglip:
            z = -torch.ones_like(s)
            z[torch.arange(a.shape[0]), idx] = 1
            return -F.logsigmoid(z * s).sum()
        return F.cross_entropy(s, idx, reduction="sum")

    def loss(i, t, scale, bias):
        B = i.shape[0]
        total = 0
        for r0 in range(0, B, chunk):
            total = total + checkpoint(rows, i[r0:r0 + chunk], t, scale, bias, r0, kind == "siglip", use_reentrant=False)
            if kind == "clip":
                total = total + checkpoint(rows, t[r0:r0 + chunk], i, scale, bias, r0, False, use_reentrant=False)
        return total / B * (0.5 if kind == "clip" else 1.0)
    return loss


def cases(device, quick):
    if device.type == "cuda":
        shapes, dtypes = (QUICK_GPU if quick else GPU_SHAPES), [torch.float16, torch.bfloat16]
        ours = [b for b in ("triton",) if _backend.unavailable_reason(b, "cuda") is None]
    else:
        shapes, dtypes, ours = (QUICK_CPU if quick else CPU_SHAPES), [torch.float32], ["cpu"]
    out = []
    for kind in ("clip", "siglip"):
        for dtype in dtypes:
            for B, D in shapes:
                e = F.normalize(torch.randn(2, B, D, device=device), dim=-1).to(dtype)
                i, t = e[0].requires_grad_(), e[1].requires_grad_()
                scale = torch.tensor(30.0, device=device, requires_grad=True)
                bias = torch.tensor(-10.0, device=device, requires_grad=True)
                impls = {"open_clip eager": _step(_eager(kind), i, t, scale, bias),
                         "chunked eager": _step(_chunked(kind), i, t, scale, bias)}
                for b in ours:
                    impls[b] = _step(lambda a, c, s, bb, b=b: crossfuse.ops.contrastive_loss(
                        a, c, s, logit_bias=bb if kind == "siglip" else None, kind=kind, backend=b), i, t, scale, bias)
                flops = 2 * B * B * D * (2 if kind == "clip" else 1) * 3
                out.append(Case(op="contrastive_loss", shape=f"{kind} B={B} D={D}", mode="fwd+bwd",
                                dtype=str(dtype).replace("torch.", ""), impls=impls, peer="open_clip eager",
                                flops=flops, bytes=4 * B * D * e.element_size(),
                                meta={"B": B, "D": D, "kind": kind, "output_bytes": 2 * B * D * e.element_size() + 8,
                                      "fp32_logits_bytes": 4 * B * B}))
    return out


def _step(fn, i, t, scale, bias):
    def run():
        loss = fn(i, t, scale, bias)
        torch.autograd.grad(loss.float(), (i, t, scale))
    return run
