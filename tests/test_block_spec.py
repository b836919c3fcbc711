"""Blocks assembled from a spec (Brainformer's block search space, Zhou et al., 2023, arXiv:2306.00008): the
assembled block's sub-layer order and parameter count match the spec, and ["attention", "ffn"] with each placement is
the TransformerBlock of that placement, exactly, with the same weights."""

from __future__ import annotations

import copy
import io
import pickle

import pytest
import torch

import normact
from normact.layers.block.spec import BlockSpec, SpecBlock, SublayerSpec, build_block

DIM, HEADS = 8, 2


def tokens(b=2, t=5, d=DIM, seed=0, dtype=torch.float64):
    return torch.randn(b, t, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def count(module):
    return sum(p.numel() for p in module.parameters())


def perturb(module, seed=1):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return module


def expected_params(spec: BlockSpec, d: int, bias: bool = True) -> int:
    """Counted from the spec alone: attention 4 d^2 (+ 3d biases: no key bias), FFN d h (x2 gated) + h d (+ biases),
    one LayerNorm (2d) per sub-layer and a second one for peri."""
    total = 0
    for s in spec.sublayers:
        if s.kind == "attention":
            total += 4 * d * d + (3 * d if bias else 0)
        else:
            h = round(s.mlp_ratio * d)
            width = 2 * h if normact.info(s.act).properties.gated else h
            total += d * width + h * d + ((width + d) if bias else 0)
        total += 2 * d * (2 if s.placement == "peri" else 1)
    return total


SPECS = [
    ["attention", "ffn"],
    ["attention", "ffn", "ffn", "attention", "ffn"],
    [
        {"kind": "ffn", "placement": "post", "act": "relu", "mlp_ratio": 2},
        SublayerSpec("attention", "peri"),
        {"kind": "ffn", "act": "swiglu"},
        {"kind": "attention", "attention": "sigmoid_attention", "placement": "post"},
    ],
]


@pytest.mark.parametrize("spec", SPECS)
@pytest.mark.parametrize("bias", [True, False])
def test_order_and_parameter_count_match_the_spec(spec, bias):
    parsed = BlockSpec.parse(spec)
    m = build_block(spec, DIM, HEADS, bias=bias, dtype=torch.float64)
    assert m.spec == parsed
    assert [layer.spec.kind for layer in m.sublayers] == list(parsed.kinds)
    kinds = ["attention" if isinstance(layer.fn, normact.layers.MultiHeadAttention) else "ffn" for layer in m.sublayers]
    assert kinds == list(parsed.kinds)
    for layer, s in zip(m.sublayers, parsed.sublayers, strict=True):
        assert (layer.out_norm is not None) == (s.placement == "peri")
        if s.kind == "ffn":
            assert type(layer.fn.act) is type(normact.create(s.act))
    assert count(m) == expected_params(parsed, DIM, bias)
    y = m(tokens())
    assert y.shape == (2, 5, DIM) and torch.isfinite(y).all()


_RENAME = (
    ("attn_out_norm", "sublayers.0.out_norm"),
    ("attn_norm", "sublayers.0.norm"),
    ("attn.", "sublayers.0.fn."),
    ("mlp_out_norm", "sublayers.1.out_norm"),
    ("mlp_norm", "sublayers.1.norm"),
    ("mlp.", "sublayers.1.fn."),
)


def _as_spec_state(state):
    out = {}
    for key, value in state.items():
        for old, new in _RENAME:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


@pytest.mark.parametrize(
    ("placement", "name", "kwargs"),
    [
        ("pre", "pre_ln_block", {}),
        ("pre", "pre_ln_block", {"causal": True, "norm": "rmsnorm", "act": "swiglu", "rope": True}),
        ("post", "post_ln_block", {"causal": True}),
        ("peri", "peri_ln_block", {"attention": "sigmoid_attention"}),
    ],
)
def test_attention_ffn_spec_is_the_transformer_block_exactly(placement, name, kwargs):
    torch.manual_seed(0)
    reference = perturb(normact.create(name, DIM, HEADS, dtype=torch.float64, **kwargs))
    block_kwargs = {k: kwargs[k] for k in ("causal", "norm", "rope") if k in kwargs}
    sub = {k: kwargs[k] for k in ("act", "attention") if k in kwargs}
    m = build_block(["attention", "ffn"], DIM, HEADS, placement=placement, dtype=torch.float64, **block_kwargs, **sub)
    missing, unexpected = m.load_state_dict(_as_spec_state(reference.state_dict()), strict=True)
    assert not missing and not unexpected and count(m) == count(reference)
    x = tokens()
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, -2:] = False
    assert torch.equal(m(x), reference(x))
    assert torch.equal(m(x, mask), reference(x, mask))


def test_spec_parsing_and_defaults():
    spec = BlockSpec.parse(["attention", {"kind": "ffn", "act": "relu"}], placement="peri", act="swiglu")
    assert spec.sublayers == (SublayerSpec("attention", "peri", "swiglu"), SublayerSpec("ffn", "peri", "relu"))
    assert BlockSpec.parse(spec) is spec
    assert str(spec) == "attention(peri, softmax_attention) -> ffn(peri, relu, x4)"
    for bad, error in [
        (["moe"], ValueError),
        (["attention", "conv"], ValueError),
        ([{"kind": "ffn", "placement": "sandwich"}], ValueError),
        ([{"kind": "ffn", "act": "layernorm"}], ValueError),
        ([{"kind": "ffn", "mlp_ratio": 0}], ValueError),
        ([{"kind": "attention", "attention": "gelu"}], ValueError),
        ([], ValueError),
        ("attention", TypeError),
        ([3], TypeError),
    ]:
        with pytest.raises(error):
            build_block(bad, DIM, HEADS)
    with pytest.raises(ValueError, match="heads"):
        build_block(["attention"], DIM, 3)


def test_module_contract():
    m = perturb(build_block(SPECS[2], DIM, HEADS, causal=True, dtype=torch.float64))
    x = tokens()
    y = m(x)
    assert "spec=" in repr(m) and "ffn(post, relu, x2)" in repr(m)
    buf = io.BytesIO()
    torch.save(m.state_dict(), buf)
    buf.seek(0)
    fresh = build_block(SPECS[2], DIM, HEADS, causal=True, dtype=torch.float64)
    fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    for clone in (fresh, pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert torch.equal(clone(x), y)
    compiled = torch.compile(m, fullgraph=True, backend="aot_eager")
    torch.testing.assert_close(compiled(x), y, rtol=1e-12, atol=1e-12)
    torch.manual_seed(3)
    a = build_block(SPECS[1], DIM, HEADS, dtype=torch.float64)
    perturb(a)
    torch.manual_seed(3)
    a.reset_parameters()
    torch.manual_seed(3)
    b = build_block(SPECS[1], DIM, HEADS, dtype=torch.float64)
    assert all(torch.equal(u, v) for u, v in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert build_block(SPECS[0], DIM, HEADS, device="meta").sublayers[0].fn.q_proj.weight.device.type == "meta"
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        m(torch.randn(2, 5, 9, dtype=torch.float64))
    with pytest.raises(TypeError, match="float"):
        m(torch.ones(2, 5, 8, dtype=torch.long))
    for dtype in (torch.float32, torch.bfloat16):
        low = copy.deepcopy(m).to(dtype)
        out = low(x.to(dtype))
        assert out.dtype == dtype
        torch.testing.assert_close(out.double(), y, rtol=0.1, atol=0.1)


def test_is_a_spec_block():
    assert isinstance(build_block(["ffn"], DIM, HEADS), SpecBlock)
