"""The harness database's record types: a :class:`LayerEntry` per registered layer, :class:`Case` per configuration.

An entry carries what the generic checks cannot derive: how to build the layer and its input, and an
**independent reference** written from the paper's formula. Everything else (gradcheck, the dtype
matrix, compile parity, serialization, bad input, constant input, shape properties) comes from the checks
in :mod:`normact.testing.checks`.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from normact.registry import LayerInfo, get_info

Params = dict[str, Tensor | None]
"""Named parameters and buffers of a layer (float64 copies taken before the forward pass); disabled ones
(registered as ``None``) are absent, so references use ``params.get(name)``."""

Reference = Callable[..., "Tensor | tuple[Tensor | tuple[Tensor, ...], dict[str, Tensor]]"]
"""``reference(x, params, hparams, **cond)``: the layer's output in float64 (a tuple of tensors for layers
returning several), optionally paired with a dict of the buffers it should hold after the forward pass
(running statistics). ``hparams`` holds every constructor argument, defaults included, and ``training``,
the module's mode; ``cond`` the case's conditioning inputs (float64 copies of floating ones). A reference
must not call the layer or ``normact.functional``."""

ReferenceGrad = Callable[..., dict[str, Tensor]]
"""``reference_grad(x, grad_out, params, hparams, **cond)``: for layers whose backward is deliberately not
the exact gradient of their forward (an approximate or streaming backward defined by the paper), the
gradients that backward should produce in float64: ``{"input": ..., <parameter name>: ...}``. ``grad_out``
has the output's shape (a tuple for layers returning several tensors)."""

Tolerance = tuple[float, float]  # (atol, rtol)

DEFAULT_TOLERANCES: dict[torch.dtype, Tolerance] = {
    torch.float64: (1e-10, 1e-9),
    torch.float32: (2e-5, 2e-4),
    torch.bfloat16: (3e-2, 3e-2),
    torch.float16: (4e-3, 4e-3),
}


def randn_input(shape: Sequence[int], generator: torch.Generator, scale: float, offset: float) -> Tensor:
    """Standard normal input in float64, scaled and shifted (a non-zero mean catches centering bugs)."""
    return torch.randn(tuple(shape), generator=generator, dtype=torch.float64) * scale + offset


@dataclass(frozen=True)
class Case:
    """One way to build and call a layer.

    Args:
        init: constructor keyword arguments (the registry's defaults for the name are applied first).
        shape: the input shape.
        desc: a short label for test ids.
        train: module mode for the call.
        scale, offset: the default input is ``randn(shape) * scale + offset`` in float64.
        input_fn: ``input_fn(shape, generator) -> float64 tensor`` replacing the default input.
        layout: overrides the entry's :class:`Layout` for this case (e.g. a channels-first variant).
        cond_fn: ``cond_fn(shape, generator) -> {name: tensor}``: conditioning inputs passed by keyword to the
            forward, the functional form and the reference (a padding mask, a segmentation map, a time
            step, messages). Floating ones are made float64, cast with the input in the dtype checks and
            differentiated in gradcheck; boolean and integer ones are passed as they are.
    """

    init: Mapping[str, Any] = field(default_factory=dict)
    shape: tuple[int, ...] = (4, 16)
    desc: str = ""
    train: bool = True
    scale: float = 1.5
    offset: float = 0.0
    input_fn: Callable[[Sequence[int], torch.Generator], Tensor] | None = None
    layout: Layout | None = None
    cond_fn: Callable[[Sequence[int], torch.Generator], Mapping[str, Tensor]] | None = None

    @property
    def id(self) -> str:
        return self.desc or "x".join(str(s) for s in self.shape)

    def make_input(self, generator: torch.Generator) -> Tensor:
        if self.input_fn is not None:
            return self.input_fn(self.shape, generator).to(torch.float64)
        return randn_input(self.shape, generator, self.scale, self.offset)

    def make_cond(self, generator: torch.Generator, shape: Sequence[int] | None = None) -> dict[str, Tensor]:
        """The conditioning inputs for an input of ``shape`` (default: the case's), floating ones in float64."""
        if self.cond_fn is None:
            return {}
        cond = self.cond_fn(tuple(self.shape if shape is None else shape), generator)
        return {k: v.to(torch.float64) if v.is_floating_point() else v for k, v in cond.items()}


@dataclass(frozen=True)
class Layout:
    """Where the feature count sits in the input, and which ranks are valid; drives the bad-input checks
    and the property-based shape tests.

    Args:
        feature_arg: the constructor argument holding the feature count (None for parameter-free layers).
        feature_axis: the input axis that must equal it (None when any size is accepted).
        ranks: valid input ranks; ``None`` means any rank >= ``min_rank``.
        min_rank: the smallest valid rank when ``ranks`` is None.
        init_for: ``init_for(f) -> (init kwargs, feature size)`` for the shape tests; default
            ``({feature_arg: f}, f)``.
        even_axis: an axis whose size must be even (gated activations split it in halves).
        min_batch: the smallest first-dim size in train mode (2 for batch statistics).
        min_spatial: the smallest product of the dims after the channel dim (2 for instance statistics).
    """

    feature_arg: str | None = None
    feature_axis: int | None = None
    ranks: tuple[int, ...] | None = None
    min_rank: int = 0
    init_for: Callable[[int], tuple[dict[str, Any], int]] | None = None
    even_axis: int | None = None
    min_batch: int = 1
    min_spatial: int = 1

    def init_and_features(self, f: int) -> tuple[dict[str, Any], int]:
        if self.init_for is not None:
            return self.init_for(f)
        return ({self.feature_arg: f} if self.feature_arg else {}), f

    def valid_ranks(self, max_rank: int = 5) -> tuple[int, ...]:
        if self.ranks is not None:
            return self.ranks
        return tuple(range(self.min_rank, max_rank + 1))

    def invalid_ranks(self) -> tuple[int, ...]:
        """Ranks just outside the valid set (empty if every rank is valid)."""
        valid = set(self.valid_ranks(max_rank=8))
        out = []
        if min(valid) > 0:
            out.append(min(valid) - 1)
        if self.ranks is not None:
            out += [r for r in range(0, max(valid) + 2) if r not in valid and r not in out]
        return tuple(out)


MpReference = Callable[..., Any]
"""``reference(x, params, hparams)``: the layer's value at one input in mpmath (``x`` an ``mpf``; for gated
layers the pair of halves ``(a, b)``). ``params`` maps every parameter and floating buffer to an ``mpf``
(0-d) or nested lists of ``mpf``; ``hparams`` is :meth:`LayerEntry.hparams` in evaluation mode. It must not
call normact."""


@dataclass(frozen=True)
class Setting:
    """Parameter values (``name -> value``, written into every element) at which the derivatives are also
    checked, with the switch points that those values move (e.g. APA's ``x = ln(lambda) / kappa``)."""

    params: Mapping[str, float]
    points: tuple[float, ...] = ()


@dataclass(frozen=True)
class Numerics:
    """How an elementwise layer is held against its mpmath reference.

    Args:
        reference: the function in mpmath (see :data:`MpReference`).
        switch_points: inputs, at the initial parameters, where the implementation switches form (beyond
            :data:`~normact.testing.numerics.SWITCH_POINTS`).
        settings: other parameter values with their switch points.
        kink_grads: the derivative the layer returns exactly at each of ``entry.kinks`` (same order), at the
            initial parameters: the documented convention (torch's value where torch has the function).
        torch_twin: ``torch_twin(x, module) -> Tensor``, torch's own function with the module's parameters,
            where torch has it: ``kink_grads`` must equal its autograd derivative at the kinks.
        ulps: the error bound's multiple of ``eps * (|f| + |x f'|)``.
        tail: the largest ``|x|`` swept.
        fixed: for gated layers, the other half's value while one half is swept.
        gate: for gated layers, the half (0 or 1) in which ``entry.kinks`` lie.
    """

    reference: MpReference
    switch_points: tuple[float, ...] = ()
    settings: tuple[Setting, ...] = ()
    kink_grads: tuple[float, ...] = ()
    torch_twin: Callable[[Tensor, nn.Module], Tensor] | None = None
    ulps: float = 16.0
    tail: float = 2.0**14
    fixed: float = 1.0
    gate: int = 0


@dataclass(frozen=True)
class LayerEntry:
    """The harness entry of one registered layer.

    Args:
        name: the registry name.
        reference: the independent float64 reference (see :data:`Reference`).
        cases: configurations to check (each check runs on every case).
        functional: ``functional(x, module, **cond) -> Tensor``: the same computation through
            ``normact.functional``, passing the module's parameters and buffers.
        layout: where the features are, for bad-input and shape tests.
        tolerances: per-dtype ``(atol, rtol)`` against the float64 reference; missing dtypes use
            :data:`DEFAULT_TOLERANCES`.
        kinks: input values where the layer is not differentiable; gradient checks keep inputs away from them.
        bad_init: constructor kwargs that must be rejected with ValueError/TypeError, beyond the generic ones.
        large_input: also check inputs of magnitude 1e4 in every dtype (defaults to True for norms).
        perturb: ``perturb(module, generator)`` moves parameters and buffers away from their initial values
            before comparisons; the default adds noise to parameters and running statistics.
        reference_grad: for a backward that is deliberately not the exact gradient (see
            :data:`ReferenceGrad`): the gradient check compares the layer's backward with it in float64
            instead of running gradcheck against finite differences.
        points: exact values ``(x, f(x))`` worked out by hand from the formula (activations need at least
            three): the layer built with the registry defaults and ``points_init`` (initial parameters, no
            perturbation) must give them in float64. For gated activations ``x`` is the pair of halves
            ``(a, b)``.
        points_init: constructor arguments for the ``points`` and kink checks (default: registry defaults).
        numerics: the layer against an mpmath reference (elementwise layers): derivatives at switch points
            and kinks, relative accuracy over the tails (:mod:`normact.testing.numerics`).
    """

    name: str
    reference: Reference
    cases: tuple[Case, ...]
    functional: Callable[..., Tensor | tuple[Tensor, ...]]
    layout: Layout = field(default_factory=Layout)
    tolerances: Mapping[torch.dtype, Tolerance] = field(default_factory=dict)
    kinks: tuple[float, ...] = ()
    bad_init: tuple[Mapping[str, Any], ...] = ()
    large_input: bool | None = None
    perturb: Callable[[nn.Module, torch.Generator], None] | None = None
    reference_grad: ReferenceGrad | None = None
    points: tuple[tuple[float | tuple[float, float], float], ...] = ()
    points_init: Mapping[str, Any] = field(default_factory=dict)
    numerics: Numerics | None = None

    @functools.cached_property
    def info(self) -> LayerInfo:
        return get_info(self.name)

    def layout_for(self, case: Case) -> Layout:
        return case.layout or self.layout

    def tolerance(self, dtype: torch.dtype) -> Tolerance:
        return self.tolerances.get(dtype, DEFAULT_TOLERANCES[dtype])

    @property
    def checks_large_input(self) -> bool:
        return self.info.kind == "norm" if self.large_input is None else self.large_input

    def build(self, case: Case, **factory_kwargs: Any) -> nn.Module:
        """The layer of ``case`` (registry defaults, then ``case.init``, then the factory kwargs the layer
        accepts: parameter-free activations take no ``device``/``dtype``, as in torch.nn)."""
        accepted = inspect.signature(self.info.factory).parameters
        factory_kwargs = {k: v for k, v in factory_kwargs.items() if k in accepted}
        module = self.info.factory(**{**case.init, **factory_kwargs})
        module.train(case.train)
        return module

    def hparams(self, case: Case) -> dict[str, Any]:
        """Every constructor argument of ``case`` with defaults filled in, plus ``training`` (the module's
        mode): what the reference receives."""
        signature = inspect.signature(self.info.factory)
        bound = signature.bind_partial(**case.init)
        bound.apply_defaults()
        hparams = {k: v for k, v in bound.arguments.items() if k not in ("device", "dtype")}
        hparams["training"] = case.train
        return hparams
