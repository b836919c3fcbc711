"""Numerical checks of elementwise layers against an arbitrary-precision (mpmath) reference.

Two defects hide from float64 references on moderate inputs, and both come from rewriting a formula for
numerical stability (a ``clamp``/``abs``/``where``/``max``-based softplus, a stable sigmoid, a clamped gate, an
``erf``-based tail):

- **a wrong derivative exactly at a switch point**: autograd differentiates ``clamp_min(t, 0)`` and ``|t|`` as
  0 at ``t = 0``, so ``clamp_min(t, 0) + log1p(exp(-|t|))`` has derivative 0 instead of 1/2 there. Exact zeros
  are common in real inputs (padding, ReLU outputs, zero-initialised tensors).
  :func:`check_switch_derivatives` compares the layer's autograd derivative, with respect to the input and
  every parameter, with the reference's derivative (mpmath's numerical differentiation at 40 digits) at 0,
  at a few round numbers where implementations switch form, and at the points the entry names; at the
  function's own kinks it checks the documented one-sided value (``Numerics.kink_grads``: torch's value where
  torch has the function, docs/layer-contract.md section 7).
- **relative accuracy lost in a tail**: ``0.5 x (1 + erf(x / sqrt 2))`` cancels for negative ``x`` (7% off at
  ``x = -5`` in float32, 0 below -7). :func:`check_tails` sweeps ``|x|`` from ``2^-100`` to ``2^14`` on both
  sides (and 0) in float32 and float64 and bounds the error by a few units in the last place of the mixed
  condition: ``|y - f(x)| <= ulps * eps * (|f(x)| + |x f'(x)|) + ulps * tiny``, where ``f`` is the mpmath
  reference evaluated on the same rounded parameters. The ``|x f'(x)|`` term is the error an exact
  algorithm makes from rounding its argument once (``beta * x``), so the bound is attainable by any
  backward-stable evaluation, and ``tiny`` (the smallest normal number) absorbs underflow.

An entry opts in with ``LayerEntry.numerics = Numerics(reference=...)``; tests/test_numerics.py requires it of
every registered elementwise activation.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from normact.testing._prepare import (
    _apply_pointwise,
    _outputs,
    _pointwise_hparams,
    _pointwise_module,
    call_reference,
    cond_inputs,
    generator,
    prepared,
    snapshot,
)
from normact.testing.entry import Case, LayerEntry, MpReference, Numerics, Setting

SWITCH_POINTS = (0.0, 0.5, -0.5, 1.0, -1.0, 2.0, -2.0, 3.0, -3.0, 6.0, -6.0, 20.0, -20.0)
"""Inputs where stable reformulations commonly switch form (0 for ``clamp``/``abs``/``where`` on the sign, the
round thresholds of piecewise and clamped forms); every elementwise layer's derivatives are checked there."""

DIGITS = 40
_DTYPES = (torch.float32, torch.float64)


def _mp() -> Any:
    import mpmath  # a dependency of sympy, which torch requires

    return mpmath


def _to_mp(value: Any) -> Any:
    mp = _mp()
    if isinstance(value, list):
        return [_to_mp(v) for v in value]
    return mp.mpf(float(value))


def mp_params(module: nn.Module) -> dict[str, Any]:
    """The module's parameters and floating buffers as ``mpf`` (0-d) or nested lists of ``mpf``: exactly
    the values the layer computes with."""
    out: dict[str, Any] = {}
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t is not None and t.is_floating_point():
            out[name] = _to_mp(t.detach().double().tolist())
    return out


def _module(entry: LayerEntry, dtype: torch.dtype, params: Mapping[str, float] | None = None) -> nn.Module:
    """The layer at its initial parameters (:func:`~normact.testing._prepare._pointwise_module`), with ``params``
    written into every element of the named parameters or buffers, in ``dtype``."""
    module = _pointwise_module(entry)
    if params:
        state = dict(module.named_parameters()) | dict(module.named_buffers())
        with torch.no_grad():
            for name, value in params.items():
                if name not in state:
                    raise KeyError(f"{entry.name}: Setting names {name!r}, which the layer does not have")
                state[name].fill_(value)
    return module.to(dtype)


def _numerics(entry: LayerEntry) -> Numerics:
    numerics = getattr(entry, "numerics", None)
    if numerics is None:
        raise AssertionError(f"{entry.name}: no Numerics (an mpmath reference) in its harness entry")
    return numerics


def _inputs(entry: LayerEntry, values: Sequence[float], dtype: torch.dtype) -> list[tuple[Tensor, Any, int]]:
    """Each value as a layer input row, its mpmath argument and the swept coordinate (gated: both halves in
    turn, the other held at ``Numerics.fixed``)."""
    mp = _mp()
    rows = []
    fixed = _numerics(entry).fixed
    for v in values:
        if entry.info.properties.gated:
            for coord in (0, 1):
                pair = [fixed, fixed]
                pair[coord] = v
                t = torch.tensor(pair, dtype=dtype)
                rows.append((t, tuple(mp.mpf(float(u)) for u in t.tolist()), coord))
        else:
            t = torch.tensor(v, dtype=dtype)
            rows.append((t, mp.mpf(float(t)), 0))
    return rows


def _mp_diff(fn: Callable[[Any], Any], at: Any) -> Any:
    mp = _mp()
    return mp.diff(fn, at)


def _partial(reference: MpReference, arg: Any, coord: int, params: dict, hparams: dict) -> Callable[[Any], Any]:
    if isinstance(arg, tuple):
        return lambda t: reference(tuple(t if i == coord else a for i, a in enumerate(arg)), params, hparams)
    return lambda t: reference(t, params, hparams)


def _set_element(params: dict[str, Any], name: str, index: tuple[int, ...], value: Any) -> dict[str, Any]:
    """A copy of ``params`` with one element of ``name`` replaced."""
    out = dict(params)
    if not index:
        out[name] = value
        return out

    def replace(node: Any, idx: tuple[int, ...]) -> Any:
        node = list(node)
        node[idx[0]] = value if len(idx) == 1 else replace(node[idx[0]], idx[1:])
        return node

    out[name] = replace(params[name], index)
    return out


def _get_element(params: dict[str, Any], name: str, index: tuple[int, ...]) -> Any:
    node = params[name]
    for i in index:
        node = node[i]
    return node


def _close(got: float, want: float, atol: float, rtol: float) -> bool:
    return math.isfinite(got) and abs(got - want) <= atol + rtol * abs(want)


def check_switch_derivatives(entry: LayerEntry, atol: float = 1e-10, rtol: float = 1e-8) -> None:
    """In float64, the derivative with respect to the input and every learnable parameter equals the mpmath
    reference's at :data:`SWITCH_POINTS`, the entry's switch points and each :class:`Setting`'s (kinks of the
    function itself excluded); exactly at each kink it is the declared ``kink_grads`` value (and torch's,
    where torch has the function). An entry with ``reference_grad`` (a backward that is deliberately not the
    forward's derivative, such as ReGELU2's 2-bit one) is held to that reference by the gradient check
    instead, and skipped here."""
    numerics = _numerics(entry)
    if entry.reference_grad is not None:
        return
    mp = _mp()
    hparams = _pointwise_hparams(entry)
    kinks = tuple(entry.kinks)
    settings = (Setting({}, tuple(numerics.switch_points)), *numerics.settings)
    with mp.workdps(DIGITS):
        for setting in settings:
            module = _module(entry, torch.float64, setting.params)
            params = mp_params(module)
            label = f"{entry.name} at {dict(setting.params) or 'its initial parameters'}"
            points = [p for p in (*SWITCH_POINTS, *setting.points) if all(abs(p - k) > 1e-9 for k in kinks)]
            for x, arg, coord in _inputs(entry, points, torch.float64):
                _compare_derivatives(entry, module, params, hparams, (x, arg, coord), label, atol, rtol)
    _check_kinks(entry, numerics)


def _where(arg: Any) -> str:
    return f"x = {tuple(float(a) for a in arg) if isinstance(arg, tuple) else float(arg)!r}"


def _compare_derivatives(
    entry: LayerEntry,
    module: nn.Module,
    params: dict[str, Any],
    hparams: dict[str, Any],
    row: tuple[Tensor, Any, int],
    label: str,
    atol: float,
    rtol: float,
) -> None:
    """The layer's autograd derivatives at one input (one row of :func:`_inputs`) against mpmath's."""
    reference = _numerics(entry).reference
    x, arg, coord = row
    learnable = [(n, p) for n, p in module.named_parameters() if p.requires_grad]
    xg = x.clone().requires_grad_(True)
    y = _apply_pointwise(entry, module, xg.unsqueeze(0)).reshape(())
    grads = torch.autograd.grad(y, [xg, *(p for _, p in learnable)], allow_unused=True)
    got = float(grads[0].reshape(-1)[coord])
    at = arg[coord] if isinstance(arg, tuple) else arg
    want = float(_mp_diff(_partial(reference, arg, coord, params, hparams), at))
    if not _close(got, want, atol, rtol):
        raise AssertionError(f"{label}: d/dx at {_where(arg)} is {got!r}, the reference's derivative is {want!r}")
    for (name, p), g in zip(learnable, grads[1:], strict=True):
        g = torch.zeros_like(p) if g is None else g
        for index in [tuple(i) for i in torch.ones(p.shape).nonzero().tolist()] or [()]:
            got = float(g[index]) if index else float(g)

            def along(v: Any, name: str = name, index: tuple[int, ...] = index) -> Any:
                return reference(arg, _set_element(params, name, index, v), hparams)

            want = float(_mp_diff(along, _get_element(params, name, index)))
            if not _close(got, want, atol, rtol):
                raise AssertionError(
                    f"{label}: d/d{name}{list(index) if index else ''} at {_where(arg)} is {got!r}, the reference's "
                    f"derivative is {want!r}"
                )


def _check_kinks(entry: LayerEntry, numerics: Numerics) -> None:
    if not entry.kinks:
        return
    if len(numerics.kink_grads) != len(entry.kinks):
        raise AssertionError(
            f"{entry.name}: declare the derivative at each kink {entry.kinks} (Numerics.kink_grads, "
            f"docs/layer-contract.md section 7), got {numerics.kink_grads}"
        )
    module = _module(entry, torch.float64)
    for kink, declared in zip(entry.kinks, numerics.kink_grads, strict=True):
        for x, _, coord in _inputs(entry, [kink], torch.float64):
            if entry.info.properties.gated and coord != numerics.gate:
                continue
            xg = x.clone().requires_grad_(True)
            (g,) = torch.autograd.grad(_apply_pointwise(entry, module, xg.unsqueeze(0)).sum(), xg)
            got = float(g.reshape(-1)[coord])
            if got != declared and not _close(got, declared, 1e-12, 1e-12):
                raise AssertionError(
                    f"{entry.name}: derivative exactly at the kink {kink} is {got!r}, declared {declared!r}"
                )
            if numerics.torch_twin is not None:
                xt = x.clone().requires_grad_(True)
                (gt,) = torch.autograd.grad(numerics.torch_twin(xt.unsqueeze(0), module).sum(), xt)
                theirs = float(gt.reshape(-1)[coord])
                if not _close(theirs, declared, 1e-12, 1e-12):
                    raise AssertionError(
                        f"{entry.name}: torch's derivative at the kink {kink} is {theirs!r}, normact declares "
                        f"{declared!r}"
                    )


@functools.lru_cache(maxsize=4)
def sweep(tail: float = 2.0**14) -> tuple[float, ...]:
    """The swept inputs: 0 and ``+-2^e (1 + j/8)`` for ``e`` in [-12, 13] and ``j`` in 0..7, plus
    ``+-2^-100`` and ``+-2^-30`` (all exact in float32), up to ``tail``."""
    mags = [2.0**-100, 2.0**-30] + [2.0**e * (1 + j / 8) for e in range(-12, 14) for j in range(8)]
    mags = [m for m in mags if m <= tail]
    return (0.0, *mags, *(-m for m in mags))


def check_tails(entry: LayerEntry, dtype: torch.dtype) -> None:
    """float32 or float64 values over :func:`sweep` within ``ulps * eps * (|f| + |x f'|) + ulps * tiny`` of
    the mpmath reference (evaluated on the layer's own rounded parameters)."""
    if dtype not in _DTYPES:
        raise ValueError(f"check_tails takes float32 or float64, got {dtype}")
    numerics = _numerics(entry)
    mp = _mp()
    module = _module(entry, dtype)
    params = mp_params(module)
    hparams = _pointwise_hparams(entry)
    finfo = torch.finfo(dtype)
    rows = _inputs(entry, sweep(numerics.tail), dtype)
    with torch.no_grad():
        y = _apply_pointwise(entry, module, torch.stack([r[0] for r in rows])).double().reshape(-1).tolist()
    worst: tuple[float, str] | None = None
    failures = 0
    with mp.workdps(DIGITS):
        for (_, arg, coord), got in zip(rows, y, strict=True):
            fn = _partial(numerics.reference, arg, coord, params, hparams)
            at = arg[coord] if isinstance(arg, tuple) else arg
            want = fn(at)
            if not mp.isfinite(want) or abs(want) > finfo.max:
                continue
            slope = _mp_diff(fn, at)
            cond = abs(want) + (abs(at * slope) if mp.isfinite(slope) else mp.inf)
            bound = numerics.ulps * (finfo.eps * float(cond) + finfo.tiny)
            err = abs(got - float(want)) if math.isfinite(got) else math.inf
            if not err <= bound:
                failures += 1
                ratio = err / bound if bound else math.inf
                if worst is None or ratio > worst[0]:
                    detail = f"got {got!r}, mpmath {float(want)!r} (error {err:.3g}, bound {bound:.3g})"
                    worst = (ratio, f"{_where(arg)}: {detail}")
    if worst is not None:
        raise AssertionError(
            f"{entry.name} in {dtype}: {failures}/{len(rows)} swept inputs beyond {numerics.ulps:g} ulps of the "
            f"mixed condition; worst at {worst[1]}"
        )


# --------------------------------------------------------------------------------------------------
# norms: the statistics' stable paths at extreme magnitudes and offsets

MAGNITUDES: dict[torch.dtype, tuple[float, ...]] = {
    torch.float32: (2.0**-50, 2.0**50),
    torch.bfloat16: (2.0**50,),
    torch.float64: (2.0**-400, 2.0**400),
}
"""Input scales per dtype: squares (and their sums over a few thousand elements) stay representable, so a
norm's output, which is scale-invariant or bounded, must stay finite and correct there."""

OFFSETS = (2.0**10, 2.0**13)
"""Offsets added to a standardized input: the mean is then 1e3-1e4 standard deviations away from 0, where a
one-pass variance ``E[x^2] - E[x]^2`` loses every digit in float32."""


def check_norm_extremes(entry: LayerEntry, case: Case) -> None:
    """A norm's output at input scales :data:`MAGNITUDES` and offsets :data:`OFFSETS` matches the float64
    reference on the same rounded input: within the dtype's tolerance for the scaled inputs (cases whose
    ``eps`` is None, the dtype's own epsilon, skip the tiny scale), and within the tolerance plus
    ``64 eps offset`` for the offset ones (the error any algorithm makes computing ``x - mean``)."""
    x64 = case.make_input(generator())
    if x64.numel() < 2:
        return
    z = (x64 - x64.mean()) / x64.std().clamp_min(1e-12)
    eps_none = "eps" in entry.hparams(case) and entry.hparams(case)["eps"] is None
    trials: list[tuple[str, torch.dtype, Tensor, float]] = []
    for dtype, scales in MAGNITUDES.items():
        trials += [(f"x * 2^{int(math.log2(s))}", dtype, x64 * s, 0.0) for s in scales if s > 1 or not eps_none]
    trials += [(f"standardized + 2^{int(math.log2(o))}", torch.float32, z + o, o) for o in OFFSETS]
    for label, dtype, x, offset in trials:
        module = prepared(entry, case, dtype)
        cond = cond_inputs(case, dtype)
        x_low = x.to(dtype)
        params = snapshot(module)
        with torch.no_grad():
            y = module(x_low, **cond)
        expected, _ = call_reference(entry, case, x_low.double(), params, cond)
        atol, rtol = entry.tolerance(dtype)
        for i, (got, want) in enumerate(zip(_outputs(y), _outputs(expected), strict=True)):
            got, want = got.double(), want.double()
            what = f"{entry.name}[{case.id}] {dtype} input {label}" + (f" (output {i})" if i else "")
            if not torch.isfinite(got).all():
                raise AssertionError(f"{what}: {int((~torch.isfinite(got)).sum())} non-finite outputs")
            slack = atol + 64 * torch.finfo(dtype).eps * offset * max(1.0, float(want.abs().max()))
            err = (got - want).abs() - rtol * want.abs()
            if float(err.max()) > slack:
                k = int(err.flatten().argmax())
                raise AssertionError(
                    f"{what}: got {float(got.flatten()[k]):.10g}, the reference {float(want.flatten()[k]):.10g} "
                    f"(bound {slack:.3g} + {rtol:g} relative)"
                )
