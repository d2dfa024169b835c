"""The layers on cross_attention: MultiheadCrossAttention against nn.MultiheadAttention (weights loaded both
ways), GatedCrossAttentionBlock against OpenFlamingo's math with a materialised mask, and
BidirectionalCrossAttention against its two-softmax definition."""
import pytest
import torch

import crossfuse

BACKENDS = ["reference", "triton"]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kdim,vdim,batch_first", [(None, None, True), (24, 40, True), (24, 40, False)])
def test_multihead_cross_attention_matches_nn(backend, kdim, vdim, batch_first):
    E, H, B, Lq, Lk = 32, 4, 3, 7, 11
    theirs = torch.nn.MultiheadAttention(E, H, kdim=kdim, vdim=vdim, batch_first=batch_first)
    ours = crossfuse.nn.MultiheadCrossAttention(E, H, kdim=kdim, vdim=vdim, batch_first=batch_first, backend=backend)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict())
    theirs.load_state_dict(ours.state_dict())
    shape = lambda L, d: (B, L, d) if batch_first else (L, B, d)  # noqa: E731
    x = torch.randn(shape(Lq, E), requires_grad=True)
    k = torch.randn(shape(Lk, kdim or E))
    v = torch.randn(shape(Lk, vdim or E))
    kpm = torch.rand(B, Lk) < 0.3
    kpm[:, 0] = False  # nn.MultiheadAttention gives NaN for a query that sees nothing
    want, _ = theirs(x, k, v, key_padding_mask=kpm, need_weights=False)
    got, none = ours(x, k, v, key_padding_mask=kpm)
    assert none is None
    torch.testing.assert_close(got, want, atol=2e-6, rtol=1e-5)
    gw, = torch.autograd.grad(want.sum(), x)
    gg, = torch.autograd.grad(got.sum(), x)
    torch.testing.assert_close(gg, gw, atol=2e-6, rtol=1e-5)
    want_w = theirs(x, k, v, key_padding_mask=kpm)[1]
    got_out, got_w = ours(x, k, v, key_padding_mask=kpm, need_weights=True)
    torch.testing.assert_close(got_w, want_w, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(got_out, want, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_multihead_cross_attention_lengths_unbatched_and_gqa(backend):
    E, H, B, Lq, Lk = 32, 4, 2, 5, 9
    m = crossfuse.nn.MultiheadCrossAttention(E, H, backend=backend)
    x, c = torch.randn(B, Lq, E), torch.randn(B, Lk, E)
    lengths = torch.tensor([4, 9])
    kpm = torch.arange(Lk)[None, :] >= lengths[:, None]
    torch.testing.assert_close(m(x, c, kv_lengths=lengths)[0], m(x, c, key_padding_mask=kpm)[0])
    torch.testing.assert_close(m(x[0], c[0])[0], m(x[:1], c[:1])[0][0])  # unbatched input
    g = crossfuse.nn.MultiheadCrossAttention(E, H, num_kv_heads=2, backend=backend)
    shapes = {k: tuple(v.shape) for k, v in g.state_dict().items()}
    assert shapes["k_proj_weight"] == (16, E) and shapes["in_proj_bias"] == (E + 32,)
    # GQA equals full MHA whose k/v heads are the shared ones repeated
    full = crossfuse.nn.MultiheadCrossAttention(E, H, kdim=E, vdim=E, backend=backend)
    with torch.no_grad():
        rep = lambda w: w.view(2, 8, -1).repeat_interleave(2, 0).reshape(32, -1)  # noqa: E731
        full.in_proj_weight.copy_(torch.cat([g.q_proj_weight, rep(g.k_proj_weight), rep(g.v_proj_weight)]))
        bq, bk, bv = g.in_proj_bias.split((32, 16, 16))
        full.in_proj_bias.copy_(torch.cat([bq, rep(bk[:, None])[:, 0], rep(bv[:, None])[:, 0]]))
        full.out_proj.load_state_dict(g.out_proj.state_dict())
    torch.testing.assert_close(g(x, c)[0], full(x, c)[0], atol=2e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        crossfuse.nn.MultiheadCrossAttention(E, H, num_kv_heads=3)


def _flamingo_reference(block, x, media, media_locations, only_immediate):
    """OpenFlamingo's MaskedCrossAttention math with the (T_txt x T_img*n) mask materialised; text before the
    first image gets 0 from the attention in both modes."""
    a = block.attn
    B, T_img, n, _ = media.shape
    h = a.heads
    q = a.to_q(a.norm(x))
    k, v = a.to_kv(media.reshape(B, T_img * n, -1)).chunk(2, -1)
    q, k, v = (t.view(B, t.shape[1], h, -1).transpose(1, 2) for t in (q, k, v))
    sim = (q * q.shape[-1] ** -0.5) @ k.transpose(-1, -2)
    text_time = media_locations.long().cumsum(-1)
    media_time = torch.arange(T_img).repeat_interleave(n) + 1
    op = torch.eq if only_immediate else torch.ge
    mask = op(text_time[:, None, :, None], media_time[None, None, None, :])
    sim = sim.masked_fill(~mask, -torch.finfo(sim.dtype).max)
    attn = (sim - sim.amax(-1, keepdim=True).detach()).softmax(-1)
    attn = attn.masked_fill((text_time == 0)[:, None, :, None], 0.0)
    out = a.to_out((attn @ v).transpose(1, 2).reshape(B, x.shape[1], -1))
    x = out * block.attn_gate.tanh() + x
    return block.ff(x) * block.ff_gate.tanh() + x


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("only_immediate", [True, False])
def test_gated_cross_attention_block_matches_openflamingo(backend, only_immediate):
    dim, dim_visual, B, T_txt, T_img, n = 32, 24, 2, 37, 3, 5
    block = crossfuse.nn.GatedCrossAttentionBlock(dim, dim_visual, dim_head=8, heads=4,
                                                  only_attend_immediate_media=only_immediate, backend=backend)
    assert block.attn_gate.item() == 0 and block.ff_gate.item() == 0
    assert {"attn.norm.weight", "attn.to_q.weight", "attn.to_kv.weight", "attn.to_out.weight", "attn_gate",
            "ff.0.weight", "ff.1.weight", "ff.3.weight", "ff_gate"} <= set(block.state_dict())
    with torch.no_grad():
        block.attn_gate.fill_(0.7)
        block.ff_gate.fill_(-0.4)
    x = torch.randn(B, T_txt, dim, requires_grad=True)
    media = torch.randn(B, T_img, n, dim_visual)
    locs = torch.zeros(B, T_txt, dtype=torch.bool)
    locs[0, [4, 10, 30]] = True
    locs[1, [0, 20]] = True
    got = block(x, media, locs)
    want = _flamingo_reference(block, x, media, locs, only_immediate)
    torch.testing.assert_close(got, want, atol=3e-6, rtol=1e-5)
    g1, = torch.autograd.grad(got.sum(), x)
    g2, = torch.autograd.grad(want.sum(), x)
    torch.testing.assert_close(g1, g2, atol=3e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bidirectional_cross_attention_matches_two_softmaxes(backend):
    dim, cdim, B, Lx, Lc, h, dh = 16, 24, 2, 9, 13, 2, 8
    m = crossfuse.nn.BidirectionalCrossAttention(dim, cdim, heads=h, dim_head=dh, backend=backend)
    x, c = torch.randn(B, Lx, dim), torch.randn(B, Lc, cdim)
    mask = torch.ones(B, Lx, dtype=torch.bool)
    mask[1, -3:] = False
    cmask = torch.ones(B, Lc, dtype=torch.bool)
    cmask[0, :4] = False
    out, cout = m(x, c, mask=mask, context_mask=cmask)
    split = lambda t: t.view(B, t.shape[1], h, dh).transpose(1, 2)  # noqa: E731
    qk, v, cqk, cv = split(m.to_qk(x)), split(m.to_v(x)), split(m.context_to_qk(c)), split(m.context_to_v(c))
    sim = qk @ cqk.transpose(-1, -2) * dh ** -0.5
    keep = mask[:, None, :, None] & cmask[:, None, None, :]
    sim = sim.masked_fill(~keep, float("-inf"))
    attn = torch.nan_to_num(sim.softmax(-1))  # rows/columns that keep nothing: 0
    cattn = torch.nan_to_num(sim.softmax(-2))
    merge = lambda t: t.transpose(1, 2).reshape(B, t.shape[2], h * dh)  # noqa: E731
    torch.testing.assert_close(out, m.to_out(merge(attn @ cv)), atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(cout, m.context_to_out(merge(cattn.transpose(-1, -2) @ v)), atol=2e-6, rtol=1e-5)
