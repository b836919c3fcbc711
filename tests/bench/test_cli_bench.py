"""`normact bench` and `normact results` from the command line."""

from __future__ import annotations

import csv
import io
import json

import pytest
from typer.testing import CliRunner

from normact.cli import _build_app

runner = CliRunner()


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    return _build_app()


def test_bench_prints_a_leaderboard_then_results_exports(app, tmp_path):
    db, out = tmp_path / "b.db", tmp_path / "plots"
    args = ["bench", "--preset", "quick", "--steps", "5", "--seeds", "1", "--executor", "inline", "--db", str(db),
            "--out", str(out), "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "digits-cnn" in result.output and "test_accuracy" in result.output and "best" in result.output
    assert (out / "digits-cnn_leaderboard.png").exists() and (out / "digits-cnn_curves.png").exists()
    again = runner.invoke(app, args)
    assert "4 already in" in again.output and "running 0" in again.output
    exported = json.loads(runner.invoke(app, ["results", "--db", str(db), "--json"]).output)
    assert len(exported) == 4 and {r["spec"]["norm"] for r in exported} == {"none", "batchnorm", "layernorm", "dyt"}
    rows = list(csv.DictReader(io.StringIO(runner.invoke(app, ["results", "--db", str(db), "--csv"]).output)))
    assert len(rows) == 4 and rows[0]["task"] == "digits" and rows[0]["test_accuracy"]
    markdown = runner.invoke(app, ["results", "--db", str(db), "--markdown"]).output
    assert markdown.startswith("### digits / cnn") and "| 1 |" in markdown and "test_accuracy (mean ± std)" in markdown
    table = runner.invoke(app, ["results", "--db", str(db)])
    assert "4 trials" in table.output and "batchnorm" in table.output


def test_bench_lr_sweep_prints_stability(app, tmp_path):
    args = ["bench", "--task", "digits", "--model", "mlp", "--norms", "none", "--lrs", "0.001,1e5",
            "--optimizer", "sgd", "--seeds", "1", "--steps", "20", "--executor", "inline",
            "--db", str(tmp_path / "s.db"), "--no-plots", "--no-progress"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "learning-rate stability" in result.output and "diverged" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--preset", "nope"], "unknown preset"),
        (["--task", "digits", "--norms", "dyy"], "did you mean 'dyt'"),
        (["--task", "nope"], "unknown task"),
        (["--executor", "spark"], "executor must be"),
    ],
)
def test_bench_errors_exit_2(app, tmp_path, args, message):
    result = runner.invoke(app, ["bench", *args, "--db", str(tmp_path / "e.db"), "--no-plots", "--steps", "1"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_results_without_a_database(app, tmp_path):
    result = runner.invoke(app, ["results", "--db", str(tmp_path / "missing.db")])
    assert result.exit_code == 2 and "no results database" in result.output


def test_list_presets(app):
    result = runner.invoke(app, ["bench", "--list-presets"])
    assert result.exit_code == 0
    for name in ("default", "dyt-vs-layernorm", "activations", "no-norm"):
        assert name in result.output
