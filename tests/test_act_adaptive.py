"""APA/AGLU, the trainable matrix activation and Dice beyond the generic harness: special cases of the
formulas, the official code's computation, and Dice's running statistics against torch's BatchNorm."""

from __future__ import annotations

import itertools
import math

import mpmath
import pytest
import torch
from torch import nn

import normact
import normact.functional as NF

# ------------------------------------------------------------------------------------------------- APA, AGLU


def test_apa_and_aglu_at_kappa_lambda_one_are_sigmoid_and_silu():
    x = torch.linspace(-30, 30, 6001, dtype=torch.float64)
    apa, aglu = normact.create("apa", dtype=torch.float64), normact.create("aglu", dtype=torch.float64)
    torch.testing.assert_close(apa(x), nn.Sigmoid()(x), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(aglu(x), nn.SiLU()(x), rtol=1e-14, atol=1e-15)


@pytest.mark.parametrize(("kappa", "lam"), [(1.0, 1.0), (0.5, 2.0), (2.0, 0.3), (-0.7, 0.9), (1.3, 1e-4)])
def test_apa_matches_the_formula_in_high_precision(kappa, lam):
    """(lambda e^(-kappa z) + 1)^(-1/lambda) with mpmath, including large |z| where the naive float formula
    overflows: the softplus form stays exact."""
    apa = normact.create("apa", kappa_init=kappa, lambda_init=lam, dtype=torch.float64)
    zs = [-40.0, -5.0, -1.0, 0.0, 0.5, 3.0, 40.0]
    got = apa(torch.tensor(zs, dtype=torch.float64)).tolist()
    with mpmath.workdps(50):
        for z, value in zip(zs, got, strict=True):
            k, la = mpmath.mpf(kappa), mpmath.mpf(lam)
            exact = (la * mpmath.exp(-k * mpmath.mpf(z)) + 1) ** (-1 / la)
            assert value == pytest.approx(float(exact), rel=1e-12, abs=1e-300)


def test_apa_at_zero_and_the_gumbel_limit():
    """APA(0) = (lambda + 1)^(-1/lambda); lambda -> 0 gives the Gumbel CDF exp(-e^(-kappa z)) (at the clamp
    1e-4: within lambda u^2 / 2 of it in log, u = e^(-kappa z))."""
    for lam in (0.3, 1.0, 2.5):
        apa = normact.create("apa", kappa_init=0.8, lambda_init=lam, dtype=torch.float64)
        assert apa(torch.zeros(1, dtype=torch.float64)).item() == pytest.approx((lam + 1) ** (-1 / lam), rel=1e-14)
    gumbel = normact.create("apa", kappa_init=1.5, lambda_init=1e-9, dtype=torch.float64)
    z = torch.linspace(-1.0, 4.0, 101, dtype=torch.float64)
    u = torch.exp(-1.5 * z)
    log_gap = (torch.log(gumbel(z)) - (-u)).abs()
    assert (log_gap <= 1e-4 * u**2 / 2 + 1e-15).all()


def test_lambda_clamp_is_the_official_one():
    """The official code clamps lambda to >= 1e-4: a lambda below it acts as 1e-4 and gets no gradient."""
    x = torch.linspace(-2, 2, 11, dtype=torch.float64)
    low = normact.create("apa", lambda_init=0.5, dtype=torch.float64)
    with torch.no_grad():
        low.lambda_.fill_(-0.2)
    at_clamp = normact.create("apa", lambda_init=1e-4, dtype=torch.float64)
    torch.testing.assert_close(low(x), at_clamp(x), rtol=0, atol=0)
    low(x).sum().backward()
    assert low.lambda_.grad.item() == 0.0 and low.kappa.grad.item() != 0.0


def test_apa_equals_the_official_softplus_computation():
    """The official Unified.forward: l = clamp(lambda, min=1e-4);
    p = exp((1/l) * Softplus(beta=-1)(kappa x - log l)) (kostas1515/AGLU README), for AGLU x * p."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, generator=g, dtype=torch.float64) * 4
    for kappa, lam in [(0.3, 0.8), (1.7, 0.05), (-0.4, 2.0)]:
        lam_t, kappa_t = torch.tensor(lam, dtype=torch.float64), torch.tensor(kappa, dtype=torch.float64)
        official = torch.exp((1 / lam_t) * nn.Softplus(beta=-1.0)(kappa_t * x - torch.log(lam_t)))
        apa = normact.create("apa", kappa_init=kappa, lambda_init=lam, dtype=torch.float64)
        aglu = normact.create("aglu", kappa_init=kappa, lambda_init=lam, dtype=torch.float64)
        # torch's Softplus switches to its linear branch past |beta x| > 20 (a ~2e-9 relative approximation)
        torch.testing.assert_close(apa(x), official, rtol=1e-8, atol=1e-12)
        torch.testing.assert_close(aglu(x), x * official, rtol=1e-8, atol=1e-12)


def _apa_closed_form(x, kappa, lam):
    """APA and its derivatives written out by hand: with e = exp(-kappa x), u = lambda e + 1 and
    f = u^(-1/lambda) = exp(-ln(u) / lambda): df/dx = f kappa e / u, df/dkappa = f x e / u,
    df/dlambda = f (ln(u) / lambda^2 - e / (lambda u))."""
    e = math.exp(-kappa * x)
    u = lam * e + 1
    f = u ** (-1 / lam)
    return f, f * kappa * e / u, f * x * e / u, f * (math.log(u) / lam**2 - e / (lam * u))


@pytest.mark.parametrize(("kappa", "lam", "x"), [(1.0, 1.0, 0.0), (0.5, 2.0, math.log(2) / 0.5)])
def test_apa_and_aglu_gradients_where_the_stable_form_switches(kappa, lam, x):
    """At ln(lambda) - kappa x = 0, the switch of the stable form exp(-softplus(ln(lambda) - kappa x) / lambda):
    softplus written as clamp_min(t, 0) + log1p(exp(-|t|)) got 0 from autograd for both clamp and abs there
    (issue 12), so APA's d/dx was -0.0 at x = 0 (not 0.25); at kappa = 0.5, lambda = 2, x = 2 ln 2 APA's d/dx,
    d/dkappa, d/dlambda were -0.0, 0.0, 0.1225 and AGLU's d/dx 0.7071. All must be the closed form's."""
    f, dx, dk, dl = _apa_closed_form(x, kappa, lam)
    want = {"apa": (dx, dk, dl), "aglu": (f + x * dx, x * dk, x * dl)}  # AGLU = x APA
    for name in ("apa", "aglu"):
        layer = normact.create(name, kappa_init=kappa, lambda_init=lam, dtype=torch.float64)
        xt = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        got = [g.item() for g in torch.autograd.grad(layer(xt), [xt, layer.kappa, layer.lambda_])]
        assert got == pytest.approx(want[name], rel=1e-13, abs=1e-15)
    if kappa == 1.0:
        assert want["apa"][0] == 0.25
    else:  # the values stated in the issue
        assert want["apa"] == pytest.approx((0.0884, 0.2451, 0.0341), abs=5e-5)
        assert want["aglu"][0] == pytest.approx(0.8296, abs=5e-5)


def test_apa_random_init_is_the_official_uniform_draw():
    torch.manual_seed(7)
    a = normact.create("aglu", 5, kappa_init=None, lambda_init=None)
    torch.manual_seed(7)
    kappa, lam = torch.empty(5).uniform_(0, 1), torch.empty(5).uniform_(0, 1)
    assert torch.equal(a.kappa.detach(), kappa) and torch.equal(a.lambda_.detach(), lam)
    with torch.no_grad():
        a.kappa.fill_(3.0)
    torch.manual_seed(7)
    a.reset_parameters()
    assert torch.equal(a.kappa.detach(), kappa)


def test_per_channel_apa_is_the_scalar_one_per_channel():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    layer = normact.create("aglu", 3, channel_axis=1, dtype=torch.float64)
    with torch.no_grad():
        layer.kappa.copy_(torch.tensor([0.5, 1.0, 2.0]))
        layer.lambda_.copy_(torch.tensor([0.2, 1.0, 3.0]))
    y = layer(x)
    for c in range(3):
        want = NF.aglu(x[:, c], layer.kappa[c].item(), layer.lambda_[c].item())
        torch.testing.assert_close(y[:, c], want, rtol=1e-14, atol=1e-15)


def test_aglu_is_finite_with_extreme_inputs_in_every_dtype():
    x = torch.tensor([-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4])
    for name in ("apa", "aglu"):
        for dtype in (torch.float32, torch.float16, torch.bfloat16):
            layer = normact.create(name, kappa_init=2.0, lambda_init=0.05, dtype=dtype)
            xd = x.to(dtype).detach().requires_grad_(True)
            y = layer(xd)
            y.sum().backward()
            assert y.dtype == dtype and torch.isfinite(y).all() and torch.isfinite(xd.grad).all()
            assert torch.isfinite(layer.kappa.grad).all() and torch.isfinite(layer.lambda_.grad).all()


# ------------------------------------------------------------------------------------ trainable matrix activation


@pytest.mark.parametrize("breakpoints", [(0.0,), (-1.0, 0.0, 1.0), (-2.0, -0.5, 0.0, 0.25)])
def test_matrix_activation_starts_as_relu(breakpoints):
    x = torch.linspace(-3, 3, 601, dtype=torch.float64)
    layer = normact.create("matrix_activation", breakpoints=breakpoints, dtype=torch.float64)
    assert torch.equal(layer(x), nn.ReLU()(x))


def test_matrix_activation_is_a_diagonal_matrix_times_x():
    """sigma(x) = D(x) x with D(x) = diag(t(x_i)): the level of x_i's interval [s_k, s_{k+1}), the left end
    included; sigma(0) = 0; the jump at a breakpoint s != 0 is (t_k - t_{k-1}) s."""
    layer = normact.create("matrix_activation", breakpoints=(-1.0, 0.0, 1.0), dtype=torch.float64)
    levels = torch.tensor([0.1, -0.5, 2.0, 0.7], dtype=torch.float64)
    with torch.no_grad():
        layer.levels.copy_(levels)
    x = torch.tensor([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 4.0], dtype=torch.float64)
    d = torch.tensor([0.1, -0.5, -0.5, 2.0, 2.0, 0.7, 0.7], dtype=torch.float64)
    torch.testing.assert_close(layer(x), torch.diag(d) @ x, rtol=0, atol=0)
    eps = 1e-12
    below, above = layer(torch.tensor([1.0 - eps, 1.0], dtype=torch.float64)).tolist()
    assert above - below == pytest.approx((0.7 - 2.0) * 1.0, abs=1e-9)


def test_matrix_activation_with_one_breakpoint_is_positively_homogeneous_prelu():
    """Breakpoints (0,): sigma(x) = t_1 x (x >= 0), t_0 x (x < 0) = t_1 PReLU(x; t_0 / t_1), and sigma(c x) =
    c sigma(x) for c > 0 (the interval pattern does not change)."""
    g = torch.Generator().manual_seed(2)
    layer = normact.create("matrix_activation", dtype=torch.float64)
    with torch.no_grad():
        layer.levels.copy_(torch.tensor([0.3, 1.7], dtype=torch.float64))
    x = torch.randn(100, generator=g, dtype=torch.float64)
    prelu = nn.PReLU().double()
    with torch.no_grad():
        prelu.weight.fill_(0.3 / 1.7)
    torch.testing.assert_close(layer(x), 1.7 * prelu(x), rtol=1e-14, atol=1e-15)
    torch.testing.assert_close(layer(2.5 * x), 2.5 * layer(x), rtol=1e-14, atol=1e-15)


def test_matrix_activation_level_gradient_is_the_sum_of_inputs_in_its_interval():
    g = torch.Generator().manual_seed(3)
    x = torch.randn(500, generator=g, dtype=torch.float64) * 2
    layer = normact.create("matrix_activation", breakpoints=(-1.0, 0.0, 1.5), dtype=torch.float64)
    layer(x).sum().backward()
    edges = [-math.inf, -1.0, 0.0, 1.5, math.inf]
    want = torch.stack([x[(x >= lo) & (x < hi)].sum() for lo, hi in itertools.pairwise(edges)])
    torch.testing.assert_close(layer.levels.grad, want, rtol=1e-13, atol=1e-13)


def test_per_channel_levels():
    x = torch.linspace(-2, 2, 9, dtype=torch.float64).expand(3, 9).T.contiguous()  # (9, 3)
    layer = normact.create("matrix_activation", 3, dtype=torch.float64)
    with torch.no_grad():
        layer.levels.copy_(torch.tensor([[0.0, 1.0], [0.5, 1.0], [-1.0, 2.0]]))
    y = layer(x)
    for c, (t0, t1) in enumerate([(0.0, 1.0), (0.5, 1.0), (-1.0, 2.0)]):
        torch.testing.assert_close(y[:, c], torch.where(x[:, c] >= 0, t1 * x[:, c], t0 * x[:, c]))


def test_matrix_activation_rejects_bad_levels():
    with pytest.raises(ValueError, match="levels must have shape"):
        NF.matrix_activation(torch.randn(4), torch.ones(3), (0.0,))
    with pytest.raises(ValueError, match="strictly increasing"):
        NF.matrix_activation(torch.randn(4), torch.ones(3), (1.0, 0.0))


# ------------------------------------------------------------------------------------------------------ Dice


def _dice_and_bn(c, momentum, eps=1e-8):
    dice = normact.create("dice", c, momentum=momentum, eps=eps, dtype=torch.float64)
    bn = nn.BatchNorm1d(c, eps=eps, momentum=momentum, affine=False).double()
    return dice, bn


@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
@pytest.mark.parametrize("shape", [(8, 4), (5, 4, 3)])
def test_dice_running_statistics_follow_batchnorm(momentum, shape):
    """Training steps update running_mean/var/num_batches_tracked exactly as torch.nn.BatchNorm1d (momentum
    weighs the new batch, unbiased variance, None = cumulative average); the gate is sigmoid of BatchNorm's
    output with the same eps, batch statistics in training and running ones in eval."""
    g = torch.Generator().manual_seed(4)
    dice, bn = _dice_and_bn(shape[1], momentum)
    with torch.no_grad():
        dice.alpha.copy_(torch.linspace(-0.5, 0.5, shape[1]))
    view = (1, -1) + (1,) * (len(shape) - 2)
    for step in range(3):
        x = torch.randn(shape, generator=g, dtype=torch.float64) * 2 + step
        p = torch.sigmoid(bn(x))
        torch.testing.assert_close(dice(x), x * (p + (1 - p) * dice.alpha.view(view)), rtol=1e-13, atol=1e-14)
        for name in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(getattr(dice, name), getattr(bn, name), rtol=1e-14, atol=1e-15)
    dice.eval(), bn.eval()
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    p = torch.sigmoid(bn(x))
    torch.testing.assert_close(dice(x), x * (p + (1 - p) * dice.alpha.view(view)), rtol=1e-13, atol=1e-14)


def test_tf_momentum_convention():
    """The official code's tf.layers.batch_normalization keeps moving = decay * moving + (1 - decay) * batch
    with decay (TF's "momentum") 0.99: that is momentum = 1 - 0.99 = 0.01 in torch's convention."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(16, 3, generator=g, dtype=torch.float64)
    dice = normact.create("dice", 3, momentum=0.01, dtype=torch.float64)
    dice(x)
    torch.testing.assert_close(dice.running_mean, 0.99 * torch.zeros(3, dtype=torch.float64) + 0.01 * x.mean(0))


def test_dice_special_cases():
    """alpha = 1 is the identity (train and eval); f(E[s]) = (1 + alpha) E[s] / 2; with E = 0 and Var -> 0
    the gate is the step 1[s > 0] and Dice is PReLU with slope alpha."""
    g = torch.Generator().manual_seed(6)
    x = torch.randn(10, 4, generator=g, dtype=torch.float64) + 0.3
    ident = normact.create("dice", 4, alpha_init=1.0, dtype=torch.float64)
    torch.testing.assert_close(ident(x), x, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(ident.eval()(x), x, rtol=1e-15, atol=1e-15)

    dice = normact.create("dice", 4, alpha_init=0.25, dtype=torch.float64).eval()
    with torch.no_grad():
        dice.running_mean.copy_(torch.tensor([-1.0, 0.0, 0.5, 2.0]))
        dice.running_var.copy_(torch.tensor([0.5, 1.0, 2.0, 3.0]))
    at_mean = dice.running_mean.expand(3, 4).clone()
    torch.testing.assert_close(dice(at_mean), 0.5 * at_mean * (1 + 0.25), rtol=1e-15, atol=1e-15)

    step = normact.create("dice", 4, alpha_init=0.25, eps=1e-12, dtype=torch.float64).eval()
    with torch.no_grad():
        step.running_var.zero_()
    x = torch.cat([torch.linspace(-3, -0.01, 20), torch.linspace(0.01, 3, 20)]).double().expand(4, 40).T
    torch.testing.assert_close(step(x), nn.PReLU(init=0.25).double()(x), rtol=1e-15, atol=1e-15)


def test_dice_is_batch_dependent_only_in_training():
    g = torch.Generator().manual_seed(8)
    x = torch.randn(6, 3, generator=g, dtype=torch.float64)
    other = x.clone()
    other[1:] += 5.0
    dice = normact.create("dice", 3, alpha_init=0.1, dtype=torch.float64)
    assert not torch.allclose(dice(x)[0], dice(other)[0])
    dice.eval()
    torch.testing.assert_close(dice(x)[0], dice(other)[0], rtol=0, atol=0)


def test_dice_defaults_and_errors():
    dice = normact.create("dice", 5)
    assert dice.eps == 1e-8 and dice.momentum == 0.1 and torch.equal(dice.alpha, torch.zeros(5))
    assert torch.equal(dice.running_var, torch.ones(5)) and torch.equal(dice.running_mean, torch.zeros(5))
    with pytest.raises(ValueError, match=r"\(N, 5, \*\)"):
        dice(torch.randn(4, 6))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        dice(torch.randn(1, 5))
    dice.eval()
    assert dice(torch.randn(1, 5)).shape == (1, 5)  # a single sample is fine with running statistics
    with pytest.raises(ValueError, match="running_mean"):
        NF.dice(torch.randn(3, 5), torch.zeros(5), None, None, training=False)


def test_dice_gradients_flow_through_the_batch_statistics():
    """In training the gate's mean and variance depend on every sample: the input gradient differs from the
    one with the statistics held fixed."""
    g = torch.Generator().manual_seed(9)
    x = torch.randn(6, 2, generator=g, dtype=torch.float64).requires_grad_(True)
    dice = normact.create("dice", 2, alpha_init=0.2, dtype=torch.float64)
    (gx,) = torch.autograd.grad(dice(x).sum(), x)
    mean, var = x.detach().mean(0), x.detach().var(0, unbiased=False)
    xf = x.detach().clone().requires_grad_(True)
    p = torch.sigmoid((xf - mean) / torch.sqrt(var + 1e-8))
    (g_fixed,) = torch.autograd.grad((xf * (p + (1 - p) * 0.2)).sum(), xf)
    assert torch.isfinite(gx).all() and not torch.allclose(gx, g_fixed)
