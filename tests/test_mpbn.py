"""MPBN (Guo et al., 2023, arXiv:2308.08359) beyond the generic harness: the inference folding of BN into the
threshold (negative and zero gamma included), T = 1 as a thresholded BatchNorm, the official recurrence with a
torch BatchNorm2d per time step and its straight-through surrogate, layouts, and the harness inputs' distance
from the threshold (the dtype checks compare 0/1 outputs exactly)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normact
import normact.functional as NF
from normact.testing.checks import generator, prepared, snapshot
from tests.entries.spiking import ENTRIES, simulate
from tests.helpers import randn

ENTRY = ENTRIES[0]


pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("case", ENTRY.cases, ids=lambda c: c.id)
def test_harness_cases_stay_away_from_the_threshold(case):
    """The normalized potentials of every harness case are >= 1e-3 away from v_th, so that the low-precision
    checks (computed in float32, error ~1e-6) cannot flip a spike; and both spikes and silences occur."""
    module = prepared(ENTRY, case)
    params = snapshot(module)
    x = case.make_input(generator())
    y, u_hats, _ = simulate(x, params, ENTRY.hparams(case))
    margin = min(float((u - module.v_th).abs().min()) for u in u_hats)
    assert margin > 1e-3, f"{case.id}: a normalized potential lies {margin:.2g} from the threshold"
    assert 0 < float(y.mean()) < 1


def _layer_with_stats(c, seed=3, gammas=None, v_th=0.5, eps=1e-5):
    layer = normact.create("mpbn", c, v_th=v_th, eps=eps)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.running_mean.copy_(torch.randn(c, generator=g))
        layer.running_var.copy_(torch.rand(c, generator=g) * 3 + 0.1)
        layer.weight.copy_(torch.randn(c, generator=g) if gammas is None else torch.tensor(gammas))
        layer.bias.copy_(torch.randn(c, generator=g))
    return layer


def test_folded_threshold_gives_the_spikes_of_bn_then_threshold():
    gammas = [1.3, -0.7, 0.2, -2.5, 0.9, 0.0, 0.0]
    layer = _layer_with_stats(7, gammas=gammas)
    with torch.no_grad():
        layer.bias[5] = 0.8  # gamma = 0: fires always (bias > v_th) ...
        layer.bias[6] = 0.1  # ... or never
    bn = nn.BatchNorm2d(7).eval()
    bn.load_state_dict({k: v for k, v in layer.state_dict().items()})
    u = randn((64, 7, 5, 5), scale=3.0, offset=0.0, seed=1)  # random membrane potentials
    expected = bn(u) > layer.v_th
    thr, above = layer.fold_threshold()
    assert above.tolist() == [g >= 0 for g in gammas]
    view = (1, -1, 1, 1)
    folded = torch.where(above.view(view), u > thr.view(view), u < thr.view(view))
    assert torch.equal(folded, expected)
    assert expected[:, 5].all() and not expected[:, 6].any()
    # the closed form of the paper, for the channels with gamma != 0
    s = (layer.running_var + layer.eps).sqrt()
    closed = (layer.v_th - layer.bias) * s / layer.weight + layer.running_mean
    torch.testing.assert_close(thr[:5], closed[:5].detach())
    assert thr[5] == -math.inf and thr[6] == math.inf


def test_eval_forward_fires_from_the_folded_threshold_over_time():
    layer = _layer_with_stats(5, gammas=[1.0, -0.5, 2.0, -1.5, 0.3]).eval()
    bn = nn.BatchNorm2d(5).eval()
    bn.load_state_dict(layer.state_dict())
    x = randn((4, 6, 5, 3, 3), seed=2)
    u = torch.zeros_like(x[0])
    expected = []
    thr, above = layer.fold_threshold()
    view = (1, -1, 1, 1)
    for t in range(4):
        u = layer.tau * u + x[t]
        s = (bn(u) > layer.v_th).to(u.dtype)
        folded = torch.where(above.view(view), u > thr.view(view), u < thr.view(view)).to(u.dtype)
        assert torch.equal(s, folded)
        expected.append(s)
        u = u * (1 - s)
    torch.testing.assert_close(layer(x), torch.stack(expected), atol=0, rtol=0)


@pytest.mark.parametrize("train", [True, False])
def test_one_time_step_is_a_thresholded_batchnorm(train):
    layer = _layer_with_stats(4, gammas=[1.2, -0.8, 0.5, 1.0]).train(train)
    bn = nn.BatchNorm2d(4).train(train)
    bn.load_state_dict(layer.state_dict())
    x = randn((1, 8, 4, 3, 3), seed=4)
    y = layer(x)
    torch.testing.assert_close(y[0], (bn(x[0]) > layer.v_th).to(x.dtype), atol=0, rtol=0)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(bn, name))


def _official_spike(x, temp):
    """The official spike_activation (straight-through): out_s = x > 0.5, gradient of the tanh ramp."""
    out_s = torch.gt(x, 0.5)
    out_bp = torch.clamp(x, 0, 1)
    out_bp = (torch.tanh(temp * (out_bp - 0.5)) + math.tanh(temp * 0.5)) / (2 * math.tanh(temp * 0.5))
    return (out_s.to(x.dtype) - out_bp).detach() + out_bp


@pytest.mark.parametrize("momentum", [0.1, None])
def test_matches_the_official_recurrence_with_a_batchnorm_per_time_step(momentum):
    """Official LIFAct: mem = mem * decay + x; spike = spike_activation(bn(mem) / V_th) with V_th = 1 (firing
    at bn(mem) > 0.5); mem = mem * (1 - spike); nn.BatchNorm2d called at every step. Same spikes, gradients
    and running statistics (updated T times)."""
    c, steps = 4, 5
    layer = normact.create("mpbn", c, momentum=momentum)
    bn = nn.BatchNorm2d(c, momentum=momentum)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.1, -0.6, 0.8, 1.4]))
        layer.bias.copy_(torch.tensor([0.1, 0.3, -0.2, 0.0]))
    bn.load_state_dict(layer.state_dict())
    x = randn((steps, 6, c, 3, 3), seed=5)
    g = randn((steps, 6, c, 3, 3), scale=1.0, offset=0.0, seed=6)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya = layer(xa)
    mem, out = torch.zeros_like(xb[0]), []
    for t in range(steps):
        mem = mem * 0.25 + xb[t]
        spike = _official_spike(bn(mem) / 1.0, temp=3.0)
        mem = mem * (1 - spike)
        out.append(spike)
    yb = torch.stack(out)
    torch.testing.assert_close(ya, yb, atol=1e-12, rtol=0)  # the official sum may round 1 to 1 - ulp
    assert set(ya.unique().tolist()) == {0.0, 1.0}
    (ya * g).sum().backward()
    (yb * g).sum().backward()
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(layer.weight.grad, bn.weight.grad)
    torch.testing.assert_close(layer.bias.grad, bn.bias.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(layer, name), getattr(bn, name))
    assert int(layer.num_batches_tracked) == steps


@pytest.mark.parametrize("train", [True, False])
def test_batch_first_is_the_transposed_layout(train):
    a = _layer_with_stats(3).train(train)
    b = normact.create("mpbn", 3, batch_first=True).train(train)
    b.load_state_dict(a.state_dict())
    x = randn((4, 5, 3, 2, 2), seed=7)
    xa, xb = x.clone().requires_grad_(), x.transpose(0, 1).clone().requires_grad_()
    ya, yb = a(xa), b(xb)
    torch.testing.assert_close(yb, ya.transpose(0, 1))
    ya.sum().backward()
    yb.sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad.transpose(0, 1))
    torch.testing.assert_close(a.running_var, b.running_var)


def test_surrogate_is_the_derivative_of_the_official_tanh_ramp():
    for v_th, temp in ((0.5, 3.0), (1.0, 5.0), (0.2, 1.0)):
        u = torch.linspace(-0.5, 2.5 * v_th, 301, dtype=torch.float64).requires_grad_()
        ramp = _official_spike(u / (2 * v_th), temp)
        (grad,) = torch.autograd.grad(ramp.sum(), u)
        torch.testing.assert_close(NF.mpbn_surrogate_grad(u.detach(), v_th, temp), grad)
        assert (NF.mpbn_surrogate_grad(u.detach(), v_th, temp)[u.detach() > 2 * v_th] == 0).all()


def test_spikes_are_exact_in_low_precision_and_the_threshold_is_not_rounded():
    layer = _layer_with_stats(4).eval()
    x = randn((3, 5, 4, 2, 2), seed=8)
    y64 = layer(x)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        low = _layer_with_stats(4).eval().to(dtype)
        y = low(x.to(dtype))
        assert y.dtype == dtype and set(y.unique().tolist()) <= {0.0, 1.0}
        thr, _ = low.fold_threshold()
        assert thr.dtype == (torch.float32 if dtype != torch.float32 else dtype)
    assert set(y64.unique().tolist()) == {0.0, 1.0}


def test_training_rejects_a_single_value_per_channel_and_step():
    layer = normact.create("mpbn", 3)
    with pytest.raises(ValueError, match="shape"):
        layer(torch.randn(4, 1, 3))
    layer.eval()
    assert layer(torch.randn(4, 1, 3)).shape == (4, 1, 3)


def test_bad_layout_messages_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"\(T, N, 3, \*\)"):
        normact.create("mpbn", 3)(torch.randn(2, 4, 5, 2))
    with pytest.raises(ValueError, match=r"\(N, T, 3, \*\)"):
        normact.create("mpbn", 3, batch_first=True)(torch.randn(2, 4))
