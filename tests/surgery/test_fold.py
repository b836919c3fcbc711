"""normact.surgery.fold: BatchNorm folding, norm-affine folding, Pre-LN -> Pre-RMSNorm/CRMSNorm, frozen LN scale.

Every check compares the modified model with an unmodified deep copy (or a float64 formula), never with the code
under test. Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import normact
from normact.bench.models import GPT
from normact.surgery.fold import (
    ConversionReport,
    CRMSNormDecompress,
    FakeLayerNorm,
    FoldReport,
    RMSNormWithBias,
    convert_preln_to_rmsnorm,
    fold_batchnorm,
    fold_norm_affine,
    freeze_layernorm_scale,
)
from normact.zoo import ModelUnavailableError


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)  # default layer init and unseeded inputs: deterministic


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                c = m.num_features
                m.running_mean.copy_(torch.randn(c, generator=gen) * 0.2)
                m.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                m.bias.copy_(torch.randn(c, generator=gen) * 0.2)


def _randomize_ln(model: nn.Module, seed: int = 0) -> None:
    """Non-trivial gains and biases in every LayerNorm/RMSNorm, so that the checks are not vacuous."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if "norm" in type(m).__name__.lower() and isinstance(getattr(m, "weight", None), Tensor):
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=gen))
                if isinstance(getattr(m, "bias", None), Tensor):
                    m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))


def _count(model: nn.Module, kind: type | str) -> int:
    if isinstance(kind, str):
        return sum(type(m).__name__ == kind for m in model.modules())
    return sum(isinstance(m, kind) for m in model.modules())


# ---------------------------------------------------------------------------------------------------- models


def _gpt2(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(
        n_embd=64, n_layer=2, n_head=4, vocab_size=128, n_positions=32, bos_token_id=0, eos_token_id=0
    )
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config).eval()
    _randomize_ln(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():  # Conv1D biases start at zero: make the recentering of biases matter
        for m in model.modules():
            if type(m).__name__ == "Conv1D":
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=gen))
    return model


def _llama(seed: int = 0) -> nn.Module:
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=128,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
    )
    torch.manual_seed(seed)
    model = transformers.LlamaForCausalLM(config).eval()
    _randomize_ln(model, seed)
    return model


def _normact_gpt(seed: int = 0, placement: str = "pre") -> nn.Module:
    torch.manual_seed(seed)
    model = GPT(256, "layernorm", "gelu", dim=64, depth=2, heads=4, context=64, placement=placement).eval()
    _randomize_ln(model, seed)
    return model


class _WidthReadingGPT(nn.Module):
    """A pre-LN GPT whose attention reads the head width from its input (``view(b, t, 3, heads, -1)``), as
    nanoGPT-style code does: CRMS must keep the d-th coordinate after the attention norms (decompress)."""

    class Block(nn.Module):
        def __init__(self, d: int, heads: int) -> None:
            super().__init__()
            self.heads = heads
            self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

        def forward(self, x: Tensor) -> Tensor:
            h = self.norm1(x)
            b, t, _ = h.shape
            q, k, v = self.qkv(h).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
            y = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.proj(y.transpose(1, 2).reshape(b, t, -1))
            return x + self.fc2(torch.nn.functional.gelu(self.fc1(self.norm2(x))))

    def __init__(self, vocab: int = 256, d: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Embedding(64, d)
        self.blocks = nn.Sequential(*[self.Block(d, heads) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(d), nn.Linear(d, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.norm(self.blocks(x)))


def test_preln_to_crms_decompress_when_the_code_reads_the_width():
    torch.manual_seed(0)
    model = _WidthReadingGPT().eval()
    _randomize_ln(model, 0)
    original = copy.deepcopy(model)
    report = convert_preln_to_rmsnorm(model, crms=True)
    ids = _ids(256, (3, 40))
    diff = float((_logits(model, ids) - _logits(original, ids)).abs().max())
    assert report.strategy == "crms-fold" and len(report.converted) == 5, report.summary()
    # the norms whose output the attention reshapes by its width keep the d-th coordinate; the others fold it
    assert _count(model, CRMSNormDecompress) == 2 and _count(model, "LayerNorm") == 0
    assert diff <= 1e-4


def _ids(vocab: int, shape: tuple[int, int] = (3, 16), seed: int = 7) -> Tensor:
    return torch.randint(vocab, shape, generator=torch.Generator().manual_seed(seed))


def _logits(model: nn.Module, ids: Tensor) -> Tensor:
    with torch.no_grad():
        out = model(ids)
    return out.logits if hasattr(out, "logits") else out


# ---------------------------------------------------------------------------------------------------- BatchNorm


@pytest.fixture(scope="module")
def mobilenet():
    from normact import zoo

    try:
        zm = zoo.load_model("mobilenet_v2")
        photos = zoo.sample_images()
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    centre = [zoo.imagenet_preprocess(img) for img in photos]  # resize the short side to 256, centre crop 224
    crops = next(iter(zm.batches("images", batch_size=4, num_batches=1, seed=3)))
    x = torch.cat([torch.stack(centre), crops])
    original = zm.model
    folded = copy.deepcopy(original)
    n_bn = _count(original, nn.BatchNorm2d)
    report = fold_batchnorm(folded)
    with torch.no_grad():
        ref, got = original(x), folded(x)
    return {"report": report, "n_bn": n_bn, "ref": ref, "got": got, "folded": folded}


def test_mobilenet_v2_fold_exact(mobilenet):
    report: FoldReport = mobilenet["report"]
    diff = float((mobilenet["got"] - mobilenet["ref"]).abs().max())
    print(f"\nMobileNetV2: {report.num_folded} BN folded, max |logit diff| {diff:.3g}")
    assert mobilenet["n_bn"] == 52
    assert report.num_folded == 52 and not report.skipped, report.summary()
    assert report.summary().startswith("52 folded, 0 not folded")
    assert _count(mobilenet["folded"], nn.BatchNorm2d) == 0
    assert report.method == "fx"
    assert diff <= 1e-4


def test_mobilenet_v2_top5_unchanged(mobilenet):
    ref_top = mobilenet["ref"][:2].topk(5, dim=1).indices
    got_top = mobilenet["got"][:2].topk(5, dim=1).indices
    assert torch.equal(ref_top, got_top)


@pytest.mark.parametrize("family", ["torchvision", "timm"])
def test_resnet18_fold(family):
    if family == "torchvision":
        torchvision = pytest.importorskip("torchvision")
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
    else:
        timm = pytest.importorskip("timm")
        torch.manual_seed(0)
        model = timm.create_model("resnet18", pretrained=False)
    model.eval()
    _randomize_bn(model)
    original = copy.deepcopy(model)
    n_bn = _count(model, nn.BatchNorm2d)
    report = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rel = _rel(model(x), original(x))
    print(f"\n{family} resnet18: {report.num_folded}/{n_bn} BN folded, relative max diff {rel:.3g}")
    assert report.num_folded == n_bn == 20 and not report.skipped, report.summary()
    assert _count(model, nn.BatchNorm2d) == 0
    assert rel <= 1e-4


def test_normact_resnet_fold_via_recorded_forward():
    from normact import zoo

    model = zoo.load_model("resnet", depth=8).model
    for m in model.modules():  # normact's BatchNorm2d: duck-typed
        if hasattr(m, "running_var"):
            with torch.no_grad():
                m.running_var.uniform_(0.5, 2)
                m.running_mean.normal_(0, 0.2)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.2)
    original = copy.deepcopy(model)
    n_bn = _count(model, "BatchNorm2d")
    report = fold_batchnorm(model)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        rel = _rel(model(x), original(x))
    assert report.method == "trace" and report.num_folded == n_bn > 0 and not report.skipped, report.summary()
    assert _count(model, "BatchNorm2d") == 0
    assert rel <= 1e-4


def test_fold_batchnorm_not_inplace_keeps_original():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    _randomize_bn(model)
    report = fold_batchnorm(model, inplace=False)
    assert isinstance(model[1], nn.BatchNorm2d) and isinstance(report.model[1], nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(report.model(x), model(x), atol=1e-5)


class _AfterAdd(nn.Module):
    """BN after an addition, BN after a conv whose output is also read elsewhere, and a foldable pair."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(3, 8, 3, padding=1)
        self.bn_sum = nn.BatchNorm2d(8)
        self.c = nn.Conv2d(8, 8, 1)
        self.bn_shared = nn.BatchNorm2d(8)
        self.d = nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False)  # depthwise, no bias
        self.bn_ok = nn.BatchNorm2d(8)

    def forward(self, x: Tensor) -> Tensor:
        y = self.bn_sum(self.a(x) + self.b(x))
        z = self.c(y)
        y = self.bn_shared(z) + z
        return self.bn_ok(self.d(y))


def test_bn_after_add_listed_not_folded():
    model = _AfterAdd().eval()
    _randomize_bn(model)
    original = copy.deepcopy(model)
    report = fold_batchnorm(model)
    skipped = {s.name: s.reason for s in report.skipped}
    assert set(skipped) == {"bn_sum", "bn_shared"}, report.summary()
    assert "add" in skipped["bn_sum"] and "also read" in skipped["bn_shared"]
    assert [f.name for f in report.folded] == ["bn_ok"] and report.folded[0].into == ("d",)
    assert isinstance(model.bn_sum, nn.BatchNorm2d) and isinstance(model.bn_ok, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.allclose(model(x), original(x), atol=1e-5)


def test_training_mode_raises():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).train()
    with pytest.raises(ValueError, match="eval"):
        fold_batchnorm(model)
    with pytest.raises(ValueError, match="eval"):
        convert_preln_to_rmsnorm(_normact_gpt().train())
    with pytest.raises(ValueError, match="eval"):
        freeze_layernorm_scale(_normact_gpt().train(), [_ids(256)])


class _Untraceable(nn.Module):
    """Data-dependent control flow (fx cannot trace it): conv1/bn1 attribute pair, a Sequential conv-BN pair, and
    a Linear -> BatchNorm1d head."""

    def __init__(self) -> None:
        super().__init__()
        # the head is declared first: the default synthetic input (shaped for the first declared layer) does not fit
        self.fc, self.bn_fc = nn.Linear(6, 5), nn.BatchNorm1d(5)
        self.conv1, self.bn1 = nn.Conv1d(3, 6, 3, bias=False), nn.BatchNorm1d(6)
        self.seq = nn.Sequential(nn.Conv1d(6, 6, 1), nn.BatchNorm1d(6), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        x = self.seq(self.bn1(self.conv1(x)))
        if x.sum() > 0:  # data-dependent branch
            x = x * 2
        return self.bn_fc(self.fc(x.mean(-1)))


def test_untraceable_model_sequential_fallback_and_trace():
    model = _Untraceable().eval()
    _randomize_bn(model)
    original = copy.deepcopy(model)
    x = torch.randn(4, 3, 10)
    report = fold_batchnorm(copy.deepcopy(model))
    assert report.method == "sequential"
    assert [f.name for f in report.folded] == ["seq.1"]
    assert {s.name for s in report.skipped} == {"bn1", "bn_fc"}  # attribute pairs are not proven without a trace
    assert "fx" in report.skipped[0].reason and "default input" in report.skipped[0].reason
    report = fold_batchnorm(model, example_inputs=x)
    assert report.method == "trace" and report.num_folded == 3 and not report.skipped, report.summary()
    with torch.no_grad():
        assert _rel(model(x), original(x)) <= 1e-5


def test_duck_typed_batchnorm_and_non_plain_layers():
    class FakeStatsNorm(nn.Module):
        """Looks like a BatchNorm (running stats, eps, affine) but does not compute one."""

        def __init__(self, c: int) -> None:
            super().__init__()
            self.register_buffer("running_mean", torch.zeros(c))
            self.register_buffer("running_var", torch.ones(c))
            self.eps, self.affine = 1e-5, False

        def forward(self, x: Tensor) -> Tensor:
            return torch.tanh(x)

    class WSConv(nn.Conv2d):
        """Weight-standardized conv: scaling its weight is undone by its forward."""

        def forward(self, x: Tensor) -> Tensor:
            w = self.weight
            w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
            return F.conv2d(x, w, self.bias, self.stride, self.padding)

    model = nn.Sequential(
        nn.Conv2d(3, 8, 3),
        normact.create("batchnorm2d", 8),  # normact's BatchNorm, duck-typed
        nn.Conv2d(8, 8, 1),
        FakeStatsNorm(8),
        WSConv(8, 8, 1),
        nn.BatchNorm2d(8),
    ).eval()
    _randomize_bn(model)
    with torch.no_grad():
        model[1].running_var.uniform_(0.5, 2)
        model[1].weight.uniform_(0.5, 1.5)
    original = copy.deepcopy(model)
    report = fold_batchnorm(model)
    assert [f.name for f in report.folded] == ["1"], report.summary()
    assert {s.name for s in report.skipped} == {"3", "5"}
    x = torch.randn(2, 3, 9, 9)
    with torch.no_grad():
        assert _rel(model(x), original(x)) <= 1e-5


def test_batchnorm_math_against_float64_formula():
    conv = nn.Conv2d(4, 6, 3, groups=2, bias=True).double()
    bn = nn.BatchNorm2d(6).double().eval()
    _randomize_bn(nn.Sequential(bn))
    w0, b0 = conv.weight.detach().clone(), conv.bias.detach().clone()
    model = nn.Sequential(conv, bn).eval()
    fold_batchnorm(model)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    assert torch.allclose(conv.weight, w0 * s.view(-1, 1, 1, 1))
    assert torch.allclose(conv.bias, (b0 - bn.running_mean) * s + bn.bias)


# ---------------------------------------------------------------------------------------------------- Pre-LN -> RMS


@pytest.mark.parametrize("crms", [False, True])
def test_preln_to_rmsnorm_gpt2(crms):
    model = _gpt2()
    original = copy.deepcopy(model)
    n_ln = _count(model, nn.LayerNorm)
    report: ConversionReport = convert_preln_to_rmsnorm(model, crms=crms)
    ids = _ids(128)
    ref, got = _logits(original, ids), _logits(model, ids)
    diff = float((got - ref).abs().max())
    print(f"\nGPT-2 Pre-LN -> {report.strategy}: {len(report.converted)} LN converted, max |logit diff| {diff:.3g}")
    assert n_ln == 5 and len(report.converted) == 5 and not report.skipped, report.summary()
    assert _count(model, nn.LayerNorm) == 0
    assert report.strategy == ("crms-fold" if crms else "rmsnorm")
    new = RMSNormWithBias if not crms else normact.layers.CRMSNorm
    assert _count(model, new) == 5
    assert set(report.recentered) == {
        "transformer.wte",
        "transformer.wpe",
        *(f"transformer.h.{i}.{p}.c_proj" for i in (0, 1) for p in ("attn", "mlp")),
    }
    assert any(u.startswith("lm_head.weight") for u in report.untied)
    assert model.lm_head.weight is not model.transformer.wte.weight
    assert diff <= 1e-4
    if crms:
        assert model.transformer.wte.weight.shape == (128, 63)


def test_preln_residual_stream_is_zero_mean():
    model = _gpt2()
    convert_preln_to_rmsnorm(model)
    means = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, a: means.append(float(a[0].mean(-1).abs().max())))
        for m in model.modules()
        if isinstance(m, RMSNormWithBias)
    ]
    _logits(model, _ids(128))
    for h in hooks:
        h.remove()
    assert len(means) == 5 and max(means) < 1e-5


@pytest.mark.parametrize("crms", [False, True])
def test_preln_to_rmsnorm_normact_gpt(crms):
    model = _normact_gpt()
    original = copy.deepcopy(model)
    if crms:  # the blocks check their input's width: a (d - 1)-wide residual stream is refused, clearly
        with pytest.raises(ValueError, match=r"crms=True is not feasible.*\(B, T, 64\)"):
            convert_preln_to_rmsnorm(model, crms=crms)
        return
    report = convert_preln_to_rmsnorm(model, crms=crms)
    ids = _ids(256, (3, 40))
    diff = float((_logits(model, ids) - _logits(original, ids)).abs().max())
    print(f"\nnormact GPT Pre-LN -> {report.strategy}: max |logit diff| {diff:.3g}")
    assert len(report.converted) == 5 and not report.skipped, report.summary()
    assert _count(model, "LayerNorm") == 0
    writers = {f"blocks.{i}.{m}" for i in (0, 1) for m in ("attn.out_proj", "mlp.fc2")}
    assert set(report.recentered) == {"tok", "pos"} | writers
    assert report.strategy == "rmsnorm"
    assert diff <= 1e-4


def test_preln_conversion_rejects_other_structures():
    with pytest.raises(ValueError, match="Pre-LN"):
        convert_preln_to_rmsnorm(_normact_gpt(placement="post"))
    on_input = nn.Sequential(nn.LayerNorm(4), nn.Linear(4, 2)).eval()  # nothing to recenter before the norm
    with pytest.raises(ValueError, match="Pre-LN"):
        convert_preln_to_rmsnorm(on_input, example_inputs=torch.randn(2, 4))
    with pytest.raises(TypeError):
        convert_preln_to_rmsnorm("gpt2")


def test_preln_conversion_linear_then_layernorm():
    """Any LayerNorm fed only by linear outputs converts exactly (the linear is recentered), fx or not."""
    mlp = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8), nn.Linear(8, 2)).eval()
    _randomize_ln(mlp)
    original = copy.deepcopy(mlp)
    report = convert_preln_to_rmsnorm(mlp, example_inputs=torch.randn(2, 4))
    assert report.method == "fx" and report.recentered == ["0"] and isinstance(mlp[1], RMSNormWithBias)
    x = torch.randn(5, 4)
    with torch.no_grad():
        assert _rel(mlp(x), original(x)) <= 1e-5


def test_preln_conversion_not_inplace():
    model = _normact_gpt()
    report = convert_preln_to_rmsnorm(model, inplace=False)
    assert _count(model, "LayerNorm") == 5 and _count(report.model, "LayerNorm") == 0
    assert report.max_abs_diff is not None and report.max_abs_diff < 1e-4


# ---------------------------------------------------------------------------------------------------- norm affine


def _affine_is_identity(norm: nn.Module) -> bool:
    w, b = norm.weight, getattr(norm, "bias", None)
    return bool((w == 1).all()) and (b is None or bool((b == 0).all()))


def test_fold_norm_affine_gpt2():
    model = _gpt2()
    original = copy.deepcopy(model)
    ids = _ids(128)
    report = fold_norm_affine(model)
    assert [s.name for s in report.skipped] == ["transformer.ln_f"] and "tied" in report.skipped[0].reason
    assert len(report.folded) == 4
    report = fold_norm_affine(model, untie=True)
    assert len(report.folded) == 5 and not report.skipped, report.summary()
    assert dict((f.name, f.into) for f in report.folded)["transformer.ln_f"] == ("lm_head",)
    diff = float((_logits(model, ids) - _logits(original, ids)).abs().max())
    print(f"\nGPT-2 fold_norm_affine: max |logit diff| {diff:.3g}")
    assert all(_affine_is_identity(m) for m in model.modules() if isinstance(m, nn.LayerNorm))
    assert diff <= 1e-5


def test_fold_norm_affine_normact_gpt():
    model = _normact_gpt()
    original = copy.deepcopy(model)
    report = fold_norm_affine(model)
    ids = _ids(256, (3, 40))
    diff = float((_logits(model, ids) - _logits(original, ids)).abs().max())
    print(f"\nnormact GPT fold_norm_affine: max |logit diff| {diff:.3g}")
    assert len(report.folded) == 5 and not report.skipped, report.summary()
    into = dict((f.name, f.into) for f in report.folded)["blocks.0.attn_norm"]
    assert into == tuple(f"blocks.0.attn.{p}_proj" for p in "qkv")
    assert all(_affine_is_identity(m) for m in model.modules() if type(m).__name__ == "LayerNorm")
    assert diff <= 1e-5


def test_fold_norm_affine_llama_rmsnorm():
    model = _llama()
    original = copy.deepcopy(model)
    report = fold_norm_affine(model)
    ids = _ids(128)
    rel = _rel(_logits(model, ids), _logits(original, ids))
    assert len(report.folded) == 5 and not report.skipped, report.summary()
    into = dict((f.name, f.into) for f in report.folded)
    assert set(into["model.layers.0.input_layernorm"]) == {f"model.layers.0.self_attn.{p}_proj" for p in "qkv"}
    assert rel <= 1e-5


def test_fold_norm_affine_lists_non_linear_readers():
    class PostLN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.norm, self.head = nn.Linear(8, 8), nn.LayerNorm(8), nn.Linear(8, 3)

        def forward(self, x: Tensor) -> Tensor:
            y = self.norm(self.fc(x))
            return self.head(y) + y.sum(-1, keepdim=True)

    model = PostLN().eval()
    _randomize_ln(model)
    original = copy.deepcopy(model)
    report = fold_norm_affine(model)
    assert report.method == "fx" and not report.folded and report.skipped[0].name == "norm"
    x = torch.randn(2, 8)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


def test_fold_norm_affine_rejects_other_gain_parametrization():
    class OnePlusRMSNorm(nn.Module):
        """Gemma-style: x / rms * (1 + weight)."""

        def __init__(self, d: int) -> None:
            super().__init__()
            self.weight, self.eps = nn.Parameter(torch.randn(d) * 0.3), 1e-6

        def forward(self, x: Tensor) -> Tensor:
            return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * (1 + self.weight)

    model = nn.Sequential(OnePlusRMSNorm(8), nn.Linear(8, 4)).eval()
    original = copy.deepcopy(model)
    report = fold_norm_affine(model)
    assert not report.folded and "parametrization" in report.skipped[0].reason
    x = torch.randn(3, 8)
    with torch.no_grad():
        assert torch.equal(model(x), original(x))


# ---------------------------------------------------------------------------------------------------- FakeLayerNorm


def test_fake_layernorm_equals_layernorm_at_sigma_bar():
    torch.manual_seed(0)
    d, eps, sigma, sigma_bos = 16, 1e-5, 0.7, 3.0
    weight, bias = torch.randn(d, dtype=torch.float64), torch.randn(d, dtype=torch.float64)
    fake = FakeLayerNorm(d, sigma, sigma_bos, weight, bias)

    def at_scale(x: Tensor, s: float) -> Tensor:  # sqrt(var + eps) == s, any mean
        z = x - x.mean(-1, keepdim=True)
        return z / z.pow(2).mean(-1, keepdim=True).sqrt() * (s**2 - eps) ** 0.5 + 5 * torch.randn((*x.shape[:-1], 1))

    x = torch.randn(2, 6, d, dtype=torch.float64)
    x = torch.cat([at_scale(x[:, :1], sigma_bos), at_scale(x[:, 1:], sigma)], dim=1)
    ref = F.layer_norm(x, (d,), weight, bias, eps)
    assert torch.allclose(fake(x), ref, atol=1e-10)
    # without a BOS scale every position uses sigma
    x2 = at_scale(torch.randn(4, d, dtype=torch.float64), sigma)
    assert torch.allclose(FakeLayerNorm(d, sigma, None, weight, bias)(x2), F.layer_norm(x2, (d,), weight, bias, eps))
    assert "sigma=0.7" in repr(fake) and "sigma_bos=3" in repr(fake)
    with pytest.raises(ValueError):
        FakeLayerNorm(d, 0.0)


@pytest.mark.parametrize("which", ["gpt2", "normact_gpt"])
def test_freeze_layernorm_scale_on_model(which):
    model = _gpt2() if which == "gpt2" else _normact_gpt()
    vocab = 128 if which == "gpt2" else 256
    original = copy.deepcopy(model)
    batches = [_ids(vocab, (4, 24), seed=s) for s in range(3)]
    # the reference scale of one LayerNorm, measured independently on the unmodified model
    ln_name, ln = next((n, m) for n, m in original.named_modules() if type(m).__name__ == "LayerNorm")
    seen: list[Tensor] = []

    def measure(_m: nn.Module, args: tuple[Tensor, ...]) -> None:
        seen.append(torch.sqrt(args[0].double().var(-1, unbiased=False) + ln.eps))

    h = ln.register_forward_pre_hook(measure)
    for b in batches:
        _logits(original, b)
    h.remove()
    report = freeze_layernorm_scale(model, batches)
    assert report.num_folded == 5 and not report.skipped, report.summary()
    assert _count(model, FakeLayerNorm) == 5
    sigma, sigma_bos = report.scales[ln_name]
    expect = torch.stack(seen)
    assert sigma == pytest.approx(float(expect[..., 1:].mean()), rel=1e-9)
    assert sigma_bos == pytest.approx(float(expect[..., 0].mean()), rel=1e-9)
    ids = _ids(vocab, (4, 24), seed=99)
    ref = _logits(original, ids)
    change = float((_logits(model, ids) - ref).abs().max() / ref.abs().max())
    print(f"\n{which}: FakeLayerNorm changes the logits by {change:.3g} (max abs diff / max abs logit)")
    assert 0 < change < 1  # a small but real change; not a tight bound


def test_freeze_layernorm_scale_needs_batches():
    with pytest.raises(ValueError, match="empty"):
        freeze_layernorm_scale(_normact_gpt(), [])
