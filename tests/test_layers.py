"""The layer harness over every registered layer: every entry x every case x every generic check.

A registered layer without an entry fails ``test_every_layer_has_an_entry``.
"""

from __future__ import annotations

import pytest
from hypothesis import given

import normact
from normact.testing import (
    CASE_CHECKS,
    check_compile,
    check_contract,
    check_dtypes,
    check_kink_derivatives,
    check_points,
    check_reference,
)
from normact.testing.strategies import cases
from tests.entries import ENTRIES

CASES = [pytest.param(entry, case, id=f"{name}-{case.id}") for name, entry in ENTRIES.items() for case in entry.cases]
DEFAULT_CHECKS = [name for name in CASE_CHECKS if name != "compile"]


def test_every_layer_has_an_entry():
    missing = sorted(set(normact.list_layers()) - set(ENTRIES))
    assert not missing, f"registered layers without a harness entry in tests/entries: {missing}"
    unknown = sorted(set(ENTRIES) - set(normact.list_layers()))
    assert not unknown, f"harness entries for names that are not registered: {unknown}"


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_contract(name):
    check_contract(ENTRIES[name])


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_exact_points_and_kink_derivatives(name):
    """Values worked out by hand from the formula, and the derivative on each side of every kink."""
    check_points(ENTRIES[name])
    check_kink_derivatives(ENTRIES[name])


@pytest.mark.parametrize("name", [n for n in sorted(ENTRIES) if normact.info(n).kind == "act"])
def test_every_activation_has_three_exact_points_and_declares_its_kinks(name):
    entry = ENTRIES[name]
    assert len(entry.points) >= 3, f"{name}: give at least three exact values (LayerEntry.points)"
    if not entry.info.properties.smooth and not entry.info.properties.gated:
        assert entry.kinks, f"{name} is registered smooth=False: list its kinks (LayerEntry.kinks)"


@pytest.mark.parametrize("check", DEFAULT_CHECKS)
@pytest.mark.parametrize(("entry", "case"), CASES)
def test_layer(entry, case, check):
    CASE_CHECKS[check](entry, case)


@pytest.mark.parametrize(("entry", "case"), CASES)
def test_compile_aot_eager(entry, case):
    """Dynamo capture with fullgraph=True and AOTAutograd, without code generation (cheap)."""
    check_compile(entry, case, backend="aot_eager")


@pytest.mark.slow
@pytest.mark.parametrize(("entry", "case"), CASES)
def test_compile_inductor(entry, case):
    """The same parity through Inductor's generated code (slow: C++ compilation per layer)."""
    check_compile(entry, case, backend="inductor")


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_shapes_property(name):
    """For random valid shapes and feature counts, the float64 output (and the functional form) matches the
    reference, and float32/bfloat16/float16 stay within tolerance with finite outputs and gradients."""
    entry = ENTRIES[name]

    @given(cases(entry))
    def run(case):
        check_reference(entry, case)
        check_dtypes(entry, case)

    run()


@pytest.mark.parametrize("name", [n for n in sorted(ENTRIES) if normact.info(n).kind == "norm"])
def test_registry_input_layout_agrees_with_the_harness_layout(name):
    """The bench plugs norms in by ``input_layout``: it must say where the harness finds the features."""
    info, entry = normact.info(name), ENTRIES[name]
    axis = entry.layout.feature_axis
    expected = {"channels_first": 1, "last_dims": -1, "tokens": -1}.get(info.input_layout)
    if expected is None or axis is None:
        pytest.skip(f"{name}: input_layout {info.input_layout!r}, harness feature axis {axis}")
    assert axis == expected, f"{name}: input_layout {info.input_layout!r} but the harness features are at {axis}"
