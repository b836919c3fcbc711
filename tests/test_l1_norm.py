"""Identities of the L1 normalizations beyond the generic harness: the Gaussian constant sqrt(pi/2) makes
them approximate their L2 counterparts, invariances, the sign-based gradient, running statistics."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import normact


def _x(shape, scale=2.0, offset=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64) * scale + offset


def test_l1_layernorm_approximates_layernorm_on_gaussian_rows():
    """E|x - mu| = sigma sqrt(2/pi) for Gaussian data: with s = sqrt(pi/2) the output is close to LayerNorm's
    for long Gaussian rows (sampling error of the deviation estimate, about 1%)."""
    x = _x((4, 20000))
    l1 = normact.create("l1_layernorm", 20000, dtype=torch.float64)
    l2 = nn.LayerNorm(20000, dtype=torch.float64)
    ratio = l1(x).std(-1) / l2(x).std(-1)
    torch.testing.assert_close(ratio, torch.ones(4, dtype=torch.float64), atol=0.02, rtol=0)


def test_l1_layernorm_is_shift_and_scale_invariant():
    x = _x((3, 32))
    layer = normact.create("l1_layernorm", 32, eps=1e-12, dtype=torch.float64)
    torch.testing.assert_close(layer(x * 7.5 - 3.0), layer(x))


def test_l1_layernorm_plain_scale_gives_unit_mean_absolute_deviation():
    layer = normact.create("l1_layernorm", 10, scale=1.0, eps=1e-12, dtype=torch.float64)
    y = layer(_x((5, 10)))
    torch.testing.assert_close(y.abs().mean(-1), torch.ones(5, dtype=torch.float64))
    torch.testing.assert_close(y.mean(-1), torch.zeros(5, dtype=torch.float64))


def test_l1_batchnorm_approximates_batchnorm_on_gaussian_batches():
    x = _x((4000, 3, 2, 2))
    l1 = normact.create("l1_batchnorm", 3, dtype=torch.float64)
    bn = nn.BatchNorm2d(3, dtype=torch.float64)
    torch.testing.assert_close(l1(x), bn(x), atol=0.05, rtol=0.02)


def test_l1_batchnorm_gradient_uses_signs_only():
    """d/dx_i of s * mean|x - mu| is s (sign(x_i - mu) - mean sign(x - mu)) / m."""
    x = _x((5, 1)).requires_grad_(True)
    mu = x.mean(0, keepdim=True)
    dev = math.sqrt(math.pi / 2) * (x - mu).abs().mean()
    (g,) = torch.autograd.grad(dev, x)
    sign = torch.sign(x.detach() - mu.detach())
    torch.testing.assert_close(g, math.sqrt(math.pi / 2) * (sign - sign.mean()) / 5)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_l1_batchnorm_running_statistics_then_eval(momentum):
    layer = normact.create("l1_batchnorm", 2, momentum=momentum, dtype=torch.float64)
    batches = [_x((6, 2, 3), seed=s) for s in range(3)]
    mean, dev = torch.zeros(2, dtype=torch.float64), torch.ones(2, dtype=torch.float64)
    for i, b in enumerate(batches, start=1):
        layer(b)
        mu = b.mean((0, 2))
        d = math.sqrt(math.pi / 2) * (b - mu.view(1, -1, 1)).abs().mean((0, 2))
        m = momentum if momentum is not None else 1.0 / i
        mean, dev = (1 - m) * mean + m * mu, (1 - m) * dev + m * d
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_dev, dev)
    layer.eval()
    x = _x((2, 2, 3), seed=9)
    torch.testing.assert_close(layer(x), (x - mean.view(1, -1, 1)) / (dev.view(1, -1, 1) + 1e-5))


def test_l1_batchnorm_untrained_eval_is_identity():
    layer = normact.create("l1_batchnorm", 3, eps=1e-12, dtype=torch.float64).eval()
    x = _x((2, 3, 4))
    torch.testing.assert_close(layer(x), x)
