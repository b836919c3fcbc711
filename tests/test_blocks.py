"""The transformer residual blocks (registry kind ``block``): the papers' closed forms and the identities between
placements (DeepNorm's constants, alpha = beta = 1 is Post-LN, Peri-LN with identity output norms is Pre-LN,
LayerNorm Scaling at l = 1 is Pre-LN, NormFormer's head scale), masking, every norm/activation/attention
combination, and the probe's view of the blocks. The layer harness (tests/entries/block.py) checks each
registered block against a float64 reference."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import normact
from normact.layers.block import transformer as T
from normact.layers.block.attention import MultiHeadAttention
from normact.probing.probe import module_kind

DIM, HEADS = 8, 2


def tokens(b=2, t=5, d=DIM, seed=0):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def block(name, seed=0, **kwargs):
    torch.manual_seed(seed)
    return normact.create(name, kwargs.pop("dim", DIM), kwargs.pop("heads", HEADS), dtype=torch.float64, **kwargs)


def perturb(module, seed=1):
    """Move every parameter off its init (norm gains and biases included), deterministically."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


# --------------------------------------------------------------------------------------------------
# DeepNorm (Wang et al., 2022, arXiv:2203.00555)


def test_deepnorm_constants_of_the_paper():
    a, b = normact.deepnorm_constants(N=6)  # encoder-only, N = 6
    assert (round(a, 6), round(b, 6)) == (1.861210, 0.379918)
    assert normact.deepnorm_constants(M=6, arch="decoder") == pytest.approx((1.861210, 0.379918), abs=5e-7)
    enc = normact.deepnorm_constants(N=6, M=6, arch="encoder-decoder", stack="encoder")
    dec = normact.deepnorm_constants(N=6, M=6, arch="encoder-decoder", stack="decoder")
    assert (round(enc[0], 6), round(enc[1], 6)) == (1.417938, 0.496989)
    assert (round(dec[0], 6), round(dec[1], 6)) == (2.059767, 0.343295)
    # the closed forms, for another depth
    assert normact.deepnorm_constants(N=100) == pytest.approx((200**0.25, 800**-0.25), rel=1e-15)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"arch": "decoder", "N": 6}, {"arch": "encoder-decoder", "N": 6}, {"N": 0}, {"N": 6, "arch": "enc"}],
)
def test_deepnorm_constants_reject_missing_or_bad_arguments(kwargs):
    with pytest.raises((ValueError, TypeError)):
        normact.deepnorm_constants(**kwargs)
    with pytest.raises(ValueError, match="stack"):
        normact.deepnorm_constants(N=6, M=6, arch="encoder-decoder")


def test_deepnorm_block_defaults_to_the_encoder_constants_of_its_depth():
    m = block("deepnorm_block", depth=6)
    assert (m.alpha, m.beta) == normact.deepnorm_constants(N=6)
    m = block("deepnorm_block", deepnorm_alpha=1.417938, deepnorm_beta=0.496989)
    assert (m.alpha, m.beta) == (1.417938, 0.496989)
    with pytest.raises(ValueError, match="deepnorm"):
        block("pre_ln_block", deepnorm_alpha=2.0)


def test_deepnorm_with_alpha_beta_one_is_post_ln():
    post = perturb(block("post_ln_block", seed=3))
    deep = block("deepnorm_block", seed=3, deepnorm_alpha=1.0, deepnorm_beta=1.0)
    assert all(torch.equal(a, b) for a, b in zip(block("post_ln_block", seed=3).state_dict().values(),
                                                  deep.state_dict().values(), strict=True))  # fmt: skip
    deep.load_state_dict(post.state_dict())
    x = tokens()
    torch.testing.assert_close(deep(x), post(x), rtol=0, atol=0)
    # and alpha != 1 is not
    deep2 = block("deepnorm_block", seed=3, depth=6)
    deep2.load_state_dict(post.state_dict())
    assert not torch.allclose(deep2(x), post(x))


def test_deepnorm_xavier_gain_beta_on_value_output_and_ffn_only():
    dim, depth = 256, 6
    torch.manual_seed(0)
    m = normact.create("deepnorm_block", dim, 4, depth=depth, mlp_ratio=2, dtype=torch.float64)
    beta = normact.deepnorm_constants(N=depth)[1]

    def xavier_std(w, gain):
        fan_out, fan_in = w.shape
        return gain * math.sqrt(2.0 / (fan_in + fan_out))

    for w, gain in [
        (m.attn.q_proj.weight, 1.0),
        (m.attn.k_proj.weight, 1.0),
        (m.attn.v_proj.weight, beta),
        (m.attn.out_proj.weight, beta),
        (m.mlp.fc1.weight, beta),
        (m.mlp.fc2.weight, beta),
    ]:
        assert w.std().item() == pytest.approx(xavier_std(w, gain), rel=0.02)
        assert abs(w.mean().item()) < 0.02 * xavier_std(w, gain) * 10
    # reset_parameters restores the same draws
    state = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        m.attn.v_proj.weight.add_(1.0)
    torch.manual_seed(0)
    m.reset_parameters()
    assert all(torch.equal(v, m.state_dict()[k]) for k, v in state.items())


# --------------------------------------------------------------------------------------------------
# Pre-LN / Post-LN (Xiong et al., 2020), Peri-LN (Kim et al., 2025), depth-scaled sandwich (Pangu Ultra)


def zero_branches(m):
    with torch.no_grad():
        for p in (m.attn.out_proj.weight, m.attn.out_proj.bias, m.mlp.fc2.weight, m.mlp.fc2.bias):
            p.zero_()
    return m


def test_pre_ln_with_zero_branches_is_the_identity_and_post_ln_is_the_norm():
    x = tokens()
    torch.testing.assert_close(zero_branches(block("pre_ln_block"))(x), x, rtol=0, atol=0)
    post = zero_branches(block("post_ln_block"))
    mu, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    ln = (x - mu) / torch.sqrt(var + 1e-5)
    ln2 = (ln - ln.mean(-1, keepdim=True)) / torch.sqrt(ln.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(post(x), ln2, rtol=1e-12, atol=1e-12)


def test_pre_ln_final_norm_normalizes_the_output():
    y = block("pre_ln_block", final_norm=True)(tokens())
    torch.testing.assert_close(y.mean(-1), torch.zeros_like(y[..., 0]), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones_like(y[..., 0]), atol=1e-4, rtol=0)


def test_peri_ln_with_identity_output_norms_is_pre_ln():
    pre = perturb(block("pre_ln_block", seed=5))
    peri = block("peri_ln_block", seed=5)
    missing, unexpected = peri.load_state_dict(pre.state_dict(), strict=False)
    assert not unexpected and all(k.startswith(("attn_out_norm", "mlp_out_norm")) for k in missing)
    peri.attn_out_norm, peri.mlp_out_norm = nn.Identity(), nn.Identity()
    x = tokens()
    torch.testing.assert_close(peri(x), pre(x), rtol=0, atol=0)
    # the same with both ends: an embedding norm in front, a final norm behind
    pre_ends = block("pre_ln_block", seed=5, final_norm=True)
    peri_ends = block("peri_ln_block", seed=5, embedding_norm=True, final_norm=True)
    peri_ends.attn_out_norm, peri_ends.mlp_out_norm = nn.Identity(), nn.Identity()
    pre_ends.load_state_dict(perturb(pre_ends).state_dict())
    peri_ends.load_state_dict(pre_ends.state_dict(), strict=False)
    with torch.no_grad():
        peri_ends.embedding_norm.weight.fill_(1.0)
        peri_ends.embedding_norm.bias.zero_()
    xn = (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(peri_ends(x), pre_ends(xn), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("name", ["peri_ln_block", "sandwich_depth_scaled_block", "normformer_block"])
def test_an_output_norm_makes_the_attention_increment_independent_of_the_output_projection_scale(name):
    m = perturb(block(name, depth=4, norm="rmsnorm"))  # eps = machine epsilon: scale-invariant to rounding
    x = tokens()
    y = m(x)
    with torch.no_grad():
        m.attn.out_proj.weight.mul_(7.0)
        m.attn.out_proj.bias.mul_(7.0)
    torch.testing.assert_close(m(x), y, rtol=1e-12, atol=1e-12)


def test_depth_scaled_sandwich_norm_increment_has_rms_c_over_sqrt_depth():
    depth, c = 9, 0.6
    m = block("sandwich_depth_scaled_block", norm="rmsnorm", depth=depth, dssn_c=c)
    for norm in (m.attn_out_norm, m.mlp_out_norm):
        torch.testing.assert_close(norm.weight, torch.full((DIM,), c / 3.0, dtype=torch.float64))
    x = tokens(b=3, t=6)
    h = x + m.attn_out_norm(m.attn(m.attn_norm(x)))
    rms = (h - x).pow(2).mean(-1).sqrt()
    torch.testing.assert_close(rms, torch.full_like(rms, c / math.sqrt(depth)), rtol=1e-6, atol=0)
    plain = block("peri_ln_block", norm="rmsnorm")
    torch.testing.assert_close(plain.attn_out_norm.weight, torch.ones(DIM, dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# LayerNorm Scaling (Sun et al., 2025, arXiv:2502.05795)


def test_layernorm_scaling_at_the_first_layer_is_pre_ln():
    pre = perturb(block("pre_ln_block", seed=2))
    lns = block("layernorm_scaling_block", seed=2, layer_index=1, depth=12)
    lns.load_state_dict(pre.state_dict())
    x = tokens()
    torch.testing.assert_close(lns(x), pre(x), rtol=0, atol=0)


def test_layernorm_scaling_divides_the_norm_output_by_sqrt_layer_index():
    """At layer 4 the scaled norm is the norm with gain and bias halved: LN(x) / 2 = LN_{w/2, b/2}(x)."""
    pre = perturb(block("pre_ln_block", seed=2))
    lns = block("layernorm_scaling_block", seed=2, layer_index=4, depth=4)
    lns.load_state_dict(pre.state_dict())
    assert lns.scale == 0.5
    with torch.no_grad():
        for norm in (pre.attn_norm, pre.mlp_norm):
            norm.weight.mul_(0.5)
            norm.bias.mul_(0.5)
    x = tokens()
    torch.testing.assert_close(lns(x), pre(x), rtol=1e-14, atol=1e-14)


# --------------------------------------------------------------------------------------------------
# NormFormer (Shleifer et al., 2021, arXiv:2110.09456)


def test_normformer_extra_parameters():
    dim, heads = 16, 4
    pre = normact.create("pre_ln_block", dim, heads)
    nf = normact.create("normformer_block", dim, heads)
    d_ffn = 4 * dim
    extra = sum(p.numel() for p in nf.parameters()) - sum(p.numel() for p in pre.parameters())
    assert extra == 2 * dim + 2 * d_ffn + heads  # attention LN, FFN mid LN, head scales
    assert nf.attn.head_scale.shape == (heads,) and torch.equal(nf.attn.head_scale, torch.ones(heads))


def test_normformer_head_scale_is_a_scaling_of_the_output_projection_columns():
    torch.manual_seed(0)
    a = MultiHeadAttention(DIM, HEADS, head_scale=True, dtype=torch.float64)
    perturb(a)
    b = MultiHeadAttention(DIM, HEADS, head_scale=False, dtype=torch.float64)
    b.load_state_dict(a.state_dict(), strict=False)
    with torch.no_grad():  # W_O's input columns of head i times gamma_i
        b.out_proj.weight.mul_(a.head_scale.repeat_interleave(DIM // HEADS)[None, :])
    x = tokens()
    torch.testing.assert_close(a(x), b(x), rtol=1e-13, atol=1e-13)


def test_normformer_without_its_additions_is_pre_ln():
    pre = perturb(block("pre_ln_block", seed=4))
    nf = block("normformer_block", seed=4)
    nf.load_state_dict(pre.state_dict(), strict=False)
    nf.attn_out_norm, nf.mlp.mid_norm = nn.Identity(), None
    x = tokens()
    torch.testing.assert_close(nf(x), pre(x), rtol=0, atol=0)
    nf2 = block("normformer_block", seed=4, act="swiglu")
    assert nf2.mlp.mid_norm.normalized_shape == (4 * DIM,)  # over the FFN width, after the gating
    assert nf2.mlp.fc1.weight.shape == (8 * DIM, DIM)


# --------------------------------------------------------------------------------------------------
# masks, combinations, the probe


def _attention_blocks():
    """The blocks with self-attention over tokens (not SimBa's MLP block): those taking ``causal``."""
    return sorted(
        n for n in normact.list_layers("block") if "causal" in inspect.signature(normact.info(n).factory).parameters
    )


@pytest.mark.parametrize("name", _attention_blocks())
def test_causal_blocks_do_not_look_ahead(name):
    m = perturb(block(name, causal=True, depth=4, layer_index=2))
    x = tokens(t=6)
    y = m(x)
    x2 = x.clone()
    x2[:, 4:] = torch.randn(2, 2, DIM, dtype=torch.float64)
    y2 = m(x2)
    torch.testing.assert_close(y2[:, :4], y[:, :4], rtol=0, atol=1e-14)
    assert not torch.allclose(y2[:, 4:], y[:, 4:])


@pytest.mark.parametrize("name", _attention_blocks())
def test_padded_tokens_are_not_attended(name):
    m = perturb(block(name, depth=4))
    x = tokens(t=6)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 3:] = False
    y = m(x, mask)
    x2 = x.clone()
    x2[1, 3:] = 10.0 * torch.randn(3, DIM, dtype=torch.float64)
    y2 = m(x2, mask)
    torch.testing.assert_close(y2[1, :3], y[1, :3], rtol=0, atol=1e-13)
    torch.testing.assert_close(y2[0], y[0], rtol=0, atol=0)
    assert not torch.allclose(m(x2)[1, :3], y[1, :3])  # without the mask they are


def _drop_in_norms():
    out = []
    for name in normact.list_layers("norm"):
        info = normact.info(name)
        if info.properties.drop_in:  # channel norms (BatchNorm...) see the tokens as (B, D, T)
            out.append(name)
    return out


def _groups(norm):
    return {"num_groups": 4} if "num_groups" in inspect.signature(normact.info(norm).factory).parameters else {}


@pytest.mark.parametrize("norm", _drop_in_norms())
@pytest.mark.parametrize("placement", T.PLACEMENTS)
def test_every_drop_in_norm_fits_every_placement(norm, placement):
    if placement == "sandwich_depth_scaled" and not isinstance(
        getattr(normact.create(norm, DIM, **_groups(norm)), "weight", None), nn.Parameter
    ):
        with pytest.raises(ValueError, match="gain"):  # nothing to scale by depth
            T.TransformerBlock(DIM, HEADS, norm=norm, placement=placement, depth=2)
        return
    m = T.TransformerBlock(DIM, HEADS, norm=norm, placement=placement, depth=2)
    x = tokens().float().requires_grad_(True)
    y = m(x)
    y.square().mean().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("attention", normact.list_layers("attention"))
@pytest.mark.parametrize("act", ["gelu", "swiglu", "geglu", "relu", "silu"])
def test_every_attention_normalizer_and_activation_fits(attention, act):
    m = T.TransformerBlock(DIM, HEADS, norm="rmsnorm", act=act, attention=attention, placement="peri")
    x = tokens().float().requires_grad_(True)
    y = m(x)
    y.sum().backward()
    assert y.shape == x.shape and torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    assert m.mlp.fc1.weight.shape[0] == (8 if normact.info(act).properties.gated else 4) * DIM


def test_rmsnorm_swiglu_sigmoid_attention_block():
    m = normact.create("pre_ln_block", 16, 4, norm="rmsnorm", act="swiglu", attention="sigmoid_attention", causal=True)
    assert isinstance(m.attn_norm, normact.RMSNorm) and isinstance(m.mlp.act, normact.SwiGLU)
    assert type(m.attn.normalizer).__name__ == "SigmoidAttention"
    assert m(torch.randn(3, 7, 16)).shape == (3, 7, 16)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"norm": "td_layernorm"},  # needs a time step
        {"norm": "gelu"},
        {"act": "rmsnorm"},
        {"attention": "layernorm"},
        {"heads": 3},
        {"placement": "sandwich"},
        {"layer_index": 3, "depth": 2},
    ],
)
def test_bad_configurations_are_rejected(kwargs):
    heads = kwargs.pop("heads", HEADS)
    with pytest.raises(ValueError):
        T.TransformerBlock(DIM, heads, **kwargs)


def test_bad_input_is_rejected():
    m = normact.create("pre_ln_block", DIM, HEADS)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        m(torch.randn(2, 5, 9))
    with pytest.raises(ValueError, match="shape"):
        m(torch.randn(5, 8))
    with pytest.raises(TypeError, match="float"):
        m(torch.ones(2, 5, 8, dtype=torch.long))


def test_the_probe_reads_the_blocks_as_kind_block():
    for name in normact.list_layers("block"):
        assert normact.info(name).kind == "block"
        assert module_kind(normact.create(name, DIM, HEADS)) == "block"
    model = nn.Sequential(
        normact.create("peri_ln_block", DIM, HEADS, embedding_norm=True),
        normact.create("deepnorm_block", DIM, HEADS, depth=2, layer_index=2),
        normact.create("pre_ln_block", DIM, HEADS, final_norm=True),
    )
    with normact.probe(model) as p:
        model(torch.randn(4, 5, DIM))
    report = p.report()
    blocks = [n for n in report if report[n].kind == "block"]
    assert blocks == ["0", "1", "2"]
    assert report["0.attn_norm"].kind == "norm" and report["0.mlp.act"].kind == "act"
    assert module_kind(model[0].attn) == "attention"  # (recorded when it returns its weights)
    rows = report.signal_propagation()
    assert [r["module"] for r in rows] == blocks
    assert all(r["branch_var"] is not None for r in rows)


def test_batchnorm_in_the_block_normalizes_each_feature_over_batch_and_tokens():
    """BatchNorm in a transformer block (as graph transformers use it): the (B, T, D) tokens are normalized per
    feature with statistics over the batch and the positions."""
    torch.manual_seed(0)
    m = T.TransformerBlock(DIM, HEADS, norm="batchnorm", placement="post", dtype=torch.float64)
    x = tokens()
    h = x + m.attn(x)
    mean = h.mean((0, 1))
    var = h.var((0, 1), unbiased=False)
    expected = (h - mean) / torch.sqrt(var + 1e-5)
    torch.testing.assert_close(m.attn_norm(h), expected, rtol=1e-12, atol=1e-12)
    assert m(x).shape == x.shape
