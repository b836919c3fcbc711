"""The command line: list, info, catalog; errors exit non-zero with a suggestion."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

import normact
from normact.cli import _build_app

runner = CliRunner()


@pytest.fixture
def app(monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # rich reads the width when the app's consoles are made
    return _build_app()


def test_list_prints_every_layer(app):
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    for name in normact.list_layers():
        assert name in result.output
    assert "Transformers without Normalization" in result.output and "2025" in result.output


def test_list_kind_and_json(app):
    result = runner.invoke(app, ["list", "--kind", "act", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.output)
    assert {r["name"] for r in rows} == set(normact.list_layers("act"))
    assert all(r["kind"] == "act" for r in rows)


def test_list_unknown_kind_fails(app):
    result = runner.invoke(app, ["list", "--kind", "bogus"])
    assert result.exit_code != 0
    assert "kind must be one of" in result.output


def test_info_prints_formula_paper_parameters_properties(app):
    result = runner.invoke(app, ["info", "dyt"])
    assert result.exit_code == 0, result.output
    assert "tanh(alpha * x)" in result.output
    assert "Transformers without Normalization" in result.output and "2503.10622" in result.output
    assert "alpha" in result.output and "batch_dependent=False" in result.output


def test_info_json(app):
    result = runner.invoke(app, ["info", "BatchNorm_2d", "--json"])
    data = json.loads(result.output)
    assert data["name"] == "batchnorm2d" and data["properties"]["batch_dependent"] is True


def test_info_unknown_name_suggests(app):
    result = runner.invoke(app, ["info", "dyy"])
    assert result.exit_code == 2
    assert "did you mean 'dyt'" in result.output


def test_catalog_writes_atomically(app, tmp_path):
    out = tmp_path / "catalog.md"
    result = runner.invoke(app, ["catalog", "--out", str(out)])
    assert result.exit_code == 0
    assert "| `dyt` |" in out.read_text()
    assert not list(tmp_path.glob("*.tmp"))


def test_console_script_runs():
    """The installed entry point (python -m normact is the same code path)."""
    proc = subprocess.run([sys.executable, "-m", "normact", "info", "dyy"], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "dyt" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "normact", "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and normact.__version__ in proc.stdout
