"""Identities of RescaleNorm (rescale_norm, DehazeFormer's RLN) beyond the generic harness: exact reconstruction
with unit meta weights, per-sample zero mean and unit variance, the official initial values, the detach_grad
stop-gradient (which the harness cannot check against finite differences) and the tuple output of create()."""

from __future__ import annotations

import pytest
import torch

import normact
from tests.entries.rescale import ref_rescale_norm
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("shape", [(3, 6, 4, 5), (2, 4, 7), (4, 8)])
def test_unit_meta_weights_and_an_identity_branch_reconstruct_the_input(shape):
    layer = normact.create("rescale_norm", shape[1], eps=0.1)  # exact whatever eps: sigma holds it on both sides
    with torch.no_grad():
        layer.rescale_weight.fill_(1.0)
        layer.rescale_bias.zero_()
        layer.rebias_weight.fill_(1.0)
        layer.rebias_bias.zero_()
    x = randn(shape, scale=3.0, offset=2.0)
    x_hat, rescale, rebias = layer(x)
    assert rescale.shape == rebias.shape == (shape[0], shape[1]) + (1,) * (len(shape) - 2)
    torch.testing.assert_close(x_hat * rescale + rebias, x)


def test_x_hat_has_zero_mean_and_unit_variance_per_sample():
    layer = normact.create("rescale_norm", 5, eps=1e-12)
    x = randn((4, 5, 3, 6)) * torch.arange(1, 5).view(4, 1, 1, 1)  # other statistics per sample
    x_hat, rescale, rebias = layer(x)
    flat = x_hat.reshape(4, -1)
    torch.testing.assert_close(flat.mean(1), torch.zeros(4), atol=1e-12, rtol=0)
    torch.testing.assert_close(flat.var(1, correction=0), torch.ones(4))
    # at initialization rescale ~ 1 + 0.02 sigma and rebias ~ 0.02 mu, per channel
    sigma = x.reshape(4, -1).std(1, correction=0)
    torch.testing.assert_close(
        rescale[:, :, 0, 0], layer.rescale_weight.detach() * sigma[:, None] + 1, atol=1e-9, rtol=0
    )
    mu = x.reshape(4, -1).mean(1)
    torch.testing.assert_close(rebias[:, :, 0, 0], layer.rebias_weight.detach() * mu[:, None], atol=1e-12, rtol=0)


def test_initial_values_follow_the_official_rln():
    torch.manual_seed(0)
    layer = normact.create("rescale_norm", 64)
    assert torch.equal(layer.weight, torch.ones(64)) and torch.equal(layer.bias, torch.zeros(64))
    assert torch.equal(layer.rescale_bias, torch.ones(64)) and torch.equal(layer.rebias_bias, torch.zeros(64))
    torch.manual_seed(0)
    w1, w2 = torch.empty(64, 1, 1, 1), torch.empty(64, 1, 1, 1)  # official meta1/meta2 weights, same draws
    torch.nn.init.trunc_normal_(w1, std=0.02, a=-2.0, b=2.0)
    torch.nn.init.trunc_normal_(w2, std=0.02, a=-2.0, b=2.0)
    torch.testing.assert_close(layer.rescale_weight, w1.flatten(), rtol=0, atol=0)
    torch.testing.assert_close(layer.rebias_weight, w2.flatten(), rtol=0, atol=0)
    assert 0.01 < float(layer.rescale_weight.detach().std()) < 0.03
    assert layer.eps == 1e-5 and layer.detach_grad is False
    with torch.no_grad():
        layer.rescale_weight.fill_(3.0)
    layer.reset_parameters()
    assert float(layer.rescale_weight.detach().abs().max()) < 0.2


def test_detach_grad_keeps_the_forward_and_stops_gradients_through_the_statistics():
    x = randn((3, 4, 3, 3))
    plain, detached = normact.create("rescale_norm", 4), normact.create("rescale_norm", 4, detach_grad=True)
    with torch.no_grad():
        for p in plain.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    detached.load_state_dict(plain.state_dict())
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = plain(xa), detached(xb)
    for a, b in zip(ya, yb, strict=True):
        torch.testing.assert_close(a, b)
    g = [torch.randn(o.shape, generator=torch.Generator().manual_seed(i)) for i, o in enumerate(ya)]
    torch.autograd.backward(ya, g)
    torch.autograd.backward(yb, g)
    # expected: the reference's gradient with mu and sigma detached in rescale/rebias only
    xr = x.clone().requires_grad_()
    params = {n: p.detach().clone() for n, p in plain.named_parameters()}
    y_hat, _, _ = ref_rescale_norm(xr, params, {"eps": plain.eps})  # rescale, rebias: no gradient into x
    torch.autograd.backward(y_hat, g[0])
    torch.testing.assert_close(xb.grad, xr.grad)
    assert not torch.allclose(xa.grad, xb.grad)
    # the meta weights still learn: their gradient is sum over samples of grad * sigma (or mu)
    torch.testing.assert_close(detached.rescale_weight.grad, plain.rescale_weight.grad)
    torch.testing.assert_close(detached.rebias_bias.grad, g[2].sum((0, 2, 3)))


def test_create_builds_a_working_layer_with_a_tuple_output_and_low_precision():
    layer = normact.create("rescale_norm", 6)
    out = layer(randn((2, 6, 4, 4)))
    assert isinstance(out, tuple) and len(out) == 3
    assert "detach_grad" not in repr(layer) and "detach_grad=True" in repr(
        normact.create("rescale_norm", 6, detach_grad=True)
    )
    for dtype in (torch.float16, torch.bfloat16):
        layer = normact.create("rescale_norm", 6, dtype=dtype)
        outs = layer((randn((2, 6, 4, 4)) * 1e4).to(dtype))
        assert all(o.dtype == dtype and torch.isfinite(o).all() for o in outs)
    with pytest.raises(ValueError, match=r"\(N, 6, \*\)"):
        layer(torch.randn(2, 5, 3, 3, dtype=torch.float16))


def test_block_usage_as_in_dehazeformer():
    """x, rescale, rebias = norm(x); x = branch(x) * rescale + rebias: with the official initial values the
    block's output starts close to branch(x_hat) (rescale ~ 1, rebias ~ 0 for unit-scale inputs)."""
    torch.manual_seed(0)
    norm = normact.create("rescale_norm", 8)
    branch = torch.nn.Conv2d(8, 8, 1)
    x = randn((2, 8, 4, 4), scale=1.0, offset=0.0)
    x_hat, rescale, rebias = norm(x)
    out = branch(x_hat) * rescale + rebias
    torch.testing.assert_close(out, branch(x_hat), atol=0.15, rtol=0.1)
