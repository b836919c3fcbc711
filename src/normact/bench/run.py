"""Run studies: skip what the store already holds, execute the rest, store each result as it arrives."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from typing import Any

from normact.bench.executors import run_inline, run_local, run_ray
from normact.bench.store import ResultStore
from normact.bench.study import Study
from normact.bench.trial import TrialSpec


def pending_specs(studies: Sequence[Study], store: ResultStore) -> tuple[list[TrialSpec], list[TrialSpec]]:
    """(all specs of the studies, those not yet in the store); duplicates across studies run once."""
    seen: dict[str, TrialSpec] = {}
    for study in studies:
        for spec in study.specs():
            seen.setdefault(spec.key(), spec)
    done = store.done_keys()
    all_specs = list(seen.values())
    return all_specs, [s for s in all_specs if s.key() not in done]


def execute(
    specs: Sequence[TrialSpec],
    store: ResultStore,
    *,
    executor: str = "local",
    workers: int | None = None,
    address: str | None = None,
    show_progress: bool = True,
    on_stored: Callable[[dict[str, Any]], None] | None = None,
) -> None:
    """Run ``specs`` and store each result the moment it arrives."""
    if executor not in ("local", "inline", "ray"):
        raise ValueError(f"executor must be 'local', 'inline' or 'ray', got {executor!r}")
    if not specs:
        return
    progress_cm: Any = nullcontext(None)
    if show_progress:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        progress_cm = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), transient=False
        )
    labels = {s.key(): f"{s.label()} seed={s.seed}" for s in specs}
    with progress_cm as progress:
        overall = progress.add_task("trials", total=len(specs)) if progress else None
        step_bars: dict[str, Any] = {}

        def on_result(result: dict[str, Any]) -> None:
            store.put(result)
            if progress is not None:
                progress.advance(overall)
                bar = step_bars.pop(result["key"], None)
                if bar is not None:
                    progress.remove_task(bar)
            if on_stored is not None:
                on_stored(result)

        def on_progress(key: str, step: int, steps: int) -> None:
            if progress is None:
                return
            if key not in step_bars:
                step_bars[key] = progress.add_task(f"  {labels.get(key, key)}", total=steps)
            progress.update(step_bars[key], completed=step)

        if executor == "inline":
            run_inline(specs, on_result, on_progress)
        elif executor == "local":
            run_local(specs, on_result, on_progress, workers=workers)
        else:
            run_ray(specs, on_result, address=address)
