"""Attention score normalizers beyond the generic harness (tests/entries/attention*.py): the interface every one
shares (causal flag, padding masks, rows with nothing to attend, half precision, compile, bad shapes) and each
paper's own checks."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from tests.helpers import random_qkv

NAMES = normact.list_layers("attention")


_qkv = random_qkv


def _layer(name, dtype=torch.float64):
    layer = normact.create(name)
    return layer.to(dtype) if any(True for _ in layer.parameters()) else layer


@pytest.mark.parametrize("name", NAMES)
def test_causal_flag_equals_the_lower_triangular_mask_and_ignores_the_future(name):
    layer = _layer(name)
    q, k, v = _qkv()
    tri = torch.ones(6, 6, dtype=torch.bool).tril()[None, None]
    out = layer(q, k, v, causal=True)
    torch.testing.assert_close(out, layer(q, k, v, mask=tri), rtol=0, atol=1e-12)
    k2, v2 = k.clone(), v.clone()
    k2[:, :, -1] += 5.0
    v2[:, :, -1] -= 3.0  # the last key is in every query's future but the last one's
    out2 = layer(q, k2, v2, causal=True)
    torch.testing.assert_close(out2[:, :, :-1], out[:, :, :-1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_a_masked_key_changes_nothing_and_an_empty_row_is_zero(name):
    layer = _layer(name)
    q, k, v = _qkv(s=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 2] = False
    out = layer(q, k, v, mask=mask)
    k2, v2 = k.clone(), v.clone()
    k2[0, :, 2] = 1e3
    v2[0, :, 2] = -1e3
    torch.testing.assert_close(layer(q, k2, v2, mask=mask), out, rtol=0, atol=1e-10)
    mask[1] = False  # the second sample has no key to attend
    out, weights = layer(q, k, v, mask=mask, need_weights=True)
    assert torch.isfinite(out).all() and torch.isfinite(weights).all()
    assert out[1].abs().max() == 0 and weights[1].abs().max() == 0 and weights[0, :, :, 2].abs().max() == 0


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_half_precision_large_queries_stay_finite_and_close(name, dtype):
    """|q|, |k| ~ 300: scores of 1e5 overflow float16 unless computed in float32. Outputs that themselves leave the
    dtype's range (unnormalized weights, e.g. ReLU attention) are exempt from the finiteness check."""
    layer = _layer(name)
    q, k, v = _qkv(scale=300.0)
    ref = layer(q, k, v, causal=True).detach()
    low = copy.deepcopy(layer).to(dtype) if any(True for _ in layer.parameters()) else _layer(name, dtype)
    ql, kl, vl = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    out = low(ql, kl, vl, causal=True)
    assert out.dtype == dtype, (name, dtype)
    if float(ref.abs().max()) > torch.finfo(dtype).max / 4:
        pytest.skip(f"{name}: the exact output reaches {float(ref.abs().max()):.3g}, beyond {dtype}'s range")
    assert torch.isfinite(out).all(), (name, dtype)
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (ql, kl, vl))
    tol = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    assert (out.double() - ref).abs().max() <= tol * (1 + ref.abs().max()), (name, dtype)


@pytest.mark.parametrize("name", NAMES)
def test_compile_fullgraph_with_causal_flag_and_padding_mask(name):
    torch._dynamo.reset()  # every normalizer shares the base class's forward: fresh recompile budget per name
    layer = _layer(name, torch.float32)
    q, k, v = _qkv(dtype=torch.float32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, -2:] = False
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    for kwargs in ({"causal": True}, {"mask": mask}, {"causal": True, "mask": mask, "need_weights": True}):
        eager, comp = layer(q, k, v, **kwargs), compiled(q, k, v, **kwargs)
        torch.testing.assert_close(comp, eager, rtol=1e-5, atol=1e-6)  # compares tuples element by element


@pytest.mark.parametrize("name", NAMES)
def test_bad_shapes_masks_and_heads_are_rejected_clearly(name):
    layer = _layer(name)
    q, k, v = _qkv()
    bad = [
        ((q[0], k, v), "batch, heads, tokens, head_dim"),
        ((q, k[:, :1], v[:, :1]), "heads"),
        ((q, k[..., :4], v), "head_dim"),
        ((q, k, v[:, :, :5]), "tokens"),
    ]
    for args, words in bad:
        with pytest.raises(ValueError, match=words):
            layer(*args)
    with pytest.raises(TypeError, match="boolean"):
        layer(q, k, v, mask=torch.ones(2, 6))
    with pytest.raises(ValueError, match="keys"):
        layer(q, k, v, mask=torch.ones(2, 5, dtype=torch.bool))
    with pytest.raises(TypeError, match="dtype"):
        layer(q, k.float(), v)


def test_softmax_attention_equals_torch_scaled_dot_product_attention():
    """The float32 path is torch.nn.functional.scaled_dot_product_attention; float64 and need_weights run the
    explicit form: all agree, masks included."""
    q, k, v = _qkv(dtype=torch.float32)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 1] = False
    layer = normact.create("softmax_attention")
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
    torch.testing.assert_close(layer(q, k, v, mask=mask), ref, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(layer(q, k, v, mask=mask, need_weights=True)[0], ref, rtol=1e-5, atol=1e-6)
    ref_causal = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), is_causal=True)
    torch.testing.assert_close(layer(q.double(), k.double(), v.double(), causal=True), ref_causal)
    weights = layer(q, k, v, need_weights=True)[1]
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 6))


def test_qk_norm_gain_logit_bound_and_scale_invariance():
    assert normact.layers.attention.scores.qk_norm_gain(50) == pytest.approx(11.258566, abs=1e-6)
    layer = normact.create("qk_norm_attention").double()
    assert float(layer.gain.detach()) == pytest.approx(math.log2(50 * 50 - 50))
    q, k, v = _qkv(scale=30.0)
    out, weights = layer(q, k, v, need_weights=True)
    g = float(layer.gain.detach())
    logits = torch.log(weights.detach())  # log softmax = logits - logsumexp: the spread of a row is that of its logits
    spread = logits.amax(-1) - logits.amin(-1)
    assert float(spread.max()) <= 2 * g + 1e-9
    factors = torch.rand(2, 2, 6, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(3)) * 10 + 0.1
    torch.testing.assert_close(layer(q * factors, k / factors, v), out)  # positive rescaling of any q or k row
    with pytest.raises(ValueError, match="at least 2"):
        normact.create("qk_norm_attention", seq_len=1)


def test_sigmoid_attention_weights_are_one_over_n_plus_one_at_zero_scores():
    """sigma(-log n) = 1/(n + 1): each weight at q.k = 0, the row sum n/(n + 1); sigma(x) = (1 + tanh(x/2))/2."""
    n = 6
    q, k, v = _qkv(t=3, s=n)
    q = torch.zeros_like(q)
    _, weights = normact.create("sigmoid_attention")(q, k, v, need_weights=True)
    torch.testing.assert_close(weights, torch.full_like(weights, 1 / (n + 1)))
    torch.testing.assert_close(weights.sum(-1), torch.full((2, 2, 3), n / (n + 1), dtype=torch.float64))
    x = torch.linspace(-8, 8, 33, dtype=torch.float64)
    torch.testing.assert_close(torch.sigmoid(x), 0.5 * (1 + torch.tanh(x / 2)))
    s = NF.sigmoid_attention(*_qkv(), bias=0.0, return_weights=True)[1]
    assert float(s.mean()) == pytest.approx(0.5, abs=0.1)  # without the bias the weights start near 1/2


@pytest.mark.parametrize("name", NAMES)
def test_attention_layers_are_in_the_registry_with_their_kind(name):
    info = normact.info(name)
    assert info.kind == "attention" and info.paper.arxiv and info.functional.__name__ in dir(NF)


@pytest.mark.parametrize("name", ["softmax_attention", "sigmoid_attention", "galerkin_attention"])
def test_probe_reads_the_weights_of_a_normalizer_inside_a_block(name):
    """force_attention_weights makes a normalizer return its weights to the probe (per-head entropy) while the
    block still gets the output alone (softmax then runs its explicit form instead of SDPA: equal up to
    rounding); without it nothing is forced."""
    torch.manual_seed(0)
    block = normact.TransformerBlock(16, 2, attention=name, causal=True).eval()
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        ref = block(x)
    for force in (True, False):
        with normact.probe(block, modules="attention", force_attention_weights=force) as p, torch.no_grad():
            out = block(x)
        torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)  # the weights path may differ from SDPA's kernel
        record = p.report().records.get("attn.normalizer")
        assert (record is not None and record.entropy is not None) is force, (name, force)
