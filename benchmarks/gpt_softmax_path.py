"""normact.GPT's softmax path against the same model written by hand with SDPA, side by side in one process.

The hand-written model is the usual nanoGPT-style code: one fused qkv ``nn.Linear`` (the key bias held at 0, as
normact's keys have none), ``F.layer_norm``, ``F.scaled_dot_product_attention(is_causal=True)``, GELU. It gets
normact's weights, the outputs are checked equal, then forward and forward+backward are timed interleaved (median
of ``--repeats``). With ReLU (the same kernel on both sides) the ratio normact / hand is the price of normact's
pieces (input checks, the registry's attention module, separate q/k/v projections) on top of the same kernels;
with GELU it adds normact's GELU, computed as x erfc(-x/sqrt 2)/2 for its accuracy in the negative tail where
``F.gelu``'s 1 + erf cancels (three kernels against one).

    python benchmarks/gpt_softmax_path.py                 # the bench's size and two larger ones
    python benchmarks/gpt_softmax_path.py --threads 1 --repeats 21

docs/performance.md records runs (with the command and the machine).
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact.models import GPT

ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu}


class HandBlock(nn.Module):
    def __init__(self, dim: int, heads: int, act: str) -> None:
        super().__init__()
        self.heads, self.act = heads, ACTS[act]
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class HandGPT(nn.Module):
    def __init__(self, vocab: int, dim: int, depth: int, heads: int, context: int, act: str = "gelu") -> None:
        super().__init__()
        self.tok, self.pos = nn.Embedding(vocab, dim), nn.Embedding(context, dim)
        self.blocks = nn.Sequential(*[HandBlock(dim, heads, act) for _ in range(depth)])
        self.norm, self.head = nn.LayerNorm(dim), nn.Linear(dim, vocab)

    def forward(self, idx: Tensor) -> Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        return self.head(self.norm(self.blocks(x)))


@torch.no_grad()
def copy_weights(ours: GPT, hand: HandGPT) -> None:
    """normact's weights into the hand-written model (q, k, v stacked into qkv; k's bias 0)."""
    for name in ("tok", "pos", "norm", "head"):
        getattr(hand, name).load_state_dict(getattr(ours, name).state_dict())
    for b, h in zip(ours.blocks, hand.blocks, strict=True):
        h.ln1.load_state_dict(b.attn_norm.state_dict())
        h.ln2.load_state_dict(b.mlp_norm.state_dict())
        h.qkv.weight.copy_(torch.cat([b.attn.q_proj.weight, b.attn.k_proj.weight, b.attn.v_proj.weight]))
        h.qkv.bias.copy_(torch.cat([b.attn.q_proj.bias, torch.zeros_like(b.attn.q_proj.bias), b.attn.v_proj.bias]))
        h.proj.load_state_dict(b.attn.out_proj.state_dict())
        h.fc1.load_state_dict(b.mlp.fc1.state_dict())
        h.fc2.load_state_dict(b.mlp.fc2.state_dict())


def median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each function, the calls interleaved so that drift hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def train_step(model: nn.Module, idx: Tensor) -> None:
    model(idx).float().logsumexp(-1).mean().backward()
    model.zero_grad(set_to_none=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=11)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--acts", nargs="+", default=["relu", "gelu"], choices=sorted(ACTS))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [  # (batch, context, dim, depth, heads): the bench's char GPT, then wider and longer
        (32, 64, 64, 2, 4),
        (8, 256, 256, 4, 4),
        (4, 1024, 256, 4, 4),
    ]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; ms, median of {args.repeats}")
    print(f"{'act':>5} {'B':>3} {'T':>5} {'D':>4} {'L':>2} {'pass':>9} {'normact':>9} {'hand':>9} {'ratio':>6}")
    for act, (b, t, d, depth, heads) in itertools.product(args.acts, sizes):
        torch.manual_seed(0)
        ours = GPT(256, act=act, dim=d, depth=depth, heads=heads, context=t)
        hand = HandGPT(256, d, depth, heads, t, act)
        copy_weights(ours, hand)
        idx = torch.randint(256, (b, t))
        with torch.no_grad():
            diff = float((ours(idx) - hand(idx)).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"the two models disagree by {diff:.3g}")

        with torch.no_grad():
            fwd = median_ms({"normact": partial(ours, idx), "hand": partial(hand, idx)}, args.repeats)
        both = median_ms(
            {"normact": partial(train_step, ours, idx), "hand": partial(train_step, hand, idx)}, args.repeats
        )
        for name, ms in (("forward", fwd), ("fwd+bwd", both)):
            shape = f"{act:>5} {b:>3} {t:>5} {d:>4} {depth:>2}"
            ratio = ms["normact"] / ms["hand"]
            print(f"{shape} {name:>9} {ms['normact']:>9.2f} {ms['hand']:>9.2f} {ratio:>6.2f}")


if __name__ == "__main__":
    main()
