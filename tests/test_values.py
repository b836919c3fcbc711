"""Closed-form values and identities from the papers, at fixed points (independent of the harness references)."""

from __future__ import annotations

import math

import pytest
import torch

import normact

D = torch.float64


def act(name: str, x, **kwargs) -> torch.Tensor:
    return normact.create(name, **kwargs)(torch.as_tensor(x, dtype=D))


def deriv(name: str, x: float, **kwargs) -> float:
    t = torch.tensor(x, dtype=D, requires_grad=True)
    normact.create(name, **kwargs)(t).backward()
    return t.grad.item()


@pytest.mark.parametrize(
    ("name", "x", "expected"),
    [
        ("gelu", 0.0, 0.0),
        ("gelu", 1.0, 0.8413447460685429),  # Phi(1)
        ("gelu", -1.0, -0.15865525393145707),  # -Phi(-1)
        ("silu", 1.0, 0.7310585786300049),  # sigmoid(1)
        ("silu", 0.0, 0.0),
        ("silu", -1.0, -0.2689414213699951),
        ("swish", 1.0, 0.7310585786300049),  # beta = 1 is SiLU
        ("mish", 0.0, 0.0),
        ("mish", 1.0, 0.8650983882673103),
        ("mish", -1.0, -0.30340146137410895),
        ("golu", 0.0, 0.0),
        ("golu", 1.0, math.exp(-1.0 / math.e)),  # 0.692200627...
        ("golu", -1.0, -math.exp(-math.e)),
        ("relu", -2.0, 0.0),
        ("relu", 2.5, 2.5),
        ("relu2", 3.0, 9.0),
        ("relu2", -3.0, 0.0),
        ("relu2", 0.5, 0.25),
    ],
)
def test_activation_values(name, x, expected):
    assert act(name, x).item() == pytest.approx(expected, abs=1e-12, rel=1e-12)


def test_golu_is_x_times_gumbel_cdf():
    x = torch.linspace(-5, 5, 101, dtype=D)
    gumbel = torch.distributions.Gumbel(torch.tensor(0.0, dtype=D), torch.tensor(1.0, dtype=D))
    torch.testing.assert_close(act("golu", x), x * gumbel.cdf(x), atol=1e-12, rtol=1e-12)


def test_gate_slopes_at_zero():
    assert deriv("golu", 0.0) == pytest.approx(1 / math.e, abs=1e-12)  # asymmetric gate: 1/e, not 1/2
    assert deriv("mish", 0.0) == pytest.approx(0.6, abs=1e-12)  # tanh(ln 2)
    assert deriv("gelu", 0.0) == pytest.approx(0.5, abs=1e-12)
    assert deriv("silu", 0.0) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(("name", "x_min", "f_min"), [("silu", -1.2784645, -0.2784645), ("mish", -1.1924, -0.30884)])
def test_global_minimum(name, x_min, f_min):
    x = torch.linspace(-3, 0, 300001, dtype=D)
    y = act(name, x)
    i = int(y.argmin())
    assert x[i].item() == pytest.approx(x_min, abs=1e-3)
    assert y[i].item() == pytest.approx(f_min, abs=1e-4)


def test_swish_beta_limits():
    x = torch.linspace(-4, 4, 81, dtype=D)
    torch.testing.assert_close(act("swish", x, beta_init=0.0), x / 2)
    torch.testing.assert_close(act("swish", x, beta_init=200.0), torch.relu(x), atol=1e-6, rtol=0)


def test_gelu_identities():
    x = torch.linspace(-6, 6, 1201, dtype=D)
    torch.testing.assert_close(act("gelu", x) - act("gelu", -x), x)  # Phi(x) + Phi(-x) = 1
    assert (act("gelu_tanh", x) - act("gelu", x)).abs().max().item() < 5e-4


@pytest.mark.parametrize(("name", "left", "right"), [("relu", 0.0, 1.0), ("relu2", 0.0, 0.0)])
def test_derivative_on_each_side_of_the_kink(name, left, right):
    h = 1e-4
    assert deriv(name, -h) == pytest.approx(left, abs=1e-3)
    assert deriv(name, h) == pytest.approx(right + (2 * h if name == "relu2" else 0.0), abs=1e-6)
    assert deriv("relu2", 0.75) == pytest.approx(1.5)  # 2 relu(x)


def test_gated_halves():
    x = torch.tensor([[1.0, -2.0, 3.0, 0.5]], dtype=D)  # gate (1, -2), value (3, 0.5)
    silu = lambda v: v / (1 + math.exp(-v))  # noqa: E731
    expected = [silu(1.0) * 3.0, silu(-2.0) * 0.5]
    torch.testing.assert_close(act("swiglu", x), torch.tensor([expected], dtype=D))


def test_dyt_identities():
    layer = normact.create("dyt", 4, dtype=D)
    with torch.no_grad():
        layer.bias.copy_(torch.tensor([0.1, -0.2, 0.3, 0.0]))
        layer.weight.copy_(torch.tensor([1.0, 2.0, -1.0, 0.5]))
    torch.testing.assert_close(layer(torch.zeros(2, 4, dtype=D)), layer.bias.detach().expand(2, 4))
    x = torch.randn(64, 4, dtype=D) * 10
    assert ((layer(x) - layer.bias).abs() <= layer.weight.abs() + 1e-12).all()  # bounded by |gamma|
    small = torch.full((1, 4), 1e-5, dtype=D)
    linear = layer.weight * layer.alpha * small + layer.bias
    torch.testing.assert_close(layer(small), linear, rtol=1e-9, atol=1e-12)


def test_scalenorm_length_and_scale_invariance():
    layer = normact.create("scalenorm", 16, dtype=D)
    assert layer.scale.item() == pytest.approx(4.0)  # sqrt(16)
    x = torch.randn(5, 16, dtype=D)
    torch.testing.assert_close(layer(x).norm(dim=-1), torch.full((5,), 4.0, dtype=D))
    torch.testing.assert_close(layer(3.7 * x), layer(x))
    rms = torch.nn.functional.rms_norm(x, (16,), eps=0.0)
    torch.testing.assert_close(layer(x), rms)  # g = sqrt(d): ScaleNorm = RMSNorm without gain


def test_rmsnorm_identities():
    x = torch.randn(6, 32, dtype=D)
    for name in ("rmsnorm", "rmsnorm_paper"):
        layer = normact.create(name, 32, dtype=D)
        y = layer(x)
        torch.testing.assert_close(y.norm(dim=-1), torch.full((6,), math.sqrt(32), dtype=D), rtol=1e-6, atol=0)
        torch.testing.assert_close(layer(5.0 * x), y, rtol=1e-6, atol=1e-7)
        assert not torch.allclose(layer(x + 1.0), y)  # no re-centering
        centered = x - x.mean(-1, keepdim=True)
        ln = normact.create("layernorm", 32, eps=1e-12, dtype=D)
        torch.testing.assert_close(layer(centered), ln(centered), rtol=1e-6, atol=1e-7)


def test_layernorm_standardizes():
    y = normact.create("layernorm", 64, eps=1e-12, dtype=D)(torch.randn(8, 64, dtype=D) * 3 + 2)
    torch.testing.assert_close(y.mean(-1), torch.zeros(8, dtype=D), atol=1e-12, rtol=0)
    torch.testing.assert_close(y.var(-1, unbiased=False), torch.ones(8, dtype=D), atol=1e-9, rtol=0)


def test_groupnorm_with_one_group_is_layernorm_over_chw():
    x = torch.randn(3, 6, 4, 4, dtype=D)
    gn = normact.create("groupnorm", 6, num_groups=1, affine=False, dtype=D)
    expected = torch.nn.functional.layer_norm(x, x.shape[1:], eps=1e-5)
    torch.testing.assert_close(gn(x), expected)
