"""Each surgery function on each kind of model of issue 7: the pretrained MobileNetV2 and all-MiniLM-L6-v2,
GPT-2 and Llama built from configs, timm's ResNet and ViT, a torchvision ResNet. Exactness is tested in
test_fold.py, test_swap.py and test_adapt.py; here: each function either does its job on the model (checked
against the unmodified copy) or refuses clearly."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import normact
from normact.surgery import (
    calibrate_batchnorm,
    fold_batchnorm,
    fold_norm_affine,
    freeze_batchnorm,
    recalibrate_batchnorm,
    train_norm_affine_only,
    uncalibrate_batchnorm,
)
from tests.helpers import zoo_model_or_skip


def _bn_channels(model: nn.Module) -> int:
    return sum(m.num_features for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm))


def _randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)
    return model.eval()


def _cnns():
    """(name, model, input) for the BatchNorm CNNs."""
    out = []
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    out.append(("torchvision-resnet18", _randomize_bn(tv.models.resnet18(num_classes=10)), torch.randn(4, 3, 64, 64)))
    timm = pytest.importorskip("timm")
    out.append(
        ("timm-resnet18", _randomize_bn(timm.create_model("resnet18", num_classes=10)), torch.randn(4, 3, 64, 64))
    )
    return out


@pytest.fixture(scope="module")
def mobilenet():
    zm = zoo_model_or_skip("mobilenet_v2")
    x = torch.cat(list(zm.batches("images", batch_size=4, num_batches=2, seed=1)))
    return zm.model, x


def test_batchnorm_tools_on_cnns(mobilenet):
    for name, model, x in [("mobilenet_v2", *mobilenet), *_cnns()]:
        n_bn = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
        with torch.no_grad():
            ref = model(x)
        # fold: exact, every BatchNorm gone
        folded = fold_batchnorm(copy.deepcopy(model), inplace=True).model
        with torch.no_grad():
            torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4, msg=name)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules()), name
        # AdaBN on one batch: each running mean / variance becomes its input's batch mean / unbiased variance in a
        # training-mode forward of that batch (recorded with hooks on an unmodified copy)
        adapted = copy.deepcopy(model)
        assert recalibrate_batchnorm(adapted, [x]) == n_bn, name
        seen, reference = {}, copy.deepcopy(model).train()

        def record(mod, args, seen=seen):
            seen[mod] = (args[0].mean((0, 2, 3)), args[0].var((0, 2, 3)))

        hooks = [bn.register_forward_pre_hook(record) for bn in reference.modules() if isinstance(bn, nn.BatchNorm2d)]
        names = {bn: key for key, bn in reference.named_modules()}
        with torch.no_grad():
            reference(x)
        for h in hooks:
            h.remove()
        stats = {names[bn]: v for bn, v in seen.items()}
        for key, bn in adapted.named_modules():
            if isinstance(bn, nn.BatchNorm2d):
                torch.testing.assert_close(bn.running_mean, stats[key][0], rtol=1e-4, atol=1e-5, msg=key)
                torch.testing.assert_close(bn.running_var, stats[key][1], rtol=1e-4, atol=1e-5, msg=key)
        # alpha-BN: alpha = 1 is the eval model, and it can be undone
        calibrated = copy.deepcopy(model)
        assert calibrate_batchnorm(calibrated, alpha=1.0) == n_bn
        with torch.no_grad():
            torch.testing.assert_close(calibrated(x), ref, rtol=1e-5, atol=1e-5, msg=name)
        assert uncalibrate_batchnorm(calibrated) == n_bn
        # frozen BatchNorm: training mode no longer moves the statistics or the output
        frozen = copy.deepcopy(model)
        assert freeze_batchnorm(frozen) == n_bn
        frozen.train()
        for m in frozen.modules():
            if isinstance(m, nn.Dropout):  # MobileNetV2's classifier: freezing BatchNorm leaves dropout alone
                m.eval()
        with torch.no_grad():
            torch.testing.assert_close(frozen(x), ref, rtol=1e-5, atol=1e-5, msg=name)
        # BN-only training: 2 parameters per channel
        assert train_norm_affine_only(copy.deepcopy(model)) == 2 * _bn_channels(model), name


def _gpt2():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=64, n_positions=32)
    return transformers.GPT2LMHeadModel(cfg).eval()


def _llama():
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
        vocab_size=64, max_position_embeddings=32,
    )  # fmt: skip
    return transformers.LlamaForCausalLM(cfg).eval()


def test_transformer_tools_on_gpt2_llama_and_minilm():
    ids = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    for name, model in (("gpt2", _gpt2()), ("llama", _llama())):
        with torch.no_grad():
            ref = model(ids).logits
        # BatchNorm tools refuse a model without BatchNorm, clearly
        with pytest.raises(ValueError, match=r"(?i)batch.?norm"):
            recalibrate_batchnorm(copy.deepcopy(model), [ids])
        # norm gains into the following linears: same logits
        folded = fold_norm_affine(copy.deepcopy(model), untie=True).model
        with torch.no_grad():
            torch.testing.assert_close(folded(ids).logits, ref, rtol=1e-4, atol=1e-4, msg=name)
        # norm-affine-only training: only the norms' weights (and biases) stay trainable
        m = copy.deepcopy(model)
        norms = [mod for mod in m.modules() if type(mod).__name__.endswith(("LayerNorm", "RMSNorm"))]
        expected = sum(p.numel() for mod in norms for p in mod.parameters())
        assert train_norm_affine_only(m) == expected > 0, name
    minilm = zoo_model_or_skip("minilm").model
    m = copy.deepcopy(minilm)
    assert train_norm_affine_only(m) == 13 * 2 * 384
    report = fold_norm_affine(copy.deepcopy(minilm))  # post-LN: nothing foldable, everything listed
    assert len(report.folded) == 0 and len(report.skipped) == 13


def test_vit_tools():
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=10, img_size=32, patch_size=8).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ref = vit(x)
    folded = fold_norm_affine(copy.deepcopy(vit)).model
    with torch.no_grad():
        torch.testing.assert_close(folded(x), ref, rtol=1e-4, atol=1e-4)
    swapped = copy.deepcopy(vit)
    report = normact.swap(swapped, "layernorm", "dyt")
    assert len(report.replaced) == 2 * 12 + 1 and not report.skipped
    assert train_norm_affine_only(copy.deepcopy(vit)) == (2 * 12 + 1) * 2 * 192
