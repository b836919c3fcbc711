"""The learnable polynomial-type activations beyond the generic harness: PolyNorm against
torch.nn.functional.rms_norm and its scale invariance, PolyReLU and the tropical activation against ReLU, the
official initial values (PolyCom, torchortho 0.1.1/0.1.2, SL²A-INR), the Hermite basis against scipy's
eval_hermitenorm with its orthogonality and the second moment at initialization (Gauss-Hermite quadrature), the
Fourier and tropical shapes, and the SL²A Chebyshev layer against scipy's eval_chebyt (finite gradients where
tanh saturates, additive separability)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF

special = pytest.importorskip("scipy.special")


def _x(shape, dtype=torch.float64, seed=0, scale=2.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _gauss_hermite(points=80):
    """Nodes and weights of E[g(z)], z ~ N(0, 1) (Gauss-HermiteE quadrature, exact for polynomials of degree
    < 2 * points)."""
    nodes, weights = np.polynomial.hermite_e.hermegauss(points)
    return torch.from_numpy(nodes), torch.from_numpy(weights / math.sqrt(2 * math.pi))


# -- PolyReLU, PolyNorm ---------------------------------------------------------------------------------


def test_polycom_official_defaults():
    """BryceZhuo/PolyCom: order 3, weight = ones(3)/3, bias = zeros(1), eps = 1e-6."""
    for name in ("polyrelu", "polynorm"):
        layer = normact.create(name, dtype=torch.float64)
        assert layer.order == 3
        torch.testing.assert_close(layer.weight, torch.full((3,), 1 / 3, dtype=torch.float64), atol=0, rtol=0)
        torch.testing.assert_close(layer.bias, torch.zeros(1, dtype=torch.float64), atol=0, rtol=0)
    assert normact.create("polynorm").eps == 1e-6
    assert normact.create("polyrelu", order=4).weight.tolist() == [0.25] * 4


@pytest.mark.parametrize("shape", [(4, 16), (2, 3, 7), (9,)])
def test_polynorm_with_only_the_linear_term_is_rms_norm(shape):
    """weight = (0, 0, 1), bias = 0: N(x), RMSNorm without a weight (torch.nn.functional.rms_norm)."""
    x = _x(shape)
    layer = normact.create("polynorm", dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 0.0, 1.0]))
    expected = F.rms_norm(x, (shape[-1],), eps=1e-6)
    torch.testing.assert_close(layer(x), expected, atol=1e-14, rtol=1e-13)
    # x^2 term alone: rms_norm of the square
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(layer(x), F.rms_norm(x * x, (shape[-1],), eps=1e-6), atol=1e-14, rtol=1e-13)


def test_polynorm_scale_invariance_and_sign():
    """N(c z) = N(z) for c > 0 up to eps: PolyNorm(c x) = PolyNorm(x); for c = -1 the odd powers flip sign."""
    x = _x((5, 32))
    layer = normact.create("polynorm", eps=1e-30, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.5, -1.3, 0.8]))
        layer.bias.fill_(0.25)
    y = layer(x)
    for c in (1e-3, 0.5, 7.0, 1e3):
        torch.testing.assert_close(layer(c * x), y, atol=1e-12, rtol=1e-12)
    w = layer.weight.detach()
    odd = w[0] * F.rms_norm(x**3, (32,), eps=1e-30) + w[2] * F.rms_norm(x, (32,), eps=1e-30)
    torch.testing.assert_close(layer(-x), y - 2 * odd, atol=1e-12, rtol=1e-12)


def test_polynorm_low_precision_keeps_large_inputs_finite():
    """x^6 of |x| = 1e3 overflows float16 and bfloat16 (and float16's x^3): the mean squares run in float32."""
    x = _x((4, 64), scale=300.0)
    y64 = normact.create("polynorm", dtype=torch.float64)(x)
    for dtype in (torch.float16, torch.bfloat16):
        y = normact.create("polynorm", dtype=dtype)(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        torch.testing.assert_close(y.double(), y64, atol=3e-2, rtol=3e-2)


def test_polyrelu_reduces_to_relu_and_squared_relu():
    """weight (0, 0, 1) is torch.nn.functional.relu; (0, 1, 0) the squared ReLU; the kink's one-sided slopes."""
    x = _x((6, 8))
    layer = normact.create("polyrelu", dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 0.0, 1.0]))
    torch.testing.assert_close(layer(x), F.relu(x), atol=0, rtol=0)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([0.0, 1.0, 0.0]))
    torch.testing.assert_close(layer(x), F.relu(x) ** 2, atol=0, rtol=0)
    # at init: slope 0 left of 0, a_1 = 1/3 right of 0
    init = normact.create("polyrelu", dtype=torch.float64)
    t = torch.tensor([-1e-8, 1e-8], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(init(t).sum(), t)
    torch.testing.assert_close(g, torch.tensor([0.0, 1 / 3], dtype=torch.float64), atol=1e-7, rtol=0)


# -- torchortho -----------------------------------------------------------------------------------------


def test_hermite_basis_is_scipys_hermitenorm():
    """One-hot coefficients e_k give He_k(x)/k! (version 0.1.2) and He_k(x)/sqrt(k!) (0.1.1), He_k the
    probabilists' Hermite polynomials of scipy.special.eval_hermitenorm, up to degree 10."""
    x = _x((50,), scale=3.0)
    degree = 10
    for version, norm in (("0.1.2", math.factorial), ("0.1.1", lambda k: math.sqrt(math.factorial(k)))):
        layer = normact.create("hermite_act", degree=degree, version=version, dtype=torch.float64)
        for k in range(degree + 1):
            coefficients = torch.zeros(degree + 1, dtype=torch.float64)
            coefficients[k] = 1.0
            with torch.no_grad():
                layer.coefficients.copy_(coefficients)
            expected = torch.from_numpy(special.eval_hermitenorm(k, x.numpy())) / norm(k)
            torch.testing.assert_close(layer(x), expected, atol=1e-12, rtol=1e-12)


def test_hermite_orthonormal_basis_under_the_standard_normal():
    """E[e_j(z) e_k(z)] = delta_jk for e_k = He_k/sqrt(k!) (version 0.1.1's basis), z ~ N(0, 1)."""
    z, w = _gauss_hermite()
    degree = 8
    basis = []
    for k in range(degree + 1):
        c = torch.zeros(degree + 1, dtype=torch.float64)
        c[k] = 1.0
        basis.append(NF.hermite_act(z, c, "sqrt_factorial"))
    gram = torch.stack([torch.stack([(w * bj * bk).sum() for bk in basis]) for bj in basis])
    torch.testing.assert_close(gram, torch.eye(degree + 1, dtype=torch.float64), atol=1e-12, rtol=0)


@pytest.mark.parametrize("degree", [1, 3, 5, 8])
def test_hermite_second_moment_at_init(degree):
    """E[f(z)^2] at the initial coefficients: (1 - 1/n! + sum_{k=1..n} 1/k!)/e for torchortho 0.1.2 (tending
    to 1), and sum_k a_k^2 = (6/pi^2) (0.66549^2 + sum_{k=1..n} k^-3) for 0.1.1, which is 1 - (6/pi^2)
    sum_{k>n} k^-3 up to the code's rounding 0.66549 of sqrt(pi^2/6 - zeta(3))."""
    z, w = _gauss_hermite()
    new = normact.create("hermite_act", degree=degree, dtype=torch.float64)
    want_new = (1 - 1 / math.factorial(degree) + sum(1 / math.factorial(k) for k in range(1, degree + 1))) / math.e
    assert float((w * new(z).detach() ** 2).sum()) == pytest.approx(want_new, rel=1e-12)
    old = normact.create("hermite_act", degree=degree, version="0.1.1", dtype=torch.float64)
    second = float((w * old(z).detach() ** 2).sum())
    assert second == pytest.approx(
        6 / math.pi**2 * (0.66549**2 + sum(k**-3.0 for k in range(1, degree + 1))), rel=1e-12
    )
    tail = float(special.zeta(3.0)) - sum(k**-3.0 for k in range(1, degree + 1))
    assert second == pytest.approx(1 - 6 / math.pi**2 * tail, rel=1e-6)


def test_hermite_official_init_values():
    """torchortho 0.1.2: a_0 = sqrt(1 - 1/n!)/sqrt(e), a_k = 1/sqrt(e); 0.1.1: 0.66549 sqrt(6)/pi (the code's
    rounding of sqrt(pi^2/6 - zeta(3)) = 0.6654902) and k^-1.5 sqrt(6)/pi."""
    a = normact.create("hermite_act", degree=4, dtype=torch.float64).coefficients.tolist()
    assert a[0] == pytest.approx(math.sqrt(1 - 1 / 24) / math.sqrt(math.e), rel=1e-15)
    assert a[1:] == pytest.approx([1 / math.sqrt(math.e)] * 4, rel=1e-15)
    b = normact.create("hermite_act", degree=4, version="0.1.1", dtype=torch.float64).coefficients.tolist()
    assert b[0] == pytest.approx(0.66549 * math.sqrt(6) / math.pi, rel=1e-15)
    assert b[0] == pytest.approx(math.sqrt(math.pi**2 / 6 - special.zeta(3.0)) * math.sqrt(6) / math.pi, rel=1e-6)
    assert b[1:] == pytest.approx([k**-1.5 * math.sqrt(6) / math.pi for k in range(1, 5)], rel=1e-15)


def test_hermite_default_is_monotonic():
    """Degree 3 at init: f'(x) = (x + 1)^2 / (2 sqrt(e)) (the truncated generating function's derivative)."""
    x = torch.linspace(-6, 6, 241, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(normact.create("hermite_act", dtype=torch.float64)(x).sum(), x)
    torch.testing.assert_close(g, (x.detach() + 1) ** 2 / (2 * math.sqrt(math.e)), atol=1e-13, rtol=1e-13)


def test_fourier_official_init_values():
    """torchortho 0.1.2: a_k = I_0_2_sqrt_inv = 0.66232645879 (1/sqrt(I_0(2))), a_0 = a_k sqrt(1 - 1/n!^2),
    w_k = k, phi_k = pi/4, amplitudes divided by k!; 0.1.1: a_k = k^-1.5 sqrt(6)/pi, w_k = k pi/sqrt(3)."""
    layer = normact.create("fourier_act", dtype=torch.float64)
    assert layer.degree == 5
    assert layer.coefficients.tolist() == pytest.approx([0.66232645879] * 5, abs=1e-11)
    # the official constant is 1/sqrt(I_0(2)) with I_0(2) = 2.2795853... truncated to 2.279585
    assert 1 / math.sqrt(special.i0(2.0)) == pytest.approx(layer.coefficients[0].item(), rel=1e-7)
    assert layer.fundamental.item() == pytest.approx(0.66232645879 * math.sqrt(1 - 1 / 120**2), rel=1e-10)
    assert layer.frequencies.tolist() == [1.0, 2.0, 3.0, 4.0, 5.0]
    assert layer.phases.tolist() == pytest.approx([math.pi / 4] * 5, rel=1e-15)
    old = normact.create("fourier_act", degree=3, version="0.1.1", dtype=torch.float64)
    assert old.coefficients.tolist() == pytest.approx([k**-1.5 * math.sqrt(6) / math.pi for k in (1, 2, 3)])
    assert old.frequencies.tolist() == pytest.approx([k * math.pi / math.sqrt(3) for k in (1, 2, 3)])
    assert old.fundamental.item() == pytest.approx(0.66549 * math.sqrt(6) / math.pi, rel=1e-15)


def test_fourier_is_bounded_and_periodic_at_init():
    """|f| <= |a_0| + sum |a_k|/k!, and with integer frequencies f has period 2 pi."""
    layer = normact.create("fourier_act", dtype=torch.float64)
    x = torch.linspace(-50, 50, 2001, dtype=torch.float64)
    bound = layer.fundamental.abs() + sum(layer.coefficients[k].abs() / math.factorial(k + 1) for k in range(5))
    y = layer(x)
    assert (y.abs() <= bound + 1e-12).all()
    torch.testing.assert_close(layer(x + 2 * math.pi), y, atol=1e-12, rtol=1e-12)


def test_tropical_reduces_to_relu_and_is_convex_and_monotonic():
    """Degree 1 without gain (0.1.1) and c = (0, 0): max(0, x) = torch.nn.functional.relu. For any
    coefficients: non-decreasing (slopes 0..n), convex (a maximum of lines), bounded below by g c_0."""
    x = _x((100,), scale=3.0)
    relu_like = normact.create("tropical_act", degree=1, version="0.1.1", dtype=torch.float64)
    with torch.no_grad():
        relu_like.coefficients.zero_()
    torch.testing.assert_close(relu_like(x), F.relu(x), atol=0, rtol=0)
    layer = normact.create("tropical_act", dtype=torch.float64)
    with torch.no_grad():
        layer.coefficients.copy_(_x((6,), seed=3))
    t = torch.linspace(-10, 10, 4001, dtype=torch.float64)
    y = layer(t)
    assert (y.diff() >= -1e-12).all()
    assert (y[2:] - 2 * y[1:-1] + y[:-2] >= -1e-12).all()
    assert (y >= layer.gain * layer.coefficients[0] - 1e-12).all()
    assert layer.gain == pytest.approx(math.sqrt(2) / 5)
    # at init: sqrt(2)/n + sqrt(2) relu(x), the second moment under N(0, 1) of sqrt(2) relu being 1
    init = normact.create("tropical_act", dtype=torch.float64)
    torch.testing.assert_close(init(t), math.sqrt(2) / 5 + math.sqrt(2) * F.relu(t), atol=1e-14, rtol=1e-14)


def test_tropical_derivative_at_a_tie_is_the_lowest_degree_lines():
    """Where lines tie for the maximum the whole gradient goes to the lowest-degree one, as the official
    (x * powers + c).max(-1)[0] does (torch.max returns the first maximum): at init all six lines meet at 0,
    so d/dx = 0 and d/dc = (g, 0, ..., 0); torch.maximum folded pairwise gave d/dx = 4.03 g (halves at each tie).
    Off the ties, the slope of the maximal line; NaN inputs and coefficients propagate."""
    layer = normact.create("tropical_act", dtype=torch.float64)
    x = torch.tensor([0.0, -0.5, 0.5], dtype=torch.float64, requires_grad=True)
    (gx,) = torch.autograd.grad(layer(x[:1]).sum(), x)
    (gc,) = torch.autograd.grad(layer(x[:1]).sum(), layer.coefficients)
    assert gx.tolist() == [0.0, 0.0, 0.0]
    assert gc.tolist() == [layer.gain, 0.0, 0.0, 0.0, 0.0, 0.0]
    (g,) = torch.autograd.grad(layer(x[1:]).sum(), x)
    assert g.tolist() == [0.0, 0.0, 5 * layer.gain]
    # a tie between lines 2 and 3 only: c = (0, 0, 0, -1, -3, -5) at x = 1 (2x = 3x - 1 = 2 > x, 4x - 3 = 1)
    with torch.no_grad():
        layer.coefficients.copy_(torch.tensor([0.0, 0.0, 0.0, -1.0, -3.0, -5.0]))
    one = torch.tensor([1.0], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(layer(one).sum(), one)
    assert g.item() == 2 * layer.gain
    nan = torch.tensor([float("nan"), 1.0], dtype=torch.float64)
    assert layer(nan)[0].isnan() and not layer(nan)[1].isnan()
    with torch.no_grad():
        layer.coefficients[2] = float("nan")
    assert layer(nan[1:]).isnan().all()


# -- SL²A-INR Chebyshev layer ------------------------------------------------------------------------------


def test_sl2a_basis_is_scipys_chebyt_of_tanh():
    """One-hot c[i, o, k] gives T_k(tanh x_i) at output o, T_k of scipy.special.eval_chebyt, k up to 64."""
    x = _x((20, 3), scale=2.5)
    layer = normact.create("sl2a_chebyshev", 3, out_features=2, degree=64, dtype=torch.float64)
    t = np.tanh(x.numpy())
    for i, o, k in [(0, 0, 0), (1, 0, 1), (2, 1, 2), (0, 1, 7), (1, 1, 33), (2, 0, 64)]:
        with torch.no_grad():
            layer.coefficients.zero_()
            layer.coefficients[i, o, k] = 1.0
        y = layer(x)
        torch.testing.assert_close(y[:, o], torch.from_numpy(special.eval_chebyt(k, t[:, i])), atol=1e-12, rtol=0)
        torch.testing.assert_close(y[:, 1 - o], torch.zeros(20, dtype=torch.float64), atol=0, rtol=0)


def test_sl2a_official_defaults_and_xavier_bound():
    """Degree 256 (train.py --deg), coefficients (in, out, K + 1) with xavier_uniform: |c| <= sqrt(6 / ((in + out)
    (K + 1))) (torch's fans of a 3-D tensor); identity init gives tanh."""
    torch.manual_seed(0)
    layer = normact.create("sl2a_chebyshev", 8, out_features=4, dtype=torch.float64)
    assert layer.degree == 256 and layer.coefficients.shape == (8, 4, 257)
    bound = math.sqrt(6 / ((8 + 4) * 257))
    assert layer.coefficients.abs().max() <= bound
    assert layer.coefficients.abs().max() > 0.9 * bound
    x = _x((5, 8))
    assert layer(x).shape == (5, 4)
    ident = normact.create("sl2a_chebyshev", 8, init="identity", dtype=torch.float64)
    torch.testing.assert_close(ident(x), torch.tanh(x), atol=1e-15, rtol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sl2a_gradient_is_finite_where_tanh_saturates(dtype):
    """d/dx T_k(tanh x) = k sin(k theta) sech(x) with theta = arccos(tanh x): finite for |x| = 30 (tanh rounds to
    +-1, where the official acos has an infinite derivative); compared with the float64 closed form."""
    x = torch.tensor([[-30.0], [-12.0], [-3.0], [0.0], [3.0], [12.0], [30.0]], dtype=dtype, requires_grad=True)
    layer = normact.create("sl2a_chebyshev", degree=5, dtype=dtype)
    with torch.no_grad():
        layer.coefficients.zero_()
        layer.coefficients[0, 0, 5] = 1.0
    (g,) = torch.autograd.grad(layer(x).sum(), x)
    assert torch.isfinite(g).all()
    xd = x.detach().double()
    theta = torch.acos(torch.tanh(xd))
    expected = 5 * torch.sin(5 * theta) / torch.cosh(xd)
    torch.testing.assert_close(g.double(), expected, atol=1e-6 if dtype == torch.float32 else 1e-13, rtol=1e-5)


def test_sl2a_is_additively_separable():
    """A KAN layer sums univariate functions: d^2 y_o / dx_i dx_j = 0 for i != j."""
    torch.manual_seed(1)
    layer = normact.create("sl2a_chebyshev", 3, out_features=2, degree=6, dtype=torch.float64)
    x = _x((3,), seed=5)
    hessian = torch.autograd.functional.hessian(lambda v: layer(v).sum(), x)
    off_diagonal = hessian - torch.diag(torch.diagonal(hessian))
    assert off_diagonal.abs().max() < 1e-14
    assert torch.diagonal(hessian).abs().min() > 0
