"""The result of a probe: per-module accumulators, their analyses, a table, JSON and PNG figures.

A :class:`Report` holds one :class:`ModuleRecord` per probed module (in call order) and nothing else: every
analysis is recomputed from the accumulators, so reports merge exactly (:meth:`Report.merge`,
:meth:`Report.all_reduce`) and survive a JSON round trip bit for bit (:meth:`Report.to_json`,
:meth:`Report.from_json`). rich (the table) and matplotlib (the figures) are imported only when used.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from normact.probing import _plots, analyses
from normact.probing._record import ModuleRecord, _map_tensors

__all__ = ["ModuleRecord", "Report"]

FORMAT_VERSION = 2  # 2: histogram of float32 bit patterns (2048 int64 slots), probe config 'sample'


# JSON: tensors as {"dtype", "shape", "data"}; non-finite floats as the strings "inf", "-inf", "nan" (strict JSON)
def _enc_float(v: float) -> float | str:
    if math.isfinite(v):
        return v
    return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")


def _encode(obj: Any) -> Any:
    if isinstance(obj, Tensor):
        t = obj.detach().cpu()
        data = t.flatten().tolist()
        if t.is_floating_point():
            data = [_enc_float(v) for v in data]
        return {"__tensor__": str(t.dtype).removeprefix("torch."), "shape": list(t.shape), "data": data}
    if isinstance(obj, dict):
        return {k: _encode(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_encode(v) for v in obj]
    if isinstance(obj, float):
        return _enc_float(obj)
    return obj


def _decode(obj: Any) -> Any:
    if isinstance(obj, dict):
        if "__tensor__" in obj:
            dtype = getattr(torch, obj["__tensor__"])
            data = [float(v) if isinstance(v, str) else v for v in obj["data"]]
            return torch.tensor(data, dtype=dtype).reshape(obj["shape"])
        return {k: _decode(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_decode(v) for v in obj]
    return obj


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, float):
        return _enc_float(obj)
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


class Report:
    """Per-module statistics of the activations a probe saw, and the analyses on top of them.

    ``records`` maps module names to :class:`ModuleRecord` in call order; ``config`` holds the probe's
    settings (stats, topk, near_zero, max_cov_features).
    """

    def __init__(self, records: dict[str, ModuleRecord] | None = None, config: dict[str, Any] | None = None) -> None:
        self.records: dict[str, ModuleRecord] = dict(
            sorted((records or {}).items(), key=lambda kv: (kv[1].order < 0, kv[1].order))
        )
        self.config: dict[str, Any] = dict(config or {})

    # container protocol
    def __getitem__(self, name: str) -> ModuleRecord:
        if name not in self.records:
            raise KeyError(f"no probed module {name!r}; probed: {', '.join(self.records) or 'none'}")
        return self.records[name]

    def __contains__(self, name: object) -> bool:
        return name in self.records

    def __iter__(self) -> Iterator[str]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        kinds: dict[str, int] = {}
        for r in self.records.values():
            kinds[r.kind] = kinds.get(r.kind, 0) + 1
        parts = ", ".join(f"{v} {k}" for k, v in kinds.items())
        return f"Report({len(self.records)} modules: {parts or 'none'})"

    @property
    def modules(self) -> list[str]:
        return list(self.records)

    # analyses
    def summary(self) -> list[dict[str, Any]]:
        """One row of layer-level numbers per module (see :func:`normact.probing.analyses.summary`)."""
        return analyses.summary(self.records.values())

    def signal_propagation(self, kinds: tuple[str, ...] = ("block",)) -> list[dict[str, Any]]:
        """Average channel squared mean, average channel variance and residual-branch variance per block."""
        return analyses.signal_propagation(self.records.values(), kinds)

    def massive_activations(self, min_value: float = 100.0, min_ratio: float = 1000.0) -> list[dict[str, Any]]:
        """Records ``{module, token, dim, value, ratio, median}`` of magnitudes above ``min_value`` and
        ``min_ratio`` times the layer's median magnitude."""
        return analyses.massive_activations(self.records.values(), min_value, min_ratio)

    def sparsity(self) -> list[dict[str, Any]]:
        return analyses.sparsity(self.records.values())

    def outlier_channels(self, min_ratio: float = 10.0, min_kurtosis: float | None = None) -> list[dict[str, Any]]:
        return analyses.outlier_channels(self.records.values(), min_ratio, min_kurtosis)

    def dead_units(self, threshold: float = 0.0) -> list[dict[str, Any]]:
        return analyses.dead_units(self.records.values(), threshold)

    def effective_rank(self) -> list[dict[str, Any]]:
        return analyses.effective_rank(self.records.values())

    def attention_entropy(self) -> list[dict[str, Any]]:
        return analyses.attention_entropy(self.records.values())

    def quantile(self, module: str, q: float) -> float:
        """The ``q`` quantile of |x| at ``module``, from its histogram (accurate to a factor 1.125)."""
        stats = self[module].stats
        if stats is None or stats.hist is None:
            raise ValueError(f"{module!r} has no histogram (stat 'hist')")
        if not 0 <= q <= 1:
            raise ValueError(f"q must be in [0, 1], got {q}")
        return stats.hist.quantile(q)

    # merging
    def state(self) -> dict[str, Any]:
        return {"config": dict(self.config), "records": [r.state() for r in self.records.values()]}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Report:
        records = [ModuleRecord.from_state(s) for s in state["records"]]
        return cls({r.name: r for r in records}, state.get("config"))

    def clone(self) -> Report:
        return Report({k: r.clone() for k, r in self.records.items()}, self.config)

    def to(self, device: Any) -> Report:
        """A copy with every accumulator on ``device``."""
        return Report.from_state(_map_tensors(self.state(), lambda t: t.to(device)))

    def merge(self, *others: Report) -> Report:
        """A new report with the statistics of this one and ``others`` combined, exactly as if one probe had seen
        all their data (moments by Chan's formulas in float64, counts summed, extremes and top-k merged)."""
        out = self.clone()
        for other in others:
            for name, rec in other.records.items():
                if name in out.records:
                    out.records[name].merge_(rec)
                else:
                    out.records[name] = rec.clone()
        return Report(out.records, out.config)

    def all_reduce(self, group: Any = None) -> Report:
        """Merge this report with those of every process of ``group`` (torch.distributed), in place; every
        process ends with the same merged statistics (merged in rank order). One ``all_gather_object`` of the
        small metadata and one ``all_gather`` of all accumulators packed in a float64 buffer (on the current CUDA
        device with NCCL, on the CPU otherwise). Without an initialized process group it does nothing."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        world = dist.get_world_size(group)
        if world == 1:
            return self
        device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend(group) == "nccl" else "cpu"
        tensors: list[Tensor] = []

        def stash(t: Tensor) -> dict[str, Any]:
            tensors.append(t.detach().to(device=device, dtype=torch.float64).flatten())
            return {"__slot__": len(tensors) - 1, "dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}

        meta = _map_tensors(self.state(), stash)
        flat = torch.cat(tensors) if tensors else torch.zeros(0, dtype=torch.float64, device=device)
        sizes = [t.numel() for t in tensors]
        metas: list[Any] = [None] * world
        dist.all_gather_object(metas, (meta, sizes), group=group)
        longest = max(sum(s) for _, s in metas)
        buf = torch.zeros(longest, dtype=torch.float64, device=device)
        buf[: flat.numel()] = flat
        bufs = [torch.empty_like(buf) for _ in range(world)]
        dist.all_gather(bufs, buf, group=group)
        reports = []
        for (m, s), b in zip(metas, bufs, strict=True):
            pieces = b[: sum(s)].split(s) if s else []
            reports.append(Report.from_state(_unstash(m, pieces)))
        merged = reports[0].merge(*reports[1:])
        self.records, self.config = merged.records, merged.config
        return self

    # output
    def to_json(self, path: str | os.PathLike[str] | None = None, *, indent: int | None = None) -> str:
        """Strict JSON with the probe's settings, the layer summary, the analyses and the full accumulator state
        (so that :meth:`from_json` restores an identical report). Written atomically to ``path`` if given."""
        doc = {
            "format": "normact.probe.report",
            "version": FORMAT_VERSION,
            "config": _json_safe(self.config),
            "summary": _json_safe(self.summary()),
            "signal_propagation": _json_safe(self.signal_propagation()),
            "massive_activations": _json_safe(self.massive_activations()),
            "attention_entropy": _json_safe(self.attention_entropy()),
            "state": _encode(self.state()),
        }
        text = json.dumps(doc, indent=indent, allow_nan=False)
        if path is not None:
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return text

    @classmethod
    def from_json(cls, source: str | os.PathLike[str]) -> Report:
        """A report from :meth:`to_json`'s text or from the path of a file holding it."""
        text = str(source)
        if not text.lstrip().startswith("{"):
            text = Path(source).read_text()
        doc = json.loads(text)
        if doc.get("format") != "normact.probe.report":
            raise ValueError("not a normact probe report (missing format 'normact.probe.report')")
        if doc.get("version") != FORMAT_VERSION:
            raise ValueError(f"report format version {doc.get('version')} is not supported (expected {FORMAT_VERSION})")
        return cls.from_state(_decode(doc["state"]))

    def table(self, title: str | None = "normact probe", max_rows: int | None = None) -> Any:
        """A ``rich.table.Table`` with one row per module (the first ``max_rows`` if given, said in the title);
        module names are printed verbatim (no rich markup)."""
        from rich.markup import escape
        from rich.table import Table

        rows = self.summary()
        if max_rows is not None and len(rows) > max_rows:
            title = f"{title or 'modules'} (first {max_rows} of {len(rows)} modules)"
            rows = rows[:max_rows]
        table = Table(title=title)
        cols = [
            ("module", "module", "left"),
            ("kind", "kind", "left"),
            ("channels", "C", "right"),
            ("mean", "mean", "right"),
            ("std", "std", "right"),
            ("median_abs", "med|x|", "right"),
            ("max_abs", "max|x|", "right"),
            ("max_over_median", "max/med", "right"),
            ("kurtosis", "kurt", "right"),
            ("zero_fraction", "zeros", "right"),
            ("dead", "dead", "right"),
            ("effective_rank", "erank", "right"),
            ("entropy", "entropy", "right"),
        ]
        for _, header, justify in cols:
            table.add_column(header, justify=justify, no_wrap=header == "module")
        for row in rows:
            cells = []
            for key, _, _ in cols:
                v = row.get(key)
                if v is None:
                    cells.append("")
                elif key == "zero_fraction":
                    cells.append(f"{100 * v:.1f}%")
                elif isinstance(v, float):
                    cells.append(f"{v:.3g}")
                else:
                    cells.append(escape(str(v)))
            table.add_row(*cells)
        return table

    def __rich__(self) -> Any:
        return self.table()

    def print(self, console: Any = None) -> None:
        """Print the table to ``console`` (a ``rich.console.Console``; a new one on stdout by default)."""
        if console is None:
            from rich.console import Console

            console = Console()
        console.print(self.table())

    # figures (matplotlib, imported when drawing)
    def plot_signal_propagation(self, out: str | os.PathLike[str], kinds: tuple[str, ...] = ("block",)) -> Path:
        return _plots.signal_propagation(self.signal_propagation(kinds), out, kinds)

    def plot_magnitudes(self, out: str | os.PathLike[str]) -> Path:
        return _plots.magnitudes(self.summary(), out)

    def plot_sparsity(self, out: str | os.PathLike[str]) -> Path:
        return _plots.sparsity(self.sparsity(), out)

    def plot_attention_entropy(self, out: str | os.PathLike[str]) -> Path:
        return _plots.attention_entropy(self.attention_entropy(), out)

    def plot(self, out_dir: str | os.PathLike[str]) -> list[Path]:
        """Every figure the data allows, as PNGs in ``out_dir``: ``signal_propagation.png`` (blocks),
        ``magnitudes.png``, ``sparsity.png`` and ``attention_entropy.png`` (attention modules with weights)."""
        out_dir = Path(out_dir)
        written = []
        if self.signal_propagation():
            written.append(self.plot_signal_propagation(out_dir / "signal_propagation.png"))
        if any("max_abs" in r for r in self.summary()):
            written.append(self.plot_magnitudes(out_dir / "magnitudes.png"))
        if self.sparsity():
            written.append(self.plot_sparsity(out_dir / "sparsity.png"))
        if self.attention_entropy():
            written.append(self.plot_attention_entropy(out_dir / "attention_entropy.png"))
        return written


def _unstash(meta: Any, pieces: list[Tensor]) -> Any:
    if isinstance(meta, dict):
        if "__slot__" in meta:
            return pieces[meta["__slot__"]].to(getattr(torch, meta["dtype"])).reshape(meta["shape"])
        return {k: _unstash(v, pieces) for k, v in meta.items()}
    if isinstance(meta, list):
        return [_unstash(v, pieces) for v in meta]
    return meta
