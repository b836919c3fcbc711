"""SmeLU (Shamir, Lin & Coviello, 2020, arXiv:2010.09931), CRReLU (Sun et al., 2024, arXiv:2405.12954) and VeLU
(Shakarami et al., 2025, arXiv:2504.15051) beyond the generic harness: the analytic properties each paper states
(continuity of value and slope, one-sided derivatives, limits, extrema), the registry's property flags checked
numerically, VeLU's row coupling, clip and Wasserstein-2 penalty."""

from __future__ import annotations

import math

import pytest
import torch

import normact
import normact.functional as NF


def _x(shape, scale=2.0, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _derivatives(fn, x):
    """First and second derivatives of an elementwise ``fn`` at the points ``x`` (float64 autograd)."""
    x = x.detach().clone().requires_grad_(True)
    (d1,) = torch.autograd.grad(fn(x).sum(), x, create_graph=True)
    (d2,) = torch.autograd.grad(d1.sum(), x)
    return d1.detach(), d2


# ---------------------------------------------------------------------------------------------- SmeLU


@pytest.mark.parametrize("beta", [0.25, 1.0, 3.0])
def test_smelu_is_c1_at_the_joints_and_quarter_beta_at_zero(beta):
    """f(-beta) = 0, f'(-beta) = 0, f(beta) = beta, f'(beta) = 1 from both sides, f(0) = beta/4; the second
    derivative jumps from 0 to 1/(2 beta) at each joint (C1, not C2: registered smooth=False)."""
    m = normact.create("smelu", beta=beta).double()
    h = 1e-7
    pts = torch.tensor([-beta - h, -beta, -beta + h, 0.0, beta - h, beta, beta + h], dtype=torch.float64)
    y = m(pts)
    assert y[1].item() == 0.0 and y[5].item() == beta and y[3].item() == beta / 4
    d1, d2 = _derivatives(m, pts)
    torch.testing.assert_close(d1[[0, 1, 2]], torch.zeros(3, dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(d1[[4, 5, 6]], torch.ones(3, dtype=torch.float64), atol=1e-6, rtol=0)
    assert d2[0].item() == 0.0 and d2[6].item() == 0.0
    assert d2[2].item() == pytest.approx(1 / (2 * beta)) and d2[4].item() == pytest.approx(1 / (2 * beta))
    assert not normact.info("smelu").properties.smooth


def test_smelu_tends_to_relu_and_is_monotonic_and_nonnegative():
    x = torch.linspace(-5, 5, 10_001, dtype=torch.float64)
    for beta in (1e-1, 1e-3, 1e-6):
        gap = (normact.create("smelu", beta=beta)(x) - torch.relu(x)).abs().max().item()
        assert gap <= beta / 4 + 1e-15
    y = normact.create("smelu")(x)
    assert (y[1:] >= y[:-1]).all() and (y >= 0).all()
    p = normact.info("smelu").properties
    assert p.monotonic and p.bounded_below and not p.custom_backward


def test_smelu_gradcheck_and_half_precision():
    x = _x((6, 7), scale=1.5).requires_grad_(True)
    torch.autograd.gradcheck(lambda t: NF.smelu(t, 0.7), (x,))
    for dtype in (torch.float16, torch.bfloat16):
        y = NF.smelu(x.detach().to(dtype), 0.7)
        assert y.dtype == dtype
        torch.testing.assert_close(y.double(), NF.smelu(x.detach().to(dtype).double(), 0.7), atol=1e-2, rtol=1e-2)
    with pytest.raises(ValueError, match="beta"):
        NF.smelu(x, 0.0)


# ---------------------------------------------------------------------------------------------- CRReLU


def test_crrelu_one_sided_derivatives_at_zero_and_extremum():
    """f'(0-) = epsilon and f'(0+) = 1 + epsilon; for epsilon > 0 the minimum is -epsilon e^{-1/2} at x = -1
    (bounded below, not monotonic)."""
    m = normact.create("crrelu", dtype=torch.float64)
    assert m.epsilon.item() == 0.01 and m.epsilon.requires_grad
    d1, _ = _derivatives(m, torch.tensor([-1e-9, 1e-9], dtype=torch.float64))
    torch.testing.assert_close(d1, torch.tensor([0.01, 1.01], dtype=torch.float64), atol=1e-12, rtol=0)
    x = torch.linspace(-6, 6, 120_001, dtype=torch.float64)
    y = m(x).detach()
    i = int(y.argmin())
    assert x[i].item() == pytest.approx(-1.0, abs=1e-4)
    assert y[i].item() == pytest.approx(-0.01 * math.exp(-0.5), rel=1e-9)
    assert (y[1:] < y[:-1]).any()
    p = normact.info("crrelu").properties
    assert p.bounded_below and not p.monotonic and not p.smooth


def test_crrelu_tends_to_relu_and_epsilon_gradient():
    m = normact.create("crrelu", epsilon_init=0.3, dtype=torch.float64)
    far = torch.tensor([-40.0, -12.0, 12.0, 40.0], dtype=torch.float64)
    torch.testing.assert_close(m(far), torch.relu(far), atol=1e-28, rtol=0)
    x = _x((5, 8))
    m(x).sum().backward()
    torch.testing.assert_close(m.epsilon.grad, (x * torch.exp(-(x**2) / 2)).sum(), atol=1e-12, rtol=0)


def test_crrelu_per_channel_equals_scalar_when_equal_and_uses_its_axis():
    x = _x((2, 3, 4, 5))
    scalar = normact.create("crrelu", epsilon_init=0.2, dtype=torch.float64)
    per_channel = normact.create("crrelu", dim=3, channel_axis=1, epsilon_init=0.2, dtype=torch.float64)
    torch.testing.assert_close(per_channel(x), scalar(x), atol=0, rtol=0)
    with torch.no_grad():
        per_channel.epsilon.copy_(torch.tensor([0.0, 1.0, -1.0], dtype=torch.float64))
    y = per_channel(x)
    relu = torch.relu(x)
    corr = x * torch.exp(-(x**2) / 2)
    torch.testing.assert_close(y[:, 0], relu[:, 0], atol=0, rtol=0)
    torch.testing.assert_close(y[:, 1], relu[:, 1] + corr[:, 1], atol=1e-15, rtol=0)
    torch.testing.assert_close(y[:, 2], relu[:, 2] - corr[:, 2], atol=1e-15, rtol=0)
    with pytest.raises(ValueError, match="shape"):
        per_channel(_x((2, 4, 4, 5)))


# ---------------------------------------------------------------------------------------------- VeLU


def _velu_formula(x, alpha=0.1, beta1=0.1, beta2=0.1, gamma=0.1, momentum=0.9, eps=1e-6, lambd=1.0):
    """The official Keras layer's call() (AshkanShakarami/VeLU, VeLU.ipynb) transcribed to torch, float64."""
    variance = torch.mean(torch.square(x), dim=-1, keepdim=True)
    std_dev = torch.rsqrt(variance + eps)
    adapt_factor = 1.0 + gamma * torch.tanh(std_dev * momentum)
    clipped = torch.clamp(beta2 * x, -1.0, 1.0)
    mix = torch.atan(beta1 * x) + torch.asin(clipped)
    return lambd * (x * torch.sigmoid(alpha * mix) * adapt_factor)


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"alpha": 2.0, "beta1": 1.0, "beta2": 0.7}, {"gamma": 0.5, "momentum": 2.0, "eps": 1e-3}],
    ids=["defaults", "official_plot", "other"],
)
def test_velu_matches_the_official_forward(kwargs):
    x = _x((3, 5, 40), scale=6.0)
    torch.testing.assert_close(normact.create("velu", **kwargs).double()(x), _velu_formula(x, **kwargs))


def test_velu_couples_the_elements_of_a_row_only():
    """Changing one element changes the other elements of its row (through the row's mean square), and nothing
    in the other rows."""
    m = normact.create("velu").double()
    x = _x((4, 10))
    y = m(x)
    x2 = x.clone()
    x2[1, 3] += 5.0
    y2 = m(x2)
    changed = (y2 != y).nonzero().tolist()
    assert {r for r, _ in changed} == {1} and len(changed) == 10


def test_velu_lambda_scales_the_output_and_clip_saturates_the_arcsine():
    m = normact.create("velu").double()
    x = torch.tensor([[-25.0, -10.0, -3.0, 0.5, 10.0, 25.0]], dtype=torch.float64)
    with torch.no_grad():
        m.lambd.fill_(2.5)
    torch.testing.assert_close(m(x), 2.5 * _velu_formula(x))
    # beyond |x| = 1/beta2 the arcsine is the constant +-pi/2: the gate's argument is atan(0.1 x) +- pi/2
    scale = 1 + 0.1 * math.tanh(0.9 / math.sqrt((x**2).mean().item() + 1e-6))
    for xi in (-25.0, 25.0):
        gate = 1 / (1 + math.exp(-0.1 * (math.atan(0.1 * xi) + math.copysign(math.pi / 2, xi))))
        got = m(x)[0, 0 if xi < 0 else -1].item()
        assert got == pytest.approx(2.5 * xi * gate * scale, rel=1e-12)


def test_velu_gradient_is_finite_at_the_clip_and_for_constant_rows():
    m = normact.create("velu").double()
    for row in ([-10.0, 10.0, 3.0], [0.0, 0.0, 0.0], [7.0, 7.0, 7.0]):
        x = torch.tensor([row], dtype=torch.float64, requires_grad=True)
        m(x).sum().backward()
        assert torch.isfinite(x.grad).all() and torch.isfinite(m.lambd.grad).all()


def test_velu_properties_hold_numerically():
    """Not monotonic (the arcsine's slope near x = -1/beta2 turns the product down), unbounded below with slope
    sigma(-alpha pi) (1 + gamma tanh(m s)) as x -> -inf, not smooth (the clip)."""
    m = normact.create("velu").double()
    x = torch.linspace(-12, 12, 24_001, dtype=torch.float64)
    y = m(x).detach()
    falling = x[:-1][y[1:] < y[:-1]]
    assert falling.numel() > 0 and falling.min() >= -10.0 - 1e-9 and falling.max() < -9.9
    far = torch.tensor([-1e6, -2e6], dtype=torch.float64)
    y_far = m(far).detach()
    s = 1 / math.sqrt((far**2).mean().item() + 1e-6)
    slope = (y_far[1] - y_far[0]).item() / -1e6
    assert slope == pytest.approx(1 / (1 + math.exp(0.1 * math.pi)) * (1 + 0.1 * math.tanh(0.9 * s)), rel=1e-6)
    p = normact.info("velu").properties
    assert not p.monotonic and not p.bounded_below and not p.smooth and not p.custom_backward


def test_velu_w2_penalty_is_the_official_regularizer():
    """lambda_ot * ((mean - 0)^2 + (std - 1)^2) of the pre-lambda activation (population std over all elements),
    the term the official layer passes to Keras add_loss; it does not depend on lambda."""
    m = normact.create("velu", lambda_ot=0.3).double()
    with torch.no_grad():
        m.lambd.fill_(4.0)
    x = _x((6, 9), scale=1.7)
    a = _velu_formula(x)
    want = 0.3 * (a.mean() ** 2 + (a.std(correction=0) - 1) ** 2)
    torch.testing.assert_close(m.w2_penalty(x), want)
    xg = x.clone().requires_grad_(True)
    m.w2_penalty(xg).backward()
    assert torch.isfinite(xg.grad).all() and m.lambd.grad is None
    constant = torch.zeros(3, 4, dtype=torch.float64, requires_grad=True)
    penalty = m.w2_penalty(constant)
    assert penalty.item() == pytest.approx(0.3)
    penalty.backward()
    assert torch.isfinite(constant.grad).all()


def test_velu_rejects_scalars_and_takes_no_positional_arguments():
    with pytest.raises(ValueError, match="shape"):
        NF.velu(torch.tensor(1.0))
    with pytest.raises(TypeError):
        normact.create("velu", 64)  # a channel count is not silently taken for alpha
