"""Identities of SPADE (spade, spade_instance) beyond the generic harness: zero modulation is the parameter-free
BatchNorm/InstanceNorm, a spatially constant map is a per-channel affine, the nearest resize of the map,
parity with the official module's structure (torch Conv2d + BatchNorm2d/InstanceNorm2d without affine) and
its default initialization, and the segmap checks."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact
from tests.helpers import randn

pytestmark = pytest.mark.usefixtures("float64")


def _zero_modulation(layer):
    with torch.no_grad():
        for name in ("gamma_weight", "gamma_bias", "beta_weight", "beta_bias"):
            getattr(layer, name).zero_()


class _OfficialStructure(nn.Module):
    """The official SPADE's structure from torch modules: param-free norm, shared conv + ReLU, gamma/beta convs,
    nearest resize, normalized * (1 + gamma) + beta."""

    def __init__(self, c, label_nc, hidden, k, param_free):
        super().__init__()
        norm = nn.BatchNorm2d if param_free == "batch" else nn.InstanceNorm2d
        self.norm = norm(c, affine=False)
        self.shared = nn.Sequential(nn.Conv2d(label_nc, hidden, k, padding=k // 2), nn.ReLU())
        self.gamma = nn.Conv2d(hidden, c, k, padding=k // 2)
        self.beta = nn.Conv2d(hidden, c, k, padding=k // 2)

    def forward(self, x, segmap):
        actv = self.shared(F.interpolate(segmap, size=x.shape[2:], mode="nearest"))
        return self.norm(x) * (1 + self.gamma(actv)) + self.beta(actv)


@pytest.mark.parametrize("param_free", ["batch", "instance"])
def test_default_init_is_torch_conv2d_and_official_structure_matches(param_free):
    c, label_nc, hidden, k = 4, 3, 8, 3
    torch.manual_seed(0)
    layer = normact.SPADE(c, label_nc, hidden=hidden, kernel_size=k, param_free=param_free)
    torch.manual_seed(0)
    official = _OfficialStructure(c, label_nc, hidden, k, param_free)
    # the same draws in the same order: torch's default Conv2d initialization, conv by conv
    torch.testing.assert_close(layer.shared_weight, official.shared[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.beta_bias, official.beta.bias, rtol=0, atol=0)
    for step in range(3):
        x, segmap = randn((3, c, 6, 5), seed=step), randn((3, label_nc, 3, 3), seed=10 + step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = layer(xa, segmap=segmap), official(xb, segmap)
        torch.testing.assert_close(ya, yb)
        g = torch.randn_like(ya)
        ya.backward(g), yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(layer.gamma_weight.grad, official.gamma.weight.grad)
    torch.testing.assert_close(layer.shared_bias.grad, official.shared[0].bias.grad)
    if param_free == "batch":
        torch.testing.assert_close(layer.running_mean, official.norm.running_mean)
        torch.testing.assert_close(layer.running_var, official.norm.running_var)
    else:
        assert layer.running_mean is None and layer.num_batches_tracked is None
    layer.eval(), official.eval()
    x, segmap = randn((2, c, 4, 4), seed=7), randn((2, label_nc, 8, 8), seed=8)
    torch.testing.assert_close(layer(x, segmap=segmap), official(x, segmap))


@pytest.mark.parametrize("train", [True, False])
def test_zero_modulation_is_batch_norm_without_affine(train):
    layer = normact.create("spade", 5, label_nc=2, hidden=6)
    _zero_modulation(layer)
    with torch.no_grad():
        layer.running_mean.uniform_(-1, 1)
        layer.running_var.uniform_(0.5, 2)
    rm, rv = layer.running_mean.clone(), layer.running_var.clone()
    layer.train(train)
    x = randn((4, 5, 3, 6))
    y = layer(x, segmap=randn((4, 2, 3, 6), seed=1))
    torch.testing.assert_close(y, F.batch_norm(x, rm, rv, training=train, momentum=0.1, eps=1e-5))
    torch.testing.assert_close(layer.running_mean, rm)  # F.batch_norm updated rm/rv in place likewise
    torch.testing.assert_close(layer.running_var, rv)


def test_zero_modulation_is_instance_norm_without_affine():
    layer = normact.create("spade_instance", 5, label_nc=2, hidden=6)
    _zero_modulation(layer)
    x = randn((3, 5, 4, 6))
    for mode in (True, False):
        layer.train(mode)
        torch.testing.assert_close(layer(x, segmap=randn((3, 2, 2, 3), seed=1)), F.instance_norm(x, eps=1e-5))


def test_untracked_batch_statistics_in_eval():
    layer = normact.create("spade", 3, label_nc=1, hidden=4, track_running_stats=False).eval()
    assert layer.running_mean is None
    _zero_modulation(layer)
    x = randn((4, 3, 3, 3))
    torch.testing.assert_close(layer(x, segmap=randn((4, 1, 3, 3))), F.batch_norm(x, None, None, training=True))


def _constant_affine(layer, labels):
    """The per-channel (1 + gamma_c, beta_c) that a spatially constant map ``labels`` (L,) produces away from
    the zero-padded borders: each k x k convolution acts on a constant through its kernel's sum."""
    a = torch.relu(layer.shared_weight.sum((2, 3)) @ labels + layer.shared_bias)
    gamma = layer.gamma_weight.sum((2, 3)) @ a + layer.gamma_bias
    beta = layer.beta_weight.sum((2, 3)) @ a + layer.beta_bias
    return 1 + gamma, beta


@pytest.mark.parametrize(("name", "kernel_size"), [("spade", 1), ("spade", 3), ("spade_instance", 3)])
def test_spatially_constant_map_is_a_per_channel_affine(name, kernel_size):
    c, label_nc = 4, 3
    layer = normact.create(name, c, label_nc=label_nc, hidden=8, kernel_size=kernel_size)
    labels = torch.tensor([0.0, 1.0, 0.0])  # one label everywhere, one-hot
    x = randn((3, c, 9, 8))
    y = layer(x, segmap=labels.view(1, -1, 1, 1).expand(3, -1, 2, 2))
    weight, bias = _constant_affine(layer, labels)
    norm = nn.BatchNorm2d(c) if name == "spade" else nn.InstanceNorm2d(c, affine=True)
    with torch.no_grad():
        norm.weight.copy_(weight.detach())
        norm.bias.copy_(bias.detach())
    expected = norm(x)
    border = 2 * (kernel_size // 2)  # two stacked convolutions reach this far into the zero padding
    inner = (slice(None), slice(None), slice(border, 9 - border), slice(border, 8 - border))
    torch.testing.assert_close(y[inner], expected[inner])
    if kernel_size == 1:
        torch.testing.assert_close(y, expected)


def test_smaller_and_larger_maps_are_resized_by_nearest_interpolation():
    layer = normact.create("spade", 3, label_nc=2, hidden=4)
    x = randn((2, 3, 6, 4))
    small = randn((2, 2, 3, 2), seed=1)
    up = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # exact 2x nearest upsampling
    torch.testing.assert_close(layer(x, segmap=small), layer(x, segmap=up))
    large = randn((2, 2, 12, 8), seed=2)
    torch.testing.assert_close(layer(x, segmap=large), layer(x, segmap=large[:, :, ::2, ::2]))
    odd = randn((2, 2, 5, 3), seed=3)
    torch.testing.assert_close(layer(x, segmap=odd), layer(x, segmap=F.interpolate(odd, size=(6, 4), mode="nearest")))


def test_segmap_gradient_flows_and_bad_segmaps_are_rejected():
    layer = normact.create("spade", 3, label_nc=2, hidden=4)
    x = randn((2, 3, 4, 4))
    segmap = randn((2, 2, 2, 2), seed=1).requires_grad_()
    layer(x, segmap=segmap).sum().backward()
    assert segmap.grad is not None and segmap.grad.abs().sum() > 0
    with pytest.raises(ValueError, match=r"segmap of shape \(2, 2, h, w\)"):
        layer(x, segmap=randn((2, 3, 4, 4)))
    with pytest.raises(ValueError, match=r"shape \(2, 2, h, w\)"):
        layer(x, segmap=randn((3, 2, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        layer(x, segmap=randn((2, 2, 4)))
    with pytest.raises(TypeError, match="floating-point segmap"):
        layer(x, segmap=torch.ones(2, 2, 4, 4, dtype=torch.long))
    with pytest.raises(TypeError, match="segmap"):
        layer(x, segmap=[[0.0]])
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer(randn((2, 3, 4)), segmap=segmap)


def test_registry_variants_and_low_precision():
    bn, inorm = normact.create("spade", 6), normact.create("spade_instance", 6)
    assert (bn.param_free, inorm.param_free) == ("batch", "instance")
    assert bn.label_nc == inorm.label_nc == 1 and bn.hidden == 128 and bn.kernel_size == 3 and bn.eps == 1e-5
    assert normact.info("spade").properties.batch_dependent and not normact.info("spade_instance").properties.stateful
    for dtype in (torch.float16, torch.bfloat16):
        layer = normact.create("spade", 6, label_nc=2, hidden=8, dtype=dtype)
        y = layer(randn((2, 6, 4, 4)).to(dtype) * 1e4, segmap=randn((2, 2, 4, 4)).to(dtype))
        assert y.dtype == dtype and torch.isfinite(y).all()
        assert layer.running_mean.dtype == dtype
