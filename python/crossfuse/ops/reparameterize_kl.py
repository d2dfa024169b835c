"""reparameterize_kl: the VAE's z = mu + sigma * eps and its KL term to N(0, I), in one fused pass (triton);
on CPU the reference (plain torch) runs."""
from __future__ import annotations

import importlib

import torch

from crossfuse import _backend

OP = "reparameterize_kl"
_backend.register_op(OP, ("reference", "triton"))


def _kernels():
    return importlib.import_module("crossfuse.kernels.reparameterize_kl")


# Custom ops (eager autograd and torch.compile both run them).
@torch.library.custom_op("crossfuse::reparameterize_kl", mutates_args=())
def _fused(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = _backend.empty(mu.shape, dtype=mu.dtype, device=mu.device)
    kl = _backend.empty(mu.shape[:1], dtype=torch.float32, device=mu.device)
    _kernels().forward(mu, logvar, eps, z, kl)
    return z, kl


@_fused.register_fake
def _(mu, logvar, eps):
    return torch.empty_like(mu), mu.new_empty(mu.shape[:1], dtype=torch.float32)


@torch.library.custom_op("crossfuse::reparameterize_kl_backward", mutates_args=())
def _fused_backward(mu: torch.Tensor, logvar: torch.Tensor, eps: torch.Tensor, dz: torch.Tensor,
                    dkl: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dmu, dlv = torch.empty_like(mu), torch.empty_like(logvar)
    _kernels().backward(mu, logvar, eps, dz, dkl.float().contiguous(), dmu, dlv)
    return dmu, dlv


@_fused_backward.register_fake
def _(mu, logvar, eps, dz, dkl):
    return torch.empty_like(mu), torch.empty_like(logvar)


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, dz, dkl):
    mu, logvar, eps = ctx.saved_tensors
    dmu, dlv = _fused_backward(mu, logvar, eps, dz, dkl)
    return dmu, dlv, None


_fused.register_autograd(_backward, setup_context=_setup_context)


def reparameterize_kl(mu, logvar, noise=None, *, backend=None):
    """(z, kl) for a diagonal Gaussian N(mu, exp(logvar)): z = mu + exp(logvar / 2) * noise, with noise ~ N(0, I)
    drawn from torch's generator when None, and kl = KL(N(mu, exp(logvar)) || N(0, I)) summed over the last
    dimension (shape mu.shape[:-1]). Gradients flow to mu and logvar (not to noise)."""
    op = OP
    for name, t in (("mu", mu), ("logvar", logvar), ("noise", noise)):
        if t is None and name == "noise":
            continue
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{op}: expected {name} to be a torch.Tensor, got {type(t).__name__}")
        if t.dtype not in _backend.DTYPE_CODES:
            raise TypeError(f"{op}: expected {name} of dtype float32, float16 or bfloat16, got {t.dtype}")
        if name != "mu" and (t.shape != mu.shape or t.dtype != mu.dtype or t.device != mu.device):
            raise ValueError(f"{op}: expected {name} like mu ({tuple(mu.shape)}, {mu.dtype}, {mu.device}), got "
                             f"({tuple(t.shape)}, {t.dtype}, {t.device})")
    if mu.dim() == 0:
        raise ValueError(f"{op}: expected mu with at least one dimension (the latent one), got a scalar")
    eps = torch.randn_like(mu) if noise is None else noise
    chosen = _backend.choose(op, mu.device, backend)
    if chosen == "reference":
        from crossfuse.reference.reparameterize_kl import reparameterize_kl as ref
        return ref(mu, logvar, eps)
    lead, N = mu.shape[:-1], mu.shape[-1]
    flat = lambda t: t.reshape(-1, N) if t.stride(-1) == 1 else t.contiguous().reshape(-1, N)  # noqa: E731
    z, kl = _fused(flat(mu), flat(logvar), flat(eps))
    return z.reshape(mu.shape), kl.reshape(lead).to(mu.dtype)
