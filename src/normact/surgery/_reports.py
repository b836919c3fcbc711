"""The reports of the exact rewrites of :mod:`normact.surgery.fold` (public there): :class:`FoldReport`,
:class:`ConversionReport` and their rows :class:`Folded` and :class:`Skipped`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from normact.surgery._rewrite import RewriteReport, Row

__all__ = ["ConversionReport", "FoldReport", "Folded", "Skipped"]


@dataclass(frozen=True)
class Folded:
    """One layer that was folded or converted: ``name`` (its module name), ``into`` (the layers that absorbed it,
    or the class that replaced it) and a short ``detail``."""

    name: str
    into: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Skipped:
    """One layer left as it was, and why."""

    name: str
    reason: str


@dataclass
class FoldReport(RewriteReport):
    """What a folding function did to ``model`` (the model modified, or the copy with ``inplace=False``).

    ``method`` says how the data flow was found (``"fx"``, ``"trace"``, ``"sequential"``, ``"hooks"``); ``folded``
    and ``skipped`` list every candidate layer; ``untied`` the parameters given their own copy; ``scales`` (only
    :func:`freeze_layernorm_scale`) maps each frozen LayerNorm to ``(sigma, sigma_bos)``.
    """

    model: nn.Module = field(repr=False)
    method: str
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)
    scales: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    params_before: int = 0
    params_after: int = 0

    @property
    def num_folded(self) -> int:
        return len(self.folded)

    def summary(self) -> str:
        """One line per folded and per skipped layer, after a count."""
        lines = [f"{len(self.folded)} folded, {len(self.skipped)} not folded (data flow from {self.method})"]
        lines += [
            f"  folded {f.name} -> {', '.join(f.into) or '-'}{f'  ({f.detail})' if f.detail else ''}"
            for f in self.folded
        ]
        lines += [f"  untied {u}" for u in self.untied]
        lines += [f"  NOT folded {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def rows(self) -> list[Row]:
        return [
            *(Row("folded", f.name, f.detail, ", ".join(f.into)) for f in self.folded),
            *(Row("untied", u) for u in self.untied),
            *(Row("skipped", s.name, detail=s.reason) for s in self.skipped),
        ]


@dataclass
class ConversionReport(RewriteReport):
    """What :func:`convert_preln_to_rmsnorm` did.

    ``converted``: each LayerNorm replaced (``into`` = the new class); ``recentered``: the embeddings and residual
    writers made zero-mean; ``untied``: parameters given their own copy (a tied LM head); ``skipped``: LayerNorms
    and candidate writers left unchanged, with the reason; ``strategy``: ``"rmsnorm"``, ``"crms-fold"`` (CRMSNorm,
    gain/bias and the decompression folded into the next linears) or ``"crms-decompress"`` (CRMSNorm followed by an
    explicit reconstruction of the d-th coordinate); ``max_abs_diff``: the largest output difference against the
    unconverted model on the example input (None without one).
    """

    model: nn.Module = field(repr=False)
    method: str
    strategy: str
    converted: list[Folded] = field(default_factory=list)
    recentered: list[str] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    max_abs_diff: float | None = None
    params_before: int = 0
    params_after: int = 0

    def summary(self) -> str:
        diff = "n/a" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        lines = [
            f"{len(self.converted)} LayerNorms converted ({self.strategy}), {len(self.recentered)} layers recentered, "
            f"max |output diff| {diff} (data flow from {self.method})"
        ]
        lines += [f"  {c.name} -> {', '.join(c.into)}{f'  ({c.detail})' if c.detail else ''}" for c in self.converted]
        lines += [f"  recentered {r}" for r in self.recentered]
        lines += [f"  untied {u}" for u in self.untied]
        lines += [f"  NOT converted {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def rows(self) -> list[Row]:
        return [
            *(Row("converted", c.name, "", ", ".join(c.into), c.detail) for c in self.converted),
            *(Row("recentered", r) for r in self.recentered),
            *(Row("untied", u) for u in self.untied),
            *(Row("skipped", s.name, detail=s.reason) for s in self.skipped),
        ]
