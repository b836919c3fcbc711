"""The generic layer checks. Each takes a :class:`LayerEntry` (and a :class:`Case`) and raises
``AssertionError`` with a precise report when the layer breaks its contract.

They are plain functions so that any test runner (normact's own parametrized pytest suite, or a user's
suite for their own layers) can call them.
"""

from __future__ import annotations

import copy
import inspect
import io
import pickle
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from normact.testing import numerics
from normact.testing._prepare import (
    _SEED,
    _apply_pointwise,
    _double,
    _outputs,
    _pointwise_hparams,
    _pointwise_module,
    call_reference,
    cond_inputs,
    generator,
    prepared,
    snapshot,
)
from normact.testing._prepare import default_perturb as default_perturb  # re-exported: part of this module's API
from normact.testing.entry import Case, LayerEntry

LOW_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
FEATURE_ARGS = ("num_features", "normalized_shape", "num_channels", "dim", "in_features")


# --------------------------------------------------------------------------------------------------
# helpers


def assert_close(
    actual: Tensor | tuple[Tensor, ...], expected: Tensor | tuple[Tensor, ...], atol: float, rtol: float, what: str
) -> None:
    """``|actual - expected| <= atol + rtol |expected|`` elementwise, with a report of the worst element;
    tuples (layers with several outputs) are compared output by output."""
    if isinstance(actual, tuple) or isinstance(expected, tuple):
        actual, expected = _outputs(actual), _outputs(expected)
        if len(actual) != len(expected):
            raise AssertionError(f"{what}: {len(actual)} outputs, expected {len(expected)}")
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_close(a, e, atol, rtol, f"{what} (output {i})")
        return
    if actual.shape != expected.shape:
        raise AssertionError(f"{what}: shape {tuple(actual.shape)} != expected {tuple(expected.shape)}")
    a, e = actual.detach().double(), expected.detach().double()
    if not torch.isfinite(a).all():
        raise AssertionError(f"{what}: {int((~torch.isfinite(a)).sum())} non-finite values")
    err = (a - e).abs()
    bound = atol + rtol * e.abs()
    bad = err > bound
    if bad.any():
        i = int((err - bound).flatten().argmax())
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{a.numel()} elements off (atol={atol:g}, rtol={rtol:g}); worst at flat "
            f"index {i}: got {a.flatten()[i].item():.10g}, expected {e.flatten()[i].item():.10g}, "
            f"max abs err {err.max().item():.3g}"
        )


def away_from_kinks(x: Tensor, kinks: tuple[float, ...], margin: float = 0.05) -> Tensor:
    """Push input values within ``margin`` of a kink to ``kink ± margin`` (finite differences need smoothness)."""
    for k in kinks:
        near = (x - k).abs() < margin
        x = torch.where(near, torch.where(x >= k, k + margin, k - margin).to(x), x)
    return x


def _flat(y: Tensor | tuple[Tensor, ...]) -> Tensor:
    """Every output flattened into one vector (for gradcheck and finite-gradient checks)."""
    outs = _outputs(y)
    return outs[0].reshape(-1) if len(outs) == 1 else torch.cat([o.reshape(-1) for o in outs])


def _scale(y: Tensor | tuple[Tensor, ...], factor: float) -> Tensor | tuple[Tensor, ...]:
    return tuple(o * factor for o in y) if isinstance(y, tuple) else y * factor


def _equal(a: Tensor | tuple[Tensor, ...], b: Tensor | tuple[Tensor, ...]) -> bool:
    return all(torch.equal(u, v) for u, v in zip(_outputs(a), _outputs(b), strict=True))


# --------------------------------------------------------------------------------------------------
# the checks


def check_reference(entry: LayerEntry, case: Case) -> None:
    """float64 output (and updated buffers) agree with the independent reference; the functional form
    agrees with the module."""
    module = prepared(entry, case)
    x = case.make_input(generator())
    cond = cond_inputs(case)
    params = snapshot(module)
    before = copy.deepcopy(module)
    y = module(x, **cond)
    expected, buffers = call_reference(entry, case, x, params, cond)
    atol, rtol = entry.tolerance(torch.float64)
    assert_close(y, expected, atol, rtol, f"{entry.name}[{case.id}] float64 output vs reference")
    for name, want in buffers.items():
        got = dict(module.named_buffers())[name]
        assert_close(got, want, atol, rtol, f"{entry.name}[{case.id}] buffer {name!r} after forward")
    y_functional = entry.functional(x, before, **cond)
    assert_close(y_functional, y, 1e-12, 1e-12, f"{entry.name}[{case.id}] normact.functional vs module")


def check_detects_perturbation(entry: LayerEntry, case: Case) -> None:
    """The reference comparison is sharp enough to notice an output scaled by 1.001, and every learnable
    parameter changes the output (no dead parameters)."""
    module = prepared(entry, case)
    module.register_forward_hook(lambda m, args, out: _scale(out, 1.001))
    x = case.make_input(generator())
    cond = cond_inputs(case)
    params = snapshot(module)
    y = module(x, **cond)
    expected, _ = call_reference(entry, case, x, params, cond)
    atol, rtol = entry.tolerance(torch.float64)
    try:
        assert_close(y, expected, atol, rtol, "mutated")
    except AssertionError:
        pass
    else:
        raise AssertionError(f"{entry.name}[{case.id}]: an output scaled by 1.001 still matches the reference")
    module = prepared(entry, case)
    base = copy.deepcopy(module)(x, **cond)
    for name, _ in module.named_parameters():
        changed = copy.deepcopy(module)
        with torch.no_grad():
            dict(changed.named_parameters())[name].add_(0.1)
        if _equal(changed(x, **cond), base):
            raise AssertionError(f"{entry.name}[{case.id}]: parameter {name!r} does not affect the output")


def check_gradients(entry: LayerEntry, case: Case) -> None:
    """gradcheck in float64 for the input, every parameter and the floating conditioning inputs;
    gradgradcheck for smooth layers. For an entry with ``reference_grad`` (a backward that is deliberately
    not the exact gradient) the layer's backward is compared with that reference instead."""
    if entry.reference_grad is not None:
        _check_reference_grad(entry, case)
        return
    module = prepared(entry, case)
    x = away_from_kinks(case.make_input(generator()), entry.kinks).requires_grad_(True)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    params = [dict(module.named_parameters())[n].detach().clone().requires_grad_(True) for n in names]
    cond = cond_inputs(case)
    cond_names = [k for k, v in cond.items() if v.is_floating_point()]
    fixed = {k: v for k, v in cond.items() if k not in cond_names}
    cond_values = [cond[k].requires_grad_(True) for k in cond_names]

    def fn(inp: Tensor, *rest: Tensor) -> Tensor:
        ps, cs = rest[: len(names)], rest[len(names) :]
        kwargs = {**fixed, **dict(zip(cond_names, cs, strict=True))}
        return _flat(functional_call(module, dict(zip(names, ps, strict=True)), (inp,), kwargs))

    inputs = (x, *params, *cond_values)
    torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)
    if entry.info.properties.smooth:
        torch.autograd.gradgradcheck(fn, inputs, eps=1e-6, atol=1e-5, rtol=1e-4, fast_mode=True)


def _check_reference_grad(entry: LayerEntry, case: Case) -> None:
    """The layer's backward (input and parameter gradients) against ``entry.reference_grad`` in float64."""
    assert entry.reference_grad is not None
    module = prepared(entry, case)
    params = snapshot(module)
    x = away_from_kinks(case.make_input(generator()), entry.kinks)
    cond = cond_inputs(case)
    y = module(x.clone().requires_grad_(True), **cond)
    gen = generator(_SEED + 3)
    grad_out = tuple(torch.randn(o.shape, generator=gen, dtype=torch.float64) for o in _outputs(y))
    module = prepared(entry, case)
    xg = x.clone().requires_grad_(True)
    outs = _outputs(module(xg, **cond))
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    got = torch.autograd.grad(
        outs, [xg, *[dict(module.named_parameters())[n] for n in names]], grad_out, allow_unused=True
    )
    expected = entry.reference_grad(
        x.clone(), grad_out if len(grad_out) > 1 else grad_out[0], params, entry.hparams(case), **_double(cond)
    )
    atol, rtol = entry.tolerance(torch.float64)
    for name, g in zip(["input", *names], got, strict=True):
        if name not in expected:
            raise AssertionError(f"{entry.name}[{case.id}]: reference_grad gives no gradient for {name!r}")
        want = expected[name]
        assert_close(
            torch.zeros_like(want) if g is None else g, want, atol, rtol, f"{entry.name}[{case.id}] grad {name!r}"
        )


def _backward_finite(
    entry: LayerEntry, case: Case, module: nn.Module, x: Tensor, what: str, cond: dict[str, Tensor] | None = None
) -> None:
    x = x.detach().clone().requires_grad_(True)
    y = _flat(module(x, **(cond or {})))
    if not torch.isfinite(y).all():
        raise AssertionError(f"{entry.name}[{case.id}] {what}: non-finite output")
    grad_out = torch.ones_like(y) / max(y.numel(), 1)
    grads = torch.autograd.grad(
        y, [x, *[p for p in module.parameters() if p.requires_grad]], grad_out, allow_unused=True
    )
    for g in grads:
        if g is not None and not torch.isfinite(g).all():
            raise AssertionError(f"{entry.name}[{case.id}] {what}: non-finite gradient")


def check_dtypes(entry: LayerEntry, case: Case) -> None:
    """float32, bfloat16 and float16 outputs within tolerance of the float64 reference evaluated on the
    same (rounded) input and parameters; finite outputs and gradients; inputs of magnitude 1e4 too for
    normalizing layers."""
    x64 = case.make_input(generator())
    inputs = [("", x64)]
    if entry.checks_large_input:
        inputs.append((" |x|=1e4", x64 / x64.abs().max().clamp_min(1e-12) * 1e4))
    for dtype in LOW_DTYPES:
        atol, rtol = entry.tolerance(dtype)
        cond = cond_inputs(case, dtype)
        for label, x in inputs:
            module = prepared(entry, case, dtype)
            x_low = x.to(dtype)
            params = snapshot(module)
            y = module(x_low, **cond)
            what = f"{entry.name}[{case.id}] {dtype}{label}"
            for out in _outputs(y):
                if out.dtype != dtype:
                    raise AssertionError(f"{what}: output dtype {out.dtype}, expected {dtype}")
            expected, _ = call_reference(entry, case, x_low.double(), params, cond)
            assert_close(y, expected, atol, rtol, what)
            _backward_finite(entry, case, prepared(entry, case, dtype), x_low, what, cond)


def check_compile(entry: LayerEntry, case: Case, backend: str = "aot_eager") -> None:
    """``torch.compile(fullgraph=True)`` gives the eager output, input gradient and buffers."""
    torch._dynamo.reset()
    eager = prepared(entry, case)
    compiled_module = copy.deepcopy(eager)
    compiled = torch.compile(compiled_module, backend=backend, fullgraph=True)
    x = away_from_kinks(case.make_input(generator()), entry.kinks)
    cond = cond_inputs(case)
    xe, xc = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    ye, yc = eager(xe, **cond), compiled(xc, **cond)
    what = f"{entry.name}[{case.id}] torch.compile({backend})"
    assert_close(yc, ye, 1e-9, 1e-9, f"{what} output")
    (ge,) = torch.autograd.grad(_flat(ye).sum(), xe)
    (gc,) = torch.autograd.grad(_flat(yc).sum(), xc)
    assert_close(gc, ge, 1e-9, 1e-9, f"{what} input gradient")
    eager_buffers = dict(eager.named_buffers())
    for name, b in compiled_module.named_buffers():
        assert_close(b.double(), eager_buffers[name].double(), 1e-9, 1e-9, f"{what} buffer {name!r}")
    torch._dynamo.reset()


def check_serialization(entry: LayerEntry, case: Case) -> None:
    """state_dict save/load (``weights_only``) into a fresh layer, pickling and deepcopy reproduce outputs."""
    module = prepared(entry, case).eval()
    x = case.make_input(generator())
    cond = cond_inputs(case)
    expected = copy.deepcopy(module)(x, **cond)
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    buf.seek(0)
    fresh = entry.build(case, dtype=torch.float64).eval()
    missing, unexpected = fresh.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    assert not missing and not unexpected
    for label, clone in (
        ("state_dict round trip", fresh),
        ("pickle", pickle.loads(pickle.dumps(module))),
        ("deepcopy", copy.deepcopy(module)),
    ):
        assert_close(clone(x, **cond), expected, 0.0, 0.0, f"{entry.name}[{case.id}] {label}")


def check_factory_kwargs(entry: LayerEntry, case: Case) -> None:
    """``dtype=`` and ``device=`` place every floating parameter and buffer; ``reset_parameters()`` restores
    the initial values; ``repr`` works."""
    module = entry.build(case, dtype=torch.float64)
    for name, t in [*module.named_parameters(), *module.named_buffers()]:
        if t.is_floating_point() and t.dtype != torch.float64:
            raise AssertionError(f"{entry.name}: {name} is {t.dtype} after dtype=torch.float64")
    meta = entry.build(case, device="meta")
    for name, t in [*meta.named_parameters(), *meta.named_buffers()]:
        if t.device.type != "meta":
            raise AssertionError(f"{entry.name}: {name} on {t.device} after device='meta'")
    torch.manual_seed(_SEED)
    fresh = entry.build(case, dtype=torch.float64)
    perturbed = prepared(entry, case)
    if any(True for _ in perturbed.parameters()) or any(True for _ in perturbed.buffers()):
        if not hasattr(perturbed, "reset_parameters"):
            raise AssertionError(f"{entry.name}: has parameters or buffers but no reset_parameters()")
        torch.manual_seed(_SEED)
        perturbed.reset_parameters()
        fresh_state = fresh.state_dict()
        for key, value in perturbed.state_dict().items():
            if not torch.equal(value, fresh_state[key]):
                raise AssertionError(f"{entry.name}: reset_parameters() does not restore {key!r}")
    repr(module)


def _expect_error(
    entry: LayerEntry,
    what: str,
    fn: Callable[[], Any],
    kinds: tuple[type[Exception], ...],
    needles: tuple[str, ...],
) -> None:
    try:
        fn()
    except kinds as err:
        message = str(err)
        for needle in needles:
            if needle not in message:
                raise AssertionError(
                    f"{entry.name}: {what} raised {type(err).__name__} without naming {needle!r}: {message}"
                ) from err
        return
    except Exception as err:
        raise AssertionError(
            f"{entry.name}: {what} raised {type(err).__name__} (expected {'/'.join(k.__name__ for k in kinds)}): {err}"
        ) from err
    raise AssertionError(f"{entry.name}: {what} was accepted")


def check_bad_input(entry: LayerEntry, case: Case) -> None:
    """Wrong feature count and wrong rank raise ValueError naming the expected shape; non-tensor and
    integer input raise TypeError; invalid hyperparameters are rejected at construction."""
    module = prepared(entry, case)
    layout = entry.layout_for(case)
    shape = list(case.shape)
    cond = cond_inputs(case)
    _expect_error(entry, "a list input", lambda: module(shape, **cond), (TypeError,), ())
    ints = torch.ones(case.shape, dtype=torch.long)
    _expect_error(entry, "an integer tensor", lambda: module(ints, **cond), (TypeError,), ("float",))
    if layout.feature_axis is not None and len(shape) > abs(layout.feature_axis) - (layout.feature_axis < 0):
        wrong = list(shape)
        expected = wrong[layout.feature_axis]
        wrong[layout.feature_axis] += 1
        bad = torch.randn(wrong, dtype=torch.float64)
        _expect_error(
            entry,
            f"input of shape {tuple(wrong)}",
            lambda: module(bad, **cond),
            (ValueError,),
            (str(expected), "shape"),
        )
    if layout.even_axis is not None:
        wrong = list(shape)
        wrong[layout.even_axis] += 1
        odd = torch.randn(wrong, dtype=torch.float64)
        _expect_error(
            entry, f"input of shape {tuple(wrong)}", lambda: module(odd, **cond), (ValueError,), ("even", "shape")
        )
    for rank in layout.invalid_ranks():
        wrong = shape[:rank] if rank <= len(shape) else shape + [3] * (rank - len(shape))
        bad = torch.randn(wrong, dtype=torch.float64)
        _expect_error(entry, f"a {rank}-D input", lambda b=bad: module(b, **cond), (ValueError,), ("shape",))
    check_bad_init(entry, case)


def check_bad_init(entry: LayerEntry, case: Case) -> None:
    """eps <= 0, non-positive feature counts and the entry's own bad arguments are rejected at construction."""
    params = inspect.signature(entry.info.factory).parameters
    bad: list[dict[str, Any]] = []
    if "eps" in params:
        bad += [{"eps": 0.0}, {"eps": -1e-5}, {"eps": float("nan")}]
    for arg in FEATURE_ARGS:
        if arg in params and arg == entry.layout_for(case).feature_arg:
            bad += [{arg: 0}, {arg: -3}, {arg: 2.5}]
    bad += [dict(b) for b in entry.bad_init]
    for kwargs in bad:
        init = {**case.init, **kwargs}
        _expect_error(
            entry,
            f"construction with {kwargs}",
            lambda i=init: entry.info.factory(**i),
            (ValueError, TypeError),
            (),
        )


def check_constant_input(entry: LayerEntry, case: Case) -> None:
    """Zero-variance inputs (all 3.0, all 0.0) give finite outputs and gradients in float64 and float32."""
    for dtype in (torch.float64, torch.float32):
        for value in (3.0, 0.0):
            module = prepared(entry, case, dtype)
            x = torch.full(case.shape, value, dtype=dtype)
            _backward_finite(entry, case, module, x, f"constant input {value} in {dtype}", cond_inputs(case, dtype))


def check_contract(entry: LayerEntry) -> None:
    """The class follows the layer contract: docstring with the math and the paper, ``extra_repr``,
    ``device``/``dtype`` factory kwargs when it owns tensors, and a functional form in ``normact.functional``."""
    import normact.functional

    info = entry.info
    cls = info.cls
    doc = inspect.getdoc(cls) or ""
    if ".. math::" not in doc:
        raise AssertionError(f"{entry.name}: the docstring of {cls.__name__} has no '.. math::' formula")
    paper_marks = [info.paper.arxiv] if info.paper.arxiv else [str(info.paper.year)]
    for mark in paper_marks:
        if mark not in doc:
            raise AssertionError(f"{entry.name}: the docstring of {cls.__name__} does not cite the paper ({mark})")
    if cls.extra_repr is nn.Module.extra_repr:
        raise AssertionError(f"{entry.name}: {cls.__name__} does not define extra_repr()")
    module = entry.build(entry.cases[0])
    owns_tensors = any(True for _ in module.parameters()) or any(True for _ in module.buffers())
    signature = inspect.signature(cls)
    if owns_tensors and not {"device", "dtype"} <= set(signature.parameters):
        raise AssertionError(f"{entry.name}: {cls.__name__} owns tensors but takes no device=/dtype=")
    name = info.functional.__name__
    if getattr(normact.functional, name, None) is not info.functional:
        raise AssertionError(f"{entry.name}: functional {name} is not exported by normact.functional")
    if not info.formula or not info.paper.title:
        raise AssertionError(f"{entry.name}: registry metadata lacks a formula or a paper")


def check_inplace(entry: LayerEntry, case: Case) -> None:
    """Layers with ``inplace=True`` overwrite their input with the out-of-place result."""
    if "inplace" not in inspect.signature(entry.info.factory).parameters:
        return
    x = case.make_input(generator())
    cond = cond_inputs(case)
    expected = entry.build(case, dtype=torch.float64)(x.clone(), **cond)
    module = entry.info.factory(**{**case.init, "inplace": True}).train(case.train)
    x_inplace = x.clone()
    out = module(x_inplace, **cond)
    assert_close(out, expected, 0.0, 0.0, f"{entry.name}[{case.id}] inplace output")
    assert_close(x_inplace, expected, 0.0, 0.0, f"{entry.name}[{case.id}] inplace input")


def check_points(entry: LayerEntry) -> None:
    """The exact values ``entry.points`` (worked out from the formula) in float64, to 1e-12."""
    if not entry.points:
        return
    module = _pointwise_module(entry)
    xs = torch.tensor([p[0] for p in entry.points], dtype=torch.float64)
    want = torch.tensor([p[1] for p in entry.points], dtype=torch.float64)
    got = _apply_pointwise(entry, module, xs).reshape(-1)
    for (x, expected), value in zip(entry.points, got.tolist(), strict=True):
        if not abs(value - expected) <= 1e-12 + 1e-12 * abs(expected):
            raise AssertionError(f"{entry.name}: f({x}) = {value!r}, expected {expected!r} from the formula")
    assert want.shape == got.shape


def check_kink_derivatives(entry: LayerEntry, offset: float = 1e-3) -> None:
    """On each side of each kink (``entry.kinks``) the layer's derivative equals the reference's (autograd
    through the float64 reference), so that gradcheck, which avoids the kinks, misses nothing there.
    Elementwise activations only (a norm's kinks are not at fixed input values)."""
    if not entry.kinks or entry.info.kind != "act":
        return
    module = _pointwise_module(entry)
    params = snapshot(module)
    hparams = _pointwise_hparams(entry)
    for kink in entry.kinks:
        x = torch.tensor([kink - offset, kink + offset], dtype=torch.float64)
        if entry.info.properties.gated:
            x = torch.stack([x, torch.ones_like(x)], dim=-1)
        x_layer = x.clone().requires_grad_(True)
        (g_layer,) = torch.autograd.grad(_apply_pointwise(entry, module, x_layer).sum(), x_layer)
        x_ref = x.clone().requires_grad_(True)
        out = entry.reference(x_ref, params, hparams)
        y_ref = out[0] if isinstance(out, tuple) else out
        (g_ref,) = torch.autograd.grad(y_ref.sum(), x_ref)
        assert_close(g_layer, g_ref, 1e-9, 1e-9, f"{entry.name}: derivative on each side of the kink at {kink}")


CASE_CHECKS: dict[str, Callable[[LayerEntry, Case], None]] = {
    "reference": check_reference,
    "detects_perturbation": check_detects_perturbation,
    "gradients": check_gradients,
    "dtypes": check_dtypes,
    "compile": check_compile,
    "serialization": check_serialization,
    "factory_kwargs": check_factory_kwargs,
    "bad_input": check_bad_input,
    "constant_input": check_constant_input,
    "inplace": check_inplace,
}
"""Every per-case check, by name: a test suite parametrizes over entries x cases x these."""


def run_all(entry: LayerEntry, compile_backend: str = "aot_eager") -> None:
    """Run every check on every case of ``entry`` (for users putting their own layer through the harness),
    with the mpmath checks of :mod:`normact.testing.numerics` where the entry has ``numerics`` and the extreme
    magnitudes and offsets for norms."""
    check_contract(entry)
    check_points(entry)
    check_kink_derivatives(entry)
    if entry.numerics is not None:
        numerics.check_switch_derivatives(entry)
        for dtype in (torch.float32, torch.float64):
            numerics.check_tails(entry, dtype)
    for case in entry.cases:
        for name, check in CASE_CHECKS.items():
            if name == "compile":
                check_compile(entry, case, compile_backend)
            else:
                check(entry, case)
        if entry.info.kind == "norm":
            numerics.check_norm_extremes(entry, case)
