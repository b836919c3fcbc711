"""GLU, ReGLU and the bilinear unit beyond the generic harness: GLU against torch.nn.GLU (values and gradients, every
split axis, low precision), which half each layer gates, and their Gaussian moments against closed forms."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF

integrate = pytest.importorskip("scipy.integrate")


def _x(shape, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * 2.0).to(dtype)


@pytest.mark.parametrize(("shape", "dim"), [((4, 16), -1), ((6, 3), 0), ((2, 8, 5), 1), ((2, 3, 4, 6), -1), ((8,), 0)])
def test_glu_matches_torch_nn_glu_values_and_gradients(shape, dim):
    x = _x(shape).requires_grad_(True)
    x_ref = x.detach().clone().requires_grad_(True)
    layer, reference = normact.create("glu", dim=dim), torch.nn.GLU(dim=dim)
    y, y_ref = layer(x), reference(x_ref)
    torch.testing.assert_close(y, y_ref, atol=0, rtol=0)
    grad_out = _x(y.shape, seed=1)
    (g,) = torch.autograd.grad(y, x, grad_out)
    (g_ref,) = torch.autograd.grad(y_ref, x_ref, grad_out)
    torch.testing.assert_close(g, g_ref, atol=1e-14, rtol=1e-14)
    torch.testing.assert_close(NF.glu(x.detach(), dim), F.glu(x.detach(), dim), atol=0, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_glu_matches_torch_nn_glu_in_low_precision(dtype):
    x = _x((8, 32), dtype)
    y = normact.create("glu")(x)
    assert y.dtype == dtype
    torch.testing.assert_close(y, torch.nn.GLU()(x), atol=0, rtol=0)


def test_which_half_is_gated():
    """GLU gates with the second half (torch.nn.GLU, Dauphin et al.); ReGLU, the bilinear unit and SwiGLU activate
    the first half (Shazeer): with x = [a, b] along the last dim."""
    a = torch.tensor([[2.0, -1.0, 0.5]], dtype=torch.float64)
    b = torch.tensor([[-3.0, 4.0, 1.5]], dtype=torch.float64)
    x = torch.cat([a, b], dim=-1)
    torch.testing.assert_close(NF.glu(x), a * torch.sigmoid(b))
    assert not torch.allclose(NF.glu(x), torch.sigmoid(a) * b)
    torch.testing.assert_close(NF.reglu(x), torch.relu(a) * b)
    torch.testing.assert_close(NF.bilinear(x), a * b)
    torch.testing.assert_close(NF.swiglu(x), F.silu(a) * b)  # the existing convention ReGLU follows
    # split along another axis: the halves are the first and last rows
    xt = x.reshape(2, 3)
    torch.testing.assert_close(NF.reglu(xt, dim=0), torch.relu(a) * b)


def test_reglu_derivative_on_each_side_of_zero_in_both_halves():
    x = torch.tensor([[-1e-3, 2.0], [1e-3, 2.0], [3.0, -1e-3], [3.0, 1e-3]], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(NF.reglu(x).sum(), x)
    # d/da relu(a) b = 1[a > 0] b ; d/db relu(a) b = relu(a)
    expected = torch.tensor([[0.0, 0.0], [2.0, 1e-3], [-1e-3, 3.0], [1e-3, 3.0]], dtype=torch.float64)
    torch.testing.assert_close(g, expected)


@pytest.mark.parametrize("name", ["glu", "reglu", "bilinear"])
def test_bad_split_is_rejected_with_the_shape(name):
    layer = normact.create(name)
    with pytest.raises(ValueError, match=r"even.*\(4, 5\)"):
        layer(torch.randn(4, 5))
    with pytest.raises(ValueError, match="shape"):
        normact.create(name, dim=3)(torch.randn(4, 6))
    with pytest.raises(TypeError, match="float"):
        layer(torch.ones(4, 6, dtype=torch.long))
    with pytest.raises(TypeError):
        normact.create(name, dim=1.0)
    assert repr(normact.create(name, dim=1)).endswith("(dim=1)")


def _phi(z):
    return math.exp(-0.5 * z * z) / math.sqrt(2 * math.pi)


def test_gaussian_moments_of_the_gated_units():
    """a, b independent N(0, 1): Var[relu(a) b] = E[relu(a)^2] = 1/2, Var[a b] = 1, and
    Var[a sigmoid(b)] = E[sigmoid(b)^2] (by scipy quadrature); all three have mean 0."""
    assert normact.gaussian_moments("reglu").variance == pytest.approx(0.5, abs=1e-9)
    assert normact.gaussian_moments("bilinear").variance == pytest.approx(1.0, abs=1e-9)
    s2 = integrate.quad(lambda z: _phi(z) / (1 + math.exp(-z)) ** 2, -40, 40, limit=200)[0]
    assert normact.gaussian_moments("glu").variance == pytest.approx(s2, abs=1e-7)
    for name in ("glu", "reglu", "bilinear"):
        assert normact.gaussian_moments(name).zero_centred
