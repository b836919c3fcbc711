"""Attentive Batch Normalization beyond the generic harness: at initialization (or with the auxiliary network
outputting constants) it is BatchNorm, the attention weights are a distribution over the frames, the
utterance level applies one scale and shift per utterance, and the layer inherits BN's invariances."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import normact
from tests.helpers import perturb, randn

pytestmark = pytest.mark.usefixtures("float64")


@pytest.mark.parametrize("level", ["utterance", "frame"])
@pytest.mark.parametrize("momentum", [0.1, None])
def test_at_initialization_it_is_batchnorm(level, momentum):
    abn = normact.create("attentive_bn", 6, level=level, momentum=momentum)
    bn = nn.BatchNorm1d(6, momentum=momentum)
    for step in range(3):
        x = randn((4, 7, 6), seed=step, offset=step)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = abn(xa), bn(xb.transpose(1, 2)).transpose(1, 2)
        torch.testing.assert_close(ya, yb)
        g = randn(ya.shape, seed=10 + step)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        torch.testing.assert_close(getattr(abn, name), getattr(bn, name))
    abn.eval(), bn.eval()
    x = randn((3, 5, 6), seed=9)
    torch.testing.assert_close(abn(x), bn(x.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("level", ["utterance", "frame"])
def test_with_constant_auxiliary_outputs_it_is_batchnorm_with_that_affine(level):
    """W_gamma = W_beta = 0: whatever the attention, the scale and shift are the constants gamma_0, beta_0."""
    abn = normact.create("attentive_bn", 5, level=level, attention_dim=3)
    perturb(abn, scale=0.5, skip=("gamma_weight", "beta_weight"))
    bn = nn.BatchNorm1d(5)
    with torch.no_grad():
        bn.weight.copy_(abn.weight)
        bn.bias.copy_(abn.bias)
    x = randn((3, 8, 5))
    torch.testing.assert_close(abn(x), bn(x.transpose(1, 2)).transpose(1, 2))


@pytest.mark.parametrize("level", ["utterance", "frame"])
@pytest.mark.parametrize("train", [True, False])
def test_attention_weights_are_a_distribution_over_frames(level, train):
    layer = normact.create("attentive_bn", 5, level=level)
    perturb(layer, scale=0.5)
    layer.train(train)
    x = randn((4, 9, 5))
    before = {k: v.clone() for k, v in layer.named_buffers()}
    a = layer.attention_weights(x)
    assert a.shape == (4, 9)
    assert (a > 0).all()
    torch.testing.assert_close(a.sum(1), torch.ones(4))
    for k, v in layer.named_buffers():  # reading the attention updates nothing
        assert torch.equal(v, before[k])
    # uniform attention with v = 0
    with torch.no_grad():
        layer.att_vector.zero_()
    torch.testing.assert_close(layer.attention_weights(x), torch.full((4, 9), 1 / 9))


def test_utterance_level_applies_one_scale_and_shift_per_utterance_and_frame_level_does_not():
    x = randn((3, 6, 4))
    x_hat = (x - x.mean((0, 1))) / (x.var((0, 1), correction=0) + 1e-5).sqrt()
    for level, per_utterance in (("utterance", True), ("frame", False)):
        layer = normact.create("attentive_bn", 4, level=level)
        perturb(layer, scale=0.5)
        y = layer(x)
        slopes = (y[:, 1:] - y[:, :1]) / (x_hat[:, 1:] - x_hat[:, :1])  # (n, t-1, c)
        same = torch.allclose(slopes, slopes[:, :1].expand_as(slopes))
        assert same == per_utterance, level


@pytest.mark.parametrize("level", ["utterance", "frame"])
def test_invariant_to_a_per_feature_affine_change_of_the_input_in_training(level):
    layer = normact.create("attentive_bn", 4, level=level, eps=1e-12)
    perturb(layer, scale=0.5)
    x = randn((3, 5, 4))
    scale, shift = torch.tensor([2.0, 0.5, 3.0, 1.5]), torch.tensor([1.0, -4.0, 0.3, 7.0])
    torch.testing.assert_close(layer(x), layer(x * scale + shift))


@pytest.mark.parametrize("level", ["utterance", "frame"])
def test_eval_mode_treats_utterances_independently_and_is_frame_order_equivariant(level):
    layer = normact.create("attentive_bn", 4, level=level)
    perturb(layer, scale=0.5)
    layer.eval()
    x = randn((3, 6, 4))
    y = layer(x)
    torch.testing.assert_close(layer(x[1:2]), y[1:2])
    perm = torch.randperm(6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(layer(x[:, perm]), y[:, perm])


def test_input_layout_is_frames_then_features():
    layer = normact.create("attentive_bn", 4)
    with pytest.raises(ValueError, match=r"\(N, T, 4\)"):
        layer(torch.randn(3, 4, 6))
    with pytest.raises(ValueError, match=r"N \* T > 1"):
        layer(torch.randn(1, 1, 4))
