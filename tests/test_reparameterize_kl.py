"""reparameterize_kl against its float64 reference: z, the KL term and both gradients under the tolerance rule,
any leading shape, odd latent sizes, drawn noise, bad input."""
import pytest
import torch

import crossfuse
from crossfuse import reference
from harness import assert_within_rule, backend_cases, leaf_like


def _run(fn, mu, lv, eps, cz, ck, **kw):
    leaves = [leaf_like(mu), leaf_like(lv)]
    z, kl = fn(leaves[0], leaves[1], eps, **kw)
    g = torch.autograd.grad((z.double() * cz).sum() + (kl.double() * ck).sum(), leaves)
    return (z, kl), g


@pytest.mark.parametrize("shape", [(1, 1), (7, 13), (3, 5, 1500), (0, 4)])
@pytest.mark.parametrize("backend,device,dtype", backend_cases(backends=("reference", "triton")))
def test_against_reference(backend, device, dtype, shape):
    mu = torch.randn(shape, device=device).to(dtype)
    lv = (torch.randn(shape, device=device) * 0.5).to(dtype)
    eps = torch.randn(shape, device=device).to(dtype)
    cz = torch.randn(shape, dtype=torch.float64, device=device)
    ck = torch.randn(shape[:-1], dtype=torch.float64, device=device)
    ref = lambda m, l, e: reference.reparameterize_kl(m, l, e)  # noqa: E731
    r_out, r_g = _run(ref, mu.double(), lv.double(), eps.double(), cz, ck)
    l_out, l_g = _run(ref, mu, lv, eps, cz, ck)
    out, g = _run(crossfuse.ops.reparameterize_kl, mu, lv, eps, cz, ck, backend=backend)
    for name, a, lo, r in zip(("z", "kl", "dmu", "dlogvar"), list(out) + list(g), list(l_out) + list(l_g),
                              list(r_out) + list(r_g)):
        assert_within_rule(name, a, lo, r, dtype)


def test_noise_is_drawn_when_absent():
    torch.manual_seed(3)
    mu, lv = torch.zeros(4, 6), torch.zeros(4, 6)
    for backend in ("reference", "triton"):
        torch.manual_seed(3)
        z, kl = crossfuse.ops.reparameterize_kl(mu, lv, backend=backend)
        torch.manual_seed(3)
        torch.testing.assert_close(z, torch.randn(4, 6))
        assert (kl == 0).all()


def test_bad_input_names_the_argument():
    mu = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="logvar like mu"):
        crossfuse.ops.reparameterize_kl(mu, torch.zeros(2, 4))
    with pytest.raises(TypeError, match="mu of dtype"):
        crossfuse.ops.reparameterize_kl(mu.long(), mu.long())
    with pytest.raises(TypeError, match="noise to be a torch.Tensor"):
        crossfuse.ops.reparameterize_kl(mu, mu, noise=[1.0])
