"""Small models for the probe tests (importable by spawned processes)."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class ToyAttention(nn.Module):
    """Self-attention that returns ``(output, weights)`` with weights ``(B, H, T, T)``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        w = torch.softmax(q @ k.transpose(-1, -2) / (d // self.heads) ** 0.5, dim=-1)
        y = (w @ v).transpose(1, 2).reshape(b, t, d)
        return self.proj(y), w


class ToyBlock(nn.Module):
    """Pre-LN transformer block: x + attn(norm(x)), x + mlp(norm(x)); takes its input by keyword too."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = ToyAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, hidden_states: Tensor) -> Tensor:
        x = hidden_states + self.attn(self.norm1(hidden_states))[0]
        return x + self.mlp(self.norm2(x))


class ToyNet(nn.Module):
    def __init__(self, dim: int = 16, heads: int = 4, depth: int = 2, vocab_in: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(vocab_in, dim)
        self.blocks = nn.ModuleList(ToyBlock(dim, heads) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.embed(x)
        for block in self.blocks:
            h = block(hidden_states=h)
        return self.head(self.norm(h))


class Plant(nn.Module):
    """Adds ``value`` at one (token, channel) position of every sample: a planted massive activation."""

    def __init__(self, token: int, channel: int, value: float) -> None:
        super().__init__()
        self.token, self.channel, self.value = token, channel, value

    def forward(self, x: Tensor) -> Tensor:
        x = x.clone()
        x[:, self.token, self.channel] += self.value
        return x


def toy_batches(n: int, *, seed: int = 0, dtype=torch.float64, sizes=None) -> list[Tensor]:
    g = torch.Generator().manual_seed(seed)
    sizes = sizes or [3 + (i % 3) for i in range(n)]
    return [torch.randn(s, 5, 8, generator=g, dtype=dtype) * 1.5 + 0.3 for s in sizes[:n]]


def toy_net(seed: int = 0, dtype=torch.float64) -> ToyNet:
    torch.manual_seed(seed)
    return ToyNet().to(dtype)
