"""Benchmark architectures with a pluggable normalization and activation (registry names, or ``none``).

- ``mlp``: Linear -> norm -> act blocks (image tasks, flattened).
- ``cnn``: a small conv net (3x3 conv -> norm -> act, pooling), global average pool, linear head.
- ``resnet``: a CIFAR-style ResNet of depth 6n + 2 (basic blocks, act after the residual sum).
- ``vit``: a tiny Vision Transformer (patch embedding, pre-norm blocks, mean pooling).
- ``gpt``: a small causal transformer for the character LM, with ``placement`` pre or post.

Any drop-in norm (``normact.info(name).properties.drop_in``) works in any layout: :func:`norm_layer` adapts
last-dimension norms (LayerNorm, RMSNorm, DyT...) to channels-first feature maps, channel norms (BatchNorm,
GroupNorm...) to token sequences and features-last token norms (PowerNorm...) to both, by the registry's
``input_layout``; group norms get ``gcd(C, 32)`` groups. Norms with conditioning inputs or structured layouts
(SPADE, TD-LayerNorm, MPBN...) are refused with a clear error.
Gated activations (SwiGLU, GeGLU) halve the width; the MLP, ViT and GPT double the projection feeding
them, the conv nets reject them (their activation follows a residual sum).
"""

from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact.layers.norm.batch import BatchNorm1d
from normact.registry import get_info

NONE = ("none", "identity", "")


def _is_none(name: str | None) -> bool:
    return name is None or name.lower() in NONE


class _ChannelsLast(nn.Module):
    """Apply a last-dimension norm to (N, C, *) input by moving C last and back."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.movedim(1, -1)).movedim(-1, 1)


class _ChannelsFirst(nn.Module):
    """Apply a channel norm to (N, C) or (N, L, C) input as (N, C, L[, 1])."""

    def __init__(self, norm: nn.Module, rank: int) -> None:
        super().__init__()
        self.norm, self.rank = norm, rank

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        y = x.reshape(shape[0], -1, shape[-1]).transpose(1, 2)  # (N, C, L)
        if self.rank == 4:
            y = y.unsqueeze(-1)
        y = self.norm(y)
        return y.reshape(shape[0], shape[-1], -1).transpose(1, 2).reshape(shape)


def norm_layer(name: str | None, channels: int, layout: str, **kwargs) -> nn.Module:
    """A normalization over ``channels`` for inputs laid out as ``nchw``, ``nc`` or ``nlc``."""
    if _is_none(name):
        return nn.Identity()
    info = get_info(name)
    if info.kind != "norm":
        raise ValueError(f"{name!r} is a {info.kind}, not a normalization layer")
    if layout not in ("nchw", "nc", "nlc"):
        raise ValueError(f"layout must be nchw, nc or nlc, got {layout!r}")
    check_drop_in(name)
    if "num_groups" in inspect.signature(info.factory).parameters and "num_groups" not in kwargs:
        kwargs["num_groups"] = math.gcd(channels, 32)  # 32 groups where C allows, else the largest divisor
    module = info.factory(channels, **kwargs)
    if info.input_layout == "tokens":
        return _Tokens(module, layout)
    channel_first = info.input_layout == "channels_first"
    if channel_first and layout == "nchw":
        return module if info.cls is not BatchNorm1d else _ChannelsFirst3d(module)
    if channel_first:
        return _ChannelsFirst(module, rank=3 if info.cls is BatchNorm1d else 4)
    return _ChannelsLast(module) if layout == "nchw" else module


def check_drop_in(name: str) -> None:
    """``ValueError`` unless ``name`` is a normalization the benchmark models can plug in (``drop_in``)."""
    info = get_info(name)
    if info.kind == "norm" and not info.properties.drop_in:
        raise ValueError(
            f"{info.name!r} is not a drop-in normalization (it takes a conditioning input or a structured layout, "
            f"see `normact info {info.name}`); the benchmark models take drop-in norms only"
        )


class _Tokens(nn.Module):
    """Apply a features-last token norm (input (N, L, C)) to (N, C), (N, C, H, W) or (N, L, C) input."""

    def __init__(self, norm: nn.Module, layout: str) -> None:
        super().__init__()
        self.norm, self.layout = norm, layout

    def forward(self, x: Tensor) -> Tensor:
        if self.layout == "nc":
            return self.norm(x.unsqueeze(1)).squeeze(1)
        if self.layout == "nchw":
            tokens = x.flatten(2).transpose(1, 2)  # (N, HW, C)
            return self.norm(tokens).transpose(1, 2).reshape(x.shape)
        return self.norm(x)


class _ChannelsFirst3d(nn.Module):
    """BatchNorm1d on (N, C, H, W): as (N, C, H*W)."""

    def __init__(self, norm: nn.Module) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.flatten(2)).view_as(x)


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


class FeedForward(nn.Module):
    def __init__(self, dim, hidden, act) -> None:
        super().__init__()
        a, gated = act_layer(act)
        self.fc1 = nn.Linear(dim, hidden * (2 if gated else 1))
        self.act = a
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    def __init__(self, dim, heads, causal) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.causal = heads, causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        return self.proj(y.transpose(1, 2).reshape(b, t, d))


class TransformerBlock(nn.Module):
    """x + attn(norm(x)), x + mlp(norm(x)) (pre) or norm(x + attn(x)), norm(x + mlp(x)) (post)."""

    def __init__(self, dim, heads, norm, act, placement, causal) -> None:
        super().__init__()
        if placement not in ("pre", "post"):
            raise ValueError(f"placement must be 'pre' or 'post', got {placement!r}")
        self.placement = placement
        self.norm1 = norm_layer(norm, dim, "nlc")
        self.attn = Attention(dim, heads, causal)
        self.norm2 = norm_layer(norm, dim, "nlc")
        self.mlp = FeedForward(dim, 4 * dim, act)

    def forward(self, x: Tensor) -> Tensor:
        if self.placement == "pre":
            x = x + self.attn(self.norm1(x))
            return x + self.mlp(self.norm2(x))
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.mlp(x))


class TinyViT(nn.Module):
    def __init__(self, in_shape, num_classes, norm, act, dim=64, depth=4, heads=4, patch=None) -> None:
        super().__init__()
        c, h, w = in_shape
        patch = patch or (4 if h >= 16 else 2)
        if h % patch or w % patch:
            raise ValueError(f"image {h}x{w} is not divisible into {patch}x{patch} patches")
        self.embed = nn.Conv2d(c, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (h // patch) * (w // patch), dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, norm, act, "pre", False) for _ in range(depth)])
        self.norm = norm_layer(norm, dim, "nlc")
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(x)).mean(1))


class GPT(nn.Module):
    """A small causal transformer over characters; ``placement`` puts the norms before (pre-LN, with a final
    norm) or after (post-LN) each residual sum."""

    def __init__(self, vocab_size, norm, act, dim=64, depth=2, heads=4, context=64, placement="pre") -> None:
        super().__init__()
        self.context = context
        self.tok = nn.Embedding(vocab_size, dim)
        self.pos = nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, heads, norm, act, placement, True) for _ in range(depth)])
        self.norm = norm_layer(norm, dim, "nlc") if placement == "pre" else nn.Identity()
        self.head = nn.Linear(dim, vocab_size)

    def forward(self, idx: Tensor) -> Tensor:
        t = idx.shape[1]
        if t > self.context:
            raise ValueError(f"sequence length {t} exceeds the context {self.context}")
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        return self.head(self.norm(self.blocks(x)))


IMAGE_MODELS = {"mlp": MLP, "cnn": SmallCNN, "resnet": ResNet, "vit": TinyViT}
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
