"""Every elementwise activation against its mpmath reference: derivatives (input and parameters) at the switch
points of stable reformulations and at kinks (the documented convention, torch's where torch has the function),
and relative accuracy over the tails in float32 and float64 (normact.testing.numerics)."""

from __future__ import annotations

import pytest
import torch

import normact
from normact.testing import check_norm_extremes, check_switch_derivatives, check_tails
from tests.entries import ENTRIES

ELEMENTWISE = sorted(
    n for n in ENTRIES if normact.info(n).kind == "act" and getattr(normact.info(n).properties, "elementwise", False)
)
WITH_NUMERICS = sorted(n for n, e in ENTRIES.items() if e.numerics is not None)


@pytest.mark.parametrize("name", ELEMENTWISE)
def test_every_elementwise_activation_has_an_mpmath_reference(name):
    assert ENTRIES[name].numerics is not None, f"{name}: give its entry numerics=Numerics(mp_reference, ...)"


@pytest.mark.parametrize("name", WITH_NUMERICS)
def test_derivatives_at_switch_points_and_kinks(name):
    check_switch_derivatives(ENTRIES[name])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name", WITH_NUMERICS)
def test_tails(name, dtype):
    check_tails(ENTRIES[name], dtype)


NORM_CASES = [
    pytest.param(entry, case, id=f"{name}-{case.id}")
    for name, entry in sorted(ENTRIES.items())
    if normact.info(name).kind == "norm"
    for case in entry.cases
]


@pytest.mark.parametrize(("entry", "case"), NORM_CASES)
def test_norm_statistics_at_extreme_magnitudes_and_offsets(entry, case):
    check_norm_extremes(entry, case)


# ------------------------------------------------------------------ the harness itself


@pytest.mark.parametrize("name", WITH_NUMERICS)
def test_mpmath_references_do_not_call_normact(name):
    import mpmath as mp

    from normact.testing.checks import _pointwise_hparams
    from normact.testing.numerics import _module, mp_params
    from tests.test_harness_meta import normact_forbidden

    entry = ENTRIES[name]
    params, hparams = mp_params(_module(entry, torch.float64)), _pointwise_hparams(entry)
    with normact_forbidden():
        for v in (mp.mpf("0.75"), mp.mpf("-1.5")):
            entry.numerics.reference((v, mp.mpf(1)) if entry.info.properties.gated else v, params, hparams)


def kink_table() -> str:
    """The kink convention of every entry as the Markdown table of docs/layer-contract.md section 7."""
    rows = [
        "| layer | kinks (of any case) | derivative there, default parameters | torch's value checked |",
        "|---|---|---|---|",
    ]
    for name in WITH_NUMERICS:
        entry = ENTRIES[name]
        if not entry.kinks:
            continue
        kinks = ", ".join(f"{k:.10g}" for k in entry.kinks)
        if entry.reference_grad is not None:
            grads, twin = "the paper's approximate backward (`reference_grad`)", "n/a"
        else:
            grads = ", ".join(f"{g:.10g}" for g in entry.numerics.kink_grads)
            twin = "yes" if entry.numerics.torch_twin else "no torch twin"
        rows.append(f"| `{name}` | {kinks} | {grads} | {twin} |")
    return "\n".join(rows)


def test_layer_contract_lists_every_kink_convention():
    """docs/layer-contract.md section 7 holds the table the entries declare (regenerate it with
    ``python -c "from tests.test_numerics import kink_table; print(kink_table())"``)."""
    from pathlib import Path

    doc = (Path(__file__).parents[1] / "docs" / "layer-contract.md").read_text()
    assert kink_table() in doc, "docs/layer-contract.md section 7: the kink table is out of date"


# ------------------------------------------------------------------ each check fails on the defect it guards against


def test_tail_check_fails_on_the_erf_form_of_gelu(monkeypatch):
    """Mutation: GELU as 0.5 x (1 + erf(x / sqrt 2)) (torch's kernel) loses the negative tail."""
    import normact.functional.act as act

    monkeypatch.setattr(act, "_gelu", lambda x, approximate: torch.nn.functional.gelu(x, approximate=approximate))
    for name in ("gelu", "gelu_tanh", "geglu"):
        with pytest.raises(AssertionError, match="swept inputs beyond"):
            check_tails(ENTRIES[name], torch.float32)


def test_switch_check_fails_on_the_clamp_min_softplus(monkeypatch):
    """Mutation: APA/AGLU's softplus as clamp_min(t, 0) + log1p(exp(-|t|)), whose autograd derivative at t = 0
    is 0 instead of 1/2 (the defect of issue 12)."""
    import normact.functional.act_adaptive as adaptive

    monkeypatch.setattr(adaptive, "_softplus", lambda t: t.clamp_min(0) + torch.log1p(torch.exp(-t.abs())))
    for name in ("apa", "aglu"):
        with pytest.raises(AssertionError, match="reference's derivative"):
            check_switch_derivatives(ENTRIES[name])


def test_extremes_check_fails_on_an_overflowing_p_norm(monkeypatch):
    """Mutation: MessageNorm's p-norm as sum |x|^p overflows float32 at |x| = 2^50 for p = 3."""
    import normact.functional.message as message

    monkeypatch.setattr(message, "_p_norm", lambda t, p: torch.linalg.vector_norm(t, ord=p, dim=-1, keepdim=True))
    entry = ENTRIES["msg_norm"]
    (case,) = [c for c in entry.cases if c.init.get("p") == 3]
    with pytest.raises(AssertionError, match="non-finite"):
        check_norm_extremes(entry, case)


def test_extremes_check_fails_on_a_one_pass_variance(monkeypatch):
    """Mutation: LayerNorm with Var = E[x^2] - E[x]^2 in float32 loses every digit at an offset of 2^13."""
    import normact.functional

    def one_pass(x, normalized_shape, weight=None, bias=None, eps=1e-5):
        dims = tuple(range(-len(normalized_shape) if isinstance(normalized_shape, tuple) else -1, 0))
        mean = x.mean(dims, keepdim=True)
        var = (x * x).mean(dims, keepdim=True) - mean * mean
        y = (x - mean) / torch.sqrt(var.clamp_min(0) + eps)
        return y * weight + bias if weight is not None else y

    monkeypatch.setattr(normact.functional, "layer_norm", one_pass)
    entry = ENTRIES["layernorm"]
    with pytest.raises(AssertionError, match="standardized"):
        check_norm_extremes(entry, entry.cases[0])


def test_run_all_includes_the_numerics_checks(monkeypatch):
    """normact.testing.run_all (for users' own layers) runs the mpmath checks too: it passes on DyT and GELU
    and fails on APA with the clamp_min softplus."""
    import normact.functional.act_adaptive as adaptive
    from normact.testing import run_all

    run_all(ENTRIES["dyt"])
    run_all(ENTRIES["gelu"])
    monkeypatch.setattr(adaptive, "_softplus", lambda t: t.clamp_min(0) + torch.log1p(torch.exp(-t.abs())))
    with pytest.raises(AssertionError, match="reference's derivative"):
        run_all(ENTRIES["apa"])
