"""Identities of Region Normalization (region_norm_b, region_norm_l) beyond the generic harness: one region is
BatchNorm, per-region zero mean and unit variance, independence of the regions, empty regions, mask formats and
resizing, per-region running statistics, the official RN_binarylabel arithmetic (up to its eps placement), and
RN-L's detected mask (thresholds, stopped gradient)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import normact
from tests.helpers import perturb, randn

pytestmark = pytest.mark.usefixtures("float64")


def _mask(shape, p=0.5, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g) < p


@pytest.mark.parametrize("value", [True, False])
def test_one_region_is_batch_norm(value):
    layer = normact.create("region_norm_b", 4, affine=False, track_running_stats=False)
    x = randn((3, 4, 5, 6))
    mask = torch.full((3, 1, 5, 6), value)
    expected = F.batch_norm(x, None, None, training=True, eps=1e-5)
    torch.testing.assert_close(layer(x, mask=mask), expected)
    tracked = normact.create("region_norm_b", 4)
    y = tracked(x, mask=mask)
    k = int(value)
    torch.testing.assert_close(y, expected)
    assert tracked.num_batches_tracked.tolist() == ([0, 1] if value else [1, 0])  # the empty region is skipped
    bn = torch.nn.BatchNorm2d(4)
    bn(x)
    torch.testing.assert_close(tracked.running_mean[k], bn.running_mean)
    torch.testing.assert_close(tracked.running_var[k], bn.running_var)
    torch.testing.assert_close(tracked.running_mean[1 - k], torch.zeros(4))
    torch.testing.assert_close(tracked.running_var[1 - k], torch.ones(4))


def test_each_region_has_zero_mean_and_unit_variance_per_channel():
    layer = normact.create("region_norm_b", 3, affine=False, eps=1e-12)
    x = randn((4, 3, 6, 5))
    x = x + 3.0 * _mask((4, 1, 6, 5), seed=9)  # shift one region: the statistics differ between the regions
    mask = _mask((4, 1, 6, 5))
    y = layer(x, mask=mask)
    for k in (False, True):
        sel = mask[:, 0] == k
        for c in range(3):
            values = y[:, c][sel]
            torch.testing.assert_close(values.mean(), torch.tensor(0.0), atol=1e-10, rtol=0)
            torch.testing.assert_close(values.var(correction=0), torch.tensor(1.0), atol=1e-8, rtol=0)


@pytest.mark.parametrize("changed", [0, 1])
def test_changing_one_region_leaves_the_other_unchanged(changed):
    layer = normact.create("region_norm_b", 4)
    perturb(layer, seed=3)
    x = randn((3, 4, 5, 5))
    mask = _mask((3, 1, 5, 5))
    region = (mask == bool(changed)).expand_as(x)
    x2 = torch.where(region, randn(x.shape, scale=4.0, offset=-2.0, seed=5), x)
    y, y2 = layer(x, mask=mask), layer(x2, mask=mask)
    other = ~region
    torch.testing.assert_close(y[other], y2[other], rtol=0, atol=0)
    assert not torch.allclose(y[region], y2[region])


def test_per_region_affine():
    layer = normact.create("region_norm_b", 3)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]]))
        layer.bias.copy_(torch.tensor([[0.1, 0.2, 0.3], [-0.5, 1.0, 2.0]]))
    plain = normact.create("region_norm_b", 3, affine=False)
    x, mask = randn((2, 3, 4, 4)), _mask((2, 1, 4, 4))
    y, z = layer(x, mask=mask), plain(x, mask=mask)
    m = mask.expand_as(x)
    w = torch.where(m, layer.weight[1].view(1, 3, 1, 1), layer.weight[0].view(1, 3, 1, 1))
    b = torch.where(m, layer.bias[1].view(1, 3, 1, 1), layer.bias[0].view(1, 3, 1, 1))
    torch.testing.assert_close(y, z * w + b)


def _official_rn_b(x, mask, eps):
    """The official RN_binarylabel arithmetic (region filled with its mean, BatchNorm without affine, rescaled
    by sqrt(|R| / NHW)) for each region, summed; zero gamma/beta of RN_B."""
    n, _, h, w = x.shape
    out = torch.zeros_like(x)
    for m in (mask, 1 - mask):
        region = x * m
        count = m.sum((0, 2, 3)).clamp_min(1)
        mu = region.sum((0, 2, 3)) / count
        filled = region + (1 - m) * mu.view(1, -1, 1, 1)
        out = (
            out
            + F.batch_norm(filled, None, None, training=True, eps=eps)
            * torch.sqrt(count / (n * h * w)).view(1, -1, 1, 1)
            * m
        )
    return out


def test_matches_the_official_arithmetic_up_to_eps_placement():
    x = randn((3, 4, 5, 5))
    mask = _mask((3, 1, 5, 5)).to(torch.float64)
    layer = normact.create("region_norm_b", 4, eps=1e-12)
    torch.testing.assert_close(layer(x, mask=mask), _official_rn_b(x, mask, 1e-12))
    # the official eps acts as eps * NHW / |R_k| on region k's variance
    eps = 0.1
    count1 = mask.sum()
    official = _official_rn_b(x, mask, eps)
    ours = normact.create("region_norm_b", 4, eps=eps * 75 / float(count1), affine=False)(x, mask=mask)
    torch.testing.assert_close(official[mask.bool().expand_as(x)], ours[mask.bool().expand_as(x)])


def test_empty_region_is_finite_in_values_and_gradients():
    layer = normact.create("region_norm_b", 3)
    perturb(layer, seed=3)
    for mask in (torch.zeros(2, 1, 3, 3, dtype=torch.bool), torch.ones(2, 1, 3, 3, dtype=torch.bool)):
        x = randn((2, 3, 3, 3)).requires_grad_()
        y = layer(x, mask=mask)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
        assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
        layer.zero_grad()
    assert torch.isfinite(layer.running_var).all()


def test_mask_formats_and_resizing_agree():
    layer = normact.create("region_norm_b", 3)
    perturb(layer, seed=3)
    x = randn((2, 3, 4, 6))
    mask = _mask((2, 1, 4, 6))
    expected = layer(x, mask=mask)
    for other in (mask[:, 0], mask.to(torch.float64), mask.to(torch.long), mask[:, 0].to(torch.float32) * 0.9):
        torch.testing.assert_close(layer(x, mask=other), expected)
    large = mask.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest 2x downsampling gives mask back
    torch.testing.assert_close(layer(x, mask=large.to(torch.float64)), expected)
    small = _mask((2, 1, 2, 3), seed=4)
    up = small.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
    torch.testing.assert_close(layer(x, mask=small), layer(x, mask=up))


def test_bad_masks_are_rejected_with_the_expected_shape():
    layer = normact.create("region_norm_b", 3)
    x = randn((2, 3, 4, 4))
    with pytest.raises(ValueError, match=r"\(2, 1, h, w\) or \(2, h, w\)"):
        layer(x, mask=_mask((3, 1, 4, 4)))
    with pytest.raises(ValueError, match="shape"):
        layer(x, mask=_mask((2, 2, 4, 4)))
    with pytest.raises(TypeError, match="mask"):
        layer(x, mask=[[1]])


def test_running_statistics_per_region_and_eval():
    layer = normact.create("region_norm_b", 3, affine=False, momentum=None)
    batches = [(randn((2, 3, 4, 4), seed=s, offset=s), _mask((2, 1, 4, 4), seed=10 + s)) for s in range(3)]
    batches.append((randn((2, 3, 4, 4), seed=7), torch.ones(2, 1, 4, 4, dtype=torch.bool)))  # region 0 absent
    stats = {0: [], 1: []}
    for x, mask in batches:
        layer(x, mask=mask)
        for k in (0, 1):
            sel = mask[:, 0] == bool(k)
            if sel.any():
                values = x.permute(1, 0, 2, 3)[:, sel]  # (C, count)
                stats[k].append((values.mean(1), values.var(1, correction=1)))
    assert layer.num_batches_tracked.tolist() == [3, 4]
    for k in (0, 1):  # momentum=None: the cumulative average over the batches the region was present in
        torch.testing.assert_close(layer.running_mean[k], torch.stack([m for m, _ in stats[k]]).mean(0))
        torch.testing.assert_close(layer.running_var[k], torch.stack([v for _, v in stats[k]]).mean(0))
    layer.eval()
    x, mask = randn((2, 3, 4, 4), seed=20), _mask((2, 1, 4, 4), seed=21)
    m = mask.expand_as(x)
    mean = torch.where(m, layer.running_mean[1].view(1, 3, 1, 1), layer.running_mean[0].view(1, 3, 1, 1))
    var = torch.where(m, layer.running_var[1].view(1, 3, 1, 1), layer.running_var[0].view(1, 3, 1, 1))
    torch.testing.assert_close(layer(x, mask=mask), (x - mean) / torch.sqrt(var + layer.eps))


# ------------------------------------------------------------------------------------------------- RN-L


def _response(layer, x):
    pooled = torch.cat([x.mean(1, keepdim=True), x.amax(1, keepdim=True)], 1)
    return torch.sigmoid(F.conv2d(pooled, layer.sa_weight, padding=layer.kernel_size // 2))


def _spatial_affine(layer, s):
    pad = layer.kernel_size // 2
    return F.conv2d(s, layer.gamma_weight, layer.gamma_bias, padding=pad), F.conv2d(
        s, layer.beta_weight, layer.beta_bias, padding=pad
    )


@pytest.mark.parametrize("threshold", [1.5, -0.5])
def test_rn_l_with_one_detected_region_is_batch_norm_with_a_spatial_affine(threshold):
    layer = normact.create("region_norm_l", 4, threshold=threshold)
    perturb(layer, seed=3)
    x = randn((3, 4, 6, 5))
    s = _response(layer, x)
    gamma, beta = _spatial_affine(layer, s)
    expected = F.batch_norm(x, None, None, training=True) * (1 + gamma) + beta
    torch.testing.assert_close(layer(x), expected)


def test_rn_l_is_rn_b_on_its_detected_mask_and_stops_the_mask_gradient():
    layer = normact.create("region_norm_l", 3, kernel_size=3, threshold=0.5, track_running_stats=False)
    perturb(layer, seed=3)
    x = randn((2, 3, 5, 5))
    mask = _response(layer, x) >= 0.5
    assert 0 < mask.float().mean() < 1
    xa = x.clone().requires_grad_()
    y = layer(xa)
    rn_b = normact.create("region_norm_b", 3, affine=False, track_running_stats=False)
    xb = x.clone().requires_grad_()
    sa = layer.sa_weight.detach().clone().requires_grad_()
    pooled = torch.cat([xb.mean(1, keepdim=True), xb.amax(1, keepdim=True)], 1)
    s = torch.sigmoid(F.conv2d(pooled, sa, padding=1))
    gamma, beta = _spatial_affine(layer, s)
    expected = rn_b(xb, mask=mask) * (1 + gamma) + beta  # the mask a constant: no gradient through it
    torch.testing.assert_close(y, expected)
    g = torch.randn_like(y)
    y.backward(g)
    expected.backward(g)
    torch.testing.assert_close(xa.grad, xb.grad)
    torch.testing.assert_close(layer.sa_weight.grad, sa.grad)


def test_rn_l_defaults_follow_the_official_code():
    layer = normact.create("region_norm_l", 8)
    assert layer.kernel_size == 7 and layer.threshold == 0.8 and layer.eps == 1e-5
    assert layer.sa_weight.shape == (1, 2, 7, 7) and layer.gamma_bias.shape == (1,)
    torch.manual_seed(0)
    layer = normact.create("region_norm_l", 8)
    torch.manual_seed(0)
    convs = [torch.nn.Conv2d(2, 1, 7, bias=False), torch.nn.Conv2d(1, 1, 7), torch.nn.Conv2d(1, 1, 7)]
    torch.testing.assert_close(layer.sa_weight, convs[0].weight, rtol=0, atol=0)
    torch.testing.assert_close(layer.beta_bias, convs[2].bias, rtol=0, atol=0)
    assert normact.info("region_norm_l").properties.batch_dependent
    assert not normact.info("region_norm_l").properties.smooth


@pytest.mark.parametrize("name", ["region_norm_b", "region_norm_l"])
def test_low_precision_large_inputs(name):
    for dtype in (torch.float16, torch.bfloat16):
        layer = normact.create(name, 4, dtype=dtype)
        x = (randn((2, 4, 5, 5)) * 1e4).to(dtype)
        cond = {"mask": _mask((2, 1, 5, 5))} if name == "region_norm_b" else {}
        y = layer(x, **cond)
        assert y.dtype == dtype and torch.isfinite(y).all()
        if dtype == torch.bfloat16:  # a variance of ~1e8 does not fit a float16 buffer (as for torch's BatchNorm)
            assert torch.isfinite(layer.running_var).all()
