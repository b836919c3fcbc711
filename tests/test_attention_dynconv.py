"""The LayerNorm attentions of "Interpret Vision Transformers as ConvNets with Dynamic Convolutions" (Zhou, Loy &
Dai, 2023, arXiv:2309.10713) beyond the generic checks (tests/test_attention.py and the harness): each row of the
weights is standardized over the keys it attends (zero mean, unit variance), the scale of the scores drops out,
and the layer is equivariant to permuting the tokens (and invariant to permuting the key/value pairs)."""

from __future__ import annotations

import pytest
import torch

import normact
import normact.functional as NF
from tests.helpers import random_qkv

NAMES = ["ln_attention", "relu_ln_attention"]


def _row_stats(weights, keep):
    n = keep.sum(-1)
    mean = (weights * keep).sum(-1) / n
    var = ((weights - mean[..., None]) ** 2 * keep).sum(-1) / n
    return mean, var


def test_ln_attention_rows_have_zero_mean_and_unit_variance():
    q, k, v = random_qkv(t=5, s=9)
    eps = 1e-12
    _, weights = NF.ln_attention(q, k, v, eps=eps, return_weights=True)
    keep = torch.ones_like(weights, dtype=torch.bool)
    mean, var = _row_stats(weights, keep)
    torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-13)
    torch.testing.assert_close(var, torch.ones_like(var), rtol=1e-10, atol=0)


def test_with_a_mask_the_statistics_run_over_the_attended_keys_only():
    q, k, v = random_qkv(t=4, s=7)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[0, 2] = mask[0, 5] = mask[1, 0] = False
    for fn in (NF.ln_attention, NF.relu_ln_attention):
        _, weights = fn(q, k, v, mask=mask, eps=1e-12, return_weights=True)
        keep = mask[:, None, None, :].expand_as(weights)
        assert weights[~keep].abs().max() == 0
        mean, var = _row_stats(weights, keep)
        torch.testing.assert_close(mean, torch.zeros_like(mean), rtol=0, atol=1e-13)
        nonzero = var > 0  # relu_ln: a row whose attended scores are all negative is all zero
        torch.testing.assert_close(var[nonzero], torch.ones_like(var[nonzero]), rtol=1e-9, atol=0)


def test_relu_ln_is_the_layernorm_of_the_rectified_scores():
    q, k, v = random_qkv(t=6, s=6, seed=3)
    scores = torch.relu(q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5)
    expected = torch.nn.functional.layer_norm(scores, (6,), eps=1e-5)
    _, weights = normact.create("relu_ln_attention")(q, k, v, need_weights=True)
    torch.testing.assert_close(weights, expected, rtol=1e-13, atol=1e-13)
    k_neg = -q[:, :, :1].expand_as(k).clone()  # every key = -q_0: query 0's scores are all negative
    out, weights = NF.relu_ln_attention(q, k_neg, v, return_weights=True)
    assert weights[:, :, 0].abs().max() == 0 and out[:, :, 0].abs().max() == 0


@pytest.mark.parametrize("name", NAMES)
def test_the_scale_of_the_scores_drops_out(name):
    """LN(c s) = LN(s) for c > 0 (exactly as eps -> 0): the softmax temperature has no effect here."""
    q, k, v = random_qkv(seed=4)
    fn = getattr(NF, name)
    base = fn(q, k, v, eps=1e-14, scale=0.1)
    torch.testing.assert_close(fn(q, k, v, eps=1e-14, scale=3.0), base, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_token_permutation_equivariance(name):
    """Permuting the tokens of self-attention permutes the outputs; permuting only the key/value pairs changes
    nothing (the LayerNorm over the keys is symmetric in them)."""
    layer = normact.create(name)
    q, k, v = random_qkv(t=7, seed=5)
    perm = torch.randperm(7, generator=torch.Generator().manual_seed(0))
    out = layer(q, k, v)
    torch.testing.assert_close(layer(q[:, :, perm], k[:, :, perm], v[:, :, perm]), out[:, :, perm])
    torch.testing.assert_close(layer(q, k[:, :, perm], v[:, :, perm]), out)
    mask = torch.ones(2, 7, dtype=torch.bool)
    mask[1, 3] = False
    torch.testing.assert_close(
        layer(q[:, :, perm], k[:, :, perm], v[:, :, perm], mask=mask[:, perm]), layer(q, k, v, mask=mask)[:, :, perm]
    )


@pytest.mark.parametrize("name", NAMES)
def test_inside_a_vit_block_and_registry_metadata(name):
    info = normact.info(name)
    assert info.kind == "attention" and info.paper.arxiv == "2309.10713"
    assert info.properties.smooth is (name == "ln_attention")
    block = normact.TransformerBlock(16, 4, attention=name)
    x = torch.randn(2, 5, 16, requires_grad=True)
    block(x).sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="eps"):
        normact.create(name, eps=0.0)
