"""open_clip's ClipLoss and SigLipLoss on crossfuse's fused contrastive loss: same constructor arguments and
semantics, over torch.distributed. Embeddings are gathered from every rank (with gradient when asked); each rank
scores its rows against all columns; no (B, B) logits anywhere."""
import torch

from crossfuse import _backend
from crossfuse.ops.contrastive_loss import OP, _as_scalar, check, direction_losses, pair_losses


def _gather(features, rank, world_size, with_grad):
    """All ranks' features concatenated in rank order. Without gradient, only the local slice carries one."""
    import torch.distributed as dist
    if with_grad:
        import torch.distributed.nn.functional as dist_fn
        return torch.cat(dist_fn.all_gather(features))
    parts = [torch.empty_like(features) for _ in range(world_size)]
    dist.all_gather(parts, features.detach().contiguous())
    parts[rank] = features
    return torch.cat(parts)


class _Base(torch.nn.Module):
    def _prepare(self, image_features, text_features, logit_scale, logit_bias):
        check("ClipLoss" if self.kind == "clip" else "SigLipLoss", image_features, text_features, None, self.kind,
              0.0, "mean")
        device = image_features.device
        scale = _as_scalar(OP, "logit_scale", logit_scale, device).to(device)
        bias = (_as_scalar(OP, "logit_bias", logit_bias, device).to(device) if logit_bias is not None
                else torch.zeros((), device=device))
        backend = _backend.choose(OP, device, self.backend)
        if backend == "reference":  # the oracle materialises S; the distributed path needs the row functions
            backend = "triton" if device.type == "cuda" else "cpu"
        return scale, bias, backend

    def _labels(self, n, offset, device):
        if self.cache_labels and self._cached is not None and self._cached[0] == (n, offset, device):
            return self._cached[1]
        lab = torch.arange(offset, offset + n, device=device)
        if self.cache_labels:
            self._cached = ((n, offset, device), lab)
        return lab


class ClipLoss(_Base):
    """open_clip.ClipLoss: forward(image_features, text_features, logit_scale, output_dict=False), logit_scale
    already exponentiated. local_loss=True: this rank's rows against all columns (labels offset by rank);
    gather_with_grad=True: gradients flow back through the gather to every rank."""
    kind = "clip"

    def __init__(self, local_loss=False, gather_with_grad=False, cache_labels=False, rank=0, world_size=1,
                 use_horovod=False, *, backend=None):
        super().__init__()
        if use_horovod:
            raise ValueError("ClipLoss: horovod is not supported; use torch.distributed")
        self.local_loss, self.gather_with_grad, self.cache_labels = local_loss, gather_with_grad, cache_labels
        self.rank, self.world_size, self.backend = rank, world_size, backend
        self._cached = None

    def forward(self, image_features, text_features, logit_scale, output_dict=False):
        scale, bias, backend = self._prepare(image_features, text_features, logit_scale, None)
        B, device = image_features.shape[0], image_features.device
        img_rows, txt_rows, offset = image_features, text_features, 0
        img_all, txt_all = image_features, text_features
        if self.world_size > 1:
            img_all = _gather(image_features, self.rank, self.world_size, self.gather_with_grad)
            txt_all = _gather(text_features, self.rank, self.world_size, self.gather_with_grad)
            if self.local_loss:
                offset = self.rank * B
            else:
                img_rows, txt_rows = img_all, txt_all
        la = self._labels(img_rows.shape[0], offset, device)
        lb = torch.arange(img_all.shape[0], device=device)
        if img_rows is img_all:  # every row against every column: both directions in one pass
            i2t, t2i = pair_losses("clip", img_all, txt_all, la, lb, scale, bias, 0.0, backend)
        else:
            i2t = direction_losses("clip", img_rows, txt_all, la, lb, scale, bias, 0.0, backend)
            t2i = direction_losses("clip", txt_rows, img_all, la, lb, scale, bias, 0.0, backend)
        loss = (0.5 * (i2t.mean() + t2i.mean())).to(image_features.dtype)
        return {"contrastive_loss": loss} if output_dict else loss


class SigLipLoss(_Base):
    """open_clip.SigLipLoss: forward(image_features, text_features, logit_scale, logit_bias, output_dict=False).
    Across ranks, this rank's images are scored against every rank's texts (gathered with gradient) and the sum
    is divided by the local batch, which is what open_clip's neighbour exchange computes."""
    kind = "siglip"

    def __init__(self, cache_labels=False, rank=0, world_size=1, dist_impl=None, bidir=True, use_horovod=False,
                 *, backend=None):
        super().__init__()
        if use_horovod:
            raise ValueError("SigLipLoss: horovod is not supported; use torch.distributed")
        self.cache_labels, self.rank, self.world_size, self.backend = cache_labels, rank, world_size, backend
        self._cached = None

    def forward(self, image_features, text_features, logit_scale, logit_bias=None, output_dict=False):
        scale, bias, backend = self._prepare(image_features, text_features, logit_scale, logit_bias)
        B, device = image_features.shape[0], image_features.device
        txt_all, offset = text_features, 0
        if self.world_size > 1:
            txt_all = _gather(text_features, self.rank, self.world_size, True)
            offset = self.rank * B
        la = self._labels(B, offset, device)
        lb = torch.arange(txt_all.shape[0], device=device)
        loss = (direction_losses("siglip", image_features, txt_all, la, lb, scale, bias, 0.0, backend, True).sum()
                / max(B, 1)).to(image_features.dtype)
        return {"contrastive_loss": loss} if output_dict else loss
