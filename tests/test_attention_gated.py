"""NaLaFormer's norm-aware linear attention and ReGLA: each paper's own checks. The O(n) forms equal the explicit
O(n^2) forms (causal and not, padding masks, cross lengths, token gates), NaLa's weights are a convex combination
with a query-norm-aware power, ReGLA's refined gate stays in [g^2, 1 - (1 - g)^2] and equals g at r = 1/2, its
features ignore constant shifts, and its recurrence is S_t = Diag(F_t) S_{t-1} + phi(k_t)^T v_t."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from tests.helpers import random_qkv

GATED = ("nala_attention", "regla_attention")


_qkv = partial(random_qkv, h=3, t=7, d=5)


def _padding(b, s):
    mask = torch.ones(b, s, dtype=torch.bool)
    mask[0, 1] = False
    mask[1, -3:] = False
    return mask


def _token_gates(b, h, positions, d, seed=5):
    g = torch.Generator().manual_seed(seed)
    return (
        2.0 * torch.randn(b, h, positions, d, generator=g, dtype=torch.float64),
        torch.randn(b, h, positions, d, generator=g, dtype=torch.float64),
    )


@pytest.mark.parametrize("name", GATED)
@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("queries", [7, 4, 10])
def test_recurrent_form_equals_the_explicit_form(name, causal, padded, queries):
    """mode="recurrent" (keys first, or a running state) == mode="parallel" (explicit N x N weights), more or
    fewer queries than keys included; the weights come with the recurrent output too."""
    q, k, v = _qkv(t=queries, s=7, dv=4)
    mask = _padding(2, 7) if padded else None
    parallel = normact.create(name).double()(q, k, v, causal=causal, mask=mask)
    recurrent = normact.create(name, mode="recurrent").double()
    torch.testing.assert_close(recurrent(q, k, v, causal=causal, mask=mask), parallel, rtol=1e-10, atol=1e-12)
    out, weights = recurrent(q, k, v, causal=causal, mask=mask, need_weights=True)
    torch.testing.assert_close(out, parallel, rtol=1e-10, atol=1e-12)
    assert weights.shape == (2, 3, queries, 7)
    if mask is not None:
        assert weights[0, :, :, 1].abs().max() == 0 and weights[1, :, :, -3:].abs().max() == 0


@pytest.mark.parametrize("name", GATED)
def test_recurrent_form_equals_the_explicit_form_in_float32(name):
    """The catalog's check: the O(N) computation equals the explicit N x N computation to 1e-5."""
    q, k, v = _qkv(t=16, d=8, dtype=torch.float32)
    for causal in (False, True):
        parallel = normact.create(name)(q, k, v, causal=causal, mask=_padding(2, 16))
        recurrent = normact.create(name, mode="recurrent")(q, k, v, causal=causal, mask=_padding(2, 16))
        torch.testing.assert_close(recurrent, parallel, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", GATED)
def test_recurrent_form_rejects_query_dependent_masks(name):
    q, k, v = _qkv()
    tri = torch.ones(7, 7, dtype=torch.bool).tril()[None, None]
    with pytest.raises(ValueError, match="key mask"):
        normact.create(name, mode="recurrent").double()(q, k, v, mask=tri)
    with pytest.raises(ValueError, match="mode"):
        normact.create(name, mode="chunked")


# ---- NaLaFormer ------------------------------------------------------------------------------------------------


def test_nala_weights_are_a_convex_combination():
    """w_ts = phi_q(q_t).phi_k(k_s) / sum_s' phi_q(q_t).phi_k(k_s') >= 0, rows summing to 1 (exactly as eps -> 0,
    1 - n eps / sum otherwise), and the output is w @ v: a convex combination of the value rows."""
    q, k, v = _qkv(s=9)
    exact = normact.create("nala_attention", eps=1e-300)
    for causal in (False, True):
        out, weights = exact(q, k, v, causal=causal, mask=_padding(2, 9), need_weights=True)
        assert float(weights.min()) >= 0.0
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 3, 7, dtype=torch.float64), rtol=0, atol=1e-14)
        torch.testing.assert_close(out, weights @ v)
        lo, hi = v.amin(2, keepdim=True), v.amax(2, keepdim=True)
        assert bool(((out >= lo - 1e-12) & (out <= hi + 1e-12)).all())
    out, weights = NF.nala_attention(q, k, v, return_weights=True)  # eps = 1e-6 of the code: sums just under 1
    phi_q, phi_k = NF.nala_features(q, k)
    raw = phi_q @ phi_k.transpose(-2, -1)
    torch.testing.assert_close(weights, raw / (raw.sum(-1, keepdim=True) + 9 * 1e-6))


def test_nala_features_keep_the_same_sign_products_with_the_query_norm_power():
    """phi_q(q).phi_k(k) = sum_i [q_i k_i > 0] (|q_i| / |q|)^p |k_i|^3, p = 3 (0.5 + tanh |q|): the sign split
    drops only the opposite-sign products; the features are 2D wide and non-negative."""
    q, k, _ = _qkv(t=6, d=6)
    phi_q, phi_k = NF.nala_features(q, k)
    assert phi_q.shape[-1] == phi_k.shape[-1] == 12 and float(phi_q.min()) >= 0 and float(phi_k.min()) >= 0
    norm = q.norm(dim=-1, keepdim=True)
    p = 3.0 * (0.5 + torch.tanh(norm))
    qi, ki = q[..., :, None, :], k[..., None, :, :]
    same = (qi * ki > 0).double()
    expected = (same * (qi.abs() / norm[..., None]) ** p[..., None] * ki.abs() ** 3).sum(-1)
    torch.testing.assert_close(phi_q @ phi_k.transpose(-2, -1), expected)


def test_nala_weights_depend_on_the_query_norm_and_saturate():
    """Plain linear attention cancels the query norm; NaLa's power p = 3 (0.5 + tanh |q|) goes from 1.5 (short
    queries) to 4.5 (long ones): the weights of c q change with c, the larger power concentrating them (lower
    entropy), and stop changing once tanh |c q| = 1."""
    q, k, v = _qkv(t=4, s=12)
    layer = normact.create("nala_attention", eps=1e-300)

    def weights(c):
        return layer(c * q, k, v, need_weights=True)[1]

    def entropy(w):
        return -(w * torch.log(w.clamp_min(1e-300))).sum(-1).mean()

    assert not torch.allclose(weights(0.05), weights(1.0))
    assert float(entropy(weights(0.02))) > float(entropy(weights(20.0)))
    torch.testing.assert_close(weights(50.0), weights(500.0), rtol=0, atol=1e-15)  # tanh saturated: p = 4.5


def test_nala_zero_query_gives_zero_output_and_finite_gradients():
    q, k, v = _qkv()
    q = torch.zeros_like(q).requires_grad_(True)
    out = normact.create("nala_attention")(q, k, v, causal=True)
    assert out.abs().max() == 0
    out.sum().backward()
    assert torch.isfinite(q.grad).all()


# ---- ReGLA -----------------------------------------------------------------------------------------------------


def test_refined_gate_bounds_and_r_one_half():
    """F = r (1 - (1-g)^2) + (1 - r) g^2 lies in [g^2, 1 - (1-g)^2] in [0, 1]; r = 1/2 gives g (refine_logits=None
    is that case exactly); r -> 0 and r -> 1 reach the two bounds."""
    g_logits = torch.linspace(-6, 6, 49, dtype=torch.float64)[:, None]
    r_logits = torch.linspace(-8, 8, 33, dtype=torch.float64)[None, :]
    g, r = torch.sigmoid(g_logits), torch.sigmoid(r_logits)
    refined = torch.exp(NF.regla_refined_gate(g_logits, r_logits))
    torch.testing.assert_close(refined, r * (1 - (1 - g) ** 2) + (1 - r) * g**2, rtol=1e-13, atol=0)
    assert bool((refined >= g**2 * (1 - 1e-13)).all() and (refined <= (1 - (1 - g) ** 2) * (1 + 1e-13)).all())
    assert float(refined.min()) >= 0 and float(refined.max()) <= 1
    half = torch.exp(NF.regla_refined_gate(g_logits, torch.zeros_like(g_logits)))
    torch.testing.assert_close(half, g, rtol=1e-15, atol=0)
    assert torch.equal(NF.regla_refined_gate(g_logits), F.logsigmoid(g_logits))
    torch.testing.assert_close(torch.exp(NF.regla_refined_gate(g_logits, torch.full_like(g_logits, -40.0))), g**2)
    upper = torch.exp(NF.regla_refined_gate(g_logits, torch.full_like(g_logits, 40.0)))
    torch.testing.assert_close(upper, 1 - (1 - g) ** 2)


def test_refined_gate_derivative_does_not_vanish_at_the_ends():
    """dF/dg = 2 r (1 - g) + 2 (1 - r) g: 2r at g = 0 and 2 (1 - r) at g = 1, where sigma' vanishes."""
    for g0, r0, expected in ((1e-9, 0.3, 0.6), (1 - 1e-9, 0.3, 1.4)):
        g = torch.tensor(g0, dtype=torch.float64, requires_grad=True)
        logit_r = torch.tensor(math.log(r0 / (1 - r0)), dtype=torch.float64)
        refined = torch.exp(NF.regla_refined_gate(torch.log(g / (1 - g)), logit_r))
        (grad,) = torch.autograd.grad(refined, g)
        assert float(grad) == pytest.approx(expected, rel=1e-6)


def test_regla_features_are_positive_and_ignore_constant_shifts():
    """phi(x) = exp(x - max x) in (0, 1]: adding a constant to a query row, or one constant to every key, changes
    nothing (before the scale c)."""
    q, k, v = _qkv()
    a, b = _token_gates(2, 3, 7, 5)
    out, weights = NF.regla_attention(q, k, v, a, b, causal=True, return_weights=True)
    tri = torch.ones(7, 7, dtype=torch.bool).tril()
    assert bool((weights[..., tri] > 0).all())
    shift = torch.randn(2, 3, 7, 1, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 10
    shifted = NF.regla_attention(q + shift, k - 7.5, v, a, b, causal=True, return_weights=True)
    torch.testing.assert_close(shifted[0], out, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(shifted[1], weights, rtol=1e-12, atol=1e-12)


def test_regla_recurrence_with_the_refined_gate():
    """Causal: S_t = Diag(F_t) S_{t-1} + phi(k_t)^T v_t (F along the key features), o_t = LN(c phi(q_t) S_t),
    c = 1/(e sqrt(D (e^2 - 1))), with token gates and refiners; the key maximum is taken over the whole sequence
    here and over the keys seen so far in the layer, a per-row factor the norm removes (eps -> 0)."""
    q, k, v = _qkv(t=9, dv=4)
    a, b = _token_gates(2, 3, 9, 5)
    g, r = torch.sigmoid(a), torch.sigmoid(b)
    forget = r * (1 - (1 - g) ** 2) + (1 - r) * g**2
    phi_q = torch.exp(q - q.amax(-1, keepdim=True))
    phi_k = torch.exp(k - k.amax(dim=(-2, -1), keepdim=True))
    c = 1.0 / (math.e * math.sqrt(5 * (math.e**2 - 1)))
    state = torch.zeros(2, 3, 5, 4, dtype=torch.float64)
    raw = []
    for t in range(9):
        state = forget[:, :, t, :, None] * state + phi_k[:, :, t, :, None] * v[:, :, t, None, :]
        raw.append(c * (phi_q[:, :, t, None, :] @ state).squeeze(-2))
    expected = F.layer_norm(torch.stack(raw, 2), (4,), eps=1e-300)
    layer = normact.create("regla_attention", eps=1e-300).double()
    with torch.no_grad():
        layer.gate_bias.zero_()
    for mode in ("parallel", "recurrent"):
        layer.mode = mode
        got = layer(q, k, v, causal=True, gate_logits=a, refine_logits=b)
        torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


def test_regla_without_gates_is_exponential_feature_linear_attention_with_an_output_norm():
    """No gate (F = 1), not causal: Norm(c phi(Q) (phi(K)^T V)), the global key maximum, LayerNorm or RMSNorm
    over each head or all heads of a token; the returned weights are c phi(q_t).phi(k_s), inside the norm."""
    q, k, v = _qkv(dv=4)
    phi_q, phi_k = torch.exp(q - q.amax(-1, keepdim=True)), torch.exp(k - k.amax(dim=(-2, -1), keepdim=True))
    raw = NF.regla_feature_scale(5) * phi_q @ (phi_k.transpose(-2, -1) @ v)
    out, weights = NF.regla_attention(q, k, v, return_weights=True)
    torch.testing.assert_close(out, F.layer_norm(raw, (4,), eps=1e-5))
    torch.testing.assert_close(weights, NF.regla_feature_scale(5) * phi_q @ phi_k.transpose(-2, -1))
    hidden = raw.transpose(1, 2).reshape(2, 7, 12)
    rms = NF.regla_attention(q, k, v, norm="rms", per_head=False, mode="recurrent")
    torch.testing.assert_close(rms, F.rms_norm(hidden, (12,), eps=1e-5).reshape(2, 7, 3, 4).transpose(1, 2))


def test_regla_variance_reduction_factor():
    """Var[sum_i e^(x_i) e^(y_i)] = m (E[e^2x]^2 - E[e^x]^4) = m e^2 (e^2 - 1) for x, y ~ N(0, I_m), the Gaussian
    moments by Gauss-Hermite quadrature: the factor is its inverse square root."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(80)
    weights = weights / weights.sum()  # E[f(x)], x ~ N(0, 1)
    first, second = float((weights * np.exp(nodes)).sum()), float((weights * np.exp(2 * nodes)).sum())
    for m in (1, 4, 64):
        variance = m * (second**2 - first**4)
        assert NF.regla_feature_scale(m) == pytest.approx(1 / math.sqrt(variance), rel=1e-12)
        assert NF.regla_feature_scale(m) == pytest.approx(1 / (math.e * math.sqrt(m * (math.e**2 - 1))), rel=1e-15)


def test_regla_layer_adds_its_biases_to_the_token_logits_and_ignores_future_gates():
    """g = sigmoid(a + b_g), r = sigmoid(b + b_r): the layer's biases (gate_init 0.95, refiner 0) plus the
    caller's projections; causal, the gates after position t do not touch o_t."""
    q, k, v = _qkv()
    a, b = _token_gates(2, 3, 7, 5)
    layer = normact.create("regla_attention", heads=3).double()
    assert torch.allclose(torch.sigmoid(layer.gate_bias.detach()), torch.full((3,), 0.95, dtype=torch.float64))
    with torch.no_grad():
        layer.refine_bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    out = layer(q, k, v, causal=True, gate_logits=a, refine_logits=b)
    expected = NF.regla_attention(q, k, v, a + math.log(19.0), b + layer.refine_bias.detach()[:, None, None], True)
    torch.testing.assert_close(out, expected)
    a2, b2 = a.clone(), b.clone()
    a2[:, :, 4:] += 3.0
    b2[:, :, 4:] -= 2.0
    later = layer(q, k, v, causal=True, gate_logits=a2, refine_logits=b2)
    torch.testing.assert_close(later[:, :, :4], out[:, :, :4], rtol=0, atol=1e-12)
    assert not torch.allclose(later[:, :, 4:], out[:, :, 4:])
    assert "heads=3" in repr(layer) and "gate_init=0.95" in repr(layer)


def test_regla_rejects_bad_gates_and_heads():
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="heads"):
        normact.create("regla_attention", heads=2).double()(q, k, v)
    with pytest.raises(ValueError, match="gate_logits"):
        NF.regla_attention(q, k, v, torch.zeros(2, 3, 6, 5, dtype=torch.float64))
    with pytest.raises(TypeError, match="refine_logits"):
        NF.regla_attention(q, k, v, None, torch.zeros(2, 3, 7, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="norm"):
        NF.regla_attention(q, k, v, norm="batch")
    with pytest.raises(ValueError, match="gate_logits"):
        normact.create("regla_attention", heads=3).double()(q, k, v, gate_logits=torch.zeros(2, 2, 7, 5))
    with pytest.raises(ValueError, match="gate_init"):
        normact.create("regla_attention", gate_init=1.0)


def test_regla_saturated_gates_stay_finite():
    """Gate logits of -200 (g = 0 in float32) with a refiner near 0: log F is floored, no inf - inf."""
    q, k, v = _qkv(dtype=torch.float32)
    a = torch.full((2, 3, 7, 5), -200.0)
    b = torch.full((2, 3, 7, 5), -200.0)
    for mode in ("parallel", "recurrent"):
        qg = q.clone().requires_grad_(True)
        out = NF.regla_attention(qg, k, v, a, b, causal=False, mode=mode)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(qg.grad).all()


@pytest.mark.parametrize("name", GATED)
def test_recurrent_mode_runs_in_half_precision(name):
    q, k, v = _qkv(dtype=torch.float32)
    ref = normact.create(name)(q, k, v, causal=True, mask=_padding(2, 7))
    for dtype in (torch.float16, torch.bfloat16):
        layer = normact.create(name, mode="recurrent").to(dtype)
        out = layer(q.to(dtype), k.to(dtype), v.to(dtype), causal=True)
        assert out.dtype == dtype and torch.isfinite(out).all()
    out = normact.create(name, mode="recurrent")(q, k, v, causal=True, mask=_padding(2, 7))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_regla_second_derivatives():
    """gradgradcheck through the parallel and recurrent forms (queries, keys, values, gate logits)."""
    q, k, v = _qkv(b=1, h=2, t=4, d=3)
    a, b = _token_gates(1, 2, 4, 3)
    inputs = tuple(x.clone().requires_grad_(True) for x in (q, k, v, a, b))
    for mode in ("parallel", "recurrent"):

        def fn(*xs, mode=mode):
            return NF.regla_attention(*xs[:3], xs[3], xs[4], causal=True, mode=mode)

        assert torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
