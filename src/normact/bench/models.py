"""Benchmark architectures with a pluggable normalization and activation (registry names, or ``none``).

- ``mlp``: Linear -> norm -> act blocks (image tasks, flattened).
- ``cnn``: a small conv net (3x3 conv -> norm -> act, pooling), global average pool, linear head.
- ``resnet``: a CIFAR-style ResNet of depth 6n + 2 (basic blocks, act after the residual sum).
- ``vit``: :class:`normact.ViT`, a small Vision Transformer on normact's transformer blocks (patch embedding,
  any ``placement`` and ``attention``, mean pooling).
- ``gpt``: :class:`normact.GPT`, a small causal transformer on the same blocks for the character LM (any
  ``placement``, ``attention``, ``positions``, ``depth``).

Any drop-in norm (``normact.info(name).properties.drop_in``) works in any layout: :func:`norm_layer` adapts
last-dimension norms (LayerNorm, RMSNorm, DyT...) to channels-first feature maps, channel norms (BatchNorm,
GroupNorm...) to token sequences and features-last token norms (PowerNorm...) to both, by the registry's
``input_layout``; group norms get ``gcd(C, 32)`` groups. Norms with conditioning inputs or structured layouts
(SPADE, TD-LayerNorm, MPBN...) are refused with a clear error.
Gated activations (SwiGLU, GeGLU) halve the width; the MLP, ViT and GPT double the projection feeding
them, the conv nets reject them (their activation follows a residual sum).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from normact.layers.layout import check_drop_in, norm_layer
from normact.layers.layout import is_none as _is_none
from normact.models.transformer import GPT, ViT
from normact.registry import get_info

__all__ = ["build_model", "check_drop_in", "norm_layer"]


def act_layer(name: str | None) -> tuple[nn.Module, bool]:
    """The activation and whether it is gated (halves its input's last dim)."""
    if _is_none(name):
        return nn.Identity(), False
    info = get_info(name)
    if info.kind != "act":
        raise ValueError(f"{name!r} is a {info.kind}, not an activation")
    return info.factory(), info.properties.gated


def _pointwise_act(name: str | None, model: str) -> nn.Module:
    act, gated = act_layer(name)
    if gated:
        raise ValueError(f"the {model} model applies its activation to feature maps; gated {name!r} needs mlp/vit/gpt")
    return act


class MLP(nn.Module):
    def __init__(self, in_shape, num_classes, norm, act, width=128, depth=2) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        d = math.prod(in_shape)
        for _ in range(depth):
            a, gated = act_layer(act)
            layers += [
                nn.Linear(d, width * (2 if gated else 1)),
                norm_layer(norm, width * (2 if gated else 1), "nc"),
                a,
            ]
            d = width
        layers.append(nn.Linear(d, num_classes))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class SmallCNN(nn.Module):
    def __init__(self, in_shape, num_classes, norm, act, width=32, depth=3) -> None:
        super().__init__()
        c, h, _ = in_shape
        layers: list[nn.Module] = []
        for i in range(depth):
            out = width * 2 ** min(i, 2)
            layers += [
                nn.Conv2d(c, out, 3, padding=1, bias=_is_none(norm)),
                norm_layer(norm, out, "nchw"),
                _pointwise_act(act, "cnn"),
            ]
            if h >= 8 and i < depth - 1:
                layers.append(nn.MaxPool2d(2))
                h //= 2
            c = out
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean((2, 3)))


class BasicBlock(nn.Module):
    def __init__(self, c_in, c_out, stride, norm, act) -> None:
        super().__init__()
        bias = _is_none(norm)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=bias)
        self.norm1 = norm_layer(norm, c_out, "nchw")
        self.act1 = _pointwise_act(act, "resnet")
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias)
        self.norm2 = norm_layer(norm, c_out, "nchw")
        self.act2 = _pointwise_act(act, "resnet")
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=bias), norm_layer(norm, c_out, "nchw"))

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm2(self.conv2(self.act1(self.norm1(self.conv1(x)))))
        return self.act2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al., 2016): depth = 6n + 2, widths (w, 2w, 4w)."""

    def __init__(self, in_shape, num_classes, norm, act, depth=20, width=16) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"resnet depth must be 6n + 2 >= 8 (8, 14, 20, 32, 56, ...), got {depth}")
        n = (depth - 2) // 6
        c = in_shape[0]
        self.stem = nn.Sequential(
            nn.Conv2d(c, width, 3, 1, 1, bias=_is_none(norm)),
            norm_layer(norm, width, "nchw"),
            _pointwise_act(act, "resnet"),
        )
        blocks, c_in = [], width
        for stage in range(3):
            c_out = width * 2**stage
            for i in range(n):
                blocks.append(BasicBlock(c_in, c_out, 2 if (i == 0 and stage > 0) else 1, norm, act))
                c_in = c_out
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c_in, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def _vit(in_shape, num_classes, norm, act, **options) -> ViT:
    return ViT(in_shape, num_classes, norm, act, **options)


IMAGE_MODELS = {"mlp": MLP, "cnn": SmallCNN, "resnet": ResNet, "vit": _vit}
TEXT_MODELS = {"gpt": GPT}


def build_model(
    model: str, *, norm: str, act: str, in_shape=None, num_classes=None, vocab_size=None, **options
) -> nn.Module:
    """Build a benchmark model by name; ``options`` are its size arguments (depth, width, dim, ...)."""
    if model in IMAGE_MODELS:
        if in_shape is None or num_classes is None:
            raise ValueError(f"the {model} model is for image tasks")
        return IMAGE_MODELS[model](tuple(in_shape), num_classes, norm, act, **options)
    if model in TEXT_MODELS:
        if vocab_size is None:
            raise ValueError(f"the {model} model is for text tasks")
        return TEXT_MODELS[model](vocab_size, norm, act, **options)
    raise ValueError(f"unknown model {model!r}: one of {', '.join([*IMAGE_MODELS, *TEXT_MODELS])}")
