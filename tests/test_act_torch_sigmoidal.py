"""The smooth / sigmoidal activations against torch.nn (Sigmoid, Tanh, LogSigmoid, Softplus, Softsign,
Hardsigmoid, Hardswish) and timm (QuickGELU for gelu_sigmoid): outputs and gradients in float64 and float32,
in-place where torch has it, torch's signatures and defaults; the sigmoid approximation of GELU against the
exact GELU, its deviation computed independently with mpmath; registry properties checked numerically."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import normact

mpmath = pytest.importorskip("mpmath")

# name -> (torch class, constructor kwargs to compare)
TORCH = {
    "sigmoid": (nn.Sigmoid, [{}]),
    "tanh": (nn.Tanh, [{}]),
    "logsigmoid": (nn.LogSigmoid, [{}]),
    "softplus": (nn.Softplus, [{}, {"beta": 2.0, "threshold": 10.0}, {"beta": 0.5, "threshold": 5.0}]),
    "softsign": (nn.Softsign, [{}]),
    "hardsigmoid": (nn.Hardsigmoid, [{}]),
    "hardswish": (nn.Hardswish, [{}]),
}
CASES = [pytest.param(name, cls, kw, id=f"{name}-{kw}") for name, (cls, kws) in TORCH.items() for kw in kws]

# (atol, rtol) for outputs and input gradients. torch's CPU hardsigmoid backward multiplies by 1/6 rounded to
# float32 in every dtype (normact's float64 derivative is 1/6 to double precision): 3e-8 relative in float64.
TOL = {torch.float64: (1e-14, 1e-12), torch.float32: (1e-7, 1e-6)}
GRAD_TOL = {("hardsigmoid", torch.float64): (1e-14, 1e-7)}


def _input(dtype: torch.dtype) -> torch.Tensor:
    """A random block and a grid over [-30, 30] (both sides of every kink and of softplus' linear region),
    plus the kinks, 0 and the linear-region thresholds themselves."""
    g = torch.Generator().manual_seed(0)
    special = torch.tensor([-3.0, 3.0, 0.0, 5.0, 10.0, 20.0, -20.0], dtype=torch.float64)
    x = torch.cat([3 * torch.randn(200, generator=g, dtype=torch.float64), torch.linspace(-30, 30, 601), special])
    return x.to(dtype)


def _forward_backward(module: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.clone().requires_grad_(True)
    y = module(x)
    (g,) = torch.autograd.grad(y, x, grad_out)
    return y.detach(), g


@pytest.mark.parametrize(("name", "torch_cls", "kwargs"), CASES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_matches_torch_nn(name, torch_cls, kwargs, dtype):
    x = _input(dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    ours = normact.create(name, **kwargs)
    assert isinstance(ours, type(normact.create(name)))
    y, g = _forward_backward(ours, x, grad_out)
    y_ref, g_ref = _forward_backward(torch_cls(**kwargs), x, grad_out)
    assert y.dtype == dtype and g.dtype == dtype
    atol, rtol = TOL[dtype]
    torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
    atol, rtol = GRAD_TOL.get((name, dtype), TOL[dtype])
    torch.testing.assert_close(g, g_ref, atol=atol, rtol=rtol)


@pytest.mark.parametrize("name", ["hardsigmoid", "hardswish"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_inplace_matches_torch_nn(name, dtype):
    torch_cls = TORCH[name][0]
    x = _input(dtype)
    ours_in, theirs_in = x.clone(), x.clone()
    out = normact.create(name, inplace=True)(ours_in)
    ref = torch_cls(inplace=True)(theirs_in)
    assert out.data_ptr() == ours_in.data_ptr()  # the input's storage is reused, as in torch
    torch.testing.assert_close(out, ref, atol=0, rtol=0)
    torch.testing.assert_close(ours_in, theirs_in, atol=0, rtol=0)
    assert "inplace=True" in repr(normact.create(name, inplace=True))


@pytest.mark.parametrize("name", sorted(TORCH))
def test_signature_and_defaults_are_torchs(name):
    """Same argument names and defaults as the torch.nn class (``inplace`` exactly where torch has it)."""
    ours = inspect.signature(normact.info(name).cls).parameters
    theirs = inspect.signature(TORCH[name][0]).parameters
    assert list(ours) == list(theirs)
    for arg, p in theirs.items():
        assert ours[arg].default == p.default, arg


def test_gelu_sigmoid_matches_timm_quick_gelu():
    activations = pytest.importorskip("timm.layers.activations")
    for dtype in (torch.float64, torch.float32):
        x = _input(dtype)
        grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
        y, g = _forward_backward(normact.create("gelu_sigmoid"), x, grad_out)
        y_ref, g_ref = _forward_backward(activations.QuickGELU(), x, grad_out)
        atol, rtol = TOL[dtype]
        torch.testing.assert_close(y, y_ref, atol=atol, rtol=rtol)
        torch.testing.assert_close(g, g_ref, atol=atol, rtol=rtol)
    assert normact.info("quick_gelu").name == "gelu_sigmoid"


# ------------------------------------------------------------------ the sigmoid approximation of GELU


def _mp_gap(x):
    """x * sigmoid(1.702 x) - x * Phi(x) in mpmath's arbitrary precision."""
    return x / (1 + mpmath.exp(-mpmath.mpf("1.702") * x)) - x * mpmath.ncdf(x)


def test_gelu_sigmoid_deviation_from_exact_gelu_matches_independent_computation():
    """The paper gives x * sigmoid(1.702 x) as a faster, less exact GELU without an error figure (the research
    catalog's "within 0.021 on [-6, 6]" is computed). The largest |x sigmoid(1.702 x) - x Phi(x)|: on a grid
    through the layer, against the extremum located with mpmath (30 digits, the root of the gap's
    derivative). The gap is even (Phi(x) - sigmoid(1.702 x) is odd) and vanishes at 0 and at +-infinity."""
    x = torch.linspace(-8.0, 8.0, 160_001, dtype=torch.float64)
    gap = normact.create("gelu_sigmoid")(x) - x * 0.5 * torch.erfc(-x / math.sqrt(2.0))
    grid_max = gap.abs().max().item()
    where = x[gap.abs().argmax()].item()
    with mpmath.workdps(30):
        x_star = mpmath.findroot(lambda t: mpmath.diff(_mp_gap, t), 2.27)
        exact_max = abs(float(_mp_gap(x_star)))
        assert abs(float(_mp_gap(-x_star)) + exact_max) < 1e-15  # even, and negative at the extremum
    assert abs(abs(where) - float(x_star)) < 2e-4
    assert grid_max == pytest.approx(exact_max, abs=1e-9)
    assert exact_max == pytest.approx(0.0203348722, abs=1e-10)
    assert grid_max < 0.021  # the catalog's bound
    # the tanh form is the more exact one (about 4.7e-4), as the paper says
    tanh_gap = normact.create("gelu_tanh")(x) - normact.create("gelu")(x)
    assert 4e-4 < tanh_gap.abs().max().item() < 5e-4 < grid_max


def test_1702_is_the_minimax_logistic_slope_for_the_normal_cdf():
    """Independent check of the constant: k = 1.702 minimises max_x |sigmoid(k x) - Phi(x)| to within 1e-3
    (the classical logistic approximation of the normal CDF, maximum error below 0.0095)."""
    x = torch.linspace(-8.0, 8.0, 16_001, dtype=torch.float64)
    phi = 0.5 * torch.erfc(-x / math.sqrt(2.0))
    ks = torch.linspace(1.69, 1.715, 2_501, dtype=torch.float64)
    err = (torch.sigmoid(ks[:, None] * x[None, :]) - phi[None, :]).abs().amax(dim=1)
    best = ks[err.argmin()].item()
    assert abs(best - 1.702) < 1e-3
    assert (torch.sigmoid(1.702 * x) - phi).abs().max().item() < 0.0095


# ------------------------------------------------------------------ properties, numerically


def test_tanh_is_zero_centred_under_gaussian_input():
    assert normact.gaussian_moments("tanh").zero_centred
    assert normact.gaussian_moments("softsign").zero_centred  # odd too
    for name in ("sigmoid", "hardsigmoid"):  # g(x) + g(-x) = 1: mean exactly 1/2
        m = normact.gaussian_moments(name)
        assert m.mean == pytest.approx(0.5, abs=1e-12) and not m.zero_centred
    for name in ("logsigmoid", "softplus", "hardswish", "gelu_sigmoid"):
        assert not normact.gaussian_moments(name).zero_centred, name


NAMES = ("sigmoid", "tanh", "logsigmoid", "softplus", "softsign", "hardsigmoid", "hardswish", "gelu_sigmoid")


@pytest.mark.parametrize("name", NAMES)
def test_monotonic_flag_matches_the_function(name):
    x = torch.linspace(-10.0, 10.0, 20_001, dtype=torch.float64)
    y = normact.create(name)(x)
    assert bool((y.diff() >= 0).all()) == normact.info(name).properties.monotonic


def test_declared_properties():
    expected = {  # smooth, monotonic, bounded_below, self_gated
        "sigmoid": (True, True, True, False),
        "tanh": (True, True, True, False),
        "logsigmoid": (True, True, False, False),
        "softplus": (True, True, True, False),
        "softsign": (False, True, True, False),  # C^1 only: f'' jumps at 0
        "hardsigmoid": (False, True, True, False),
        "hardswish": (False, False, True, True),
        "gelu_sigmoid": (True, False, True, True),
    }
    for name, (smooth, monotonic, bounded, gated) in expected.items():
        p = normact.info(name).properties
        assert (p.smooth, p.monotonic, p.bounded_below, p.self_gated) == (smooth, monotonic, bounded, gated), name
        assert not (p.gated or p.batch_dependent or p.stateful or p.custom_backward), name


def test_softsign_second_derivative_jumps_at_zero():
    """Why softsign is registered smooth=False: f''(0-) = 2 and f''(0+) = -2."""
    x = torch.tensor([-1e-6, 1e-6], dtype=torch.float64, requires_grad=True)
    (d1,) = torch.autograd.grad(normact.create("softsign")(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    torch.testing.assert_close(d2, torch.tensor([2.0, -2.0], dtype=torch.float64), atol=1e-4, rtol=0)


def test_hardswish_minimum_and_kink_slopes():
    x = torch.tensor([-3 - 1e-3, -3 + 1e-3, 3 - 1e-3, 3 + 1e-3], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(normact.create("hardswish")(x).sum(), x)
    torch.testing.assert_close(g, torch.tensor([0.0, -0.5 + 1e-3 / 3, 1.5 - 1e-3 / 3, 1.0], dtype=torch.float64))
    grid = torch.linspace(-5, 5, 100_001, dtype=torch.float64)
    y = normact.create("hardswish")(grid)
    assert y.min().item() == pytest.approx(-3 / 8, abs=1e-12) and grid[y.argmin()].item() == pytest.approx(-1.5)


# ------------------------------------------------------------------ softplus' linear region


@pytest.mark.parametrize(("beta", "threshold"), [(1.0, 20.0), (2.0, 10.0), (0.5, 5.0)])
def test_softplus_linear_region_is_torchs(beta, threshold):
    """torch returns x itself where beta x > threshold (strictly): the value jumps there by
    log(1 + e^-threshold) / beta, which is the documented departure from the smooth softplus."""
    layer = normact.create("softplus", beta=beta, threshold=threshold)
    edge = threshold / beta
    x = torch.tensor([edge, math.nextafter(edge, math.inf), edge + 1.0], dtype=torch.float64)
    y = layer(x)
    assert y[0].item() == pytest.approx(math.log1p(math.exp(threshold)) / beta, rel=1e-15)
    assert y[1].item() == x[1].item() and y[2].item() == x[2].item()
    assert (y[0] - y[1]).item() == pytest.approx(math.log1p(math.exp(-threshold)) / beta, rel=1e-4, abs=1e-15)


@pytest.mark.parametrize("kwargs", [{"beta": 0.0}, {"beta": -1.0}, {"threshold": 0.0}, {"beta": float("inf")}])
def test_softplus_rejects_bad_hyperparameters(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        normact.create("softplus", **kwargs)
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        normact.functional.softplus(torch.zeros(3), **kwargs)


@pytest.mark.parametrize("name", NAMES)
def test_bad_input_types(name):
    layer = normact.create(name)
    with pytest.raises(TypeError, match="Tensor"):
        layer([1.0, 2.0])
    with pytest.raises(TypeError, match="floating"):
        layer(torch.ones(3, dtype=torch.long))
