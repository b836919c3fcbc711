"""Identities of PowerNorm (Shen et al., 2020, arXiv:2003.07845) beyond the generic harness: evaluation folds into
nn.Linear, unit quadratic mean on the batch, sign symmetry, padding invariance, the running-statistic rules of
the forward (paper + official warmup) and of the approximate backward (the paper's nu recursion), and the exact
gradient mode under plain gradcheck."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normact
import normact.functional as NF
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


def _mask(shape, seed=3, p=0.3):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < p
    mask.reshape(-1)[0] = False
    return mask


def _layer(c, seed=1, **kwargs):
    layer = normact.create("powernorm", c, **kwargs)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        layer.running_phi.mul_((0.3 * torch.randn(c, generator=g)).exp())
        layer.ema_gz.add_(0.3 * torch.randn(c, generator=g))
    return layer


def _qm(t, mask=None):
    """Per-channel mean of t^2 over the non-padded positions."""
    if mask is not None:
        t = t[~mask]
    return t.reshape(-1, t.shape[-1]).square().mean(0)


# ------------------------------------------------------------------------------------------ evaluation


def test_eval_folds_into_linear():
    c = 6
    layer = _layer(c).eval()
    x = randn((3, 5, c))
    scale = layer.weight / (layer.running_phi + layer.eps).sqrt()
    after = nn.Linear(c, c)  # the norm as a Linear of its own
    with torch.no_grad():
        after.weight.copy_(torch.diag(scale))
        after.bias.copy_(layer.bias)
    torch.testing.assert_close(layer(x), after(x), rtol=1e-12, atol=1e-12)
    prev = nn.Linear(4, c)  # folded into the Linear before it: W' = diag(s) W, b' = s b + beta
    folded = nn.Linear(4, c)
    with torch.no_grad():
        folded.weight.copy_(scale[:, None] * prev.weight)
        folded.bias.copy_(scale * prev.bias + layer.bias)
    h = randn((3, 5, 4), seed=2)
    torch.testing.assert_close(layer(prev(h)), folded(h), rtol=1e-12, atol=1e-12)
    # evaluation ignores the mask (a per-position map) and leaves every buffer alone
    before = copy.deepcopy(layer.state_dict())
    torch.testing.assert_close(layer(x, pad_mask=_mask((3, 5))), layer(x))
    for k, v in layer.state_dict().items():
        assert torch.equal(v, before[k]), k


# ------------------------------------------------------------------------------------------ forward


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("group_num", [None, 2])
def test_warmup_output_has_unit_quadratic_mean_on_the_batch(masked, group_num):
    """During warmup (batch statistics) without affine, mean_B(y^2) = psi_B^2 / (psi_B^2 + eps) ~ 1 per channel."""
    layer = normact.create("powernorm", 6, affine=False, group_num=group_num)
    x = randn((4, 5, 6))
    mask = _mask((4, 5)) if masked else None
    y = layer(x, pad_mask=mask)
    u = x if group_num is None else NF.power._group_scale(x, group_num, layer.eps)
    psi2 = _qm(u, mask)
    torch.testing.assert_close(_qm(y, mask), psi2 / (psi2 + layer.eps))
    torch.testing.assert_close(_qm(y, mask), torch.ones(6), atol=1e-4, rtol=0)


def test_alpha_0_without_warmup_gives_unit_quadratic_mean_from_the_previous_batch():
    """warmup_iters=0 normalizes by the previous running statistic; with alpha_fwd=0 that is the previous batch's
    quadratic mean, so a second pass over the same batch has quadratic mean 1 (and the first does not)."""
    layer = normact.create("powernorm", 6, affine=False, warmup_iters=0, alpha_fwd=0.0)
    x = randn((8, 6), scale=3.0)
    first = layer(x)
    torch.testing.assert_close(first, x / (1 + layer.eps) ** 0.5)  # running_phi starts at 1
    second = layer(x)
    psi2 = _qm(x)
    torch.testing.assert_close(layer.running_phi, psi2)
    torch.testing.assert_close(_qm(second), psi2 / (psi2 + layer.eps))
    assert not torch.allclose(_qm(first), torch.ones(6), atol=1e-2)


@pytest.mark.parametrize("kwargs", [{}, {"warmup_iters": 0}, {"group_num": 3}, {"warmup_iters": 0, "group_num": 2}])
def test_sign_symmetry_with_zero_bias(kwargs):
    c = 6
    a = _layer(c, **kwargs)
    with torch.no_grad():
        a.bias.zero_()
    b = copy.deepcopy(a)
    x, mask = randn((4, 5, c)), _mask((4, 5))
    torch.testing.assert_close(b(-x, pad_mask=mask), -a(x, pad_mask=mask))
    torch.testing.assert_close(a.running_phi, b.running_phi)
    a.eval(), b.eval()
    torch.testing.assert_close(b(-x), -a(x))


def test_mask_on_2d_input_equals_3d_with_length_1():
    a, b = _layer(5), _layer(5)
    x, mask = randn((7, 5)), _mask((7,))
    torch.testing.assert_close(a(x, pad_mask=mask), b(x[:, None], pad_mask=mask[:, None])[:, 0])
    torch.testing.assert_close(a.running_phi, b.running_phi)


@pytest.mark.parametrize("warmup_iters", [10000, 0])
def test_padded_positions_do_not_change_the_others(warmup_iters):
    """Changing the padded values and their upstream gradients changes no non-padded output or input gradient,
    nor the buffers; the masked layer equals the unmasked one applied to the gathered non-padded tokens."""
    c = 6
    base = _layer(c, warmup_iters=warmup_iters, group_num=2)
    x, mask = randn((4, 5, c)), _mask((4, 5))
    g = randn((4, 5, c), scale=1.0, offset=0.0, seed=7)
    noise = randn((4, 5, c), scale=1e3, offset=0.0, seed=8) * mask[..., None]
    runs = []
    for xs, gs in ((x, g), (x + noise, g + noise)):
        layer = copy.deepcopy(base)
        xs = xs.clone().requires_grad_(True)
        for _ in range(2):  # the second step sees the buffers the first one left
            xs.grad = None
            layer(xs, pad_mask=mask).backward(gs)
        y = layer(xs, pad_mask=mask)
        runs.append((y.detach(), xs.grad.clone(), dict(layer.named_buffers())))
    (y1, g1, b1), (y2, g2, b2) = runs
    keep = ~mask
    torch.testing.assert_close(y1[keep], y2[keep])
    torch.testing.assert_close(g1[keep], g2[keep])
    for name in b1:
        torch.testing.assert_close(b1[name], b2[name], msg=name)
    # the same as the unmasked layer on the (M, C) non-padded tokens
    gathered = copy.deepcopy(base)
    xt = x[keep].clone().requires_grad_(True)
    xm = x.clone().requires_grad_(True)
    masked = copy.deepcopy(base)
    gathered(xt).backward(g[keep])
    masked(xm, pad_mask=mask).backward(g)
    torch.testing.assert_close(xm.grad[keep], xt.grad)
    for name, buf in masked.named_buffers():
        torch.testing.assert_close(buf, dict(gathered.named_buffers())[name], msg=name)


def test_running_statistics_follow_the_rule():
    """Steps t = 1, 2 (< warmup_iters = 3): batch statistics, running_phi moved to the cumulative average then
    exponentially; t = 3: batch statistics, exponential update only; t >= 4: normalized by phi_{t-1} and
    phi_t = alpha phi_{t-1} + (1 - alpha) psi_B^2 (Algorithm 1)."""
    c, alpha, eps = 4, 0.7, 1e-5
    layer = normact.create("powernorm", c, affine=False, alpha_fwd=alpha, warmup_iters=3)
    phi = torch.ones(c)
    for t in range(1, 7):
        x = randn((5, 3, c), scale=1.0 + t, offset=0.2 * t, seed=t)
        psi2 = _qm(x)
        y = layer(x)
        normalizer = psi2 if t <= 3 else phi
        torch.testing.assert_close(y, x / (normalizer + eps).sqrt())
        blended = phi * (t - 1) / t + psi2 / t if t < 3 else phi
        phi = alpha * blended + (1 - alpha) * psi2
        torch.testing.assert_close(layer.running_phi, phi)
        assert int(layer.iters) == t
    layer.eval()  # evaluation: the running statistic, no update
    x = randn((2, 3, c), seed=11)
    torch.testing.assert_close(layer(x), x / (phi + eps).sqrt())
    torch.testing.assert_close(layer.running_phi, phi)
    assert int(layer.iters) == 6
    layer.reset_running_stats()
    assert torch.equal(layer.running_phi, torch.ones(c)) and int(layer.iters) == 0


def test_state_dict_resumes_training_exactly():
    a = _layer(5, warmup_iters=2)
    for t in range(3):
        xs = randn((4, 3, 5), seed=t).requires_grad_(True)
        a(xs).sum().backward()
    b = normact.create("powernorm", 5, warmup_iters=2)
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {"weight", "bias", "running_phi", "ema_gz", "iters"}
    x = randn((4, 3, 5), seed=9)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(ya, yb)
    ya.sum().backward(), yb.sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(a.ema_gz, b.ema_gz)


# ------------------------------------------------------------------------------------------ backward


@pytest.mark.parametrize("kwargs", [{"warmup_iters": 2}, {"warmup_iters": 0, "alpha_bkw": 0.5}])
def test_backward_statistic_follows_the_paper_recursion(kwargs):
    """After each backward pass nu_t = nu_{t-1} (1 - (1 - alpha) Gamma) + (1 - alpha) Lambda with
    Gamma = mean_B(z^2), Lambda = mean_B(z * gamma dL/dy) over the non-padded positions, nu = (1 - alpha_bkw)
    ema_gz; and dL/dx = (gamma dL/dy - nu_{t-1} z) / sqrt(s^2 + eps) there (Algorithm 1)."""
    c = 6
    layer = _layer(c, **kwargs)
    a = layer.alpha_bkw
    for t in range(1, 5):
        x = randn((4, 5, c), seed=t).requires_grad_(True)
        mask = _mask((4, 5), seed=t)
        g = randn((4, 5, c), scale=1.0, offset=0.1, seed=20 + t)
        phi_before, nu_before = layer.running_phi.clone(), (1 - a) * layer.ema_gz.clone()
        y = layer(x, pad_mask=mask)
        psi2 = _qm(x.detach(), mask)
        s2 = psi2 if t <= layer.warmup_iters else phi_before
        z = x.detach() / (s2 + layer.eps).sqrt()
        y.backward(g)
        gz = g * layer.weight.detach()
        keep = ~mask
        gamma = _qm(z, mask)
        lam = (z * gz)[keep].mean(0)
        nu = nu_before * (1 - (1 - a) * gamma) + (1 - a) * lam
        torch.testing.assert_close((1 - a) * layer.ema_gz, nu)
        torch.testing.assert_close(x.grad[keep], ((gz - nu_before * z) / (s2 + layer.eps).sqrt())[keep])
        torch.testing.assert_close(x.grad[mask], (gz / (s2 + layer.eps).sqrt())[mask])


def test_approximate_backward_is_exact_after_warmup_while_nu_is_0():
    """After warmup the forward divides by a constant; with nu = 0 the paper's backward is its exact gradient,
    while during warmup (batch statistics) it is not."""
    x, g = randn((4, 5, 6)), randn((4, 5, 6), scale=1.0, seed=5)
    for warmup, equal in ((0, True), (10, False)):
        grads = []
        for approx in (True, False):
            layer = normact.create("powernorm", 6, warmup_iters=warmup, approx_backward=approx)
            xs = x.clone().requires_grad_(True)
            layer(xs).backward(g)
            grads.append(xs.grad)
        assert torch.allclose(grads[0], grads[1]) is equal


def test_approximate_backward_is_not_called_for_no_grad():
    layer = _layer(4)
    ema = layer.ema_gz.clone()
    with torch.no_grad():
        layer(randn((3, 4)))
    assert torch.equal(layer.ema_gz, ema) and int(layer.iters) == 1


@pytest.mark.parametrize("step", [1, 5])
@pytest.mark.parametrize("group_num", [None, 2])
def test_exact_mode_passes_gradcheck(step, group_num):
    """approx_backward=False is autograd's gradient: gradcheck and gradgradcheck through the functional form with
    the buffers fixed (step 1 of a 3-step warmup: batch statistics; step 5: the running statistic)."""
    c = 4
    layer = _layer(c, group_num=group_num)
    x = randn((3, 4, c)).requires_grad_(True)
    w = layer.weight.detach().clone().requires_grad_(True)
    b = layer.bias.detach().clone().requires_grad_(True)
    mask = _mask((3, 4))

    def fn(x, w, b):
        return NF.power_norm(
            x, layer.running_phi.clone(), None, w, b, True, torch.tensor(step), 3, 0.9, 0.9, 1e-3, group_num, mask,
            approx_backward=False,
        )  # fmt: skip

    torch.autograd.gradcheck(fn, (x, w, b))
    torch.autograd.gradgradcheck(fn, (x, w, b))


# ------------------------------------------------------------------------------------------ validation


def test_bad_pad_mask_is_rejected():
    layer = normact.create("powernorm", 4)
    x = randn((3, 5, 4))
    with pytest.raises(TypeError, match="bool"):
        layer(x, pad_mask=torch.zeros(3, 5, dtype=torch.long))
    with pytest.raises(ValueError, match=r"\(3, 5\)"):
        layer(x, pad_mask=torch.zeros(5, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(N, 4\) or \(N, L, 4\)"):
        layer(randn((3, 5, 2, 4)))
    with pytest.raises(ValueError, match="group_num must divide"):
        normact.create("powernorm", 6, group_num=4)
