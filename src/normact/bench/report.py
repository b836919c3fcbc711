"""Leaderboards, learning-rate stability and plots from stored trial results."""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from normact.bench.trial import VARIANT_KEYS, metric_of
from normact.plot import pyplot, save_png

SIGNIFICANCE = 0.05


@dataclass
class Row:
    """One configuration (a spec without its seed) aggregated over seeds."""

    label: str
    spec: Mapping[str, Any]
    metric: str
    higher_is_better: bool
    values: list[float]
    seeds: int
    diverged: int
    throughput: float | None
    unit: str
    peak_memory_mb: float | None
    wall_time_s: float
    rank: int = 0
    versus_best: str = ""
    p_value: float | None = None

    @property
    def mean(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None

    @property
    def std(self) -> float | None:
        return statistics.stdev(self.values) if len(self.values) > 1 else (0.0 if self.values else None)

    def as_dict(self) -> dict[str, Any]:
        return {
            "rank": self.rank,
            "label": self.label,
            "metric": self.metric,
            "mean": self.mean,
            "std": self.std,
            "seeds": self.seeds,
            "diverged": self.diverged,
            "versus_best": self.versus_best,
            "p_value": self.p_value,
            "throughput": self.throughput,
            "throughput_unit": self.unit,
            "peak_memory_mb": self.peak_memory_mb,
            "wall_time_s": self.wall_time_s,
        }


def _welch_p(a: Sequence[float], b: Sequence[float]) -> float | None:
    """Two-sided Welch t-test p-value, or None when it is undefined (fewer than 2 values, no variance)."""
    if len(a) < 2 or len(b) < 2:
        return None
    if statistics.pvariance(a) == 0 and statistics.pvariance(b) == 0:
        return 1.0 if statistics.fmean(a) == statistics.fmean(b) else 0.0
    from scipy.stats import ttest_ind

    p = float(ttest_ind(a, b, equal_var=False).pvalue)
    return None if math.isnan(p) else p


def variant_of(spec: Mapping[str, Any]) -> str:
    """The architecture options a trial's spec sets (``placement=peri attention=sigmoid``), or ``""``."""
    options = spec.get("model_options") or {}
    return " ".join(f"{k}={options[k]}" for k in VARIANT_KEYS if k in options)


def leaderboard(results: Sequence[Mapping[str, Any]]) -> list[Row]:
    """Group results by configuration, rank by the mean primary metric (diverged runs last) and test each
    configuration against the best one (Welch's t-test over seeds, significant at p < 0.05)."""
    groups: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        groups[r["label"]].append(r)
    rows = []
    for label, rs in groups.items():
        metric, higher = metric_of(rs[0])
        ok = [r for r in rs if not r["diverged"] and r.get(metric) is not None]
        tps = [r["throughput"] for r in ok if r.get("throughput")]
        mems = [r["peak_memory_mb"] for r in rs if r.get("peak_memory_mb")]
        spec = {k: v for k, v in rs[0]["spec"].items() if k != "seed"}
        rows.append(
            Row(
                label=label,
                spec=spec,
                metric=metric,
                higher_is_better=higher,
                values=[r[metric] for r in ok],
                seeds=len(rs),
                diverged=len(rs) - len(ok),
                throughput=statistics.fmean(tps) if tps else None,
                unit=rs[0].get("throughput_unit", ""),
                peak_memory_mb=max(mems) if mems else None,
                wall_time_s=sum(r["wall_time_s"] for r in rs),
            )
        )

    def sort_key(row: Row) -> tuple:
        if row.mean is None or row.diverged:
            return (1, row.diverged, 0.0)
        return (0, 0, -row.mean if row.higher_is_better else row.mean)

    rows.sort(key=sort_key)
    best = rows[0] if rows and rows[0].mean is not None and not rows[0].diverged else None
    for i, row in enumerate(rows, 1):
        row.rank = i
        if row is best:
            row.versus_best = "best"
        elif row.mean is None:
            row.versus_best = "diverged"
        elif best is not None:
            row.p_value = _welch_p(row.values, best.values)
            if row.p_value is None:
                row.versus_best = "n/a (1 seed)"
            else:
                row.versus_best = "worse" if row.p_value < SIGNIFICANCE else "tied"
            if row.diverged:
                row.versus_best += f", {row.diverged} diverged"
    return rows


def trained(result: Mapping[str, Any], threshold: float = 0.9) -> bool:
    """A trial trained: it did not diverge and its final training loss is below ``threshold`` x the first."""
    if result["diverged"] or result.get("final_train_loss") is None or not result.get("initial_loss"):
        return False
    return result["final_train_loss"] < threshold * result["initial_loss"]


def lr_stability(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per configuration without lr and seed: the largest learning rate at which every seed trained."""
    groups: dict[tuple, dict[float, list[bool]]] = defaultdict(lambda: defaultdict(list))
    for r in results:
        s = r["spec"]
        config = (s["task"], s["model"], s["norm"], s["act"], variant_of(s), s["optimizer"])
        groups[config][s["lr"]].append(trained(r))
    out = []
    for (task, model, norm, act, variant, optimizer), by_lr in groups.items():
        if len(by_lr) < 2:
            continue
        stable = [lr for lr, oks in by_lr.items() if all(oks)]
        out.append(
            {
                "task": task,
                "model": model,
                "norm": norm,
                "act": act,
                "variant": variant,
                "optimizer": optimizer,
                "lrs": sorted(by_lr),
                "max_stable_lr": max(stable) if stable else None,
                "trained": {lr: sum(oks) for lr, oks in sorted(by_lr.items())},
                "seeds": {lr: len(oks) for lr, oks in sorted(by_lr.items())},
            }
        )
    return sorted(out, key=lambda d: (d["task"], d["model"], -(d["max_stable_lr"] or 0)))


def init_signal(results: Sequence[Mapping[str, Any]], which: str = "init_signal") -> list[dict[str, Any]]:
    """Per configuration without seed and lr (the network at initialisation does not depend on the lr): the
    signal propagation recorded by each trial before training (``result["init_signal"]``), averaged over
    seeds: depth (blocks, or activations where the network has none), the average channel variance of the
    first and last ones, ``var_growth`` (last / first) and ``branch_ratio`` (mean over blocks of the residual
    branch variance / the block output variance, a measure of how much each block changes the stream).
    Trials stored before the probe existed (no ``init_signal``) are left out. ``which="final_signal"``: the same
    after training (averaged over seeds and learning rates; trials that diverged have none)."""
    groups: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        sig = r.get(which)
        if sig:
            s = r["spec"]
            groups[(s["task"], s["model"], s["norm"], s["act"], variant_of(s))].append(sig)
    out = []
    for (task, model, norm, act, variant), sigs in groups.items():
        growth = [g["var_growth"] for g in sigs if g.get("var_growth") is not None]
        ratios = [
            b / v for g in sigs for b, v in zip(g["branch_var"], g["avg_var"], strict=True) if b is not None and v > 0
        ]
        out.append(
            {
                "task": task,
                "model": model,
                "norm": norm,
                "act": act,
                "variant": variant,
                "layers": sigs[0]["layers"],
                "depth": len(sigs[0]["avg_var"]),
                "first_var": statistics.fmean(g["avg_var"][0] for g in sigs),
                "last_var": statistics.fmean(g["avg_var"][-1] for g in sigs),
                "var_growth": statistics.fmean(growth) if growth else None,
                "branch_ratio": statistics.fmean(ratios) if ratios else None,
                "trials": len(sigs),
            }
        )
    return sorted(out, key=lambda d: (d["task"], d["model"], d["norm"], d["act"], d["variant"]))


def plot(results: Sequence[Mapping[str, Any]], out_dir: Path, name: str) -> list[Path]:
    """Learning curves (mean training loss over seeds) and the leaderboard (mean ± std), as PNG files."""
    plt = pyplot()
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = leaderboard(results)
    by_label: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in results:
        by_label[r["label"]].append(r)
    paths = []

    fig, ax = plt.subplots(figsize=(8, 5))
    for row in rows:
        curves = [dict((s, v) for s, v in r["curve"] if v is not None) for r in by_label[row.label]]
        steps = sorted(set.intersection(*(set(c) for c in curves))) if curves else []
        if steps:
            ax.plot(steps, [statistics.fmean(c[s] for c in curves) for s in steps], label=_short(row))
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (mean over seeds)")
    ax.set_title(f"{name}: learning curves")
    ax.legend(fontsize=7)
    fig.tight_layout()
    paths.append(save_png(fig, out_dir / f"{name}_curves.png", dpi=110))

    scored = [row for row in rows if row.mean is not None]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(scored) + 1.5))
    ax.barh([_short(r) for r in scored], [r.mean for r in scored], xerr=[r.std or 0 for r in scored], color="tab:blue")
    ax.invert_yaxis()
    if scored:
        ax.set_xlabel(f"{scored[0].metric} (mean ± std over seeds)")
        low = min(r.mean - (r.std or 0) for r in scored)
        high = max(r.mean + (r.std or 0) for r in scored)
        pad = 0.1 * (high - low or abs(high) or 1)
        ax.set_xlim(low - pad, high + pad)
    ax.set_title(f"{name}: leaderboard")
    fig.tight_layout()
    paths.append(save_png(fig, out_dir / f"{name}_leaderboard.png", dpi=110))
    return paths


def _short(row: Row) -> str:
    s = row.spec
    variant = variant_of(s)
    return f"{s['norm']} / {s['act']}{' / ' + variant if variant else ''} / lr {s['lr']:g}"


def leaderboard_markdown(results: Sequence[Mapping[str, Any]], title: str) -> str:
    """A leaderboard (and the learning-rate stability, when several lrs ran) as Markdown tables."""
    rows = leaderboard(results)
    if not rows:
        return ""
    metric = rows[0].metric
    show_variant = any(variant_of(r.spec) for r in rows)
    model_col = " model |" if show_variant else ""
    lines = [
        f"### {title}",
        "",
        f"| # | norm | act |{model_col} lr | {metric} (mean ± std) | seeds | diverged | vs best (Welch p) "
        f"| {rows[0].unit} | time s |",
        "|---|---|---|---|---|---|---|---|---|---|" + ("---|" if show_variant else ""),
    ]
    for r in rows:
        mean = "-" if r.mean is None else f"{r.mean:.4f} ± {r.std or 0:.4f}"
        versus = r.versus_best + (f" ({r.p_value:.2f})" if r.p_value is not None else "")
        tp = "-" if r.throughput is None else f"{r.throughput:,.0f}"
        model = f" {variant_of(r.spec)} |" if show_variant else ""
        lines.append(
            f"| {r.rank} | {r.spec['norm']} | {r.spec['act']} |{model} {r.spec['lr']:g} | {mean} | {r.seeds} "
            f"| {r.diverged} | {versus} | {tp} | {r.wall_time_s:.1f} |"
        )
    stability = lr_stability(results)
    if stability:
        lines += [
            "",
            "| norm | act | model | optimizer | largest lr where every seed trained | seeds trained per lr |",
            "|---|---|---|---|---|---|",
        ]
        for s in stability:
            per_lr = ", ".join(f"{lr:g}: {n}/{s['seeds'][lr]}" for lr, n in s["trained"].items())
            best = "none" if s["max_stable_lr"] is None else f"{s['max_stable_lr']:g}"
            lines.append(f"| {s['norm']} | {s['act']} | {s['variant']} | {s['optimizer']} | {best} | {per_lr} |")
    return "\n".join(lines) + "\n"
