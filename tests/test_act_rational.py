"""PAU and SAU beyond the generic harness: the initial fits against the functions they approximate (errors
computed here from the official coefficients), the safe denominator, the official backward formula, and SAU's
closed form against numerical convolution."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate, special

import normact
import normact.functional as NF
from normact.layers.act.rational import PAU_INITS

# ml-research/pau, pau/cuda/python_imp/Pade.py, "pade_optimized_leakyrelu" (a_0..a_5; b_1..b_4)
LEAKY_A = (3.35583603e-02, 5.05000375e-01, 1.65343934e00, 2.01001052e00, 9.31901999e-01, 1.52424124e-01)
LEAKY_B = (3.30847488e-06, 3.98021568e00, 5.12471206e-07, 3.01830109e-01)


def _pade_np(x, a, b):
    """Version A in numpy float64: sum a_j x^j / (1 + sum |b_k| |x|^k)."""
    num = sum(a_j * x**j for j, a_j in enumerate(a))
    den = 1 + sum(abs(b_k) * np.abs(x) ** (k + 1) for k, b_k in enumerate(b))
    return num / den


# ------------------------------------------------------------------------------------------------------- PAU


def test_default_coefficients_are_the_official_leaky_relu_fit():
    pau = normact.create("pau")
    assert PAU_INITS["leaky_relu"] == (LEAKY_A, LEAKY_B)
    assert torch.equal(pau.numerator, torch.tensor(LEAKY_A, dtype=torch.float32))
    assert torch.equal(pau.denominator, torch.tensor(LEAKY_B, dtype=torch.float32))
    assert pau.version == "A" and pau.numerator.requires_grad and pau.denominator.requires_grad


def test_initial_pau_approximates_leaky_relu_within_the_error_of_its_coefficients():
    """The official fit of LeakyReLU(0.01) on [-3, 3]: the largest error, computed here from the constants, is
    F(0) - 0 = a_0 = 0.0336 (the fit's offset at the kink); the layer reproduces the fit and stays within it."""
    x = np.linspace(-3.0, 3.0, 600_001)
    target = np.where(x > 0, x, 0.01 * x)
    err = np.abs(_pade_np(x, LEAKY_A, LEAKY_B) - target)
    bound = err.max()
    assert bound == pytest.approx(LEAKY_A[0], abs=1e-12) and x[err.argmax()] == pytest.approx(0.0, abs=1e-9)
    assert bound < 0.0336
    pau = normact.create("pau", dtype=torch.float64)
    xt = torch.from_numpy(x)
    y = pau(xt).detach()
    torch.testing.assert_close(y, torch.from_numpy(_pade_np(x, LEAKY_A, LEAKY_B)), rtol=1e-13, atol=1e-13)
    assert (y - torch.nn.functional.leaky_relu(xt, 0.01)).abs().max().item() <= bound + 1e-12
    # away from the kink the fit is much closer
    far = xt.abs() > 0.5
    assert (y - torch.nn.functional.leaky_relu(xt, 0.01))[far].abs().max().item() < 0.03


def test_version_b_keeps_the_leaky_relu_fit():
    """The fit's b_1 and b_3 are ~1e-6, so |sum b_k x^k| ~ sum |b_k| |x|^k and version B stays within a_0 too."""
    x = torch.linspace(-3.0, 3.0, 6001, dtype=torch.float64)
    y = normact.create("pau", version="B", dtype=torch.float64)(x).detach()
    assert (y - torch.nn.functional.leaky_relu(x, 0.01)).abs().max().item() < LEAKY_A[0] + 1e-6


def test_sigmoid_init_is_the_3_2_pade_approximant():
    """pade_sigmoid_3 = (1/2 + x/4 + x^2/20 + x^3/240) / (1 + x^2/10): sigmoid - F = (sigmoid Q - P) / Q, and
    sigmoid Q - P = c_7 x^7 + c_9 x^9 + O(x^11) from the Taylor series of the sigmoid (sigma_5 = 1/480,
    sigma_7 = -17/80640, sigma_9 = 31/1451520): c_7 = sigma_7 + sigma_5/10, c_9 = sigma_9 + sigma_7/10. Checked
    with the sigmoid in 40-digit arithmetic."""
    pau = normact.create("pau", init="sigmoid", dtype=torch.float64)
    c7 = -17 / 80640 + 1 / 480 / 10
    c9 = 31 / 1451520 - 17 / 80640 / 10
    with mpmath.workdps(40):
        for x in (0.15, 0.2, 0.3):
            exact = float(1 / (1 + mpmath.exp(-mpmath.mpf(x))))
            f = pau(torch.tensor([x], dtype=torch.float64)).item()
            assert (exact - f) / x**7 == pytest.approx((c7 + c9 * x**2) / (1 + x**2 / 10), rel=2e-3)
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    assert (pau(x) - torch.sigmoid(x)).abs().max().item() < 1.4e-3


@pytest.mark.parametrize("version", ["A", "B"])
def test_denominator_is_at_least_one_for_any_coefficients(version):
    """With P = 1 the unit is 1/Q: in (0, 1] for random (also negative) denominators, so no poles."""
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.linspace(-50, 50, 10_000, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
    numerator = torch.tensor([1.0, 0, 0, 0, 0, 0], dtype=torch.float64)
    for _ in range(20):
        denominator = torch.randn(4, generator=g, dtype=torch.float64) * 3
        inv_q = NF.pau(x, numerator, denominator, version)
        assert (inv_q > 0).all() and (inv_q <= 1).all()
        assert inv_q[-1].item() == 1.0


def test_zero_denominator_is_the_polynomial():
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    a = torch.tensor([0.5, -1.0, 0.25, 2.0, 0.0, -0.1], dtype=torch.float64)
    for version in ("A", "B"):
        y = NF.pau(x, a, torch.zeros(4, dtype=torch.float64), version)
        torch.testing.assert_close(y, sum(a[j] * x**j for j in range(6)), rtol=1e-14, atol=1e-12)


def test_versions_differ_when_denominator_terms_cancel():
    """b = (1, -1, 0, 0) at x = 1: A gives Q = 1 + 1 + 1 = 3, B gives Q = 1 + |1 - 1| = 1."""
    a = torch.tensor([0.0, 1.0, 0, 0, 0, 0], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0, 0, 0], dtype=torch.float64)
    x = torch.tensor([1.0], dtype=torch.float64)
    assert NF.pau(x, a, b, "A").item() == pytest.approx(1 / 3)
    assert NF.pau(x, a, b, "B").item() == pytest.approx(1.0)


def test_gradients_are_the_official_backward_formula():
    """dF/dx = P'/Q - sign(x) (sum_k k |b_k| |x|^(k-1)) P/Q^2, dF/da_j = x^j / Q,
    dF/db_k = -sign(b_k) |x|^k P / Q^2 (the derivatives of the official PADEACTIVATION_F_python backward)."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(50, generator=g, dtype=torch.float64) * 2
    a = torch.randn(6, generator=g, dtype=torch.float64)
    b = torch.randn(4, generator=g, dtype=torch.float64)
    xs, aa, bb = (t.clone().requires_grad_(True) for t in (x, a, b))
    NF.pau(xs, aa, bb).sum().backward()
    p = sum(a[j] * x**j for j in range(6))
    q = 1 + sum(b[k].abs() * x.abs() ** (k + 1) for k in range(4))
    dp = sum(j * a[j] * x ** (j - 1) for j in range(1, 6))
    dq = x.sign() * sum((k + 1) * b[k].abs() * x.abs() ** k for k in range(4))
    torch.testing.assert_close(xs.grad, dp / q - dq * p / q**2, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(aa.grad, torch.stack([(x**j / q).sum() for j in range(6)]), rtol=1e-11, atol=1e-12)
    want_b = torch.stack([(-b[k].sign() * x.abs() ** (k + 1) * p / q**2).sum() for k in range(4)])
    torch.testing.assert_close(bb.grad, want_b, rtol=1e-11, atol=1e-12)


def test_kink_at_zero_jumps_by_twice_b1_a0():
    """Version A: F'(0+) - F'(0-) = -2 |b_1| a_0 (from Q'(0+-) = +-|b_1|)."""
    pau = normact.create("pau", dtype=torch.float64)
    x = torch.tensor([-1e-13, 1e-13], dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(pau(x).sum(), x)
    assert (g[1] - g[0]).item() == pytest.approx(-2 * LEAKY_B[0] * LEAKY_A[0], rel=1e-5)


def test_half_precision_is_computed_in_float32():
    x = torch.linspace(-6, 6, 101)
    pau = normact.create("pau")
    for dtype in (torch.float16, torch.bfloat16):
        y = pau.to(dtype)(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()


def test_pau_rejects_bad_coefficients():
    x = torch.randn(3)
    with pytest.raises(ValueError, match="shape"):
        NF.pau(x, torch.ones(2, 3), torch.ones(4))
    with pytest.raises(ValueError, match="version"):
        NF.pau(x, torch.ones(6), torch.ones(4), "C")
    with pytest.raises(TypeError, match="float"):
        NF.pau(torch.ones(3, dtype=torch.long), torch.ones(6), torch.ones(4))


# ------------------------------------------------------------------------------------------------------- SAU


def _leaky(y, alpha):
    return y if y > 0 else alpha * y


def _convolution(x, alpha, sigma):
    """(LeakyReLU_alpha * N(0, sigma^2))(x) by adaptive quadrature, split at the kink y = 0."""
    density = lambda y: math.exp(-((x - y) ** 2) / (2 * sigma**2)) / (sigma * math.sqrt(2 * math.pi))  # noqa: E731
    width = 40 * sigma
    parts = [(x - width, min(0.0, x + width)), (max(0.0, x - width), x + width)]
    return sum(
        integrate.quad(lambda y: _leaky(y, alpha) * density(y), lo, hi, limit=200)[0] for lo, hi in parts if lo < hi
    )


@pytest.mark.parametrize(("alpha", "n"), [(0.15, 1.0), (0.01, 1.0), (0.15, 4.0), (-0.3, 0.5), (0.6, 20000.0)])
def test_sau_is_the_leaky_relu_convolved_with_a_gaussian(alpha, n):
    """The closed form against numerical convolution of the Leaky ReLU with N(0, (1/n)^2)."""
    sau = normact.create("sau", alpha_init=alpha, n=n, dtype=torch.float64)
    for x in (-3.0, -1.0, -0.2 / n, 0.0, 0.3 / n, 1.0, 2.5):
        got = sau(torch.tensor([x], dtype=torch.float64)).item()
        assert got == pytest.approx(_convolution(x, alpha, 1 / n), rel=1e-9, abs=1e-12)


def test_sau_derivative_is_the_smoothed_step_and_it_is_monotonic():
    """f'(x) = (1 + alpha)/2 + (1 - alpha)/2 erf(n x / sqrt 2), the step of the Leaky ReLU convolved too."""
    alpha, n = 0.15, 2.0
    x = torch.linspace(-5, 5, 1001, dtype=torch.float64, requires_grad=True)
    sau = normact.create("sau", n=n, dtype=torch.float64)
    (g,) = torch.autograd.grad(sau(x).sum(), x)
    xs = x.detach().numpy()
    want = (1 + alpha) / 2 + (1 - alpha) / 2 * special.erf(n * xs / math.sqrt(2))
    np.testing.assert_allclose(g.numpy(), want, rtol=1e-12, atol=1e-14)
    assert (g >= alpha - 1e-15).all() and (g <= 1).all() and (g.diff() >= 0).all()


def test_sau_defaults_and_limit():
    """alpha learnable, initialised to 0.15; n = 20000 fixed (not a parameter). The largest distance to the
    Leaky ReLU is at 0: (1 - alpha) / (n sqrt(2 pi))."""
    sau = normact.create("sau", dtype=torch.float64)
    assert [name for name, _ in sau.named_parameters()] == ["alpha"]
    assert sau.alpha.item() == 0.15 and sau.n == 20000.0
    x = torch.linspace(-3, 3, 60_001, dtype=torch.float64)
    gap = (sau(x) - torch.nn.functional.leaky_relu(x, 0.15)).detach()
    bound = 0.85 / (20000 * math.sqrt(2 * math.pi))
    assert gap.max().item() == pytest.approx(bound, rel=1e-9) and (gap >= -1e-15).all()
    assert sau(torch.tensor([1.0, -2.0], dtype=torch.float64)).tolist() == [1.0, pytest.approx(-0.3, abs=1e-15)]


def test_sau_catalog_values():
    """f(0) = (1 - alpha) sigma / sqrt(2 pi) = 0.394953 for alpha = 0.01, sigma = 1; alpha = 0, sigma = 1 gives
    x Phi(x) + phi(x) = GELU(x) + phi(x), f(1) = 1.0833155."""
    f = normact.create("sau", alpha_init=0.01, n=1.0, dtype=torch.float64)
    assert f(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx(0.394953, abs=5e-7)
    f0 = normact.create("sau", alpha_init=0.0, n=1.0, dtype=torch.float64)
    x = torch.linspace(-4, 4, 81, dtype=torch.float64)
    phi = torch.exp(-x * x / 2) / math.sqrt(2 * math.pi)
    torch.testing.assert_close(f0(x), torch.nn.functional.gelu(x) + phi, rtol=1e-13, atol=1e-14)
    assert f0(torch.ones(1, dtype=torch.float64)).item() == pytest.approx(1.0833155, abs=5e-8)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sau_keeps_the_smoothed_relus_negative_tail(dtype):
    """alpha = 0, n = 1: f(x) = x Phi(x) + phi(x), about phi(x) / x^2 for x -> -inf, with relative condition
    |x f'(x) / f(x)| ~ x^2. The paper's form (1 + alpha)/2 x + (1 - alpha)/2 (x erf(x / sqrt 2) + ...) cancels
    there (0 at x = -5 in float32, issue 12); x Phi(x) + phi(x) with Phi by erfc loses another x^2 ulps to the
    rounding of erfc's argument (1e6 ulps at x = -36 in float64). Within 4 (1 + x^2) ulps of mpmath."""
    xs = [-0.5, -2.0, -5.0, -9.0] + ([-13.0, -20.0, -36.0] if dtype == torch.float64 else [])  # float32: normal
    f = normact.create("sau", alpha_init=0.0, n=1.0, dtype=dtype)
    got = f(torch.tensor(xs, dtype=dtype)).double().tolist()
    eps = torch.finfo(dtype).eps
    with mpmath.workdps(40):
        for x, value in zip(xs, got, strict=True):
            exact = mpmath.mpf(x) * mpmath.ncdf(x) + mpmath.npdf(x)
            assert value == pytest.approx(float(exact), rel=4 * eps * (1 + x * x), abs=0)


def test_sau_half_precision_at_the_default_sharpness():
    """(n x)^2 with n = 20000 overflows float16: computed in float32, finite, exact Leaky ReLU away from 0."""
    x = torch.tensor([0.0, 1e-3, -1e-3, 2.0, -2.0])
    for dtype in (torch.float16, torch.bfloat16):
        sau = normact.create("sau", dtype=dtype)
        y = sau(x.to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        torch.testing.assert_close(y[3:].float(), torch.tensor([2.0, -0.3]), rtol=1e-2, atol=1e-3)
