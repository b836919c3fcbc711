"""The package keeps the layering of ARCHITECTURE.md: every import-linter contract in pyproject.toml holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

api = pytest.importorskip("importlinter.api", reason="import-linter is not installed (pip install import-linter)")

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
CONTRACTS = [c["id"] for c in api.read_configuration(str(ROOT / "pyproject.toml"))["contracts_options"]]


def test_pyproject_declares_the_contracts():
    assert {"layers", "root", "acyclic"} <= set(CONTRACTS)


@pytest.mark.parametrize("contract", CONTRACTS)
def test_contract_is_kept(contract):
    if not LINT_IMPORTS.exists():
        pytest.skip(f"no lint-imports next to {sys.executable}")
    run = subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--no-logo", "--contract", contract],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, f"import-linter contract {contract!r} is broken:\n{run.stdout}{run.stderr}"
