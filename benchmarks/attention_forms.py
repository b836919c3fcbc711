"""Attention score normalizers, timed side by side in one process (interleaved, median of ``--repeats``).

1. normact's ``softmax_attention`` module against ``torch.nn.functional.scaled_dot_product_attention`` called by
   hand (the ratio is normact's validation and mask handling on top of the same kernel), causal and with a padding
   mask.
2. Each linear attention's explicit O(n^2) form (``mode="parallel"``) against its O(n) form (``mode="recurrent"``)
   over the sequence length, non-causal and causal: where each wins.

    python benchmarks/attention_forms.py                       # B=4, H=4, D=32, T = 64 ... 1024
    python benchmarks/attention_forms.py --lengths 128 512 2048 --repeats 15 --threads 1

docs/performance.md records runs (with the command and the machine).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F

import normact


def _median_ms(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, float]:
    """Median wall time (ms) of each function, the calls interleaved so that drift hits all of them alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def softmax_against_sdpa(b: int, h: int, d: int, lengths: list[int], repeats: int) -> None:
    layer = normact.create("softmax_attention")
    print("softmax_attention vs torch SDPA by hand (forward, ms)")
    print(f"{'T':>6} {'case':>8} {'normact':>9} {'sdpa':>9} {'ratio':>6}")
    for t in lengths:
        q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
        pad = torch.ones(b, t, dtype=torch.bool)
        pad[0, -t // 4 :] = False
        sdpa = F.scaled_dot_product_attention
        cases = {
            "causal": (partial(layer, q, k, v, causal=True), partial(sdpa, q, k, v, is_causal=True)),
            "padding": (partial(layer, q, k, v, mask=pad), partial(sdpa, q, k, v, attn_mask=pad[:, None, None, :])),
        }
        with torch.no_grad():
            for case, (ours, theirs) in cases.items():
                ms = _median_ms({"normact": ours, "sdpa": theirs}, repeats)
                print(f"{t:>6} {case:>8} {ms['normact']:>9.3f} {ms['sdpa']:>9.3f} {ms['normact'] / ms['sdpa']:>6.2f}")


def linear_forms(b: int, h: int, d: int, lengths: list[int], repeats: int) -> None:
    names = [
        n for n in ("galerkin_attention", "fourier_attention", "norm_linear_attention") if n in normact.list_layers()
    ]
    print("\nlinear attentions: explicit O(n^2) (parallel) vs O(n) (recurrent), forward ms")
    print(f"{'layer':>22} {'T':>6} {'causal':>6} {'parallel':>9} {'recurrent':>9} {'par/rec':>7}")
    for name in names:
        parallel, recurrent = normact.create(name, mode="parallel"), normact.create(name, mode="recurrent")
        for t in lengths:
            q, k, v = (torch.randn(b, h, t, d) for _ in range(3))
            for causal in (False, True):
                fns = {
                    "parallel": partial(parallel, q, k, v, causal=causal),
                    "recurrent": partial(recurrent, q, k, v, causal=causal),
                }
                with torch.no_grad():
                    ms = _median_ms(fns, repeats)
                ratio = ms["parallel"] / ms["recurrent"]
                print(f"{name:>22} {t:>6} {causal!s:>6} {ms['parallel']:>9.2f} {ms['recurrent']:>9.2f} {ratio:>7.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=32)
    parser.add_argument("--lengths", type=int, nargs="+", default=[64, 256, 1024])
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, B={args.batch} H={args.heads} D={args.head_dim}"
    )
    softmax_against_sdpa(args.batch, args.heads, args.head_dim, args.lengths, args.repeats)
    linear_forms(args.batch, args.heads, args.head_dim, args.lengths, args.repeats)


if __name__ == "__main__":
    main()
