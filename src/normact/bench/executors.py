"""Where trials run: in this process, in local worker processes, or as Ray tasks on a cluster.

Every executor takes trial specs and calls ``on_result(result)`` in the calling process as each trial
finishes (that is where results are stored), and ``on_progress(key, step, steps)`` for step progress
where the executor can report it. Trials run with one torch thread each, so a seed gives the same result
whatever the executor.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any

from normact.bench.trial import TrialSpec, run_trial

ResultFn = Callable[[dict[str, Any]], None]
ProgressFn = Callable[[str, int, int], None]

_progress_queue: Any = None  # set in each worker by _init_worker


def _init_worker(progress_queue: Any) -> None:
    global _progress_queue
    _progress_queue = progress_queue


def _run_in_worker(spec_dict: dict[str, Any]) -> dict[str, Any]:
    spec = TrialSpec.from_dict(spec_dict)
    key = spec.key()
    every = max(1, spec.steps // 50)

    def progress(step: int, steps: int) -> None:
        if _progress_queue is not None and (step % every == 0 or step == steps):
            _progress_queue.put((key, step, steps))

    return run_trial(spec, progress)


def run_inline(specs: Sequence[TrialSpec], on_result: ResultFn, on_progress: ProgressFn | None = None) -> None:
    """Run the trials one after another in this process."""
    for spec in specs:
        key = spec.key()
        callback = None if on_progress is None else (lambda s, n, k=key: on_progress(k, s, n))
        on_result(run_trial(spec, callback))


def run_local(
    specs: Sequence[TrialSpec],
    on_result: ResultFn,
    on_progress: ProgressFn | None = None,
    workers: int | None = None,
) -> None:
    """Run the trials in ``workers`` local processes (default: one per CPU core), a fresh process per trial
    (so that peak memory is the trial's own), forked from a server that has torch imported."""
    workers = workers or os.cpu_count() or 1
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["normact.bench.trial"])
    with ctx.Manager() as manager:
        progress_queue = manager.Queue() if on_progress is not None else None
        with ProcessPoolExecutor(
            max_workers=workers,
            mp_context=ctx,
            initializer=_init_worker,
            initargs=(progress_queue,),
            max_tasks_per_child=1,
        ) as pool:
            pending: set[Future] = {pool.submit(_run_in_worker, spec.to_dict()) for spec in specs}
            while pending:
                done, pending = wait(pending, timeout=0.2, return_when=FIRST_COMPLETED)
                _drain(progress_queue, on_progress)
                for future in done:
                    on_result(future.result())
            _drain(progress_queue, on_progress)


def _drain(progress_queue: Any, on_progress: ProgressFn | None) -> None:
    if progress_queue is None or on_progress is None:
        return
    while True:
        try:
            key, step, steps = progress_queue.get_nowait()
        except queue.Empty:
            return
        on_progress(key, step, steps)


def _ray_trial(spec_dict: dict[str, Any]) -> dict[str, Any]:
    return run_trial(TrialSpec.from_dict(spec_dict))


def run_ray(specs: Sequence[TrialSpec], on_result: ResultFn, address: str | None = None) -> None:
    """Run the trials as Ray tasks (one CPU each) on the cluster at ``address`` (None: a local Ray instance)."""
    try:
        import ray
    except ImportError as e:
        raise RuntimeError("--executor ray needs Ray: pip install 'normact[ray]'") from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        remote = ray.remote(num_cpus=1)(_ray_trial)
        pending = [remote.remote(spec.to_dict()) for spec in specs]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            on_result(ray.get(done[0]))
    finally:
        if started_here:
            ray.shutdown()
