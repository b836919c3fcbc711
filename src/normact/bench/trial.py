"""One benchmark trial: a plain, hashable spec in, a JSON-friendly result out. Deterministic per seed.

A trial builds the model from registry names, trains it for ``steps`` optimizer steps on mini-batches
drawn with a generator seeded by ``seed`` (one torch thread, so results do not depend on the executor),
and records the loss curve, final metrics, wall time, throughput, peak memory and divergence. Before training,
:func:`init_signal` records the signal propagation of the network at initialisation (``normact.probe`` on a
copy of the model, one training-mode forward on a batch drawn with its own generator), which leaves the trial's
training (weights, batches, random stream) exactly as without it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import platform
import resource
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from normact.bench.models import build_model
from normact.bench.tasks import ImageData, TextData, is_text_task, load_task

ProgressFn = Callable[[int, int], None]

VARIANT_KEYS = ("placement", "attention", "positions", "depth", "norm_kwargs")
"""Model options that tell the configurations of a study apart (in labels and leaderboards)."""

_OPTIONAL_FIELDS = ("warmup", "eval_context")


@dataclass(frozen=True)
class TrialSpec:
    """Everything that determines a trial's result. Its :meth:`key` identifies it in the store."""

    task: str
    model: str
    norm: str
    act: str
    lr: float
    seed: int
    steps: int = 300
    batch_size: int = 64
    optimizer: str = "adamw"
    weight_decay: float = 0.0
    train_size: int | None = None  # image tasks: use the first N training images (None: all)
    eval_batches: int = 20  # text tasks: validation batches (fixed across trials)
    log_every: int = 10
    device: str = "cpu"  # "cuda" etc.; part of the key (results on other devices differ in the last bits)
    model_options: Mapping[str, Any] = field(default_factory=dict)
    warmup: float | None = None  # the linear warm-up's fraction of the steps (None: 5 %; 0: none)
    eval_context: int | None = None  # text tasks: also evaluate at this longer context (length extrapolation)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["model_options"] = dict(sorted(self.model_options.items()))
        for name in _OPTIONAL_FIELDS:  # left out at their default: the keys of earlier trials stay the same
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> TrialSpec:
        return cls(**{**d, "model_options": dict(d.get("model_options", {}))})

    def key(self) -> str:
        """A stable identifier: the hash of the canonical JSON of the spec."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def label(self) -> str:
        """The configuration without the seed (what a leaderboard row groups over)."""
        return f"{self.task}/{self.model} norm={self.norm} act={self.act}{self.variant_label()} lr={self.lr:g}"

    def variant(self) -> dict[str, Any]:
        """The architecture options a study varies (placement, attention, depth...) that this trial sets."""
        return {k: self.model_options[k] for k in VARIANT_KEYS if k in self.model_options}

    def variant_label(self) -> str:
        return "".join(f" {k}={v}" for k, v in self.variant().items())


def _optimizer(spec: TrialSpec, params) -> torch.optim.Optimizer:
    if spec.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=spec.lr, weight_decay=spec.weight_decay)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=spec.lr, momentum=0.9, weight_decay=spec.weight_decay)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {spec.optimizer!r}")


def _lr_factor(step: int, steps: int, warmup_fraction: float | None = None) -> float:
    """A linear warm-up over ``warmup_fraction`` of the steps (default 5 %; 0 for none), then cosine decay to 10 %
    of the peak."""
    fraction = 0.05 if warmup_fraction is None else warmup_fraction
    warmup = max(1, round(steps * fraction)) if fraction > 0 else 0
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t))


def _peak_memory_mb() -> float:
    if torch.cuda.is_available() and torch.cuda.max_memory_allocated() > 0:
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _image_batches(data: ImageData, spec: TrialSpec, gen: torch.Generator):
    """Mini-batches drawn on the CPU generator (the same indices on every device), moved to the device."""
    n = len(data.x_train) if spec.train_size is None else min(spec.train_size, len(data.x_train))
    while True:
        idx = torch.randint(0, n, (spec.batch_size,), generator=gen)
        yield data.x_train[idx].to(spec.device), data.y_train[idx].to(spec.device)


def _text_batch(ids: torch.Tensor, batch: int, context: int, gen: torch.Generator, device: str = "cpu"):
    start = torch.randint(0, len(ids) - context - 1, (batch,), generator=gen)
    offsets = torch.arange(context + 1)
    window = ids[start[:, None] + offsets].to(device)
    return window[:, :-1], window[:, 1:]


@torch.no_grad()
def _evaluate_image(model: nn.Module, data: ImageData, device: str) -> dict[str, float]:
    model.eval()
    correct, loss_sum = 0, 0.0
    for i in range(0, len(data.x_test), 512):
        x, y = data.x_test[i : i + 512].to(device), data.y_test[i : i + 512].to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    n = len(data.x_test)
    return {"test_accuracy": correct / n, "test_loss": loss_sum / n}


@torch.no_grad()
def _validation_loss(model: nn.Module, data: TextData, spec: TrialSpec, context: int) -> float:
    gen = torch.Generator().manual_seed(1234)  # the same validation windows for every trial
    losses = []
    for _ in range(spec.eval_batches):
        x, y = _text_batch(data.val, spec.batch_size, context, gen, spec.device)
        losses.append(F.cross_entropy(model(x).flatten(0, 1), y.flatten()).item())
    return sum(losses) / len(losses)


def _evaluate_text(model: nn.Module, data: TextData, spec: TrialSpec, context: int) -> dict[str, float]:
    """Validation loss and bits per character at the training context; with ``spec.eval_context`` also the loss
    at that longer context (``val_loss_long``: length extrapolation)."""
    model.eval()
    val_loss = _validation_loss(model, data, spec, context)
    out = {"val_loss": val_loss, "bpc": val_loss / math.log(2)}
    if spec.eval_context is not None:
        out["val_loss_long"] = _validation_loss(model, data, spec, spec.eval_context)
    model.train()
    return out


INIT_SIGNAL_SEED = 7919  # the probe batch's generator: seed + this, apart from the training batches'


def init_signal(model: nn.Module, x: torch.Tensor) -> dict[str, Any] | None:
    """Signal propagation of ``model`` at initialisation (Brock, De and Smith, 2021): one training-mode forward
    of ``x`` through a copy of the model under ``normact.probe``, per residual block (or per activation where the
    network has no residual blocks), in depth order: the average channel squared mean, the average channel
    variance and the residual-branch variance; ``var_growth`` = last / first average variance. The model, its
    buffers and the global random stream are left untouched. None when no block or activation was found. A trial
    records it before training (``init_signal``) and after (``final_signal``), on the same batch."""
    from normact.probing import probe

    twin = copy.deepcopy(model).train()
    devices = [x.device] if x.device.type == "cuda" else []
    p = probe(twin, ("block", "act"), ("branch",), sample=1)
    with torch.random.fork_rng(devices=devices), torch.no_grad(), p:
        twin(x)
    report = p.report()
    layers, rows = "block", report.signal_propagation(("block",))
    if not rows:
        layers, rows = "act", report.signal_propagation(("act",))
    if not rows:
        return None
    var = [r["avg_var"] for r in rows]
    return {
        "layers": layers,
        "modules": [r["module"] for r in rows],
        "avg_sq_mean": [r["avg_sq_mean"] for r in rows],
        "avg_var": var,
        "branch_var": [r["branch_var"] for r in rows],
        "var_growth": var[-1] / var[0] if var[0] > 0 else None,
        "final_var": var[-1],
    }


def run_trial(spec: TrialSpec, progress: ProgressFn | None = None, *, probe_init: bool = True) -> dict[str, Any]:
    """Train and evaluate one trial; never raises for divergence (it is recorded). ``probe_init`` records the
    network's signal propagation at initialisation (:func:`init_signal`; it does not change the training)."""
    torch.set_num_threads(1)
    if spec.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats(spec.device)
    start = time.perf_counter()
    data = load_task(spec.task)
    torch.manual_seed(spec.seed)
    text = is_text_task(spec.task)
    options = dict(spec.model_options)
    if text:
        assert isinstance(data, TextData)
        model = build_model(spec.model, norm=spec.norm, act=spec.act, vocab_size=data.vocab_size, **options)
        context = getattr(model, "context", 64)
    else:
        assert isinstance(data, ImageData)
        model = build_model(
            spec.model, norm=spec.norm, act=spec.act, in_shape=data.shape, num_classes=data.num_classes, **options
        )
    model = model.to(spec.device)
    opt = _optimizer(spec, model.parameters())
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _lr_factor(s, spec.steps, spec.warmup))
    gen = torch.Generator().manual_seed(spec.seed)
    batches = _image_batches(data, spec, gen) if not text else None
    signal = None
    if probe_init:
        probe_gen = torch.Generator().manual_seed(spec.seed + INIT_SIGNAL_SEED)
        if text:
            x0 = _text_batch(data.train, spec.batch_size, context, probe_gen, spec.device)[0]
        else:
            x0 = next(_image_batches(data, spec, probe_gen))[0]
        signal = init_signal(model, x0)
    curve: list[tuple[int, float]] = []
    diverged_at: int | None = None
    initial_loss = None
    train_start = time.perf_counter()
    model.train()
    for step in range(spec.steps):
        if text:
            x, y = _text_batch(data.train, spec.batch_size, context, gen, spec.device)
            loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        else:
            x, y = next(batches)
            loss = F.cross_entropy(model(x), y)
        value = loss.item()
        if initial_loss is None:
            initial_loss = value
        if not math.isfinite(value):
            diverged_at = step
            curve.append((step, value))
            break
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % spec.log_every == 0 or step == spec.steps - 1:
            curve.append((step, value))
        if progress is not None:
            progress(step + 1, spec.steps)
    train_time = time.perf_counter() - train_start
    final_signal = init_signal(model, x0) if probe_init and diverged_at is None else None
    steps_done = spec.steps if diverged_at is None else diverged_at
    units = spec.batch_size * (context if text else 1)
    metrics: dict[str, float | None]
    if diverged_at is None:
        metrics = _evaluate_text(model, data, spec, context) if text else _evaluate_image(model, data, spec.device)
        if not all(math.isfinite(v) for v in metrics.values()):
            diverged_at = spec.steps
    else:
        metrics = {"val_loss": None, "bpc": None} if text else {"test_accuracy": None, "test_loss": None}
        if text and spec.eval_context is not None:
            metrics["val_loss_long"] = None
    final_loss = curve[-1][1] if curve else None
    return {
        "key": spec.key(),
        "spec": spec.to_dict(),
        "label": spec.label(),
        "status": "diverged" if diverged_at is not None else "ok",
        "diverged": diverged_at is not None,
        "diverged_at": diverged_at,
        "initial_loss": initial_loss,
        "final_train_loss": final_loss if final_loss is not None and math.isfinite(final_loss) else None,
        **metrics,
        "curve": [[s, v if math.isfinite(v) else None] for s, v in curve],
        "params": sum(p.numel() for p in model.parameters()),
        "train_time_s": train_time,
        "wall_time_s": time.perf_counter() - start,
        "throughput": steps_done * units / train_time if train_time > 0 else None,
        "throughput_unit": "tokens/s" if text else "images/s",
        "peak_memory_mb": _peak_memory_mb(),
        "init_signal": signal,
        "final_signal": final_signal,
        "torch": torch.__version__,
        "host": platform.node(),
    }


def metric_of(result: Mapping[str, Any]) -> tuple[str, bool]:
    """The primary metric of a result and whether higher is better."""
    return ("test_accuracy", True) if "test_accuracy" in result else ("val_loss", False)
