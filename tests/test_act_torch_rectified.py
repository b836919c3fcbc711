"""torch.nn's piecewise / rectified activations in normact against torch.nn itself (outputs, input and parameter
gradients, in-place variants, float64 and float32), RReLU's random training slopes, SELU's constants and
self-normalizing fixed point, and the registry properties of each, checked numerically."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

import normact
import normact.functional as NF
from normact.layers.act import rectified

# (registry name, normact kwargs, torch.nn class, torch kwargs, torch has inplace)
PARITY = [
    ("leaky_relu", {}, nn.LeakyReLU, {}, True),
    ("leaky_relu", {"negative_slope": 0.2}, nn.LeakyReLU, {"negative_slope": 0.2}, True),
    ("prelu", {}, nn.PReLU, {}, False),
    ("rrelu", {}, nn.RReLU, {}, True),  # eval mode below; training has its own tests
    ("rrelu", {"lower": 0.05, "upper": 0.5}, nn.RReLU, {"lower": 0.05, "upper": 0.5}, True),
    ("elu", {}, nn.ELU, {}, True),
    ("elu", {"alpha": 0.5}, nn.ELU, {"alpha": 0.5}, True),
    ("selu", {}, nn.SELU, {}, True),
    ("celu", {}, nn.CELU, {}, True),
    ("celu", {"alpha": 2.0}, nn.CELU, {"alpha": 2.0}, True),
    ("relu6", {}, nn.ReLU6, {}, True),
    ("hardtanh", {}, nn.Hardtanh, {}, True),
    ("hardtanh", {"min_val": -0.5, "max_val": 2.0}, nn.Hardtanh, {"min_val": -0.5, "max_val": 2.0}, True),
    ("threshold", {}, nn.Threshold, {"threshold": 0.0, "value": 0.0}, True),
    ("threshold", {"threshold": 0.5, "value": 20.0}, nn.Threshold, {"threshold": 0.5, "value": 20.0}, True),
    ("hardshrink", {}, nn.Hardshrink, {}, False),
    ("hardshrink", {"lambd": 1.0}, nn.Hardshrink, {"lambd": 1.0}, False),
    ("softshrink", {}, nn.Softshrink, {}, False),
    ("softshrink", {"lambd": 1.0}, nn.Softshrink, {"lambd": 1.0}, False),
    ("tanhshrink", {}, nn.Tanhshrink, {}, False),
]
PARITY_IDS = [f"{name}-{'-'.join(f'{k}{v}' for k, v in kw.items()) or 'default'}" for name, kw, *_ in PARITY]
NAMES = sorted({p[0] for p in PARITY})
# every kink and boundary of the configurations above, where torch's conventions (x > 0 vs x >= 0, the
# subgradient chosen) show
BOUNDARIES = [0.0, -0.5, 0.5, -1.0, 1.0, 2.0, 6.0, -6.0]


def _input(dtype, shape=(6, 40)):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    x.view(-1)[: len(BOUNDARIES)] = torch.tensor(BOUNDARIES, dtype=torch.float64)
    return x.to(dtype)


def _pair(name, kwargs, torch_cls, torch_kwargs, dtype, **extra):
    ours = normact.create(name, **kwargs, **extra)
    theirs = torch_cls(**torch_kwargs, **extra)
    return ours.to(dtype).eval(), theirs.to(dtype).eval()


def _assert_same(a, b):
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("name", "kwargs", "torch_cls", "torch_kwargs", "has_inplace"), PARITY, ids=PARITY_IDS)
def test_matches_torch_nn(name, kwargs, torch_cls, torch_kwargs, has_inplace, dtype):
    """Same output and input gradient as the torch.nn class, bit for bit, kinks and boundaries included."""
    ours, theirs = _pair(name, kwargs, torch_cls, torch_kwargs, dtype)
    x = _input(dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=dtype)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    assert ya.dtype == dtype
    ga, gb = torch.autograd.grad(ya, xa, grad_out), torch.autograd.grad(yb, xb, grad_out)
    if name == "tanhshrink":
        _assert_tanhshrink_matches(x, ya, yb, ga[0], gb[0])
    else:
        _assert_same(ya, yb)
        _assert_same(ga, gb)
    assert ("inplace" in inspect.signature(type(ours)).parameters) == has_inplace


def _assert_tanhshrink_matches(x, ya, yb, ga, gb):
    """Tanhshrink is torch's bit for bit where |x| >= 1. Inside (-1, 1) torch's x - tanh(x) cancels (an absolute
    error of about eps |x| on a result ~ x^3 / 3, 0 below |x| ~ 1e-4 in float32) and normact sums a series
    instead (tests/test_numerics.py holds it to a few ulps of mpmath): the difference there is torch's error,
    at most a couple of eps |x|; the derivatives (torch's tanh(x)^2 against autograd through the series) agree
    to rounding."""
    eps = torch.finfo(x.dtype).eps
    outer = x.abs() >= 1
    _assert_same(ya[outer], yb[outer])
    assert ((ya - yb).abs() <= 2 * eps * x.abs()).all()
    torch.testing.assert_close(ga, gb, rtol=8 * eps, atol=8 * eps)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    ("name", "kwargs", "torch_cls", "torch_kwargs", "has_inplace"),
    [p for p in PARITY if p[4]],
    ids=[i for i, p in zip(PARITY_IDS, PARITY, strict=True) if p[4]],
)
def test_inplace_matches_torch_nn(name, kwargs, torch_cls, torch_kwargs, has_inplace, dtype):
    """inplace=True overwrites the input exactly as torch does, and the gradient through it is torch's."""
    ours, theirs = _pair(name, kwargs, torch_cls, torch_kwargs, dtype, inplace=True)
    x = _input(dtype)
    xa, xb = x.clone(), x.clone()
    ya, yb = ours(xa), theirs(xb)
    assert ya.data_ptr() == xa.data_ptr()
    _assert_same(xa, xb)
    _assert_same(ya, yb)
    expected = normact.create(name, **kwargs).to(dtype).eval()(x.clone())
    _assert_same(ya, expected)
    leaf_a, leaf_b = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(leaf_a * 1.0), theirs(leaf_b * 1.0)  # in place on a non-leaf
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)
    _assert_same(torch.autograd.grad(ya, leaf_a, grad_out), torch.autograd.grad(yb, leaf_b, grad_out))


# --------------------------------------------------------------------------------------------------
# PReLU


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("num_parameters", "shape"), [(1, (4, 16)), (1, (17,)), (3, (2, 3, 4, 4)), (5, (6, 5))])
def test_prelu_matches_torch_per_channel_with_weight_gradients(num_parameters, shape, dtype):
    ours = normact.PReLU(num_parameters, init=0.1, dtype=dtype)
    theirs = nn.PReLU(num_parameters, init=0.1, dtype=dtype)
    with torch.no_grad():  # move the slopes apart (and one negative) so that each channel is distinct
        new = torch.linspace(-0.3, 0.9, num_parameters, dtype=dtype)
        ours.weight.copy_(new)
        theirs.weight.copy_(new)
    x = _input(dtype, shape)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = ours(xa), theirs(xb)
    _assert_same(ya, yb)
    grad_out = torch.randn(shape, generator=torch.Generator().manual_seed(3), dtype=dtype)
    ga = torch.autograd.grad(ya, (xa, ours.weight), grad_out)
    gb = torch.autograd.grad(yb, (xb, theirs.weight), grad_out)
    _assert_same(ga[0], gb[0])
    torch.testing.assert_close(ga[1], gb[1])  # a reduction: summation order may differ
    _assert_same(NF.prelu(x, ours.weight), ya)


def test_prelu_defaults_state_dict_and_channel_axis():
    layer = normact.create("prelu")
    assert layer.weight.shape == (1,) and layer.weight.item() == 0.25
    assert normact.create("prelu", 3).weight.shape == (3,)
    torch_layer = nn.PReLU(3, init=0.4)
    ours = normact.PReLU(3)
    ours.load_state_dict(torch_layer.state_dict())  # torch's keys: interchangeable both ways
    torch_layer.load_state_dict(ours.state_dict())
    assert torch.equal(ours.weight, torch.full((3,), 0.4))
    ours.reset_parameters()
    assert torch.equal(ours.weight, torch.full((3,), 0.25))
    with pytest.raises(ValueError, match=r"\(N, C, \*\) with 3 channels at dim 1, got shape \(3, 4\)"):
        ours(torch.randn(3, 4))  # channels at dim 1, as in torch
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        ours(torch.randn(3))
    with pytest.raises(TypeError):
        normact.PReLU(3)(torch.ones(2, 3, dtype=torch.long))
    assert ours(torch.randn(2, 3)).shape == (2, 3) and ours(torch.randn(2, 3, 5, 5)).shape == (2, 3, 5, 5)


# --------------------------------------------------------------------------------------------------
# RReLU in training mode


def _negatives(n=200_000, dtype=torch.float64):
    return -(torch.rand(n, generator=torch.Generator().manual_seed(4), dtype=dtype) + 0.5)


@pytest.mark.parametrize(("lower", "upper"), [(1 / 8, 1 / 3), (0.05, 0.5)])
def test_rrelu_training_slopes_are_uniform_in_the_range(lower, upper):
    torch.manual_seed(0)
    layer = normact.RReLU(lower, upper).train()
    x = _negatives()
    slopes = layer(x) / x
    assert slopes.min() >= lower and slopes.max() <= upper
    n = slopes.numel()
    mean, var = (lower + upper) / 2, (upper - lower) ** 2 / 12
    assert abs(slopes.mean().item() - mean) < 5 * math.sqrt(var / n)  # five standard errors
    assert slopes.var().item() == pytest.approx(var, rel=0.02)
    # per element: about as many slopes in each tenth of the range
    counts = torch.histc(slopes, bins=10, min=lower, max=upper)
    assert (counts - n / 10).abs().max() < 5 * math.sqrt(n / 10)
    positives = torch.rand(1000, dtype=torch.float64) + 0.1
    assert torch.equal(layer(positives), positives)
    assert torch.equal(layer.eval()(x), x * mean)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rrelu_training_equals_torch_under_the_same_seed(dtype):
    x = _input(dtype)
    grad_out = torch.randn(x.shape, generator=torch.Generator().manual_seed(5), dtype=dtype)
    for inplace in (False, True):
        outs, grads = [], []
        for layer in (normact.RReLU(0.1, 0.4, inplace=inplace), nn.RReLU(0.1, 0.4, inplace=inplace)):
            leaf = x.clone().requires_grad_(True)
            torch.manual_seed(123)
            y = layer.train()(leaf * 1.0)
            outs.append(y)
            grads.append(torch.autograd.grad(y, leaf, grad_out)[0])
        _assert_same(outs[0], outs[1])
        _assert_same(grads[0], grads[1])
    torch.manual_seed(7)
    a = NF.rrelu(x, 0.1, 0.4, training=True)
    torch.manual_seed(7)
    _assert_same(a, torch.nn.functional.rrelu(x, 0.1, 0.4, training=True))


def test_rrelu_eval_draws_nothing_and_training_draws():
    x = _input(torch.float64)
    state = torch.get_rng_state()
    normact.RReLU().eval()(x)
    assert torch.equal(torch.get_rng_state(), state)
    normact.RReLU().train()(x)
    assert not torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_rrelu_training_in_half_precision(dtype):
    """torch's CPU kernel has no float16/bfloat16 training path: normact draws in float32."""
    x = _negatives(10_000, torch.float32).to(dtype).requires_grad_(True)
    torch.manual_seed(0)
    y = normact.RReLU().train()(x)
    assert y.dtype == dtype
    slopes = y.float() / x.float()
    rounding = 2 * torch.finfo(dtype).eps
    assert slopes.min() >= 1 / 8 * (1 - rounding) and slopes.max() <= 1 / 3 * (1 + rounding)
    (g,) = torch.autograd.grad(y.float().sum(), x)
    assert torch.isfinite(g.float()).all() and g.float().min() >= 1 / 8 * (1 - rounding)
    x2 = x.detach().clone()
    torch.manual_seed(0)
    out = normact.RReLU(inplace=True).train()(x2)
    assert out.data_ptr() == x2.data_ptr() and torch.equal(out, y.detach())


def test_rrelu_rejects_an_empty_range():
    with pytest.raises(ValueError, match="lower must be <= upper"):
        normact.RReLU(0.5, 0.25)
    with pytest.raises(ValueError, match="lower must be <= upper"):
        NF.rrelu(torch.randn(3), 0.5, 0.25)


# --------------------------------------------------------------------------------------------------
# SELU


def test_selu_constants_are_the_papers_fixed_point():
    """Klambauer et al. 2017: E[selu(z)] = 0 and E[selu(z)^2] = 1 for z ~ N(0, 1) give alpha_01 =
    -sqrt(2/pi) / (erfc(1/sqrt 2) e^(1/2) - 1) and lambda_01 = 1 / sqrt(1/2 + alpha^2 (e^2 Phi(-2) -
    2 e^(1/2) Phi(-1) + 1/2)); 40 digits with mpmath against the 32-digit constants."""
    mp = pytest.importorskip("mpmath")
    with mp.workdps(40):
        alpha = -mp.sqrt(2 / mp.pi) / (mp.erfc(1 / mp.sqrt(2)) * mp.exp(mp.mpf(1) / 2) - 1)

        def cdf(t):
            return mp.erfc(-t / mp.sqrt(2)) / 2

        half = mp.mpf(1) / 2
        second = half + alpha**2 * (mp.e**2 * cdf(-2) - 2 * mp.exp(half) * cdf(-1) + half)
        scale = 1 / mp.sqrt(second)
        assert abs(alpha - mp.mpf("1.6732632423543772848170429916717")) < mp.mpf("1e-30")
        assert abs(scale - mp.mpf("1.0507009873554804934193349852946")) < mp.mpf("1e-30")
        assert float(alpha) == rectified.SELU_ALPHA and float(scale) == rectified.SELU_SCALE
    x = torch.tensor([1.0, -60.0], dtype=torch.float64)
    y = normact.create("selu")(x)
    assert y[0].item() == pytest.approx(float(scale), rel=1e-15, abs=0)
    assert y[1].item() == pytest.approx(-float(scale * alpha), rel=1e-15, abs=0)


def test_selu_maps_a_standard_normal_to_mean_0_variance_1():
    m = normact.gaussian_moments("selu")
    assert abs(m.mean) < 1e-6  # quadrature with the kink at 0: well inside the 1e-3 asked
    assert abs(m.variance - 1.0) < 1e-6
    assert m.zero_centred and m.gain == pytest.approx(1.0, abs=1e-6)


# --------------------------------------------------------------------------------------------------
# registry properties, numerically


@pytest.mark.parametrize("name", NAMES)
def test_registry_properties_hold_numerically(name):
    info = normact.info(name)
    layer = normact.create(name).double().eval()
    x = torch.linspace(-20, 20, 400_001, dtype=torch.float64)
    y = layer(x).detach()
    assert (y.diff().min() >= 0) == info.properties.monotonic
    far = layer(torch.tensor([-1e6, -1e3], dtype=torch.float64)).detach()
    assert bool(far.min() > -100) == info.properties.bounded_below
    assert info.verified_against == (f"torch.nn.{type(layer).__name__}",)
    assert not info.properties.batch_dependent and not info.properties.stateful
    assert not info.properties.custom_backward and not info.properties.gated and not info.properties.self_gated


def _second_derivative(layer, x0):
    x = torch.tensor([x0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(layer(x).sum(), x, create_graph=True)
    (h,) = torch.autograd.grad(g.sum(), x)
    return g.item(), h.item()


@pytest.mark.parametrize(("name", "alpha"), [("elu", 1.0), ("celu", 1.0), ("celu", 2.0)])
def test_elu_and_celu_are_c1_but_not_smooth_at_zero(name, alpha):
    """ELU(alpha=1) and CELU: the first derivative is continuous at 0, the second jumps (0 vs 1/alpha):
    registered smooth=False with a kink at 0. ELU with alpha != 1 is not even C1."""
    layer = normact.create(name, alpha=alpha)
    (g_left, h_left), (g_right, h_right) = _second_derivative(layer, -1e-9), _second_derivative(layer, 1e-9)
    assert g_left == pytest.approx(g_right, abs=1e-8)
    assert h_right == 0.0 and h_left == pytest.approx(1 / alpha, rel=1e-6)
    assert not normact.info(name).properties.smooth
    g_left, _ = _second_derivative(normact.create("elu", alpha=0.5), -1e-9)
    assert g_left == pytest.approx(0.5)


def test_tanhshrink_is_smooth_with_derivative_tanh_squared():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(normact.Tanhshrink()(x).sum(), x)
    torch.testing.assert_close(g, torch.tanh(x.detach()) ** 2)
    assert normact.info("tanhshrink").properties.smooth


# --------------------------------------------------------------------------------------------------
# construction: torch's arguments, normact's checks


def test_threshold_needs_both_arguments_like_torch_but_the_registry_supplies_them():
    with pytest.raises(TypeError):
        normact.Threshold()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        nn.Threshold()  # type: ignore[call-arg]
    layer = normact.create("threshold")
    assert (layer.threshold, layer.value) == (0.0, 0.0)
    x = _input(torch.float64)
    _assert_same(layer(x), torch.relu(x))
    assert normact.create("threshold", threshold=1.0, value=-3.0).value == -3.0


@pytest.mark.parametrize(
    ("factory", "message"),
    [
        (lambda: normact.Hardtanh(1.0, -1.0), "max_val must be > min_val"),
        (lambda: normact.CELU(alpha=0.0), "alpha must be > 0"),
        (lambda: normact.ELU(alpha=-1.0), "alpha must be >= 0"),
        (lambda: normact.Softshrink(-0.5), "lambd must be >= 0"),
        (lambda: normact.Hardshrink(-0.5), "lambd must be >= 0"),
        (lambda: normact.LeakyReLU(float("nan")), "negative_slope must be finite"),
        (lambda: normact.PReLU(0), "num_parameters must be an integer >= 1"),
        (lambda: NF.hardtanh(torch.randn(3), 2.0, 1.0), "max_val must be > min_val"),
        (lambda: NF.softshrink(torch.randn(3), -1.0), "lambd must be >= 0"),
    ],
)
def test_bad_hyperparameters_are_named(factory, message):
    with pytest.raises(ValueError, match=message):
        factory()


def test_repr_shows_the_hyperparameters():
    assert repr(normact.LeakyReLU(0.2, inplace=True)) == "LeakyReLU(negative_slope=0.2, inplace=True)"
    assert repr(normact.Hardtanh()) == "Hardtanh(min_val=-1.0, max_val=1.0)"
    assert repr(normact.PReLU(3)) == "PReLU(num_parameters=3, init=0.25)"
    assert repr(normact.RReLU()) == "RReLU(lower=0.125, upper=0.3333333333333333)"
    assert repr(normact.Softshrink(1.0)) == "Softshrink(lambd=1.0)"
