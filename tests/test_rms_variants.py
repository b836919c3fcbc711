"""Closed-form values and identities of the RMS variants, from their papers and the authors' code:
SimpleRMSNorm (TransNormerLLM), partial RMSNorm (Zhang & Sennrich), CRMSNorm (Jiang et al.), FixNorm
(Nguyen & Salazar)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from normact.functional.rms_variants import partial_size


def _randn(*shape: int, seed: int = 0, offset: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * 1.5 + offset


# ----------------------------------------------------------------------------- SimpleRMSNorm


def test_simple_rmsnorm_is_torch_rms_norm_without_weight():
    x = _randn(4, 3, 32, offset=0.7)
    for eps in (1e-6, 1e-2):
        m = normact.create("simple_rmsnorm", 32, eps=eps)
        torch.testing.assert_close(m(x), F.rms_norm(x, (32,), None, eps), rtol=1e-14, atol=1e-14)
    assert not list(m.parameters()) and not list(m.buffers())


def test_simple_rmsnorm_paper_eq8_length_and_scale_invariance():
    """Eq. 8: SRMSNorm(x) = x / (||x||_2 / sqrt(d)); so ||y||_2 = sqrt(d) and y(c x) = y(x), up to eps."""
    d = 48
    x = _randn(5, d, offset=-0.3)
    y = normact.create("simple_rmsnorm", d)(x)
    eq8 = x / (x.norm(dim=-1, keepdim=True) / math.sqrt(d))
    torch.testing.assert_close(y, eq8, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((5,), math.sqrt(d), dtype=x.dtype), rtol=1e-5, atol=0)
    torch.testing.assert_close(normact.create("simple_rmsnorm", d)(7.0 * x), y, rtol=1e-6, atol=1e-7)


def test_simple_rmsnorm_closed_form():
    x = torch.tensor([[3.0, 4.0]], dtype=torch.float64)  # mean square 12.5
    y = normact.create("simple_rmsnorm", 2, eps=0.5)(x)
    torch.testing.assert_close(y, x / math.sqrt(13.0))


# ----------------------------------------------------------------------------- partial RMSNorm


def test_partial_size_is_ceil_p_d():
    assert partial_size(64, 0.0625) == 4  # the paper's 6.25%
    assert partial_size(512, 0.0625) == 32
    assert partial_size(10, 0.0625) == 1  # ceil(0.625); the paper's code would take int(0.625) = 0
    assert partial_size(100, 0.07) == 7  # not 8: 0.07 * 100 == 7.000000000000001 in binary
    assert partial_size(16, 0.3) == 5
    assert partial_size(7, 1.0) == 7


def test_partial_rmsnorm_with_p_1_is_rmsnorm_paper():
    x = _randn(3, 4, 24, offset=0.4)
    part = normact.create("partial_rmsnorm", 24, p=1.0, bias=True, eps=1e-5)
    full = normact.create("rmsnorm_paper", 24, bias=True, eps=1e-5)
    with torch.no_grad():
        for m in (part, full):
            m.weight.copy_(torch.linspace(0.5, 2.0, 24))
            m.bias.copy_(torch.linspace(-1.0, 1.0, 24))
    torch.testing.assert_close(part(x), full(x), rtol=1e-14, atol=1e-14)


def test_partial_rmsnorm_closed_form_reads_only_the_first_k():
    """p = 0.25 of d = 8: k = 2, RMS = sqrt((3^2 + 4^2) / 2) = sqrt(12.5), whatever the other features hold."""
    m = normact.create("partial_rmsnorm", 8, p=0.25, eps=1e-8)
    x = torch.tensor([[3.0, 4.0, 100.0, -7.0, 0.0, 1.0, 2.0, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(m(x), x / (math.sqrt(12.5) + 1e-8))
    x2 = x.clone()
    x2[:, 2:] = torch.randn(1, 6, dtype=torch.float64)
    torch.testing.assert_close(m(x2)[:, :2], m(x)[:, :2], rtol=0, atol=0)


def test_partial_rmsnorm_matches_the_papers_code_when_p_d_is_an_integer():
    """bzhangGo/rmsnorm rmsnorm_torch.py: partial_size = int(d * p); rms = ||x[:k]|| * k^-1/2;
    y = scale * x / (rms + eps)."""
    d, p, eps = 64, 0.0625, 1e-8
    x = _randn(6, d, offset=0.2)
    k = int(d * p)
    rms = x[..., :k].norm(2, dim=-1, keepdim=True) * k ** (-1.0 / 2)
    torch.testing.assert_close(normact.create("partial_rmsnorm", d)(x), x / (rms + eps), rtol=1e-14, atol=1e-14)


def test_partial_rmsnorm_several_dims_read_the_row_major_prefix():
    m = normact.create("partial_rmsnorm", (2, 4), p=0.5, elementwise_affine=False)  # k = 4: the first row
    x = _randn(3, 2, 4)
    rms = x[:, 0, :].pow(2).mean(-1).sqrt().view(3, 1, 1)
    torch.testing.assert_close(m(x), x / (rms + 1e-8))


@pytest.mark.parametrize("p", [0.0, -0.1, 1.01, float("nan"), float("inf")])
def test_partial_rmsnorm_rejects_p_outside_0_1(p):
    with pytest.raises(ValueError, match="p must"):
        normact.create("partial_rmsnorm", 16, p=p)
    with pytest.raises(ValueError, match="p must"):
        NF.partial_rms_norm(torch.randn(2, 16), 16, p)


def test_partial_rmsnorm_repr_shows_p_and_k():
    assert "p=0.0625 (k=4)" in repr(normact.create("partial_rmsnorm", 64))


# ----------------------------------------------------------------------------- CRMSNorm


def _zero_mean(*shape: int, seed: int = 0) -> torch.Tensor:
    z = _randn(*shape, seed=seed, offset=2.0)
    return z - z.mean(-1, keepdim=True)


@pytest.mark.parametrize("eps", [1e-5, 1e-2])
def test_crmsnorm_of_compressed_zero_mean_vector_is_rmsnorm_and_layernorm(eps):
    """The paper's identity: for zero-mean z in R^(d+1), CRMSNorm(z[:d]) = RMSNorm(z)[:d] = LayerNorm(z)[:d]."""
    d = 31
    z = _zero_mean(4, 5, d + 1)
    y = normact.create("crmsnorm", d, eps=eps, elementwise_affine=False)(z[..., :-1])
    torch.testing.assert_close(y, F.rms_norm(z, (d + 1,), None, eps)[..., :-1], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y, F.layer_norm(z, (d + 1,), None, None, eps)[..., :-1], rtol=1e-12, atol=1e-12)


def test_crmsnorm_output_decompresses_to_the_full_rmsnorm():
    """The output is again a compressed zero-mean vector: appending -sum(y) gives all of RMSNorm(z)."""
    d = 12
    z = _zero_mean(3, d + 1, seed=3)
    y = NF.crms_norm(z[..., :-1], d, eps=1e-5)
    full = torch.cat([y, -y.sum(-1, keepdim=True)], dim=-1)
    torch.testing.assert_close(full, F.rms_norm(z, (d + 1,), None, 1e-5), rtol=1e-12, atol=1e-12)


def test_crmsnorm_is_not_rmsnorm_of_zero_mean_d_vectors():
    """The catalog's 'CRMSNorm equals RMSNorm on zero-mean vectors' does not hold: on a zero-mean d-vector
    the discarded coordinate is 0, so the mean square is ||x||^2 / (d + 1) and CRMSNorm = sqrt((d+1)/d) RMSNorm."""
    d = 10
    x = _zero_mean(4, d)
    c = normact.create("crmsnorm", d, eps=1e-12, elementwise_affine=False)(x)
    r = F.rms_norm(x, (d,), None, 1e-12)
    assert not torch.allclose(c, r, rtol=1e-3)
    torch.testing.assert_close(c, math.sqrt((d + 1) / d) * r, rtol=1e-9, atol=1e-9)


def test_crmsnorm_closed_form_and_affine():
    """x = (1, 2), d = 2: discarded element -3, mean square (1 + 4 + 9) / 3."""
    m = normact.create("crmsnorm", 2, eps=1e-5)
    with torch.no_grad():
        m.weight.copy_(torch.tensor([2.0, -1.0]))
        m.bias.copy_(torch.tensor([0.5, 0.25]))
    x = torch.tensor([[1.0, 2.0]])
    expected = x / math.sqrt(14.0 / 3.0 + 1e-5) * torch.tensor([2.0, -1.0]) + torch.tensor([0.5, 0.25])
    torch.testing.assert_close(m(x), expected)


def test_pre_crmsnorm_linear_layer_equivalence():
    """Pre-CRMSNorm block input: W @ LN(z) + b equals (W[:, :-1] - W[:, -1:]) @ CRMSNorm(z[:-1]) + b for
    zero-mean z (the authors' example.py compresses the input projections this way)."""
    d1, out = 17, 6
    z = _zero_mean(5, d1, seed=7)
    w = _randn(out, d1, seed=8)
    b = _randn(out, seed=9)
    ln = F.linear(F.layer_norm(z, (d1,), eps=1e-5), w, b)
    crms = F.linear(NF.crms_norm(z[..., :-1], d1 - 1, eps=1e-5), w[:, :-1] - w[:, -1:], b)
    torch.testing.assert_close(crms, ln, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------- FixNorm


@pytest.mark.parametrize("length", [1.0, 2.5, math.sqrt(16)])
def test_fixnorm_fixes_the_length(length):
    x = _randn(4, 3, 16, offset=0.3)
    y = normact.create("fixnorm", 16, length=length)(x)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((4, 3), length, dtype=x.dtype))
    torch.testing.assert_close(y / length, x / x.norm(dim=-1, keepdim=True))  # same direction
    torch.testing.assert_close(normact.create("fixnorm", 16, length=length)(0.01 * x), y)
    assert not list(normact.create("fixnorm", 16).parameters())  # g is a constant


def test_fixnorm_default_is_the_papers_code():
    """tnq177/transformers_without_tears model.py: fix_norm -> F.normalize(word_embedding, dim=-1)."""
    x = _randn(10, 8)
    torch.testing.assert_close(normact.create("fixnorm", 8)(x), F.normalize(x, dim=-1), rtol=0, atol=0)


def test_fixnorm_with_sqrt_d_is_scalenorm_at_init():
    d = 20
    x = _randn(3, d, offset=1.0)
    fix = normact.create("fixnorm", d, length=math.sqrt(d), eps=1e-5)
    scale = normact.create("scalenorm", d, eps=1e-5, affine=False, dtype=torch.float64)
    torch.testing.assert_close(fix(x), scale(x), rtol=1e-14, atol=1e-14)


def test_fixnorm_zero_vector_stays_zero_with_finite_gradient():
    x = torch.zeros(2, 8, requires_grad=True)
    y = normact.create("fixnorm", 8)(x)
    assert torch.equal(y, torch.zeros_like(y))
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all()


@pytest.mark.parametrize("length", [0.0, -1.0, float("nan")])
def test_fixnorm_rejects_bad_length(length):
    with pytest.raises(ValueError, match="length"):
        normact.create("fixnorm", 8, length=length)


# ----------------------------------------------------------------------------- shared


@pytest.mark.parametrize("name", ["simple_rmsnorm", "partial_rmsnorm", "crmsnorm", "fixnorm"])
def test_wrong_feature_count_names_the_expected_shape(name):
    with pytest.raises(ValueError, match=r"expects input of shape \(\*, 16\).*got shape \(2, 15\)"):
        normact.create(name, 16)(torch.randn(2, 15))


@pytest.mark.parametrize("name", ["simple_rmsnorm", "partial_rmsnorm", "crmsnorm", "fixnorm"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_large_inputs_normalize_in_float32(name, dtype):
    x = _randn(4, 64, offset=0.5) * 1e4
    m = normact.create(name, 64)
    y = m(x.to(dtype))
    assert y.dtype == dtype and torch.isfinite(y).all()
    torch.testing.assert_close(y.double(), m.double()(x.to(dtype).double()), rtol=2e-2, atol=2e-2)
