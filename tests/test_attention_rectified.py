"""The rectified (ReLU) attention normalizers' own checks (the generic ones are in tests/test_attention.py and the
harness): ReLUFormer's length factor keeps the output variance O(1) as the number of keys grows; ReLA's weights
are exact zeros for negative scores, rows may attend to nothing, and its gated RMSNorm acts on all heads of a
query together."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF
from tests.helpers import random_qkv

_qkv = random_qkv


# ------------------------------------------------------------------------------------------------- ReLUFormer


def test_reluformer_weights_are_nonnegative_and_a_row_may_be_all_zero():
    q, k, v = _qkv()
    k = -q[:, :, :1].expand_as(k).clone()  # every key = -q_0: query 0's scores are all negative
    out, weights = normact.create("reluformer_attention")(q, k, v, need_weights=True)
    assert (weights >= 0).all()
    assert weights[:, :, 0].abs().max() == 0 and out[:, :, 0].abs().max() == 0


def test_reluformer_output_variance_stays_order_one_as_the_keys_grow():
    """Unit-variance scores and values: sum_s ReLU(s) v_s has variance n/2 (E[ReLU(s)^2] = 1/2 for a symmetric
    score); divided by sqrt(n/2) it stays at 1 for every n (Monte-Carlo over queries, heads and features)."""
    g = torch.Generator().manual_seed(1)
    d = 64
    for n in (16, 128, 1024):
        q = torch.randn(4, 4, 64, d, generator=g, dtype=torch.float64)
        k = torch.randn(4, 4, n, d, generator=g, dtype=torch.float64)
        v = torch.randn(4, 4, n, 16, generator=g, dtype=torch.float64)
        out, weights = NF.reluformer_attention(q, k, v, return_weights=True)
        raw = weights * math.sqrt(n / 2.0) @ v  # the plain ReLU attention output
        assert float(raw.var()) == pytest.approx(n / 2.0, rel=0.15), n  # grows like n
        assert float(out.var()) == pytest.approx(1.0, rel=0.15), n  # the factor makes it O(1)


def test_reluformer_factor_counts_the_keys_each_query_attends():
    """Causal: query t attends t + 1 keys; padding: the kept keys; gamma divides the output."""
    q, k, v = _qkv(t=5)
    relu = torch.relu(q @ k.transpose(-2, -1) / math.sqrt(8))
    out = NF.reluformer_attention(q, k, v, causal=True)
    for t in range(5):
        want = (relu[:, :, t : t + 1, : t + 1] @ v[:, :, : t + 1])[:, :, 0] / math.sqrt((t + 1) / 2.0)
        torch.testing.assert_close(out[:, :, t], want, rtol=1e-12, atol=1e-12)
    mask = torch.ones(2, 5, dtype=torch.bool)
    mask[1, :2] = False
    out = NF.reluformer_attention(q, k, v, mask=mask)
    torch.testing.assert_close(out[1], relu[1, :, :, 2:] @ v[1, :, 2:] / math.sqrt(3 / 2.0), rtol=1e-12, atol=0)
    torch.testing.assert_close(NF.reluformer_attention(q, k, v, gamma=4.0) * 4.0, NF.reluformer_attention(q, k, v))
    with pytest.raises(ValueError, match="gamma"):
        NF.reluformer_attention(q, k, v, gamma=0.0)


def test_reluformer_half_precision_and_the_float16_range():
    """bfloat16/float32 at |q|, |k| ~ 300 stay finite and close; float16 cannot hold the exact output there (the
    output is not normalized: scores of ~1e5 give values past float16's 65504), so it overflows like a matmul."""
    q, k, v = _qkv(scale=300.0)
    ref = NF.reluformer_attention(q, k, v, causal=True)
    assert float(ref.abs().max()) > torch.finfo(torch.float16).max
    for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 2e-2)):
        out = NF.reluformer_attention(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
        assert out.dtype == dtype and torch.isfinite(out).all()
        assert float((out.detach().double() - ref).abs().max()) <= tol * float(ref.abs().max())


# ------------------------------------------------------------------------------------------------------- ReLA


def test_rela_negative_scores_give_exact_zeros_and_a_row_can_attend_to_nothing():
    layer = normact.create("rela_attention").double()
    q, k, v = _qkv()
    _, weights = layer(q, k, v, need_weights=True)
    scores = q @ k.transpose(-2, -1)
    assert torch.equal(weights == 0, scores <= 0)  # exact zeros, no epsilon mass
    sparsity = float((weights == 0).double().mean())
    assert 0.3 < sparsity < 0.7  # about half of random scores are negative
    k2 = -q[:, :, :1].expand_as(k).clone()  # query 0 scores every key negatively in every head
    out, weights = layer(q, k2, v, need_weights=True)
    assert weights[:, :, 0].abs().max() == 0 and out[:, :, 0].abs().max() == 0
    assert torch.isfinite(out).all()


def test_rela_masked_logits_multiplied_by_zero_match_the_masked_fill():
    """The authors multiply the masked logits by 0 before the ReLU: the same weights as setting them to 0."""
    q, k, v = _qkv(s=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 3:] = False
    layer = normact.create("rela_attention").double()
    _, weights = layer(q, k, v, mask=mask, need_weights=True)
    logits = (q @ k.transpose(-2, -1) / math.sqrt(8)) * mask[:, None, None, :].double()
    torch.testing.assert_close(weights, torch.relu(logits), rtol=0, atol=1e-15)
    assert torch.equal(weights[0, :, :, 3:], torch.zeros(2, 6, 4, dtype=torch.float64))


def test_rela_zero_gate_is_half_the_rms_norm_over_all_heads():
    """With w = 0 the gate is 1/2: the output is g/2 * o / rms(o), the RMS taken over heads and value features of
    each query together (the concatenated heads of the paper); so it is invariant to scaling v."""
    layer = normact.create("rela_attention", num_heads=2, head_dim=5).double()
    with torch.no_grad():
        layer.gate.zero_()
        layer.weight.copy_(torch.linspace(0.5, 2.0, 10, dtype=torch.float64).reshape(2, 5))
    q, k, v = _qkv(dv=5)
    out, weights = layer(q, k, v, need_weights=True)
    raw = weights @ v
    rms = torch.sqrt(raw.square().mean(dim=(1, 3), keepdim=True) + 1e-8)
    torch.testing.assert_close(out, 0.5 * layer.weight.detach()[:, None, :] * raw / rms, rtol=1e-12, atol=1e-12)
    unit = out / (0.5 * layer.weight.detach()[:, None, :])
    torch.testing.assert_close(unit.square().mean(dim=(1, 3)), torch.ones(2, 6, dtype=torch.float64), rtol=1e-6, atol=0)
    torch.testing.assert_close(layer(q, k, 7.0 * v), out, rtol=1e-6, atol=1e-12)  # up to eps = 1e-8


def test_rela_initialization_and_parameter_shapes():
    torch.manual_seed(0)
    layer = normact.create("rela_attention", num_heads=8, head_dim=64)
    assert layer.weight.shape == layer.gate.shape == (8, 64)
    assert torch.equal(layer.weight.detach(), torch.ones(8, 64))
    bound = math.sqrt(3.0 / 512)  # TensorFlow's Glorot uniform for a 512-vector: fan_in = fan_out = 512
    gate = layer.gate.detach()
    assert float(gate.abs().max()) <= bound and float(gate.std()) > bound / 3
    assert layer.eps == 1e-8
    q, k, v = _qkv(h=3)
    with pytest.raises(ValueError, match="shape"):
        normact.create("rela_attention")(q.float(), k.float(), v.float())  # 2 heads of 8, given 3 heads
    with pytest.raises(ValueError, match="head"):
        normact.create("rela_attention", num_heads=3, head_dim=4)(q.float(), k.float(), v.float())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rela_half_precision_with_shared_parameters(dtype):
    """|q|, |k| ~ 300: the scores and the RMSNorm run in float32, the output is bounded by |g| sqrt(H Dv)."""
    layer = normact.create("rela_attention").double()
    low = normact.create("rela_attention").to(dtype)
    low.load_state_dict(layer.state_dict())
    q, k, v = _qkv(scale=300.0)
    ref = layer(q, k, v, causal=True).detach()
    ql, kl, vl = (t.to(dtype).requires_grad_(True) for t in (q, k, v))
    out = low(ql, kl, vl, causal=True)
    assert out.dtype == dtype and torch.isfinite(out).all()
    out.float().sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (ql, kl, vl))
    tol = {torch.float32: 1e-4, torch.float16: 5e-2, torch.bfloat16: 2e-1}[dtype]
    assert float((out.detach().double() - ref).abs().max()) <= tol * (1 + float(ref.abs().max()))
