"""Closed-form identities of GDN / IGDN (Ballé, Laparra & Simoncelli 2015) and the reparametrization."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF
from normact.layers.norm.gdn import GDN, IGDN

OFFSET = 2.0**-18


def _stored(v: torch.Tensor) -> torch.Tensor:
    """CompressAI's stored form of an effective value v >= 0."""
    return torch.sqrt(torch.clamp(v + OFFSET**2, min=OFFSET**2))


def _set(m, beta, gamma):
    with torch.no_grad():
        m.beta.copy_(_stored(beta))
        m.gamma.copy_(_stored(gamma))


def test_init_values_and_effective_params():
    m = GDN(5, dtype=torch.float64)
    beta = NF.gdn_reparam(m.beta, m.beta_min, m.reparam_offset)
    gamma = NF.gdn_reparam(m.gamma, 0.0, m.reparam_offset)
    torch.testing.assert_close(beta, torch.ones(5, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(gamma, 0.1 * torch.eye(5, dtype=torch.float64), rtol=0, atol=1e-12)


@pytest.mark.parametrize("cls", [GDN, IGDN])
def test_gamma_zero_beta_one_is_identity(cls):
    m = cls(4, dtype=torch.float64)
    _set(m, torch.ones(4, dtype=torch.float64), torch.zeros(4, 4, dtype=torch.float64))
    x = torch.randn(3, 4, 5, 2, dtype=torch.float64) * 4
    torch.testing.assert_close(m(x), x, rtol=1e-12, atol=1e-12)


def test_diagonal_gamma_matches_elementwise_closed_form():
    g = torch.tensor([0.1, 0.7, 2.0], dtype=torch.float64)
    b = torch.tensor([1.0, 0.5, 3.0], dtype=torch.float64)
    x = torch.randn(2, 3, 6, dtype=torch.float64) * 2
    gdn, igdn = GDN(3, dtype=torch.float64), IGDN(3, dtype=torch.float64)
    for m in (gdn, igdn):
        _set(m, b, torch.diag(g))
    root = torch.sqrt(b.view(1, 3, 1) + g.view(1, 3, 1) * x**2)
    torch.testing.assert_close(gdn(x), x / root, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(igdn(x), x * root, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["gdn", "igdn", "gdn_simplified"])
def test_odd_in_x(name):
    m = normact.create(name, 5, dtype=torch.float64)
    with torch.no_grad():
        m.gamma.add_(0.2 * torch.rand(5, 5, dtype=torch.float64))
    x = torch.randn(2, 5, 3, 3, dtype=torch.float64)
    torch.testing.assert_close(m(-x), -m(x), rtol=1e-12, atol=1e-12)


def test_igdn_inverts_gdn_for_small_gamma():
    """With beta = 1 and gamma = g I: IGDN(GDN(x)) = x (1 - g^2 x^4 / 2 + O(g^3)), an error of at most g^2 |x|^5."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 8, 8, dtype=torch.float64)
    for g in (1e-2, 1e-3, 1e-5):
        gdn, igdn = GDN(4, gamma_init=g, dtype=torch.float64), IGDN(4, gamma_init=g, dtype=torch.float64)
        err = (igdn(gdn(x)) - x).abs()
        assert (err <= g**2 * x.abs() ** 5 + 1e-12).all(), (g, err.max().item())
    torch.testing.assert_close(igdn(gdn(x)), x, rtol=1e-7, atol=1e-7)


def test_large_input_with_diagonal_gamma_tends_to_sign_over_sqrt_gamma():
    g = torch.tensor([0.1, 0.4, 2.5], dtype=torch.float64)
    m = GDN(3, dtype=torch.float64)
    _set(m, torch.ones(3, dtype=torch.float64), torch.diag(g))
    x = torch.randn(4, 3, 5, dtype=torch.float64)
    x = torch.where(x >= 0, 1.0, -1.0) * (1e6 + x.abs())
    expected = torch.sign(x) / torch.sqrt(g).view(1, 3, 1)
    torch.testing.assert_close(m(x), expected, rtol=1e-9, atol=0)
    x16 = (x / 1e2).half()  # |x| ~ 1e4: the pooled x^2 ~ 1e8 overflows float16 unless computed in float32
    y16 = m.half()(x16)
    assert y16.dtype == torch.float16 and torch.isfinite(y16).all()
    torch.testing.assert_close(y16.double(), expected, rtol=5e-3, atol=0)


def test_cross_channel_mixing_uses_gamma_row_i():
    """norm_i = beta_i + sum_j gamma[i, j] x_j^2 (rows index the output channel, as CompressAI's 1x1 conv)."""
    m = GDN(2, dtype=torch.float64)
    _set(m, torch.ones(2, dtype=torch.float64), torch.tensor([[0.0, 3.0], [0.0, 0.0]], dtype=torch.float64))
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    torch.testing.assert_close(m(x), torch.tensor([[1.0 / math.sqrt(13.0), 2.0]], dtype=torch.float64))


def test_simplified_closed_form():
    m = normact.create("gdn_simplified", 2, dtype=torch.float64)
    _set(m, torch.tensor([1.0, 2.0], dtype=torch.float64), torch.tensor([[0.5, 0.25], [0.0, 1.0]], dtype=torch.float64))
    x = torch.tensor([[2.0, -4.0]], dtype=torch.float64)
    torch.testing.assert_close(m(x), torch.tensor([[2.0 / 3.0, -4.0 / 6.0]], dtype=torch.float64))


def test_beta_and_gamma_bounded_below_in_forward():
    m = GDN(3, beta_min=1e-2, dtype=torch.float64)
    with torch.no_grad():
        m.beta.fill_(-5.0)
        m.gamma.fill_(-5.0)
    x = torch.randn(2, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x), x / math.sqrt(1e-2), rtol=1e-9, atol=0)
    torch.testing.assert_close(NF.gdn_reparam(m.gamma), torch.zeros(3, 3, dtype=torch.float64), rtol=0, atol=1e-15)


def test_lower_bound_gradient_passes_only_towards_the_inside():
    p = torch.tensor([-1.0, -1.0, 2.0, 2.0], dtype=torch.float64, requires_grad=True)
    y = NF.gdn_lower_bound(p, 0.5)
    torch.testing.assert_close(y, torch.tensor([0.5, 0.5, 2.0, 2.0], dtype=torch.float64))
    (g,) = torch.autograd.grad(y, p, torch.tensor([-1.0, 1.0, -1.0, 1.0], dtype=torch.float64))
    # below the bound: kept only when negative (descent raises p); above: the exact derivative
    torch.testing.assert_close(g, torch.tensor([-1.0, 0.0, -1.0, 1.0], dtype=torch.float64))


def test_stuck_beta_recovers_under_gradient_descent():
    m = GDN(2, dtype=torch.float64)
    with torch.no_grad():
        m.beta.fill_(-1.0)  # below the bound: the forward sees beta = beta_min
    x = torch.full((1, 2), 0.3, dtype=torch.float64)
    loss = (m(x) - 0.0).pow(2).sum()  # a smaller output wants a larger beta
    loss.backward()
    assert (m.beta.grad < 0).all()


def test_loads_state_dict_with_compressai_buffers_and_checks_them():
    m = GDN(3)
    state = dict(m.state_dict())
    state["beta_reparam.pedestal"] = torch.tensor([OFFSET**2])
    state["beta_reparam.lower_bound.bound"] = torch.tensor([math.sqrt(1e-6 + OFFSET**2)])
    state["gamma_reparam.pedestal"] = torch.tensor([OFFSET**2])
    state["gamma_reparam.lower_bound.bound"] = torch.tensor([OFFSET])
    GDN(3).load_state_dict(state, strict=True)
    with pytest.raises(RuntimeError, match="beta_min"):
        GDN(3, beta_min=1e-3).load_state_dict(state, strict=True)


@pytest.mark.parametrize("kwargs", [{"beta_min": 0.0}, {"gamma_init": -1.0}, {"reparam_offset": -1.0}])
def test_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        GDN(3, **kwargs)


def test_functional_shape_errors():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"\(3, 3\)"):
        NF.generalized_divisive_norm(x, torch.ones(3), torch.ones(3, 4))
    with pytest.raises(ValueError, match=r"\(3,\)"):
        NF.generalized_divisive_norm(x, torch.ones(4), torch.ones(3, 3))


def test_plain_parameters_without_reparametrization():
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    b, g = torch.rand(3, dtype=torch.float64) + 0.5, torch.rand(3, 3, dtype=torch.float64)
    y = NF.generalized_divisive_norm(x, b, g, reparam_offset=None)
    torch.testing.assert_close(y, x / torch.sqrt(b.view(1, 3, 1) + torch.einsum("ij,njl->nil", g, x**2)))
