"""Gaussian moments of activations (normact.gaussian_moments / activation_gain) against values computed
independently: closed forms where they exist, scipy's adaptive quadrature of the textbook formulas otherwise."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normact

integrate = pytest.importorskip("scipy.integrate")
special = pytest.importorskip("scipy.special")


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def _scipy_gain(g):
    """1/sqrt(E[g^2] - E[g]^2) under N(0, 1) by scipy.integrate.quad, split at 0 (kinks live there)."""

    def moment(k):
        return sum(integrate.quad(lambda z: g(z) ** k * _phi(z), a, b, limit=200)[0] for a, b in ((-40, 0), (0, 40)))

    return 1.0 / math.sqrt(moment(2) - moment(1) ** 2)


def test_relu_gain_is_the_closed_form():
    """Var[max(0, z)] = 1/2 - 1/(2 pi): gain ~ 1.7129 (the issue's "about 1.713")."""
    exact = 1.0 / math.sqrt(0.5 - 1.0 / (2 * math.pi))
    assert normact.activation_gain("relu") == pytest.approx(exact, abs=1e-9)
    assert normact.gaussian_moments("relu").mean == pytest.approx(1 / math.sqrt(2 * math.pi), abs=1e-12)


@pytest.mark.parametrize(
    ("layer", "g"),
    [
        ("gelu", lambda z: z * 0.5 * (1 + special.erf(z / math.sqrt(2)))),
        ("silu", lambda z: z * special.expit(z)),
        (nn.Tanh(), math.tanh),
        ("relu", lambda z: max(z, 0.0)),
        ("mish", lambda z: z * math.tanh(math.log1p(math.exp(z)) if z < 30 else z)),
    ],
    ids=["gelu", "silu", "tanh", "relu", "mish"],
)
def test_gain_matches_scipy_quadrature(layer, g):
    expected = _scipy_gain(g)
    assert normact.activation_gain(layer) == pytest.approx(expected, abs=1e-6)


def test_tanh_is_zero_centred_and_relu_is_not():
    assert normact.gaussian_moments(nn.Tanh()).zero_centred
    assert not normact.gaussian_moments("relu").zero_centred


def test_gated_activation_takes_independent_halves():
    """SwiGLU(a, b) = silu(a) * b with a, b independent N(0, 1): E = 0 and Var = E[silu(a)^2]."""
    swiglu, silu = normact.gaussian_moments("swiglu"), normact.gaussian_moments("silu")
    assert swiglu.mean == pytest.approx(0.0, abs=1e-9)
    assert swiglu.variance == pytest.approx(silu.second_moment, rel=1e-6)


def test_gain_scales_a_unit_gaussian_to_unit_variance():
    """The point of the gain: gamma * g(z) has unit variance (Monte Carlo, 2e6 samples)."""
    z = torch.randn(2_000_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for name in ("relu", "gelu", "silu"):
        y = normact.activation_gain(name) * normact.create(name)(z)
        assert y.var().item() == pytest.approx(1.0, abs=5e-3)


def test_every_registered_activation_has_finite_moments_and_its_declared_lower_bound():
    for name in normact.list_layers(kind="act"):
        info = normact.info(name)
        if not info.properties.elementwise:
            with pytest.raises(ValueError, match="not elementwise"):
                normact.gaussian_moments(name)
            continue
        m = normact.gaussian_moments(name)
        assert math.isfinite(m.gain) and m.gain > 0, name
        if info.properties.gated:
            continue
        module = normact.create(name).double().eval()
        # -1e6 too: LeakyReLU's slope 0.01 only reaches -10 at -1e3
        far = torch.tensor([-1e6], dtype=torch.float64)
        x = torch.cat([far, torch.linspace(-1e3, 1e3, 200_001, dtype=torch.float64)])
        try:
            y = module(x)
        except ValueError:
            y = module(x[:, None])[:, 0]
        bounded = bool(y.min() > -1e2)
        assert bounded == info.properties.bounded_below, f"{name}: bounded_below declared {not bounded}"


def test_non_activation_is_rejected_clearly():
    with pytest.raises(ValueError, match="not finite"):
        normact.gaussian_moments(_Exploding())


class _Exploding(nn.Module):
    def forward(self, x):
        return torch.exp(x * 100)


def test_norm_layers_have_no_gaussian_moments():
    with pytest.raises(ValueError, match="activations"):
        normact.gaussian_moments("layernorm")
