"""Tests of the harness itself: references are independent of normact, and each check fails on a layer
broken in the way it guards against (so no check is a test that cannot fail)."""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import functools
import importlib
import pkgutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from torch import nn

import normact
import normact.functional
from normact import registry
from normact.testing import (
    CASE_CHECKS,
    Case,
    LayerEntry,
    Layout,
    check_bad_input,
    check_compile,
    check_constant_input,
    check_detects_perturbation,
    check_dtypes,
    check_factory_kwargs,
    check_gradients,
    check_kink_derivatives,
    check_points,
    check_reference,
    snapshot,
)
from normact.testing.checks import call_reference, cond_inputs, prepared
from tests.entries import ENTRIES
from tests.entries.norm import ref_rmsnorm_paper

ENTRY_DIR = Path(__file__).parent / "entries"


# ------------------------------------------------------------------ references never call normact


@contextlib.contextmanager
def normact_forbidden() -> Iterator[None]:
    """Every normact.functional function and every registered layer's forward raises while active."""

    def forbidden(*args, **kwargs):
        raise AssertionError("a harness reference called normact")

    patches: list[tuple[object, str, object]] = []
    modules = [normact.functional] + [
        importlib.import_module(f"normact.functional.{m.name}")
        for m in pkgutil.iter_modules(normact.functional.__path__)
    ]
    for module in modules:
        for name in getattr(module, "__all__", []):
            patches.append((module, name, getattr(module, name)))
    for name in normact.list_layers():
        cls = normact.info(name).cls
        patches.append((cls, "forward", cls.forward))
    try:
        for owner, attr, _ in patches:
            setattr(owner, attr, forbidden)
        yield
    finally:
        for owner, attr, original in patches:
            setattr(owner, attr, original)


@pytest.mark.parametrize("name", sorted(ENTRIES))
def test_reference_does_not_call_normact(name):
    entry = ENTRIES[name]
    for case in entry.cases:
        module = prepared(entry, case)
        x = case.make_input(torch.Generator().manual_seed(0))
        cond = cond_inputs(case)
        params = snapshot(module)
        with normact_forbidden():
            y, _ = call_reference(entry, case, x, params, cond)
        for out in y if isinstance(y, tuple) else (y,):
            assert torch.isfinite(out).all()


def test_forbidden_patch_is_effective():
    with normact_forbidden(), pytest.raises(AssertionError, match="called normact"):
        normact.create("dyt", 4)(torch.randn(2, 4))


@pytest.mark.parametrize("path", sorted(ENTRY_DIR.glob("*.py")), ids=lambda p: p.name)
def test_entries_import_no_layer_code(path):
    """Entries may import normact.testing, and normact.functional as a module (only the functional= checks
    use it); never layer classes or single functional functions a reference could call unnoticed."""
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("normact"):
            assert node.module == "normact.testing" or node.module.startswith("normact.testing."), (
                f"{path.name}: from {node.module} import ..."
            )
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("normact"):
                    assert alias.name == "normact.functional", f"{path.name}: import {alias.name}"


# ------------------------------------------------------------------ each check can fail


@contextlib.contextmanager
def registered(name: str, cls: type[nn.Module], **kwargs) -> Iterator[None]:
    """Register ``cls`` under ``name`` for the duration of a test."""
    options = {"kind": "norm", "paper": normact.Paper("toy", 2024), "formula": "toy"}
    options.update(kwargs)
    options.setdefault("functional", normact.functional.rms_norm_paper)
    registry.register(name, **options)(cls)
    try:
        yield
    finally:
        registry._REGISTRY.pop(name)
        for key in [k for k, v in registry._LOOKUP.items() if v == name]:
            registry._LOOKUP.pop(key)
        registry._BY_CLASS.pop(cls, None)


def toy_entry(name: str) -> LayerEntry:
    return LayerEntry(
        name=name,
        reference=ref_rmsnorm_paper,
        cases=(Case(init={"normalized_shape": 8}, shape=(4, 8), offset=0.5),),
        functional=lambda x, m: normact.functional.rms_norm_paper(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1),
    )


class ScaledOutput(normact.RMSNormPaper):
    def forward(self, x):
        return super().forward(x) * 1.001


class DeadBias(normact.RMSNormPaper):
    def __init__(self, normalized_shape, eps=1e-8, elementwise_affine=True, bias=True, device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device, dtype)

    def forward(self, x):
        return normact.functional.rms_norm_paper(x, self.normalized_shape, self.weight, None, self.eps)


class Unvalidated(normact.RMSNormPaper):
    def forward(self, x):
        rms = x.pow(2).mean(-1, keepdim=True).sqrt()
        return x / (rms + self.eps) * self.weight


class SqrtAtZero(normact.RMSNormPaper):
    def forward(self, x):
        normact.functional.rms_norm_paper(x, self.normalized_shape, self.weight, None, self.eps)  # validation
        return x / (x.pow(2).mean(-1, keepdim=True).sqrt() + self.eps) * self.weight


class NoUpcast(normact.RMSNormPaper):
    def forward(self, x):
        normact.functional.rms_norm_paper(x, self.normalized_shape, self.weight, None, self.eps)  # validation
        ms = x.pow(2).mean(-1, keepdim=True)  # overflows in float16 for |x| ~ 1e4
        return x / (ms.sqrt() + self.eps) * self.weight


class IgnoresDtype(normact.RMSNormPaper):
    def __init__(self, normalized_shape, eps=1e-8, elementwise_affine=True, bias=False, device=None, dtype=None):
        super().__init__(normalized_shape, eps, elementwise_affine, bias, device=device, dtype=None)


class AcceptsBadEps(normact.RMSNormPaper):
    def __init__(self, normalized_shape, eps=1e-8, elementwise_affine=True, bias=False, device=None, dtype=None):
        super().__init__(normalized_shape, 1e-8, elementwise_affine, bias, device=device, dtype=dtype)


@pytest.mark.parametrize(
    ("cls", "check", "match"),
    [
        (ScaledOutput, check_reference, "vs reference"),
        (DeadBias, check_detects_perturbation, "does not affect the output"),
        (Unvalidated, check_bad_input, "raised (AttributeError|RuntimeError)|was accepted"),
        (SqrtAtZero, check_constant_input, "non-finite"),
        (NoUpcast, check_dtypes, "non-finite|elements off"),
        (IgnoresDtype, check_factory_kwargs, "after dtype=torch.float64"),
        (AcceptsBadEps, check_bad_input, "was accepted"),
    ],
    ids=lambda v: getattr(v, "__name__", None) if isinstance(v, type) else None,
)
def test_check_catches_broken_layer(cls, check, match):
    name = f"toy_{cls.__name__.lower()}"
    with registered(name, cls):
        entry = toy_entry(name)
        with pytest.raises(AssertionError, match=match):
            check(entry, entry.cases[0])


def test_the_sound_toy_passes_the_same_checks():
    """The unbroken layer passes every check used above, so the failures come from the breakage."""
    with registered("toy_sound", normact.RMSNormPaper):
        entry = toy_entry("toy_sound")
        for check in (check_reference, check_detects_perturbation, check_bad_input, check_constant_input,
                      check_dtypes, check_factory_kwargs):  # fmt: skip
            check(entry, entry.cases[0])


def test_scaling_a_real_layer_by_1_001_fails_its_entry(monkeypatch):
    """The issue's acceptance check, on DyT: scale its forward output by 1.001 and the harness fails."""
    original = normact.DyT.forward

    @functools.wraps(original)
    def scaled(self, x):
        return original(self, x) * 1.001

    monkeypatch.setattr(normact.DyT, "forward", scaled)
    entry = ENTRIES["dyt"]
    for case in entry.cases:
        with pytest.raises(AssertionError, match="vs reference"):
            check_reference(entry, case)


# ------------------------------------------------------------------ conditioning inputs and custom backward


class _HalfGradient(torch.autograd.Function):
    """Identity forward, half the gradient backward: a stand-in for a paper's approximate backward."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * 0.5


class ShiftedRMS(normact.RMSNormPaper):
    """rms_norm_paper(x) + shift, the shift a conditioning input of the input's shape."""

    def forward(self, x, shift=None):
        y = super().forward(x)
        if shift is None or shift.shape != x.shape:
            raise ValueError(f"ShiftedRMS expects a shift of shape {tuple(x.shape)}")
        return y + shift


class IgnoresShift(ShiftedRMS):
    def forward(self, x, shift=None):
        return super().forward(x, shift) - shift


class DetachedShift(ShiftedRMS):
    def forward(self, x, shift=None):
        return super().forward(x, shift.detach()) if shift is not None else super().forward(x)


class HalfGradientRMS(normact.RMSNormPaper):
    def forward(self, x):
        return super().forward(_HalfGradient.apply(x))


def _ref_shifted(x, p, hp, *, shift):
    return ref_rmsnorm_paper(x, p, hp) + shift


def _ref_half_grad(x, grad_out, p, hp):
    """The exact gradient of rms_norm_paper at x, halved for the input."""
    x = x.clone().requires_grad_(True)
    w = p["weight"].clone().requires_grad_(True)
    y = ref_rmsnorm_paper(x, {**p, "weight": w}, hp)
    gx, gw = torch.autograd.grad(y, (x, w), grad_out)
    return {"input": 0.5 * gx, "weight": gw}


def conditional_entry(name: str) -> LayerEntry:
    return LayerEntry(
        name=name,
        reference=_ref_shifted,
        cases=(
            Case(
                init={"normalized_shape": 8},
                shape=(4, 8),
                offset=0.5,
                cond_fn=lambda shape, g: {"shift": torch.randn(shape, generator=g, dtype=torch.float64)},
            ),
        ),
        functional=lambda x, m, shift: (
            normact.functional.rms_norm_paper(x, m.normalized_shape, m.weight, m.bias, m.eps) + shift
        ),
        layout=Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1),
    )


def half_grad_entry(name: str) -> LayerEntry:
    return LayerEntry(
        name=name,
        reference=ref_rmsnorm_paper,
        cases=(Case(init={"normalized_shape": 8}, shape=(4, 8), offset=0.5),),
        functional=lambda x, m: normact.functional.rms_norm_paper(x, m.normalized_shape, m.weight, m.bias, m.eps),
        layout=Layout(feature_arg="normalized_shape", feature_axis=-1, min_rank=1),
        reference_grad=_ref_half_grad,
    )


def test_conditioning_inputs_reach_layer_reference_and_gradcheck():
    """A sound conditional layer passes every check with its conditioning input; one that ignores it fails
    the reference, one that cuts its gradient fails gradcheck."""
    with registered("toy_shifted", ShiftedRMS):
        entry = conditional_entry("toy_shifted")
        for name, check in CASE_CHECKS.items():
            if name != "compile":
                check(entry, entry.cases[0])
        check_compile(entry, entry.cases[0])
    with registered("toy_ignores_shift", IgnoresShift):
        entry = conditional_entry("toy_ignores_shift")
        with pytest.raises(AssertionError, match="vs reference"):
            check_reference(entry, entry.cases[0])
    with registered("toy_detached_shift", DetachedShift):
        entry = conditional_entry("toy_detached_shift")
        with pytest.raises(Exception, match=r"(?i)jacobian|does not require grad|differentiable"):
            check_gradients(entry, entry.cases[0])


def test_reference_grad_replaces_gradcheck_and_catches_the_exact_gradient():
    """An approximate backward passes against its reference_grad; the exact backward fails it, and the
    approximate one fails plain gradcheck (which is why such entries need reference_grad)."""
    with registered("toy_half_grad", HalfGradientRMS):
        entry = half_grad_entry("toy_half_grad")
        check_gradients(entry, entry.cases[0])
        with pytest.raises(Exception, match=r"(?i)jacobian"):
            check_gradients(dataclasses.replace(entry, reference_grad=None), entry.cases[0])
    with registered("toy_exact_grad", normact.RMSNormPaper):
        entry = half_grad_entry("toy_exact_grad")
        with pytest.raises(AssertionError, match="grad 'input'"):
            check_gradients(entry, entry.cases[0])


class WrongSlopeRelu(nn.Module):
    """ReLU whose backward has slope 0.5 on the positive side: invisible to gradcheck only if it skipped
    the kink region; here it is caught by the kink-derivative check too."""

    def forward(self, x):
        return (
            torch.where(x > 0, x, torch.zeros_like(x)) * 0.5 + torch.where(x > 0, x, torch.zeros_like(x)).detach() * 0.5
        )


def test_points_and_kink_derivatives_catch_wrong_values_and_slopes():
    relu_entry = ENTRIES["relu"]
    with registered("toy_wrong_slope", WrongSlopeRelu, kind="act"):
        entry = dataclasses.replace(relu_entry, name="toy_wrong_slope")
        check_points(entry)  # the values are right
        with pytest.raises(AssertionError, match="each side of the kink"):
            check_kink_derivatives(entry)
    wrong = dataclasses.replace(relu_entry, points=((2.5, 2.4),))
    with pytest.raises(AssertionError, match=r"expected 2\.4"):
        check_points(wrong)
