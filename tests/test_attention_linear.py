"""Linear attentions (Galerkin, Fourier, TransNormer's NormAttention): each paper's own checks. The O(n) forms
equal the explicit O(n^2) forms (recurrent == parallel, causal and not, padding masks), scale invariances of
the normalized inputs, TransNormerLLM's decayed recurrence and SRMSNorm identities."""

from __future__ import annotations

import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from tests.helpers import random_qkv

LINEAR = ("galerkin_attention", "fourier_attention", "norm_linear_attention")


_qkv = partial(random_qkv, h=4, t=7, d=6)


def _padding(b, s):
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, -3:] = False
    return mask


def _ln(x, eps=1e-5):
    return (x - x.mean(-1, keepdim=True)) / torch.sqrt(x.var(-1, unbiased=False, keepdim=True) + eps)


@pytest.mark.parametrize("name", LINEAR)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("queries", [7, 4, 10])
def test_recurrent_form_equals_the_explicit_form(name, causal, padded, queries):
    """mode="recurrent" (keys first, or a running state) == mode="parallel" (explicit weights), cross lengths
    included: more or fewer queries than keys."""
    q, k, v = _qkv(t=queries, s=7, dv=5)
    mask = _padding(2, 7) if padded else None
    parallel = normact.create(name)(q, k, v, causal=causal, mask=mask)
    recurrent = normact.create(name, mode="recurrent")(q, k, v, causal=causal, mask=mask)
    torch.testing.assert_close(recurrent, parallel, rtol=1e-10, atol=1e-12)
    out, weights = normact.create(name, mode="recurrent")(q, k, v, causal=causal, mask=mask, need_weights=True)
    torch.testing.assert_close(out, parallel, rtol=1e-10, atol=1e-12)
    assert weights.shape == (2, 4, queries, 7)
    if mask is not None:  # a masked key contributes nothing
        assert weights[0, :, :, 1].abs().max() == 0 and weights[1, :, :, -3:].abs().max() == 0


@pytest.mark.parametrize("name", LINEAR)
def test_recurrent_form_rejects_query_dependent_masks(name):
    q, k, v = _qkv()
    tri = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    with pytest.raises(ValueError, match="key mask"):
        normact.create(name, mode="recurrent")(q, k, v, mask=tri)
    with pytest.raises(ValueError, match="mode"):
        normact.create(name, mode="chunked")


def test_galerkin_keys_first_equals_the_explicit_product_and_the_weights():
    """Q (K~^T V~) / n == (Q K~^T) V~ / n, K~ = LN(K), V~ = LN(V) (Cao 2021, eq. of the Galerkin-type attention),
    and the returned weights are (Q K~^T) / n, which multiply V~."""
    q, k, v = _qkv(s=9)
    kn, vn = _ln(k), _ln(v)
    keys_first = q @ (kn.transpose(-2, -1) @ vn) / 9
    explicit = (q @ kn.transpose(-2, -1)) @ vn / 9
    torch.testing.assert_close(keys_first, explicit)
    out, weights = NF.galerkin_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, explicit)
    torch.testing.assert_close(weights, q @ kn.transpose(-2, -1) / 9)
    torch.testing.assert_close(NF.galerkin_attention(q, k, v, mode="recurrent"), keys_first)


def test_galerkin_is_linear_in_the_queries_and_invariant_to_scaling_keys_and_values():
    """Scaling the query path by c scales the output by c (K and V are normalized), for any c; scaling k or v
    by c > 0 changes nothing but the LayerNorm epsilon's share."""
    q, k, v = _qkv()
    layer = normact.create("galerkin_attention")
    out = layer(q, k, v, causal=True)
    for c in (-3.0, 0.25, 7.0):
        torch.testing.assert_close(layer(c * q, k, v, causal=True), c * out)
    torch.testing.assert_close(layer(q, 10.0 * k, 3.0 * v, causal=True), out, rtol=1e-3, atol=1e-3)
    exact = normact.create("galerkin_attention", eps=1e-300)
    torch.testing.assert_close(exact(q, 10.0 * k, 0.1 * v), exact(q, k, v), rtol=1e-12, atol=1e-12)


def test_galerkin_causal_is_a_running_mean_of_the_key_value_products():
    """Causal: o_t = q_t (1/(t+1)) sum_{s<=t} k~_s^T v~_s."""
    q, k, v = _qkv(t=5)
    kn, vn = _ln(k), _ln(v)
    products = kn[..., :, None] * vn[..., None, :]  # (B, H, S, D, Dv)
    running = products.cumsum(2) / torch.arange(1, 6, dtype=torch.float64)[:, None, None]
    expected = (q[..., None, :] @ running).squeeze(-2)
    torch.testing.assert_close(NF.galerkin_attention(q, k, v, causal=True), expected)


def test_fourier_is_invariant_to_scaling_queries_and_keys_and_linear_in_the_values():
    """(Q~ K~^T) V / n with Q~, K~ layer-normalized: positive rescaling of q or k rows changes nothing (up to
    eps); the output is linear in v; scale=1 is the paper's form, the default 1/sqrt(D) the authors' code."""
    q, k, v = _qkv()
    exact = normact.create("fourier_attention", eps=1e-300)
    out = exact(q, k, v)
    factors = torch.rand(2, 4, 7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 5 + 0.1
    torch.testing.assert_close(exact(q * factors, k / factors, v), out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(exact(q, k, -2.0 * v), -2.0 * out)
    paper = NF.fourier_attention(q, k, v, scale=1.0)
    torch.testing.assert_close(paper, (_ln(q) @ _ln(k).transpose(-2, -1)) @ v / 7)
    torch.testing.assert_close(NF.fourier_attention(q, k, v), paper / math.sqrt(6))


def test_transnormer_decay_is_alibi_slopes_scaled_by_depth():
    """lambda_h = exp(-m_h (1 - l/(L-1) + 1e-5)), m_h = 2^(-8(h+1)/H) (H = 8: 1/2, 1/4, ...)."""
    expected = torch.exp(-torch.tensor([2.0 ** -(h + 1) for h in range(8)], dtype=torch.float64) * (1 + 1e-5))
    torch.testing.assert_close(NF.transnormer_decay(8), expected)
    last = NF.transnormer_decay(8, layer_index=3, num_layers=4)
    torch.testing.assert_close(last, torch.exp(-torch.tensor([2.0 ** -(h + 1) for h in range(8)]).double() * 1e-5))
    middle = NF.transnormer_decay(4, layer_index=1, num_layers=3)
    torch.testing.assert_close(middle, torch.exp(-torch.tensor([0.25, 0.0625, 2**-6, 2**-8]).double() * (0.5 + 1e-5)))
    six = NF.transnormer_decay(6)  # 4 heads of the 4-head sequence, then the odd ones of the 8-head sequence
    slopes = torch.tensor([0.25, 2**-4, 2**-6, 2**-8, 0.5, 2**-3], dtype=torch.float64)
    torch.testing.assert_close(six, torch.exp(-slopes * 1.00001))
    with pytest.raises(ValueError, match="layer_index"):
        NF.transnormer_decay(4, layer_index=2, num_layers=2)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lightning_recurrence_equals_the_decay_masked_parallel_form(dtype):
    """TransNormerLLM: S_t = lambda S_{t-1} + k_t^T v_t, o_t = Norm(q_t S_t) == Norm((Q K^T * M) V) with
    M_ts = lambda^(t-s) 1[s <= t], to 1e-5 (float32)."""
    q, k, v = _qkv(t=12, dtype=dtype)
    lam = NF.transnormer_decay(4)
    fq, fk = F.silu(q), F.silu(k)
    state = torch.zeros(2, 4, 6, 6, dtype=dtype)
    raw = []
    for t in range(12):
        state = lam.to(dtype)[:, None, None] * state + fk[:, :, t, :, None] * v[:, :, t, None, :]
        raw.append((fq[:, :, t, None, :] @ state).squeeze(-2))
    raw = torch.stack(raw, 2)
    dist = (torch.arange(12)[:, None] - torch.arange(12)[None, :]).to(torch.float64)
    m = torch.where(dist >= 0, lam[:, None, None] ** dist.clamp_min(0), 0.0).to(dtype)
    torch.testing.assert_close(raw, ((fq @ fk.transpose(-2, -1)) * m) @ v, rtol=1e-5, atol=1e-5)
    layer = normact.create("norm_linear_attention", eps=1e-12)
    hidden = raw.transpose(1, 2).reshape(2, 12, 24)
    expected = F.rms_norm(hidden, (24,), eps=1e-12).reshape(2, 12, 4, 6).transpose(1, 2)
    for mode in ("parallel", "recurrent"):
        layer.mode = mode
        torch.testing.assert_close(layer(q, k, v, causal=True), expected, rtol=1e-5, atol=1e-5)


def test_srmsnorm_output_has_norm_sqrt_d_and_ignores_the_scale_of_the_values():
    """||SRMSNorm(x)||_2 = sqrt(d) over the H * Dv features of a token (sqrt(Dv) per head with per_head);
    SRMSNorm(c x) = SRMSNorm(x) for c > 0, so the output ignores a positive scale of v; the returned weights
    are the pre-norm ones: out = Norm(weights @ v)."""
    q, k, v = _qkv(dv=5)
    layer = normact.create("norm_linear_attention", eps=1e-14)
    out, weights = layer(q, k, v, causal=True, need_weights=True)
    norms = out.transpose(1, 2).reshape(2, 7, 20).norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, math.sqrt(20)))
    torch.testing.assert_close(layer(q, k, 3.5 * v, causal=True), out)
    raw = (weights @ v).transpose(1, 2).reshape(2, 7, 20)
    torch.testing.assert_close(out, F.rms_norm(raw, (20,), eps=1e-14).reshape(2, 7, 4, 5).transpose(1, 2))
    per_head = normact.create("norm_linear_attention", eps=1e-14, per_head=True)(q, k, v)
    torch.testing.assert_close(per_head.norm(dim=-1), torch.full((2, 4, 7), math.sqrt(5), dtype=torch.float64))
    weights_only = NF.norm_linear_attention(q, k, v, decay=None, return_weights=True)[1]
    torch.testing.assert_close(weights_only, F.silu(q) @ F.silu(k).transpose(-2, -1))


def test_no_decay_non_causal_is_transnormer_keys_first():
    """decay=None, not causal: Norm(phi(Q) (phi(K)^T V)) with phi = 1 + elu and LayerNorm (TransNormer)."""
    q, k, v = _qkv()
    fq, fk = F.elu(q) + 1, F.elu(k) + 1
    raw = (fq @ (fk.transpose(-2, -1) @ v)).transpose(1, 2).reshape(2, 7, 24)
    expected = F.layer_norm(raw, (24,), eps=1e-6).reshape(2, 7, 4, 6).transpose(1, 2)
    layer = normact.create("norm_linear_attention", decay=None, feature_map="elu_plus_one", norm="layer")
    torch.testing.assert_close(layer(q, k, v), expected)
    assert "decay=None" in repr(layer) and "feature_map='elu_plus_one'" in repr(layer)


def test_norm_linear_attention_rejects_bad_decays():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="per head"):
        NF.norm_linear_attention(q, k, v, decay=torch.full((3,), 0.9, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        NF.norm_linear_attention(q, k, v, decay=1.5)
    with pytest.raises(ValueError, match="feature_map"):
        NF.norm_linear_attention(q, k, v, feature_map="tanh")


@pytest.mark.parametrize("name", LINEAR)
def test_recurrent_mode_runs_in_half_precision(name):
    q, k, v = _qkv(dtype=torch.float32)
    ref = normact.create(name)(q, k, v, causal=True, mask=_padding(2, 7))
    for dtype in (torch.float16, torch.bfloat16):
        out = normact.create(name, mode="recurrent")(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
        assert out.dtype == dtype and torch.isfinite(out).all()
    out = normact.create(name, mode="recurrent")(q, k, v, causal=True, mask=_padding(2, 7))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
