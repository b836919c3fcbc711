"""A probed forward pass against a plain one, interleaved in one process (normact.probe's overhead).

Models: the bench CIFAR ResNet-20 (NCHW maps) and a GPT-style transformer (token sequences), probed with the
default selection (norms, activations, attention, blocks) and statistics (all but the covariance), eagerly
and with ``compile=True``. Prints the best of a few medians per forward and the ratio probed / plain; on
CUDA it synchronises once per timed forward only.

    python benchmarks/probe_overhead.py                                    # CPU, small sizes
    python benchmarks/probe_overhead.py --device cuda --batch 64 --dim 768 --seq 512 --depth 12 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from normact.bench.models import build_model
from normact.probing import probe


def _time(fn: Callable[[], object], device: str, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _compare(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, compile: bool) -> tuple[float, float, int]:
    stats = args.stats.split(",") if args.stats else None

    def forward() -> object:
        return model(x)

    with torch.no_grad():
        for _ in range(3):
            forward()
        plain, probed = [], []
        with probe(model, stats=stats, compile=compile) as p:
            for _ in range(3):  # warm-up: records, blocks settled, compilation
                forward()
            for _ in range(3):
                p.detach()
                plain.append(_time(forward, args.device, args.repeats))
                p.attach()
                probed.append(_time(forward, args.device, args.repeats))
    return min(plain), min(probed), len(p.report())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--stats", default=None, help="comma-separated stat groups (default: the probe's default)")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile=True runs")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    resnet = build_model("resnet", norm="batchnorm2d", act="relu", in_shape=(3, 32, 32), num_classes=10)
    heads = max(1, args.dim // 64)
    gpt = build_model(
        "gpt",
        norm="layernorm",
        act="gelu",
        vocab_size=256,
        dim=args.dim,
        depth=args.depth,
        heads=heads,
        context=args.seq,
    )
    cases = {
        "resnet20": (resnet, torch.randn(args.batch, 3, 32, 32, dtype=dtype)),
        "gpt": (gpt, torch.randint(0, 256, (args.batch, args.seq))),
    }
    for name, (model, x) in cases.items():
        model = model.to(args.device, dtype)
        x = x.to(args.device)
        for compile in (False, True)[: 1 if args.no_compile else 2]:
            a, b, n = _compare(model, x, args, compile)
            mode = "compile" if compile else "eager"
            print(f"{name:9s} {args.device} {args.dtype} {mode:7s} modules={n:3d} ", end="")
            print(f"plain {1e3 * a:8.2f} ms  probed {1e3 * b:8.2f} ms  x{b / a:.2f}")


if __name__ == "__main__":
    main()
