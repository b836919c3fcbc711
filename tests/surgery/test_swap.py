"""normact.surgery.swap: replacing layers in pretrained and config-built models (transformers, timm, torchvision),
weight copying checked against the unmodified models, layouts, the report, save/load and ``normact swap``."""

from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import normact
from normact.surgery.swap import LayoutAdapter, NormAct, load_swapped, save_swapped, swap, swap_recipes
from tests.helpers import zoo_model_or_skip

transformers = pytest.importorskip("transformers")


@pytest.fixture(scope="module")
def minilm():
    return zoo_model_or_skip("minilm")


@pytest.fixture(scope="module")
def smollm2():
    return zoo_model_or_skip("smollm2")


def _numel(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _perturb_norms(model: nn.Module, seed: int = 0) -> None:
    """Random affine parameters and running statistics in every norm, so that copying is visible."""
    g = _seeded(seed)
    with torch.no_grad():
        for m in model.modules():
            for name in ("weight", "bias", "running_mean"):
                t = getattr(m, name, None) if _is_norm(m) else None
                if isinstance(t, torch.Tensor):
                    t.add_(0.3 * torch.randn(t.shape, generator=g))
            if _is_norm(m) and isinstance(getattr(m, "running_var", None), torch.Tensor):
                m.running_var.mul_(torch.exp(0.3 * torch.randn(m.running_var.shape, generator=g)))


def _is_norm(m: nn.Module) -> bool:
    return type(m).__name__.endswith(("Norm", "Norm2d", "Norm1d")) or isinstance(
        m, (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
    )


# ---------------------------------------------------------------------------------------------------- pretrained


def test_minilm_layernorm_to_dyt_copies_weights_and_runs(minilm):
    model = copy.deepcopy(minilm.model)
    originals = {
        n: (m.weight.detach().clone(), m.bias.detach().clone())
        for n, m in model.named_modules()
        if isinstance(m, nn.LayerNorm)
    }
    assert len(originals) == 13
    before = _numel(model)
    report = swap(model, "layernorm", "dyt")
    assert len(report.replaced) == 13 and len(report.skipped) == 0
    assert report.params_before == before and report.params_after == _numel(model) == before + 13  # one alpha each
    assert {r.name for r in report.replaced} == set(originals)
    for r in report.replaced:
        new = model.get_submodule(r.name)
        assert isinstance(new, normact.DyT)
        w, b = originals[r.name]
        assert torch.equal(new.weight, w) and torch.equal(new.bias, b)
        assert new.alpha.item() == 0.5  # DyT's alpha keeps its initial value
        assert r.copied == ["weight", "bias"] and r.left_at_init == ["alpha"]
    assert not any(isinstance(m, nn.LayerNorm) for m in model.modules())
    batch = next(iter(minilm.batches("text", batch_size=2, num_batches=1, seq_len=16)))
    with torch.no_grad():
        ref = minilm.model(**batch).last_hidden_state
        out = model(**batch).last_hidden_state
    assert out.shape == ref.shape and torch.isfinite(out).all()
    assert not torch.allclose(out, ref)  # DyT is not LayerNorm


def test_minilm_same_semantics_swap_is_exact(minilm):
    """LayerNorm -> normact layernorm with copied weights and the derived eps (1e-12) reproduces the unmodified
    model; GELUActivation -> normact gelu then too, up to float32 rounding (normact's GELU is the erfc form,
    accurate in the negative tail where torch's 1 + erf cancels: a few ulps apart on moderate inputs)."""
    model = copy.deepcopy(minilm.model)
    ln = swap(model, "layernorm", "layernorm")
    assert len(ln.replaced) == 13 and all(model.get_submodule(r.name).eps == 1e-12 for r in ln.replaced)
    batch = next(iter(minilm.batches("text", batch_size=2, num_batches=1, seq_len=16)))
    with torch.no_grad():
        ref = minilm.model(**batch).last_hidden_state
        torch.testing.assert_close(model(**batch).last_hidden_state, ref, rtol=0, atol=1e-6)
    act = swap(model, "gelu", "gelu")
    assert len(act.replaced) == 6 and act.replaced[0].old_class == "transformers.GELUActivation"
    with torch.no_grad():
        out = model(**batch).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_minilm_name_patterns(minilm):
    """fnmatch patterns over qualified names; ``*`` also matches dots (as in normact.probe)."""
    report = swap(copy.deepcopy(minilm.model), "encoder.layer.[0-9].output.LayerNorm", "dyt")
    assert [r.name for r in report.replaced] == [f"encoder.layer.{i}.output.LayerNorm" for i in range(6)]
    assert len(swap(copy.deepcopy(minilm.model), "encoder.layer.*.output.LayerNorm", "dyt").replaced) == 12


def test_smollm2_rmsnorm_and_silu_swaps_are_exact(smollm2):
    model = smollm2.model
    ids = torch.tensor([[1, 520, 3011, 314, 253, 1345, 30, 657, 28, 9]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    report = swap(model, "rmsnorm", "rmsnorm")
    assert len(report.replaced) == 61 and not report.skipped  # 30 layers x 2 + the final norm
    assert {r.old_class for r in report.replaced} == {"transformers.LlamaRMSNorm"}
    assert all(r.copied == ["weight"] for r in report.replaced)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)
    report = swap(model, "silu", "silu")
    assert len(report.replaced) == 30 and report.replaced[0].old_class == "transformers.SiLUActivation"
    assert isinstance(model.model.layers[0].mlp.act_fn, normact.SiLU)
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-4)


def test_smollm2_norm_gains_fold_into_the_following_linears(smollm2):
    """fold_norm_affine on the pretrained SmolLM2 (after or before the swaps above: their layers are equivalent):
    every RMSNorm whose output only feeds linears is folded, the final norm (read by the tied LM head) is listed,
    and the logits do not change."""
    from normact.surgery import fold_norm_affine

    model = copy.deepcopy(smollm2.model)
    ids = torch.tensor([[1, 520, 3011, 314, 253, 1345, 30, 657, 28, 9]])
    with torch.no_grad():
        ref = model(input_ids=ids).logits
    report = fold_norm_affine(model)
    assert len(report.folded) == 60 and len(report.skipped) == 1
    assert report.skipped[0].name == "model.norm"
    with torch.no_grad():
        out = model(input_ids=ids).logits
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------------------------------------- transformers


def _gpt2():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(
        n_layer=2, n_embd=32, n_head=4, vocab_size=100, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama(tie: bool = False):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        num_hidden_layers=2,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=100,
        max_position_embeddings=64,
        tie_word_embeddings=tie,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = transformers.LlamaForCausalLM(cfg).eval()
    _perturb_norms(model, seed=1)
    return model


IDS = torch.randint(100, (2, 10), generator=torch.Generator().manual_seed(0))


def test_gpt2_layernorm_to_dyt_and_gelu_new_swap():
    model = _gpt2()
    with torch.no_grad():
        ref = model(IDS).logits
    act = swap(model, "gelu", "gelu_tanh")  # gelu_new (NewGELUActivation) is the tanh form
    assert [r.old_class for r in act.replaced] == ["transformers.NewGELUActivation"] * 2
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref, rtol=0, atol=1e-5)
    report = swap(model, "layernorm", "dyt", alpha_init=0.8)
    assert len(report.replaced) == 5 and not report.skipped  # ln_1, ln_2 per layer and ln_f
    assert all(model.get_submodule(r.name).alpha.item() == pytest.approx(0.8) for r in report.replaced)
    with torch.no_grad():
        out = model(IDS).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_gpt2_gelu_to_exact_gelu_changes_outputs_by_the_tanh_error():
    """Sanity check that the activation swap is live: the erf GELU differs from gelu_new by < 1e-3 per unit."""
    model = _gpt2()
    with torch.no_grad():
        ref = model(IDS).logits
    swap(model, "gelu_new", "gelu")
    with torch.no_grad():
        out = model(IDS).logits
    assert 0 < (out - ref).abs().max() < 1e-2


def test_llama_rmsnorm_to_dyt_runs_and_silu_is_exact():
    model = _llama()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if type(m).__name__ == "LlamaRMSNorm"}
    with torch.no_grad():
        ref = model(IDS).logits
    act = swap(model, "silu", "silu")
    assert len(act.replaced) == 2
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref, rtol=0, atol=1e-6)
    report = swap(model, "rmsnorm", "dyt")
    assert len(report.replaced) == 5 == len(weights)
    for r in report.replaced:
        new = model.get_submodule(r.name)
        assert isinstance(new, normact.DyT) and new.bias is None  # the RMSNorm had no bias
        assert torch.equal(new.weight, weights[r.name])
    with torch.no_grad():
        out = model(IDS).logits
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_t5_layernorm_is_an_rmsnorm_and_swaps_exactly():
    torch.manual_seed(0)
    cfg = transformers.T5Config(
        num_layers=1, d_model=16, d_ff=32, num_heads=2, d_kv=8, vocab_size=50, decoder_start_token_id=0
    )
    model = transformers.T5Model(cfg).eval()
    _perturb_norms(model)
    ids = IDS % 50
    with torch.no_grad():
        ref = model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    with pytest.raises(ValueError, match="no module matched 'layernorm'"):
        swap(model, "layernorm", "dyt")  # T5LayerNorm subtracts no mean
    report = swap(model, "rmsnorm", "rmsnorm")
    assert len(report.replaced) == 7 and {r.old_class for r in report.replaced} == {"transformers.T5LayerNorm"}
    with torch.no_grad():
        out = model(input_ids=ids, decoder_input_ids=ids).last_hidden_state
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_gemma_rmsnorm_gain_offset_is_converted():
    """Gemma scales by (1 + weight): the copied RMSNorm weight is 1 + weight, the outputs are unchanged."""
    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(
        num_hidden_layers=1,
        hidden_size=32,
        intermediate_size=64,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=8,
        vocab_size=100,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    model = transformers.GemmaForCausalLM(cfg).eval()
    _perturb_norms(model)
    old = model.model.norm.weight.detach().clone()
    with torch.no_grad():
        ref = model(IDS).logits
    report = swap(model, "rmsnorm", "rmsnorm")
    assert any("1 + weight" in n for n in report.replaced[0].notes)
    torch.testing.assert_close(model.model.norm.weight, 1 + old, rtol=0, atol=1e-7)
    with torch.no_grad():
        torch.testing.assert_close(model(IDS).logits, ref, rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- vision


def test_timm_resnet18_batchnorm_to_groupnorm():
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 3, 64, 64, generator=_seeded())
    model = timm.create_model("resnet18", pretrained=False).eval()
    report = swap(model, "batchnorm", "groupnorm")
    assert len(report.replaced) == 20 and not report.skipped
    for r in report.replaced:
        gn = model.get_submodule(r.name)
        assert isinstance(gn, normact.GroupNorm) and gn.num_groups == math.gcd(gn.num_channels, 32)
        assert r.dropped == ["running_mean", "running_var", "num_batches_tracked"]
    with torch.no_grad():
        assert model(x).shape == (2, 1000)
    model = timm.create_model("resnet18", pretrained=False).eval()
    swap(model, "batchnorm", "groupnorm", num_groups=8)
    assert {m.num_groups for m in model.modules() if isinstance(m, normact.GroupNorm)} == {8}
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_timm_vit_layernorm_to_dyt():
    timm = pytest.importorskip("timm")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False).eval()
    x = torch.randn(1, 3, 224, 224, generator=_seeded())
    with torch.no_grad():
        ref = model(x)
    report = swap(model, "layernorm", "dyt")
    assert len(report.replaced) == 25 and report.replaced[0].old_class == "timm.LayerNorm"  # 12 x 2 + final
    with torch.no_grad():
        out = model(x)
    assert out.shape == ref.shape and torch.isfinite(out).all()


def test_timm_convnext_layernorm2d_layouts_are_exact():
    """timm LayerNorm2d is channels-first: to normact's layernorm it is wrapped (channels moved last), to
    layernorm2d it maps directly; both reproduce the model. DyT gets channels_last=False."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    base = timm.create_model("convnext_atto", pretrained=False).eval()
    _perturb_norms(base)
    x = torch.randn(2, 3, 64, 64, generator=_seeded())
    with torch.no_grad():
        ref = base(x)
    for target, wrapped in (("layernorm", True), ("layernorm2d", False)):
        model = copy.deepcopy(base)
        report = swap(model, "layernorm", target)
        cf = [r for r in report.replaced if r.old_class == "timm.LayerNorm2d"]
        assert cf and all(isinstance(model.get_submodule(r.name), LayoutAdapter) == wrapped for r in cf)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    model = copy.deepcopy(base)
    swap(model, "layernorm2d", "dyt")
    dyts = [m for m in model.modules() if isinstance(m, normact.DyT)]
    assert dyts and not any(d.channels_last for d in dyts)
    with torch.no_grad():
        assert torch.isfinite(model(x)).all()


def test_timm_batchnorm_act_keeps_its_activation():
    pytest.importorskip("timm")
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    bn = BatchNormAct2d(8, act_layer=nn.ReLU).eval()
    _perturb_norms(bn)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), bn).eval()
    x = torch.randn(2, 3, 8, 8, generator=_seeded())
    with torch.no_grad():
        ref = model(x)
    report = swap(model, "batchnorm", "batchnorm")
    assert isinstance(model[1], NormAct) and isinstance(model[1].act, nn.ReLU)
    assert report.replaced[0].copied == ["weight", "bias", "running_mean", "running_var", "num_batches_tracked"]
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-6)


def test_torchvision_resnet18_batchnorm_swap_is_exact_in_eval():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    _perturb_norms(model)
    base = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64, generator=_seeded())
    with torch.no_grad():
        ref = base(x)
    report = swap(model, "batchnorm", "batchnorm")
    assert len(report.replaced) == 20
    for r in report.replaced:
        old, new = base.get_submodule(r.name), model.get_submodule(r.name)
        assert isinstance(new, normact.BatchNorm2d) and not new.training
        for name in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(getattr(new, name), getattr(old, name))
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)
    # the shared ReLU of each block is one module under one name: replaced once
    act = swap(model, "relu", "relu")
    assert len(act.replaced) == 9 and all(isinstance(m, normact.ReLU) for n, m in model.named_modules() if "relu" in n)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref, rtol=0, atol=1e-5)


def test_channels_first_to_token_norms_and_back():
    """BatchNorm2d (N, C, H, W) -> layernorm (last dims), -> powernorm (tokens), and LayerNorm (N, L, C) ->
    batchnorm2d: wrapped, checked against the formula on the moved axes."""
    torch.manual_seed(0)
    x = torch.randn(2, 4, 3, 5, generator=_seeded(), dtype=torch.float64) + 0.5
    model = nn.Sequential(nn.BatchNorm2d(4)).double()
    swap(model, "batchnorm", "layernorm")
    assert isinstance(model[0], LayoutAdapter)
    mean, var = x.mean(1, keepdim=True), x.var(1, keepdim=True, unbiased=False)
    torch.testing.assert_close(model(x), (x - mean) / torch.sqrt(var + 1e-5))
    report = swap(model, "layernorm", "powernorm")  # replaces the adapter: no nesting
    assert isinstance(model[0], LayoutAdapter) and isinstance(model[0].norm, normact.PowerNorm)
    assert "replaced the LayoutAdapter" in report.replaced[0].notes[0]
    model.train()
    assert model(x).shape == x.shape
    tokens = torch.randn(2, 7, 4, generator=_seeded(1), dtype=torch.float64)
    seq = nn.Sequential(nn.LayerNorm(4)).double().train()
    swap(seq, "layernorm", "batchnorm2d")
    m, v = tokens.mean((0, 1)), tokens.var((0, 1), unbiased=False)
    torch.testing.assert_close(seq(tokens), (tokens - m) / torch.sqrt(v + 1e-5))


# ---------------------------------------------------------------------------------------------------- functions


def test_function_attributes_are_swapped_and_functional_calls_reported():
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(4, 4)
            self.act = F.gelu

        def forward(self, x):
            return self.act(self.lin(x))

    class Functional(nn.Module):
        def forward(self, x):
            return F.gelu(x)

    model = nn.Sequential(Block(), Functional())
    x = torch.randn(3, 4, generator=_seeded())
    report = swap(model, "gelu", "silu")
    assert [r.name for r in report.replaced] == ["0.act"] and report.replaced[0].old_class.startswith("function")
    assert isinstance(model[0].act, normact.SiLU)
    assert [(s.name, s.reason) for s in report.skipped] == [("1", "not swappable: functional call in forward (F.gelu)")]
    with torch.no_grad():
        torch.testing.assert_close(model(x), F.gelu(F.silu(model[0].lin(x))))
    with pytest.raises(ValueError, match=r"no module matched 'gelu'.*functional call"):
        swap(nn.Sequential(Functional()), "gelu", "silu")


def test_transformer_encoder_layer_function_activation():
    """torch's TransformerEncoderLayer stores F.relu as a function; after the swap it uses the new module
    (also on the eval fast path), as a layer built with activation='gelu' does."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    reference = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True, activation="gelu").eval()
    reference.load_state_dict(layer.state_dict())
    report = swap(layer, "relu", "gelu")
    assert report.replaced[0].name == "activation" and isinstance(layer.activation, normact.GELU)
    x = torch.randn(2, 5, 16, generator=_seeded())
    with torch.no_grad():
        torch.testing.assert_close(layer(x), reference(x), rtol=0, atol=1e-5)


# ---------------------------------------------------------------------------------------------------- the report


class OddLayerNorm(nn.Module):
    """A leaf named like a LayerNorm with nothing to read the feature count from."""

    def forward(self, x):
        return F.layer_norm(x, x.shape[-1:])


class GatedRMSNorm(nn.Module):
    def __init__(self, d: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x, gate=None):
        y = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * self.weight
        return y if gate is None else y * F.silu(gate)


def test_report_counts_skips_and_serializes():
    model = nn.Sequential(nn.Linear(6, 6), nn.LayerNorm(6), OddLayerNorm(), nn.Linear(6, 6), nn.LayerNorm(6))
    before = _numel(model)
    report = swap(model, "layernorm", "rmsnorm")
    assert report.params_before == before == 6 * 6 * 2 + 6 * 2 + 2 * 12
    assert report.params_after == _numel(model) == before - 12  # RMSNorm drops the biases
    assert [r.name for r in report.replaced] == ["1", "4"] and report.replaced[0].dropped == ["bias"]
    assert [s.name for s in report.skipped] == ["2"] and "feature count" in report.skipped[0].reason
    d = json.loads(json.dumps(report.to_dict()))
    assert d["replaced"][0]["copied"] == ["weight"] and d["skipped"][0]["name"] == "2"
    assert d["recipe"] == {"source": "layernorm", "target": "rmsnorm", "kwargs": {}, "copy_weights": True}
    text = str(report)
    assert "2 replaced, 1 skipped" in text and "feature count" in text
    from rich.console import Console

    console = Console(width=200, record=True)
    console.print(report)
    assert "normact.RMSNorm" in console.export_text()


def test_gated_norms_are_skipped_with_a_reason():
    model = nn.Sequential(GatedRMSNorm(4), nn.Linear(4, 4))
    report = swap(model, "rmsnorm", "rmsnorm", allow_empty=True)
    assert not report.replaced and "more than one input" in report.skipped[0].reason
    assert isinstance(model[0], GatedRMSNorm)
    # as a class source it is replaced on request
    report = swap(model, GatedRMSNorm, "rmsnorm")
    assert isinstance(model[0], normact.RMSNorm) and report.replaced[0].copied == ["weight"]


def test_sources_patterns_predicates_and_errors():
    def make():
        return nn.Sequential(nn.LayerNorm(4), nn.GELU(), nn.Sequential(nn.LayerNorm(4), nn.ReLU()))

    model = make()
    assert [r.name for r in swap(model, "2.*", "dyt").replaced] == ["2.0"]  # a ReLU has no feature count
    model = make()
    report = swap(model, "2.*", "dyt", allow_empty=True)
    assert [s.name for s in report.skipped] == ["2.1"]
    assert [r.name for r in swap(make(), "name:0", "dyt").replaced] == ["0"]
    assert [r.name for r in swap(make(), lambda n, m: isinstance(m, nn.GELU), "silu").replaced] == ["1"]
    assert [r.name for r in swap(make(), nn.LayerNorm, normact.RMSNorm).replaced] == ["0", "2.0"]
    model = make()
    swap(model, "layernorm", lambda old, **kw: nn.Identity())
    assert isinstance(model[0], nn.Identity) and swap_recipes(model) == [
        {"unserializable": "layernorm -> factory <lambda>"}
    ]
    with pytest.raises(ValueError, match="no module matched 'batchnorm'"):
        swap(make(), "batchnorm", "groupnorm")
    assert swap(make(), "batchnorm", "groupnorm", allow_empty=True).replaced == []
    with pytest.raises(ValueError, match="did you mean 'layernorm'"):
        swap(make(), "layernrom", "dyt")
    with pytest.raises(ValueError, match="did you mean 'dyt'"):
        swap(make(), "layernorm", "dyy")
    with pytest.raises(TypeError, match="does not take 'alpha'"):
        swap(make(), "layernorm", "dyt", alpha=0.3)
    with pytest.raises(ValueError, match="not a drop-in"):
        swap(make(), "layernorm", "spade")
    with pytest.raises(TypeError, match="source must be"):
        swap(make(), 3, "dyt")
    model = make()  # a target that cannot be built (3 groups of 4 channels) is skipped with the reason
    report = swap(model, "layernorm", "groupnorm", num_groups=3)
    assert not report.replaced and all("divisible" in s.reason for s in report.skipped)
    assert isinstance(model[0], nn.LayerNorm)


# ---------------------------------------------------------------------------------------------------- save / load, CLI


def test_save_and_load_swapped_llama_with_tied_embeddings(tmp_path):
    model = _llama(tie=True)
    report = swap(model, "rmsnorm", "dyt", alpha_init=0.7)
    swap(model, "silu", "gelu")
    with torch.no_grad():
        ref = model(IDS).logits
    save_swapped(model, tmp_path / "out", report=report)
    loaded = load_swapped(tmp_path / "out")
    assert isinstance(loaded.model.norm, normact.DyT) and isinstance(loaded.model.layers[0].mlp.act_fn, normact.GELU)
    assert loaded.lm_head.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        torch.testing.assert_close(loaded(IDS).logits, ref, rtol=0, atol=0)
    assert json.loads((tmp_path / "out" / "swap_report.json").read_text())["recipe"]["kwargs"] == {"alpha_init": 0.7}
    with pytest.raises(FileExistsError):
        save_swapped(model, tmp_path / "out")
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left


@pytest.fixture
def bert_dir(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.BertConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=100
    )
    model = transformers.BertModel(cfg).eval()
    _perturb_norms(model)
    path = tmp_path / "bert"
    model.save_pretrained(path, safe_serialization=True)
    return path


@pytest.fixture
def cli(monkeypatch):
    typer = pytest.importorskip("typer")
    from rich.console import Console
    from typer.testing import CliRunner

    from normact._cli_swap import add_swap_command

    monkeypatch.setenv("COLUMNS", "200")
    app = typer.Typer()
    add_swap_command(app, Console(), Console(stderr=True))

    @app.command("noop")
    def noop() -> None:  # a second command, so that "swap" is a subcommand as in the normact app
        """Nothing."""

    runner = CliRunner()
    return lambda *args: runner.invoke(app, list(args))


def test_cli_swap_writes_the_model_and_reloads(cli, bert_dir, tmp_path):
    out = tmp_path / "swapped"
    result = cli(
        "swap", str(bert_dir), "--from", "layernorm", "--to", "dyt", "--out", str(out), "--kw", "alpha_init=0.8"
    )
    assert result.exit_code == 0, result.output
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    doc = json.loads((out / "swap_report.json").read_text())
    assert len(doc["replaced"]) == 5 and doc["skipped"] == []  # embeddings + 2 per layer
    assert json.loads((out / "normact_swap.json").read_text())["swaps"][0]["kwargs"] == {"alpha_init": 0.8}
    assert "normact.DyT" in result.output
    # reference: the original folder, swapped here
    reference = transformers.BertModel.from_pretrained(bert_dir).eval()
    swap(reference, "layernorm", "dyt", alpha_init=0.8)
    loaded = load_swapped(out)
    ids = IDS % 100
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).last_hidden_state, reference(ids).last_hidden_state, rtol=0, atol=0)
    assert loaded.embeddings.LayerNorm.alpha.item() == pytest.approx(0.8)
    # errors: exit 2 with a message
    result = cli("swap", str(bert_dir), "--from", "layernorm", "--to", "dyy", "--out", str(tmp_path / "x"))
    assert result.exit_code == 2 and "unknown layer 'dyy'" in result.output and "did you mean 'dyt'" in result.output
    result = cli("swap", str(bert_dir), "--from", "layernorm", "--to", "dyt", "--out", str(out))
    assert result.exit_code == 2 and "not empty" in result.output
    result = cli("swap", str(bert_dir), "--from", "batchnorm", "--to", "groupnorm", "--out", str(tmp_path / "y"))
    assert result.exit_code == 2 and "no module matched" in result.output
    result = cli("swap", str(bert_dir), "--from", "layernorm", "--to", "dyt", "--out", str(tmp_path / "z"), "--kw", "x")
    assert result.exit_code == 2 and "key=value" in result.output
    result = cli(
        "swap",
        str(bert_dir),
        "--from",
        "layernorm",
        "--to",
        "groupnorm",
        "--out",
        str(tmp_path / "w"),
        "--kw",
        "num_groups=3",
    )  # 32 channels: every build fails
    assert result.exit_code == 2 and "nothing was replaced" in result.output and "divisible" in result.output
    assert not any((tmp_path / d).exists() for d in "xyzw")
