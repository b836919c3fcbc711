"""Identities of the batch-dependent BatchNorm variants (batchrenorm, ibn, bcn) beyond the generic harness:
limits that reduce them to BatchNorm/InstanceNorm, torch parity of IBN's halves, clipping of r and d, and
running-statistic updates with momentum > 0 (which the harness cases avoid, see tests/entries/batch_variants.py)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact
from normact.testing.checks import snapshot
from tests.entries.batch_variants import ref_batchrenorm, ref_bcn
from tests.helpers import perturb_bn, randn

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batchrenorm_with_unit_bounds_is_batchnorm_in_training(momentum):
    x = randn((6, 4, 3, 3))
    brn = normact.create("batchrenorm", 4, r_max=1.0, d_max=0.0, momentum=momentum)
    bn = nn.BatchNorm2d(4, momentum=momentum)
    perturb_bn(brn)
    bn.load_state_dict(brn.state_dict())  # torch's buffers: a BatchNorm state dict loads both ways
    for step in range(3):
        xs = x + step
        xa, xb = xs.clone().requires_grad_(), xs.clone().requires_grad_()
        ya, yb = brn(xa), bn(xb)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(brn, name), getattr(bn, name))
    torch.testing.assert_close(brn.weight.grad, bn.weight.grad)
    brn.eval(), bn.eval()
    torch.testing.assert_close(brn(x), bn(x))


def test_batchrenorm_unclipped_training_matches_the_paper_and_stops_gradients():
    x = randn((8, 4, 3))
    layer = normact.create("batchrenorm", 4, momentum=0.2)
    perturb_bn(layer)
    params = snapshot(layer)
    hp = {"eps": layer.eps, "momentum": 0.2, "r_max": 3.0, "d_max": 5.0, "training": True}
    y = layer(x)
    expected, buffers = ref_batchrenorm(x, params, hp)
    torch.testing.assert_close(y, expected)
    for name, want in buffers.items():
        torch.testing.assert_close(getattr(layer, name), want)
    # r and d inside their bounds here, and constants for backpropagation: the input gradient is that of
    # BatchNorm scaled by r per channel.
    sigma = (params["running_var"] + layer.eps).sqrt()
    mean = x.mean((0, 2))
    var = x.var((0, 2), correction=0)
    r = (var + layer.eps).sqrt() / sigma
    d = (mean - params["running_mean"]) / sigma
    assert ((r > 1 / 3) & (r < 3)).all() and (d.abs() < 5).all()
    layer2 = normact.create("batchrenorm", 4)
    perturb_bn(layer2)
    xa = x.clone().requires_grad_()
    g = torch.randn_like(x)
    layer2(xa).backward(g)
    xb = x.clone().requires_grad_()
    yb = (xb - xb.mean((0, 2), keepdim=True)) / (xb.var((0, 2), correction=0, keepdim=True) + layer.eps).sqrt()
    (yb * (r * params["weight"]).view(1, -1, 1)).backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)


def test_batchrenorm_clipping_is_engaged():
    layer = normact.create("batchrenorm", 3, r_max=2.0, d_max=1.0, affine=False)
    x = randn((16, 3), scale=10.0, offset=50.0)  # sigma_B ~ 10 sigma, mu_B - mu ~ 50 sigma
    y = layer(x)
    xhat = (x - x.mean(0)) / (x.var(0, correction=0) + layer.eps).sqrt()
    torch.testing.assert_close(y, xhat * 2.0 + 1.0)
    layer = normact.create("batchrenorm", 3, r_max=2.0, d_max=1.0, affine=False)
    x = randn((16, 3), scale=0.01, offset=-50.0)
    y = layer(x)
    xhat = (x - x.mean(0)) / (x.var(0, correction=0) + layer.eps).sqrt()
    torch.testing.assert_close(y, xhat * 0.5 - 1.0)
    layer.r_max, layer.d_max = 1.0, 0.0  # the bounds are attributes to schedule during training
    torch.testing.assert_close(layer(x), xhat)


def _ibn_and_torch(c, ratio):
    layer = normact.create("ibn", c, ratio=ratio)
    perturb_bn(layer)
    h = int(c * ratio)
    tin = nn.InstanceNorm2d(h, affine=True) if h else None
    tbn = nn.BatchNorm2d(c - h) if h < c else None
    with torch.no_grad():
        if tin is not None:
            tin.weight.copy_(layer.in_weight)
            tin.bias.copy_(layer.in_bias)
        if tbn is not None:
            tbn.weight.copy_(layer.bn_weight)
            tbn.bias.copy_(layer.bn_bias)
            tbn.running_mean.copy_(layer.running_mean)
            tbn.running_var.copy_(layer.running_var)
    return layer, tin, tbn, h


@pytest.mark.parametrize(("c", "ratio"), [(6, 0.5), (7, 0.3), (5, 0.5), (4, 0.0), (4, 1.0)])
@pytest.mark.parametrize("train", [True, False])
def test_ibn_halves_match_torch_instancenorm_and_batchnorm(c, ratio, train):
    layer, tin, tbn, h = _ibn_and_torch(c, ratio)
    assert layer.half == int(c * ratio)
    x = randn((4, c, 3, 3))
    for m in (layer, tin, tbn):
        if m is not None:
            m.train(train)
    y = layer(x)
    parts = ([tin(x[:, :h])] if tin is not None else []) + ([tbn(x[:, h:])] if tbn is not None else [])
    torch.testing.assert_close(y, torch.cat(parts, 1))
    if tbn is not None:
        torch.testing.assert_close(layer.running_mean, tbn.running_mean)
        torch.testing.assert_close(layer.running_var, tbn.running_var)


def test_ibn_ratio_limits_are_batchnorm_and_instancenorm():
    x = randn((4, 5, 3, 3))
    bn, ibn0 = normact.create("batchnorm2d", 5), normact.create("ibn", 5, ratio=0.0)
    assert ibn0.in_weight is None and ibn0.in_bias is None
    torch.testing.assert_close(ibn0(x), bn(x))
    torch.testing.assert_close(ibn0.running_var, bn.running_var)
    ibn1 = normact.create("ibn", 5, ratio=1.0)
    assert ibn1.bn_weight is None and ibn1.running_mean is None
    inorm = nn.InstanceNorm2d(5, affine=True)
    for mode in (True, False):
        ibn1.train(mode), inorm.train(mode)
        torch.testing.assert_close(ibn1(x), inorm(x))


def test_ibn_rejects_other_ranks_with_the_expected_shape():
    layer = normact.create("ibn", 4)
    with pytest.raises(ValueError, match=r"\(N, 4, H, W\)"):
        layer(torch.randn(3, 4, 5))


@pytest.mark.parametrize("shape", [(4, 8, 3, 3), (6, 8), (1, 8, 2, 2)])
def test_bcn_updates_its_estimates_with_momentum(shape):
    layer = normact.create("bcn", 8, num_groups=4, momentum=0.3)
    perturb_bn(layer)
    hp = {"eps": layer.eps, "momentum": 0.3, "num_groups": 4, "training": True}
    for step in range(3):
        x = randn(shape, seed=step)
        params = snapshot(layer)
        expected, buffers = ref_bcn(x, params, hp)
        torch.testing.assert_close(layer(x), expected)
        for name, want in buffers.items():
            torch.testing.assert_close(getattr(layer, name), want)


def test_bcn_with_zero_momentum_is_its_eval_form_and_channel_normalized():
    layer = normact.create("bcn", 8, num_groups=2, momentum=0.0, affine=False)
    perturb_bn(layer)
    x = randn((3, 8, 4, 4))
    y = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), y)
    yg = y.reshape(3, 2, -1)
    torch.testing.assert_close(yg.mean(-1), torch.zeros(3, 2), atol=1e-10, rtol=0)
    torch.testing.assert_close(yg.var(-1, correction=0), torch.ones(3, 2), atol=1e-3, rtol=0)


def test_batchrenorm_compiled_gradients_with_unclipped_r_and_d():
    """The training path whose r and d stay inside their bounds (the harness keeps them clipped, see
    tests/entries/batch_variants.py): compiled input and parameter gradients equal eager ones over two steps.
    Guards normact.functional._state.read_state: without it AOTAutograd recomputed r from the updated
    running_var in the backward pass (pytorch#197039) and the gradients drifted by about 5e-6."""
    import copy

    torch._dynamo.reset()
    eager = normact.create("batchrenorm", 4, r_max=10.0, d_max=10.0)
    perturb_bn(eager)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend="aot_eager", fullgraph=True)
    for step in range(2):
        x = randn((6, 4, 3, 3), seed=step)
        xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
        ye, yc = eager(xe), compiled(xc)
        g = randn(ye.shape, seed=10 + step)
        (ye * g).sum().backward()
        (yc * g).sum().backward()
        torch.testing.assert_close(yc, ye, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(xc.grad, xe.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(compiled_module.weight.grad, eager.weight.grad, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(compiled_module.running_var, eager.running_var, atol=1e-12, rtol=1e-12)
    torch._dynamo.reset()
