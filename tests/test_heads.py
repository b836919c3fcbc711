"""The feature-normalized classifier head (FN; Zhang, Beitollahi, Bie & Chen, 2023, arXiv:2308.09565) beyond the
generic harness (tests/entries/heads.py): the classifier's input has unit norm, the logits are invariant to a
positive rescaling of the features, the authors' temperature is 1 / scale, and the head is no drop-in norm."""

from __future__ import annotations

import pytest
import torch

import normact
import normact.functional as NF
from normact.layers.block.transformer import TransformerBlock
from tests.helpers import randn


def _head(**kwargs):
    torch.manual_seed(0)
    kwargs.setdefault("num_classes", 7)
    head = normact.create("feature_norm_head", 12, dtype=torch.float64, **kwargs)
    if head.bias is not None:
        with torch.no_grad():
            head.bias.normal_()
    return head


@pytest.mark.parametrize("scale", [1e-3, 1.0, 40.0, 1e4])
def test_the_classifier_input_has_unit_norm(scale):
    z = randn((6, 3, 12), scale=scale, offset=0.0, seed=1)
    unit = _head().normalized_features(z)
    torch.testing.assert_close(torch.linalg.vector_norm(unit, dim=-1), torch.ones(6, 3, dtype=torch.float64))
    torch.testing.assert_close(unit * torch.linalg.vector_norm(z, dim=-1, keepdim=True), z)


@pytest.mark.parametrize("c", [1e-3, 0.5, 7.0, 1e4])
def test_logits_are_invariant_to_positive_rescaling_of_the_features(c):
    head = _head(bias=True, scale=3.0)
    z = randn((5, 12), seed=2)
    torch.testing.assert_close(head(c * z), head(z), rtol=1e-13, atol=1e-13)
    assert not torch.allclose(head(-z), head(z))  # a negative factor flips the direction


def test_logits_are_the_scaled_classifier_of_the_unit_features_and_the_official_temperature():
    """logits = tau (W z/||z|| + b); the authors divide the linear layer's output by a temperature T: tau = 1/T."""
    head = _head(bias=True, scale=0.5)
    z = randn((4, 12), seed=3)
    unit = z / z.norm(dim=-1, keepdim=True)
    expected = 0.5 * (unit @ head.weight.T + head.bias)
    torch.testing.assert_close(head(z), expected, rtol=1e-14, atol=1e-14)
    temperature = 2.0
    official = torch.nn.functional.linear(torch.nn.functional.normalize(z), head.weight, head.bias) / temperature
    torch.testing.assert_close(head(z), official, rtol=1e-14, atol=1e-14)
    bound = 0.5 * (head.weight.norm(dim=-1) + head.bias.abs())  # |logit_k| <= tau (||W_k|| + |b_k|)
    assert (head(randn((50, 12), seed=4)).abs() <= bound + 1e-12).all()


def test_defaults_are_the_authors_no_bias_unit_scale_and_linear_init():
    head = normact.FeatureNormHead(16, 10)
    assert head.bias is None and head.scale == 1.0 and head.eps == 1e-12
    assert float(head.weight.detach().abs().max()) <= 0.25  # U(-1/sqrt(16), 1/sqrt(16)), nn.Linear's default
    assert normact.create("feature_norm_head", 16).num_classes == 10  # the registry default


def test_zero_features_give_the_scaled_bias_with_finite_gradients():
    head = _head(bias=True, scale=2.0)
    z = torch.zeros(3, 12, dtype=torch.float64, requires_grad=True)
    out = head(z)
    torch.testing.assert_close(out, 2.0 * head.bias.expand(3, 7))
    out.sum().backward()
    assert torch.isfinite(z.grad).all()


def test_half_precision_normalizes_in_float32():
    head = _head(bias=True).to(torch.bfloat16)
    z = randn((4, 12), scale=1e4, seed=5)
    out = head(z.to(torch.bfloat16))
    assert out.dtype == torch.bfloat16
    ref = NF.feature_norm_head(z.to(torch.bfloat16).double(), head.weight.double(), head.bias.double(), 1.0)
    torch.testing.assert_close(out.double(), ref, rtol=2e-2, atol=2e-2)


def test_not_a_drop_in_norm():
    info = normact.info("feature_norm_head")
    assert info.kind == "norm" and not info.properties.drop_in and info.input_layout == "last_dims"
    with pytest.raises(ValueError, match="drop-in"):
        TransformerBlock(8, 2, norm="feature_norm_head")
    with pytest.raises(ValueError, match=r"\(\*, 12\)"):
        _head()(torch.randn(3, 11, dtype=torch.float64))
