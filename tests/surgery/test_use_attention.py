"""normact.use_attention on real transformers models: softmax reproduces the model (GPT-2 and Llama configs, the
pretrained SmolLM2-135M and all-MiniLM-L6-v2), other normalizers change it and still run, the weights reach the
probe, and models without transformers' attention interface are refused."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normact
from tests.helpers import zoo_model_or_skip

transformers = pytest.importorskip("transformers")


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
        vocab_size=100,
    )
    return transformers.LlamaForCausalLM(cfg).eval()


def _tokens_and_padding():
    x = torch.randint(100, (2, 10), generator=torch.Generator().manual_seed(1))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, :3] = 0  # left padding
    return x, mask


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_softmax_reproduces_the_model_and_others_change_it(build):
    model = build()
    x, mask = _tokens_and_padding()
    with torch.no_grad():
        ref, ref_masked = model(x).logits, model(x, attention_mask=mask).logits
    report = normact.use_attention(model, "softmax_attention")
    assert report.implementation == "normact_softmax_attention" and len(report.switched) == 2
    assert report.params_after == report.params_before
    with torch.no_grad():
        out, out_masked = model(x).logits, model(x, attention_mask=mask).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    keep = mask.bool()
    torch.testing.assert_close(out_masked[keep], ref_masked[keep], rtol=0, atol=1e-4)
    for name in ("sigmoid_attention", "qk_norm_attention"):
        report = normact.use_attention(model, name)
        with torch.no_grad():
            other = model(x, attention_mask=mask).logits
        assert torch.isfinite(other).all() and (other - ref_masked).abs().max() > 1e-3, name
    assert report.params_after == report.params_before + 2  # one QKNorm gain per attention module
    loss = model(x, labels=x).loss
    loss.backward()
    assert all(m.normact_attention.gain.grad is not None for m in model.modules() if hasattr(m, "normact_attention"))


def test_attention_weights_reach_the_probe():
    model = _llama()
    normact.use_attention(model, "sigmoid_attention")
    x, _ = _tokens_and_padding()
    with torch.no_grad():
        out = model(x, output_attentions=True)
    assert len(out.attentions) == 2 and out.attentions[0].shape == (2, 4, 10, 10)
    assert out.attentions[0][0, 0].triu(1).abs().max() == 0  # causal
    with normact.probe(model, modules="attention") as p, torch.no_grad():
        model(x, output_attentions=True)
    report = p.report()
    entropies = [n for n, r in report.records.items() if r.entropy is not None]
    assert entropies and all(n.endswith("normact_attention") for n in entropies), entropies


def test_refusals_are_clear():
    with pytest.raises(TypeError, match="not an attention normalizer"):
        normact.use_attention(_gpt2(), "layernorm")
    with pytest.raises(ValueError, match="not a transformers model"):
        normact.use_attention(nn.Linear(2, 2), "softmax_attention")

    class OldAttention(nn.Module):  # a custom model whose forward computes its own softmax
        def forward(self, x):
            return torch.softmax(x @ x.transpose(-1, -2), -1) @ x

    model = _gpt2()
    for block in model.transformer.h:
        block.attn = OldAttention()
    with pytest.raises(ValueError, match="AttentionInterface"):
        normact.use_attention(model, "softmax_attention")


@pytest.fixture(scope="module")
def smollm2():
    return zoo_model_or_skip("smollm2")


@pytest.fixture(scope="module")
def minilm():
    return zoo_model_or_skip("minilm")


def test_smollm2_softmax_reproduces_its_logits(smollm2):
    model = copy.deepcopy(smollm2.model).eval()
    batch = next(iter(smollm2.batches("text", batch_size=2, num_batches=1, seed=0)))
    with torch.no_grad():
        ref = model(**batch).logits
    report = normact.use_attention(model, "softmax_attention")
    assert len(report.switched) == model.config.num_hidden_layers
    with torch.no_grad():
        torch.testing.assert_close(model(**batch).logits, ref, rtol=0, atol=1e-4)
        normact.use_attention(model, "sigmoid_attention")
        other = model(**batch).logits
    assert torch.isfinite(other).all() and (other - ref).abs().max() > 1e-2


def test_minilm_encoder_softmax_reproduces_its_hidden_states(minilm):
    """A bidirectional encoder: no causal mask, padding from the tokenizer."""
    model = copy.deepcopy(minilm.model).eval()
    batch = next(iter(minilm.batches("text", batch_size=2, num_batches=1, seed=0)))
    with torch.no_grad():
        ref = model(**batch).last_hidden_state
    normact.use_attention(model, "softmax_attention")
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    keep = batch["attention_mask"].bool() if "attention_mask" in batch else torch.ones(ref.shape[:2], dtype=torch.bool)
    torch.testing.assert_close(out[keep], ref[keep], rtol=0, atol=1e-4)
