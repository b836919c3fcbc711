"""normact layers against their torch.nn counterparts, side by side in one process.

For each pair: median wall time of forward and of forward+backward over ``--repeats`` runs (after warm-up),
and the ratio normact / torch. The difference is normact's Python-side validation and dispatch; on large
tensors it should vanish into the kernel time, on small ones it is the per-call overhead.

    python benchmarks/layer_overhead.py                      # (8192, 1024) and a small (8, 64) shape
    python benchmarks/layer_overhead.py --rows 4096 --features 768 --repeats 20

Set MALLOC_MMAP_THRESHOLD_=4000000000 MALLOC_TRIM_THRESHOLD_=4000000000 MALLOC_TOP_PAD_=1000000000 for
stable large-tensor figures with glibc (see ../shared/research/perf.md); docs/performance.md records runs.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

import normact


def _pairs(features: int) -> list[tuple[str, Callable[[], nn.Module], Callable[[], nn.Module], str]]:
    """(label, normact factory, torch factory, input layout)."""
    c = min(features, 64)
    return [
        ("layernorm", lambda: normact.create("layernorm", features), lambda: nn.LayerNorm(features), "rows"),
        ("rmsnorm", lambda: normact.create("rmsnorm", features), lambda: nn.RMSNorm(features), "rows"),
        ("dyt vs nn.LayerNorm", lambda: normact.create("dyt", features), lambda: nn.LayerNorm(features), "rows"),
        ("batchnorm2d", lambda: normact.create("batchnorm2d", c), lambda: nn.BatchNorm2d(c), "nchw"),
        ("groupnorm", lambda: normact.create("groupnorm", c, num_groups=8), lambda: nn.GroupNorm(8, c), "nchw"),
        ("gelu", lambda: normact.create("gelu"), lambda: nn.GELU(), "rows"),
        ("gelu_tanh", lambda: normact.create("gelu_tanh"), lambda: nn.GELU(approximate="tanh"), "rows"),
        ("silu", lambda: normact.create("silu"), lambda: nn.SiLU(), "rows"),
        ("mish", lambda: normact.create("mish"), lambda: nn.Mish(), "rows"),
    ]


def _input(layout: str, rows: int, features: int) -> torch.Tensor:
    if layout == "nchw":
        c = min(features, 64)
        side = max(int((rows * features / c / 8) ** 0.5), 1)
        return torch.randn(8, c, side, side)
    return torch.randn(rows, features)


def _interleaved_ms(fns: list[Callable[[], object]], repeats: int) -> list[float]:
    """Median milliseconds of each function, timed in alternating order (drift and noise hit all alike)."""
    for fn in fns:
        for _ in range(3):
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            start = time.perf_counter()
            fns[i]()
            times[i].append(time.perf_counter() - start)
    return [1e3 * statistics.median(t) for t in times]


def _measure(ours: nn.Module, theirs: nn.Module, x: torch.Tensor, repeats: int) -> tuple[float, ...]:
    xg = x.clone().requires_grad_(True)

    def fwd_bwd(m: nn.Module) -> None:
        m(xg).sum().backward()

    f_ours, f_theirs = _interleaved_ms([lambda: ours(x), lambda: theirs(x)], repeats)
    fb_ours, fb_theirs = _interleaved_ms([lambda: fwd_bwd(ours), lambda: fwd_bwd(theirs)], repeats)
    return f_ours, f_theirs, fb_ours, fb_theirs


def bench(rows: int, features: int, repeats: int) -> list[tuple[str, float, float, float, float]]:
    """(label, fwd normact, fwd torch, fwd+bwd normact, fwd+bwd torch) in milliseconds."""
    return [
        (label, *_measure(make_ours(), make_theirs(), _input(layout, rows, features), repeats))
        for label, make_ours, make_theirs, layout in _pairs(features)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--features", type=int, default=1024)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} threads, float32, median of {args.repeats}")
    for rows, features in ((args.rows, args.features), (8, 64)):
        print(f"\nshape ({rows}, {features}) [NCHW layers: same element count]")
        header = ("fwd normact", 13), ("fwd torch", 11), ("ratio", 7), ("f+b normact", 13), ("f+b torch", 11)
        print(f"{'layer':<22}" + "".join(f"{h:>{w}}" for h, w in header) + f"{'ratio':>7}")
        for label, f_ours, f_torch, fb_ours, fb_torch in bench(rows, features, args.repeats):
            print(
                f"{label:<22}{f_ours:>11.3f}ms{f_torch:>9.3f}ms{f_ours / f_torch:>7.2f}"
                f"{fb_ours:>11.3f}ms{fb_torch:>9.3f}ms{fb_ours / fb_torch:>7.2f}"
            )


if __name__ == "__main__":
    main()
