"""Naive contrastive losses that materialise the (B, B) logits: the oracle for crossfuse.ops.contrastive_loss.

CLIP: the symmetric InfoNCE, image->text cross entropy over the rows of S = scale * I T^T and text->image over
its columns, averaged; with `labels`, every pair with equal labels is a positive and the target spreads evenly
over a row's positives; label_smoothing mixes in the uniform target. SigLIP: sum over pairs of
-log sigmoid(z (S + bias)), z = +1 for positives and -1 otherwise, divided by B for reduction="mean"
(open_clip's SigLipLoss)."""
import torch
import torch.nn.functional as F


def per_sample_losses(image_emb, text_emb, logit_scale, logit_bias=None, kind="clip", labels=None,
                      label_smoothing=0.0):
    B = image_emb.shape[0]
    s = logit_scale * image_emb @ text_emb.t()
    if logit_bias is not None:
        s = s + logit_bias
    lab = torch.arange(B, device=s.device) if labels is None else labels.to(s.device)
    same = lab[:, None] == lab[None, :]
    if kind == "siglip":
        z = same.to(s.dtype) * 2 - 1
        return F.softplus(-z * s).sum(1)
    t = same.to(s.dtype)
    eps = label_smoothing
    row_t = (1 - eps) * t / t.sum(1, keepdim=True) + eps / B
    col_t = (1 - eps) * t / t.sum(0, keepdim=True) + eps / B
    i2t = -(row_t * F.log_softmax(s, 1)).sum(1)
    t2i = -(col_t * F.log_softmax(s, 0)).sum(0)
    return 0.5 * (i2t + t2i)


def contrastive_loss(image_emb, text_emb, logit_scale, logit_bias=None, kind="clip", labels=None,
                     label_smoothing=0.0, reduction="mean"):
    losses = per_sample_losses(image_emb, text_emb, logit_scale, logit_bias, kind, labels, label_smoothing)
    if reduction == "none":
        return losses
    return losses.sum() if reduction == "sum" else losses.mean()
