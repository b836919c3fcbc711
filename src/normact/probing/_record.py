"""The accumulators of one probed module (:class:`ModuleRecord`), below the analyses, the plots and the report.

The record sits in its own module so that :mod:`~normact.probing.analyses` (which reads records) and
:mod:`~normact.probing.report` (which holds them and calls the analyses) import it without importing each
other; :mod:`normact.probing.report` re-exports it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor

from normact.probing.accumulators import ActivationStats, EntropyStats, Moments

__all__ = ["ModuleRecord"]


@dataclass
class ModuleRecord:
    """The accumulators of one probed module.

    ``kind`` is ``norm``, ``act``, ``attention``, ``block`` or ``other``; ``layout`` is ``first`` (channels on
    axis 1, as NCHW) or ``last`` (channels last, as (batch, tokens, channels)); ``order`` is the call order;
    ``shape`` the output shape at the first call. ``stats`` follows the outputs, ``branch`` (blocks) the
    moments of output minus input, ``entropy`` (attention) the per-head attention entropy.
    """

    name: str
    kind: str
    cls: str
    layout: str = "last"
    order: int = -1
    shape: list[int] = field(default_factory=list)
    calls: int = 0
    stats: ActivationStats | None = None
    branch: Moments | None = None
    entropy: EntropyStats | None = None

    def state(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "cls": self.cls,
            "layout": self.layout,
            "order": self.order,
            "shape": list(self.shape),
            "calls": self.calls,
            "stats": self.stats.state() if self.stats is not None else None,
            "branch": self.branch.state() if self.branch is not None else None,
            "entropy": self.entropy.state() if self.entropy is not None else None,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> ModuleRecord:
        return cls(
            name=state["name"],
            kind=state["kind"],
            cls=state["cls"],
            layout=state["layout"],
            order=int(state["order"]),
            shape=[int(s) for s in state["shape"]],
            calls=int(state["calls"]),
            stats=ActivationStats.from_state(state["stats"]) if state["stats"] is not None else None,
            branch=Moments.from_state(state["branch"]) if state["branch"] is not None else None,
            entropy=EntropyStats.from_state(state["entropy"]) if state["entropy"] is not None else None,
        )

    def clone(self) -> ModuleRecord:
        return ModuleRecord.from_state(_map_tensors(self.state(), lambda t: t.clone()))

    def merge_(self, other: ModuleRecord) -> ModuleRecord:
        for part in ("stats", "branch", "entropy"):
            mine, theirs = getattr(self, part), getattr(other, part)
            if theirs is None:
                continue
            if mine is None:
                setattr(self, part, type(theirs).from_state(_map_tensors(theirs.state(), lambda t: t.clone())))
                continue
            if part == "stats" and mine.count and theirs.count and _parts(mine) != _parts(theirs):
                raise ValueError(
                    f"cannot merge {self.name!r}: statistics {sorted(_parts(theirs))} into {sorted(_parts(mine))}"
                )
            mine.merge_(theirs)
        self.calls += other.calls
        if not self.shape:
            self.shape = list(other.shape)
        return self


def _parts(stats: ActivationStats) -> set[str]:
    return set(stats.state()) | ({"kurtosis"} if stats.moments.higher else set())


def _map_tensors(obj: Any, fn: Callable[[Tensor], Tensor]) -> Any:
    """``obj`` with ``fn`` applied to every tensor in its nested dicts and lists."""
    if isinstance(obj, Tensor):
        return fn(obj)
    if isinstance(obj, dict):
        return {k: _map_tensors(v, fn) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_map_tensors(v, fn) for v in obj]
    return obj
