"""The normalization recipe of "Transformers without Tears" (Nguyen & Salazar, 2019, arXiv:1910.05895) around
normact's ScaleNorm (registered as ``scalenorm``, tested by the harness): ScaleNorm with g = sqrt(d) is RMSNorm
without gain up to where eps sits, its output has length g and ignores the input's scale; FixNorm embeddings have
the fixed length; tears_init_ draws the attention projections with std sqrt(2/(5d)) and the FFN Xavier-normal."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import normact
import normact.functional as NF
from normact.layers.block.tears import FixNormEmbedding, tears_attention_std, tears_init_
from tests.helpers import randn

# ------------------------------------------------------------------------------------------------- ScaleNorm


def test_scalenorm_with_g_sqrt_d_is_rmsnorm_without_gain_up_to_eps_placement():
    """g x / max(||x||, eps) with g = sqrt(d) is exactly x / max(RMS(x), eps / sqrt(d)); torch's RMSNorm puts eps
    inside the root, x / sqrt(mean(x^2) + eps): equal when eps -> 0, within eps / (2 mean(x^2)) relatively."""
    d = 16
    x = randn((8, 5, d), seed=0)
    y = NF.scale_norm(x, d, math.sqrt(d), 1e-5)
    rms = torch.sqrt((x * x).mean(-1, keepdim=True))
    torch.testing.assert_close(y, x / rms.clamp_min(1e-5 / math.sqrt(d)), rtol=1e-14, atol=1e-14)
    torch.testing.assert_close(y, F.rms_norm(x, (d,), eps=1e-300), rtol=1e-13, atol=1e-13)
    y_torch = F.rms_norm(x, (d,), eps=1e-5)
    rel = ((y - y_torch) / y).abs()
    assert float(rel.max()) <= float((1e-5 / (2 * rms**2)).max()) * 1.01
    module = normact.create("scalenorm", d).double()
    assert float(module.scale.detach()) == pytest.approx(math.sqrt(d))
    torch.testing.assert_close(module(x), y, rtol=1e-14, atol=1e-14)


def test_scalenorm_output_has_length_g_and_ignores_the_input_scale():
    module = normact.create("scalenorm", 12).double()
    with torch.no_grad():
        module.scale.fill_(2.5)
    x = randn((6, 12), seed=1)
    y = module(x)
    torch.testing.assert_close(y.norm(dim=-1), torch.full((6,), 2.5, dtype=torch.float64))
    for a in (1e-3, 3.0, 1e5):
        torch.testing.assert_close(module(a * x), y, rtol=1e-13, atol=1e-13)


def test_prenorm_scalenorm_block_is_the_paper_model():
    block = normact.TransformerBlock(16, 4, norm="scalenorm", placement="pre", act="relu", final_norm=True)
    assert float(block.attn_norm.scale.detach()) == pytest.approx(4.0) and float(
        block.final_norm.scale.detach()
    ) == pytest.approx(4.0)
    assert block(torch.randn(2, 5, 16)).shape == (2, 5, 16)


# ------------------------------------------------------------------------------------------------- FixNorm


def test_fixnorm_rows_have_the_fixed_length():
    torch.manual_seed(0)
    emb = FixNormEmbedding(50, 16, dtype=torch.float64)
    ids = torch.tensor([[0, 3, 49], [7, 7, 1]])
    e = emb(ids)
    assert e.shape == (2, 3, 16)
    torch.testing.assert_close(e.norm(dim=-1), torch.full((2, 3), 4.0, dtype=torch.float64))  # sqrt(16)
    torch.testing.assert_close(e, 4.0 * F.normalize(emb.weight[ids], dim=-1))
    torch.testing.assert_close(emb.unit_weight().norm(dim=-1), torch.ones(50, dtype=torch.float64))
    emb2 = FixNormEmbedding(50, 16, length=1.5, dtype=torch.float64)
    torch.testing.assert_close(emb2(ids).norm(dim=-1), torch.full((2, 3), 1.5, dtype=torch.float64))


def test_fixnorm_init_gradients_and_errors():
    torch.manual_seed(1)
    emb = FixNormEmbedding(30, 8)
    assert float(emb.weight.detach().abs().max()) <= 0.01  # U(-0.01, 0.01), the authors' init with FixNorm
    out = emb(torch.tensor([2, 5]))
    out.sum().backward()
    assert emb.weight.grad[[2, 5]].abs().sum() > 0 and emb.weight.grad[0].abs().sum() == 0
    with pytest.raises(TypeError, match="int64"):
        emb(torch.tensor([0.0, 1.0]))
    with pytest.raises((ValueError, TypeError)):
        FixNormEmbedding(30, 8, length=0.0)
    assert emb.to(torch.bfloat16)(torch.tensor([1])).dtype == torch.bfloat16


# ------------------------------------------------------------------------------------------------- tears_init_


def _check_std(w, target):
    """Sample std within 5 standard errors of ``target`` (SE of a normal sample std: target / sqrt(2n)), mean
    within 5 standard errors of 0."""
    w = w.detach().double().flatten()
    n = w.numel()
    assert abs(float(w.std()) - target) <= 5 * target / math.sqrt(2 * n), (float(w.std()), target)
    assert abs(float(w.mean())) <= 5 * target / math.sqrt(n)


def test_tears_init_gives_the_paper_stds_in_a_block():
    d = 256
    torch.manual_seed(0)
    block = tears_init_(normact.TransformerBlock(d, 4, norm="scalenorm", placement="pre"))
    std = tears_attention_std(d)
    assert std == pytest.approx(math.sqrt(2 / (5 * d)))
    for proj in (block.attn.q_proj, block.attn.k_proj, block.attn.v_proj, block.attn.out_proj):
        _check_std(proj.weight, std)
        assert proj.bias is None or proj.bias.abs().max() == 0
    for fc in (block.mlp.fc1, block.mlp.fc2):  # Xavier normal: sqrt(2 / (d + 4d)) = the attention std at ratio 4
        _check_std(fc.weight, math.sqrt(2.0 / sum(fc.weight.shape)))
        assert fc.bias.abs().max() == 0
    assert math.sqrt(2.0 / (d + 4 * d)) == pytest.approx(std)


def test_tears_init_reaches_every_block_of_a_model_and_torch_attention():
    torch.manual_seed(1)
    model = normact.GPT(dim=128, depth=3, heads=4)
    assert tears_init_(model) is model
    std = tears_attention_std(128)
    _check_std(torch.cat([b.attn.v_proj.weight.flatten() for b in model.blocks]), std)
    mha = tears_init_(torch.nn.MultiheadAttention(128, 4))
    _check_std(mha.in_proj_weight, std)
    _check_std(mha.out_proj.weight, std)
    assert mha.in_proj_bias.abs().max() == 0
    with pytest.raises(ValueError, match="no attention"):
        tears_init_(torch.nn.Linear(3, 3))


def test_tears_init_is_smaller_than_the_blocks_xavier_default():
    d = 256
    torch.manual_seed(2)
    block = normact.TransformerBlock(d, 4)
    default = float(block.attn.q_proj.weight.detach().std())  # Xavier normal: sqrt(2 / (2d)) = sqrt(1/d)
    tears_init_(block)
    assert float(block.attn.q_proj.weight.detach().std()) < 0.7 * default
