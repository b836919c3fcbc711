"""normact.GPT and normact.ViT: built from the registry's blocks, any placement / norm / activation / attention."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normact
from normact import functional as NF
from normact.layers.block.transformer import PLACEMENTS
from normact.models import GPT, ViT, embedding_norm_of, final_norm_of


def ids(b=2, t=12, vocab=50, seed=0):
    return torch.randint(vocab, (b, t), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("placement", PLACEMENTS)
def test_gpt_every_placement_runs_and_has_its_end_norms(placement):
    torch.manual_seed(0)
    m = GPT(50, dim=16, depth=3, heads=2, context=16, placement=placement)
    y = m(ids())
    assert y.shape == (2, 12, 50) and torch.isfinite(y).all()
    assert len(m.blocks) == 3 and [b.layer_index for b in m.blocks] == [1, 2, 3]
    assert all(b.depth == 3 for b in m.blocks)
    assert isinstance(m.norm, nn.Identity) != final_norm_of(placement)
    assert (m.embed_norm is not None) == embedding_norm_of(placement)
    assert final_norm_of("pre") and final_norm_of("peri") and not final_norm_of("post")
    assert not final_norm_of("deepnorm") and embedding_norm_of("peri") and not embedding_norm_of("pre")


def test_gpt_is_causal_and_reads_the_readme_spelling():
    torch.manual_seed(0)
    m = GPT(placement="peri", attention="sigmoid", norm="rmsnorm", act="swiglu", dim=16, heads=2, depth=2).eval()
    assert m.attention == "sigmoid_attention" and m.blocks[0].attn.attention == "sigmoid_attention"
    x = ids(vocab=256)
    y = m(x)
    x2 = x.clone()
    x2[:, 7:] = (x2[:, 7:] + 1) % 256
    torch.testing.assert_close(m(x2)[:, :7], y[:, :7], rtol=0, atol=0)  # the past never sees the future
    assert not torch.allclose(m(x2)[:, 7:], y[:, 7:])


def test_gpt_block_is_the_registered_block_with_the_same_weights():
    """The model is nothing but embeddings + the registry's blocks + the final norm + the head."""
    torch.manual_seed(0)
    m = GPT(50, dim=16, depth=2, heads=2, context=16, placement="pre").eval()
    x = ids()
    h = m.tok(x) + m.pos(torch.arange(x.shape[1]))
    ref = normact.create("pre_ln_block", 16, 2, causal=True)
    for block in m.blocks:
        ref.load_state_dict(block.state_dict())
        h = ref(h)
    torch.testing.assert_close(m(x), m.head(m.norm(h)), rtol=0, atol=0)


def test_rotary_positions_make_scores_depend_on_the_offset_only():
    torch.manual_seed(0)
    q, k = torch.randn(1, 1, 1, 8, dtype=torch.float64), torch.randn(1, 1, 1, 8, dtype=torch.float64)

    def score(i, j):
        qi = NF.rotary(q.expand(1, 1, 20, 8).contiguous(), 10000.0)[..., i, :]
        kj = NF.rotary(k.expand(1, 1, 20, 8).contiguous(), 10000.0)[..., j, :]
        return float((qi * kj).sum())

    assert score(5, 2) == pytest.approx(score(13, 10), abs=1e-12)
    assert score(5, 2) != pytest.approx(score(5, 3), abs=1e-6)
    # position 0 is not rotated; the rotation keeps each pair's norm
    x = torch.randn(2, 3, 6, 8, dtype=torch.float64)
    r = NF.rotary(x)
    torch.testing.assert_close(r[..., 0, :], x[..., 0, :], rtol=0, atol=0)
    torch.testing.assert_close(r.norm(dim=-1), x.norm(dim=-1), rtol=1e-12, atol=1e-12)
    # the closed form at position t for the first pair: angle t * base^0 = t
    t = 3
    c, s = math.cos(t), math.sin(t)
    torch.testing.assert_close(r[..., t, 0], x[..., t, 0] * c - x[..., t, 4] * s, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="even"):
        NF.rotary(torch.randn(1, 1, 2, 5))


def test_positions_learned_rope_none():
    torch.manual_seed(0)
    learned = GPT(50, dim=16, heads=2, context=8)
    with pytest.raises(ValueError, match="exceeds the context 8"):
        learned(ids(t=9))
    for positions in ("rope", "none"):
        m = GPT(50, dim=16, heads=2, context=8, positions=positions)
        assert m.pos is None and m(ids(t=32)).shape == (2, 32, 50)  # longer than the training context
    rope = GPT(50, dim=16, heads=2, positions="rope")
    assert all(b.attn.rope_base == 10000.0 for b in rope.blocks)
    with pytest.raises(ValueError, match="positions must be one of"):
        GPT(50, positions="alibi")
    with pytest.raises(ValueError, match="even head dimension"):
        GPT(50, dim=6, heads=2, positions="rope")


def test_norm_kwargs_channel_norms_and_gated_acts():
    torch.manual_seed(0)
    m = GPT(50, norm="dyt", norm_kwargs={"alpha_init": 0.2}, dim=16, heads=2)
    assert all(float(b.attn_norm.alpha.detach()) == pytest.approx(0.2) for b in m.blocks)
    assert float(m.norm.alpha.detach()) == pytest.approx(0.2)
    bn = GPT(50, norm="batchnorm", dim=16, heads=2, placement="post")
    assert bn(ids()).shape == (2, 12, 50)
    with pytest.raises(ValueError, match="norm_kwargs given for norm='none'"):
        GPT(50, norm="none", norm_kwargs={"eps": 1e-3})
    with pytest.raises(ValueError, match="not a drop-in"):
        GPT(50, norm="td_layernorm", norm_kwargs={"eps": 1e-3})
    none = GPT(50, norm="none", dim=16, heads=2)
    assert not any(isinstance(x, nn.LayerNorm) for x in none.modules())
    glu = GPT(50, act="swiglu", dim=16, heads=2, mlp_ratio=2)
    assert glu.blocks[0].mlp.fc1.out_features == 64 and glu.blocks[0].mlp.fc2.in_features == 32


def test_tied_embeddings_and_padding_mask():
    torch.manual_seed(0)
    m = GPT(50, dim=16, heads=2, tie_embeddings=True)
    assert m.head.weight is m.tok.weight
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in GPT(50, dim=16, heads=2).parameters())
    m.eval()
    x = ids(t=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, :2] = False  # left padding of the second sequence
    y = m(x, mask)
    x2 = x.clone()
    x2[1, :2] = 7  # what a padded position holds changes nothing for the real tokens
    torch.testing.assert_close(m(x2, mask)[1, 2:], y[1, 2:], rtol=1e-6, atol=1e-6)


def test_gpt_and_vit_reject_bad_input():
    m = GPT(50, dim=16, heads=2)
    with pytest.raises(ValueError, match=r"\(B, T\) integer token ids"):
        m(torch.randn(2, 5))
    with pytest.raises(ValueError, match="placement must be one of"):
        GPT(50, placement="middle")
    with pytest.raises(ValueError, match="attention"):
        GPT(50, attention="gelu")
    v = ViT((1, 8, 8), 3, dim=16, heads=2, depth=1)
    with pytest.raises(ValueError, match=r"\(N, 1, 8, 8\)"):
        v(torch.randn(2, 1, 8, 9))
    with pytest.raises(ValueError, match="divisible into 3x3"):
        ViT((1, 8, 8), 3, patch=3)


@pytest.mark.parametrize("placement", ["pre", "post", "deepnorm", "normformer"])
def test_vit_trains_a_step_and_is_permutation_aware_through_its_positions(placement):
    torch.manual_seed(0)
    v = ViT((1, 8, 8), 3, dim=16, heads=2, depth=2, placement=placement, attention="qk_norm")
    x = torch.randn(4, 1, 8, 8)
    loss = nn.functional.cross_entropy(v(x), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in v.parameters() if p.requires_grad)
    assert len(v.blocks) == 2 and not any(b.causal for b in v.blocks)


def test_bench_builds_its_gpt_and_vit_from_these_models():
    from normact.bench.models import build_model

    g = build_model("gpt", norm="rmsnorm", act="gelu", vocab_size=20, dim=16, depth=2, heads=2, context=8,
                    placement="peri", attention="sigmoid")  # fmt: skip
    assert isinstance(g, GPT) and g.placement == "peri" and g.attention == "sigmoid_attention"
    v = build_model("vit", norm="layernorm", act="gelu", in_shape=(1, 8, 8), num_classes=3, dim=16, heads=2)
    assert isinstance(v, ViT)


def test_any_activation_class_or_factory_fits():
    m = GPT(50, act=nn.GELU, dim=16, heads=2)
    assert type(m.blocks[0].mlp.act) is nn.GELU and m(ids()).shape == (2, 12, 50)


@pytest.mark.parametrize("placement", ["pre", "normformer"])
def test_the_probe_sees_the_registered_blocks_not_their_insides(placement):
    """NormFormer's FFN holds a norm (its mid norm): a module with weights and a norm that keeps the shape, which
    the probe would take for a residual block of its own were it not inside a registered block."""
    torch.manual_seed(0)
    m = GPT(50, dim=16, heads=2, depth=2, placement=placement)
    with normact.probe(m) as p:
        m(ids())
    report = p.report()
    assert [n for n in report if report[n].kind == "block"] == ["blocks.0", "blocks.1"]
    assert [r["module"] for r in report.signal_propagation()] == ["blocks.0", "blocks.1"]
    if placement == "normformer":
        assert report["blocks.0.mlp.mid_norm"].kind == "norm"
