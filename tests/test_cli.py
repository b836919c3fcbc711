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


def test_plot_act_draws_functions_and_derivatives(app, tmp_path):
    out = tmp_path / "figs" / "acts.png"
    result = runner.invoke(app, ["plot-act", "relu", "gelu", "swiglu", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


def test_plot_act_curves_are_the_function_and_its_derivative():
    import torch

    from normact.plot import activation_curves

    x = torch.tensor([-2.0, -0.5, 0.5, 3.0], dtype=torch.float64)
    y, grad = activation_curves("relu", x)
    assert torch.equal(y, torch.tensor([0.0, 0.0, 0.5, 3.0], dtype=torch.float64))
    assert torch.equal(grad, torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=torch.float64))
    y, grad = activation_curves("swiglu", x)  # the gate nonlinearity at unit value: silu
    torch.testing.assert_close(y, x * torch.sigmoid(x))
    torch.testing.assert_close(grad, torch.sigmoid(x) * (1 + x * (1 - torch.sigmoid(x))))


@pytest.mark.parametrize("args", [["layernorm"], ["reluu"], ["relu", "--x-min", "3", "--x-max", "1"]])
def test_plot_act_rejects_bad_arguments(app, tmp_path, args):
    result = runner.invoke(app, ["plot-act", *args, "--out", str(tmp_path / "a.png")])
    assert result.exit_code == 2
    assert "error" in result.output


def test_info_prints_square_brackets_in_formulas_verbatim(app):
    """rich markup must not swallow formula text such as Var_B[x]."""
    result = runner.invoke(app, ["info", "batchrenorm"])
    assert result.exit_code == 0, result.output
    assert "Var_B[x]" in result.output
