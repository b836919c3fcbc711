"""Each paper's own checks for the softmax-free row normalizers (normact.layers.attention.normalized):
normalized attention (rows of mean 0 and variance 1), LSSA (log-length temperature, exact l1 rows), LSSAR
(sparsity above the uniform weight, argmax limit) and LLN (moment matching, O(n) forms equal to the explicit
weights). The interface every attention normalizer shares is in tests/test_attention.py."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from normact.functional.attention_normalized import LLN_FIT_A, LLN_FIT_B, lln_feature_scales
from tests.helpers import random_qkv

_qkv = random_qkv


# ------------------------------------------------------------------------------------------------ normalized


def test_normalized_attention_rows_have_mean_zero_and_unit_variance_over_the_kept_keys():
    """gain 1, bias 0: each row's kept weights have mean 0 and variance sigma^2 / (sigma + eps)^2 exactly (the
    authors add eps to the standard deviation), so 1 up to eps; masked keys weigh 0."""
    q, k, v = _qkv(s=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 4:] = False
    for eps in (1e-3, 1e-12):
        _, w = NF.normalized_attention(q, k, v, causal=True, mask=mask, eps=eps, return_weights=True)
        keep = torch.ones(6, 7, dtype=torch.bool).tril()[None, None] & mask[:, None, None, :]
        scores = q @ k.transpose(-2, -1)
        for b, h, t in [(0, 0, 5), (0, 1, 2), (1, 0, 5), (1, 1, 3)]:
            sel = keep[b, 0, t]
            row, z = w[b, h, t][sel], scores[b, h, t][sel]
            sigma = float(z.std(unbiased=False))
            assert float(row.mean()) == pytest.approx(0.0, abs=1e-14)
            assert float(row.var(unbiased=False)) == pytest.approx((sigma / (sigma + eps)) ** 2, rel=1e-12)
            assert w[b, h, t][~sel].abs().max() == 0
        if eps == 1e-12:
            row = w[0, 0, 5][:6]
            assert float(row.var(unbiased=False)) == pytest.approx(1.0, abs=1e-10)
    _, w = NF.normalized_attention(q, k, v, causal=True, return_weights=True)
    assert w[:, :, 0].abs().max() == 0  # one key: nothing to standardize, weight = bias = 0


def test_normalized_attention_invariances_and_per_head_gain_bias():
    """A constant added to a row of scores changes nothing (softmax too); a positive rescaling of a row changes
    nothing but through eps (softmax changes)."""
    q, k, v = _qkv()
    shift = torch.randn(2, 2, 6, 1, dtype=torch.float64)
    q1, k1 = torch.cat([q, shift], -1), torch.cat([k, torch.ones(2, 2, 6, 1, dtype=torch.float64)], -1)  # s + c_t
    out = NF.normalized_attention(q, k, v, eps=1e-12)
    torch.testing.assert_close(NF.normalized_attention(q1, k1, v, eps=1e-12), out, rtol=0, atol=1e-10)
    factors = torch.rand(2, 2, 6, 1, dtype=torch.float64) * 5 + 0.2
    torch.testing.assert_close(NF.normalized_attention(q * factors, k, v, eps=1e-12), out, rtol=0, atol=1e-9)
    soft = NF.softmax_attention(q, k, v, scale=1.0)
    assert (NF.softmax_attention(q * factors, k, v, scale=1.0) - soft).abs().max() > 1e-2
    layer = normact.create("normalized_attention", heads=2, eps=1e-12).double()
    with torch.no_grad():
        layer.gain.copy_(torch.tensor([2.0, -0.5]))
        layer.bias.copy_(torch.tensor([0.1, 0.3]))
    _, w = layer(q, k, v, need_weights=True)
    _, w0 = NF.normalized_attention(q, k, v, eps=1e-12, return_weights=True)
    gain, bias = torch.tensor([2.0, -0.5]).view(1, 2, 1, 1), torch.tensor([0.1, 0.3]).view(1, 2, 1, 1)
    torch.testing.assert_close(w, w0 * gain + bias)
    with pytest.raises(ValueError, match="heads"):
        NF.normalized_attention(q, k, v, torch.ones(3))


# ------------------------------------------------------------------------------------------------ LSSA / LSSAR


def test_lssa_rows_are_l1_normalized_softplus_with_a_log_length_temperature():
    """Rows >= 0 summing to 1; invariant to positive rescaling of any q or k (cosine scores); a row with one
    matching key (cos 1) among N - 1 orthogonal ones (cos 0) gives it softplus(log D log N) / (softplus(log D
    log N) + (N - 1) log 2): the temperature log D log N grows with the number of keys the row attends."""
    q, k, v = _qkv()
    out, w = NF.lssa_attention(q, k, v, causal=True, return_weights=True)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64), rtol=0, atol=1e-14)
    f = torch.rand(2, 2, 6, 1, dtype=torch.float64) * 10 + 0.1
    torch.testing.assert_close(NF.lssa_attention(q * f, k / f, v, causal=True), out)
    d, n_max = 16, 12
    eye = torch.eye(d, dtype=torch.float64)
    keys = eye[1 : n_max + 1].clone()
    for n in (2, 5, 12):
        kk = keys[:n].clone()
        kk[n - 1] = eye[0]  # the last of n keys matches the query e_0, the others are orthogonal to it
        q1 = eye[0].view(1, 1, 1, d)
        v1 = torch.zeros(1, 1, n, 1, dtype=torch.float64)
        _, w1 = NF.lssa_attention(q1, kk.view(1, 1, n, d), v1, return_weights=True)
        hit = F.softplus(torch.tensor(math.log(d) * math.log(n), dtype=torch.float64))
        assert float(w1[0, 0, 0, -1]) == pytest.approx(float(hit / (hit + (n - 1) * math.log(2))), rel=1e-13)
    assert F.softplus(torch.tensor(30.0, dtype=torch.float64)) - 30.0 < 1e-12  # softplus(x) -> x


def test_lssar_keeps_only_keys_above_the_uniform_weight_and_tends_to_the_argmax():
    q, k, v = _qkv(t=8)
    _, a = NF.lssa_attention(q, k, v, causal=True, return_weights=True)
    _, w = NF.lssar_attention(q, k, v, causal=True, return_weights=True)
    n = torch.arange(1, 9, dtype=torch.float64).view(1, 1, 8, 1)
    tri = torch.ones(8, 8, dtype=torch.bool).tril()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 8, dtype=torch.float64), rtol=0, atol=1e-14)
    above = (a * n > 1) & tri
    assert torch.equal((w > 0)[:, :, 3:], above[:, :, 3:])  # rows with N > 3: exactly the keys above 1/N
    exempt = a[:, :, :3] ** 15  # rows N <= 3 (the paper's zeroed rows of O): a^p / sum a^p
    torch.testing.assert_close(w[:, :, :3], exempt / exempt.sum(-1, keepdim=True).clamp_min(1e-300))
    # power 1, offset 0: the re-weighting is the identity
    torch.testing.assert_close(NF.lssar_attention(q, k, v, 1.0, 0.0, causal=True, return_weights=True)[1], a)
    _, sharp = NF.lssar_attention(q, k, v, power=400.0, causal=True, return_weights=True)
    top = a.masked_fill(~tri, -1).argmax(-1, keepdim=True)
    assert torch.equal(sharp.argmax(-1, keepdim=True), top)  # the argmax limit, row by row
    assert float(sharp.gather(-1, top).min()) > 0.9 and (sharp.amax(-1) >= w.amax(-1) - 1e-12).all()
    zero_q = torch.zeros_like(q)  # every LSSA row uniform: nothing above the offset, zero weights
    out, w0 = NF.lssar_attention(zero_q, k, v, return_weights=True)
    assert out.abs().max() == 0 and w0.abs().max() == 0


# ------------------------------------------------------------------------------------------------ LLN


def test_lln_moment_matching_identity():
    for sq, sk in [(1.0, 1.0), (0.5, 2.0), (3.0, 0.7)]:
        alpha, beta = lln_feature_scales(sq, sk)
        assert alpha * sq == pytest.approx(beta * sk, rel=1e-15)
        assert LLN_FIT_A * ((alpha * sq) ** 2 + (beta * sk) ** 2) + LLN_FIT_B == pytest.approx(sq**2 * sk**2, rel=1e-14)
    assert normact.create("lln_attention").feature_scales() == pytest.approx((2.1354772, 2.1354772), abs=1e-7)


def test_lln_linear_forms_equal_the_explicit_weights():
    """Rows > 0 summing to 1; Phi_Q (Phi_K^T V) equals (Phi_Q Phi_K^T) V, with a padding mask too; the causal
    prefix sums equal the masked explicit form, causal flag or lower-triangular mask."""
    q, k, v = _qkv(s=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, -2:] = False
    for m in (None, mask):
        linear = NF.lln_attention(q, k, v, mask=m)
        explicit, w = NF.lln_attention(q, k, v, mask=m, return_weights=True)
        torch.testing.assert_close(linear, explicit, rtol=0, atol=1e-12)
        keep = torch.ones_like(w, dtype=torch.bool) if m is None else m[:, None, None, :].expand_as(w)
        assert (w[keep] > 0).all() and (w[~keep] == 0).all()
        torch.testing.assert_close(w.sum(-1), torch.ones(2, 2, 6, dtype=torch.float64), rtol=0, atol=1e-14)
    for t, s in [(6, 6), (4, 7), (8, 5)]:
        q, k, v = _qkv(t=t, s=s, seed=t)
        prefix = NF.lln_attention(q, k, v, causal=True, causal_prefix_sums=True)
        tri = torch.ones(t, s, dtype=torch.bool).tril()[None, None]
        torch.testing.assert_close(prefix, NF.lln_attention(q, k, v, causal=True), rtol=0, atol=1e-12)
        torch.testing.assert_close(prefix, NF.lln_attention(q, k, v, mask=tri), rtol=0, atol=1e-12)
        layer = normact.create("lln_attention", causal_prefix_sums=True)
        torch.testing.assert_close(layer(q, k, v, causal=True), prefix, rtol=0, atol=0)


def _authors_lln(q, k, v, eps=1e-8):
    """The authors' non-causal LLNAttention.forward (lln/lln_attention.py), restated: global std, no gradient
    through alpha, beta; shifts by the row / head maxima; eps in the denominator."""
    sq, sk = float(q.std()), float(k.std())
    tilde = math.sqrt((sq**2 * sk**2 - LLN_FIT_B) / (2 * LLN_FIT_A))
    lq, lk = tilde / sq * q, tilde / sk * k
    qe, ke = torch.exp(lq - lq.amax(-1, keepdim=True)), torch.exp(lk - lk.amax((-2, -1), keepdim=True))
    den = torch.einsum("...nd,...d->...n", qe, ke.sum(-2)) + eps
    return qe @ (ke.transpose(-2, -1) @ v) / den.unsqueeze(-1)


def test_lln_estimated_moments_follow_the_authors_code():
    q, k, v = _qkv(scale=0.7)
    k = k * 1.6
    layer = normact.create("lln_attention", sigma_q=None, sigma_k=None)
    torch.testing.assert_close(layer(q, k, v), _authors_lln(q, k, v), rtol=1e-6, atol=1e-7)
    fixed = NF.lln_attention(q, k, v, float(q.std()), float(k.std()))
    torch.testing.assert_close(layer(q, k, v), fixed, rtol=0, atol=1e-14)
    qg, kg = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    qf, kf = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    layer(qg, kg, v).sum().backward()
    NF.lln_attention(qf, kf, v, float(q.std()), float(k.std())).sum().backward()
    torch.testing.assert_close(qg.grad, qf.grad)  # no gradient through the statistics, as the authors
    torch.testing.assert_close(kg.grad, kf.grad)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 2] = False
    k2 = k.clone()
    k2[0, :, 2] = 1e3  # a masked key is out of the statistics too
    torch.testing.assert_close(layer(q, k2, v, mask=mask), layer(q, k, v, mask=mask), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="sigma_q"):
        NF.lln_attention(q, k, v, sigma_q=-1.0)
