"""The one registry: layer name -> :class:`LayerInfo` (factory, kind, paper, formula, parameters, properties).

Layers register themselves with :func:`register`, a decorator placed on their class in their family file.
Names are matched case-, underscore- and hyphen-insensitively; an unknown name raises
:class:`UnknownLayerError` with the closest registered names.

Wherever normact accepts a layer it accepts a :data:`LayerType`: a registry name, a module class, or any
callable that returns a module (timm's ``LayerType`` convention); :func:`resolve` turns each into a factory.
"""

from __future__ import annotations

import difflib
import functools
import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal, TypeVar, Union, get_args

from torch import nn

Kind = Literal["norm", "act", "attention", "weight", "block"]
KINDS: tuple[str, ...] = get_args(Kind)

LayerType = Union[str, type[nn.Module], Callable[..., nn.Module]]  # noqa: UP007 (a runtime alias)

ModuleT = TypeVar("ModuleT", bound=type[nn.Module])


@dataclass(frozen=True)
class Paper:
    """A paper that defines a layer: title, year and arXiv id (``None`` for papers without one)."""

    title: str
    year: int
    arxiv: str | None = None
    authors: str | None = None

    def cite(self) -> str:
        who = f"{self.authors}, " if self.authors else ""
        where = f", arXiv:{self.arxiv}" if self.arxiv else ""
        return f"{who}{self.title} ({self.year}{where})"


@dataclass(frozen=True)
class Param:
    """A learnable parameter (or buffer) of a layer: its name, shape and initial value, as text."""

    name: str
    shape: str
    init: str
    buffer: bool = False


@dataclass(frozen=True)
class Properties:
    """Properties of a layer that users (and the bench, surgery and probes) select on.

    - ``batch_dependent``: the output of one sample depends on the other samples of the batch (train mode).
    - ``smooth``: the forward map is infinitely differentiable in its input (no kinks).
    - ``monotonic``: elementwise non-decreasing in its input (activations; ``False`` for norms).
    - ``custom_backward``: the backward pass is not the autograd derivative of the forward
      (an approximation or a memory-saving recomputation).
    - ``stateful``: forward updates buffers (running statistics) in train mode.
    - ``gated``: a gated activation that splits its input in two halves along ``dim``; the output is half as wide.
    - ``bounded_below``: (activations) ``inf_x g(x) > -inf`` (ReLU, SiLU, GELU; not LeakyReLU or tanh-free
      gated products).
    - ``self_gated``: (activations) of the form ``x * s(x)`` with a gate ``s`` computed from the same input
      (SiLU, GELU, Mish); the Gaussian moments (zero-centredness, gain) are computed, see
      :func:`normact.gaussian_moments`.
    - ``drop_in``: (norms) the layer can replace a standard normalization anywhere: one tensor in, one
      tensor of the same shape out, no conditioning input (SPADE's segmentation map, TD-LayerNorm's time
      step) and no structured layout (spiking time steps, spherical-harmonic degrees). The bench's models
      accept exactly these; see ``LayerInfo.input_layout`` for where their features sit.
    - ``elementwise``: (activations) ``g`` acts on each entry alone; False for those that mix the entries
      of a vector (top-k, PolyNorm, KAN layers), whose Gaussian moments depend on the width. Not used for
      norms.
    """

    batch_dependent: bool = False
    smooth: bool = True
    monotonic: bool = False
    custom_backward: bool = False
    stateful: bool = False
    gated: bool = False
    bounded_below: bool = False
    self_gated: bool = False
    elementwise: bool = True
    drop_in: bool = True


@dataclass(frozen=True)
class LayerInfo:
    """Everything the registry knows about one registered layer."""

    name: str
    kind: str
    cls: type[nn.Module]
    paper: Paper
    formula: str
    functional: Callable[..., Any]
    params: tuple[Param, ...] = ()
    properties: Properties = field(default_factory=Properties)
    defaults: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    aliases: tuple[str, ...] = ()
    verified_against: tuple[str, ...] = ()
    input_layout: str = "any"
    """Where a norm's features sit: ``"channels_first"`` (N, C, *), ``"last_dims"`` (*, normalized_shape),
    ``"tokens"`` ((N, C) or (N, L, C), features last, counted by ``num_features``), ``"other"`` (a structured
    layout, e.g. MPBN's (T, N, C, *)); ``"any"`` for activations. Derived from the constructor's first
    argument unless given to :func:`register`."""

    @property
    def factory(self) -> Callable[..., nn.Module]:
        """The callable :func:`create` calls: the class, with this entry's default keyword arguments bound."""
        if not self.defaults:
            return self.cls
        return functools.partial(self.cls, **self.defaults)

    @property
    def summary(self) -> str:
        """The first line of the class docstring."""
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (used by the CLI and docs)."""
        return {
            "name": self.name,
            "kind": self.kind,
            "class": f"{self.cls.__module__}.{self.cls.__qualname__}",
            "functional": f"normact.functional.{self.functional.__name__}",
            "defaults": dict(self.defaults),
            "paper": {
                "title": self.paper.title,
                "year": self.paper.year,
                "arxiv": self.paper.arxiv,
                "authors": self.paper.authors,
            },
            "formula": self.formula,
            "params": [{"name": p.name, "shape": p.shape, "init": p.init, "buffer": p.buffer} for p in self.params],
            "properties": {k: getattr(self.properties, k) for k in Properties.__dataclass_fields__},
            "aliases": list(self.aliases),
            "verified_against": ["the paper's formula in float64 (normact.testing harness)", *self.verified_against],
            "input_layout": self.input_layout,
        }


class UnknownLayerError(KeyError, ValueError):
    """A name that is not registered. ``suggestions`` holds the closest registered names."""

    def __init__(self, name: str, suggestions: list[str]):
        self.name = name
        self.suggestions = suggestions
        hint = f"; did you mean {', '.join(repr(s) for s in suggestions)}?" if suggestions else ""
        self.message = f"unknown layer {name!r}{hint} (normact.list_layers() lists all registered names)"
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would quote the message
        return self.message


_REGISTRY: dict[str, LayerInfo] = {}  # canonical name -> info
_LOOKUP: dict[str, str] = {}  # normalized name or alias -> canonical name
_BY_CLASS: dict[type[nn.Module], str] = {}  # class -> first name registered for it


def normalize_name(name: str) -> str:
    """Case-, underscore-, hyphen- and space-insensitive key: ``"RMS_Norm"`` -> ``"rmsnorm"``."""
    return name.lower().replace("_", "").replace("-", "").replace(" ", "")


def register(
    name: str,
    *,
    kind: Kind,
    paper: Paper,
    formula: str,
    functional: Callable[..., Any],
    params: tuple[Param, ...] = (),
    defaults: Mapping[str, Any] | None = None,
    aliases: tuple[str, ...] = (),
    verified_against: tuple[str, ...] = (),
    input_layout: str | None = None,
    **properties: bool,
) -> Callable[[ModuleT], ModuleT]:
    """Class decorator: register ``cls`` under ``name`` (stack it to register variants with other ``defaults``).

    ``verified_against`` names the independent implementations the test suite compares the layer with
    numerically (``"torch.nn.LayerNorm"``, ``"timm.layers.EvoNorm2dB0"``), beyond the float64 reference of the
    paper's formula that every layer's harness entry has; tests/test_docs.py checks each name appears in a test.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if name != name.lower() or " " in name:
        raise ValueError(f"registry names are lower snake case, got {name!r}")
    if input_layout not in (None, *INPUT_LAYOUTS):
        raise ValueError(f"input_layout must be one of {INPUT_LAYOUTS}, got {input_layout!r}")
    props = Properties(**properties)

    def decorator(cls: ModuleT) -> ModuleT:
        if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
            raise TypeError(f"@register({name!r}) decorates an nn.Module subclass, got {cls!r}")
        info = LayerInfo(
            name=name,
            kind=kind,
            cls=cls,
            paper=paper,
            formula=formula,
            functional=functional,
            params=tuple(params),
            properties=props,
            defaults=MappingProxyType(dict(defaults or {})),
            aliases=tuple(aliases),
            verified_against=tuple(verified_against),
            input_layout=input_layout or _derived_layout(kind, cls),
        )
        keys = [normalize_name(name)] + [normalize_name(a) for a in aliases]
        for key in keys:
            if key in _LOOKUP:
                raise ValueError(f"layer name {key!r} ({name}) is already registered as {_LOOKUP[key]!r}")
        for key in keys:
            _LOOKUP[key] = name
        _REGISTRY[name] = info
        _BY_CLASS.setdefault(cls, name)
        return cls

    return decorator


INPUT_LAYOUTS = ("channels_first", "last_dims", "tokens", "other", "any")


def _derived_layout(kind: str, cls: type[nn.Module]) -> str:
    """A norm's layout from its first constructor argument: ``normalized_shape`` means the last dims,
    ``num_features`` / ``num_channels`` channels first (torch's conventions)."""
    if kind != "norm":
        return "any"
    first = next(iter(inspect.signature(cls).parameters), "")
    return "last_dims" if first == "normalized_shape" else "channels_first"


def _suggest(name: str, n: int = 3) -> list[str]:
    key = normalize_name(name)
    close = difflib.get_close_matches(key, list(_LOOKUP), n=n, cutoff=0.6)
    contains = [k for k in _LOOKUP if key and (key in k or k in key)] if len(key) >= 3 else []
    out: list[str] = []
    for k in close + contains:
        canonical = _LOOKUP[k]
        if canonical not in out:
            out.append(canonical)
    return out[:n]


def get_info(layer: str | type[nn.Module]) -> LayerInfo:
    """The :class:`LayerInfo` of a registered name (or of a registered class)."""
    if isinstance(layer, type):
        if layer not in _BY_CLASS:
            raise UnknownLayerError(layer.__name__, _suggest(layer.__name__))
        return _REGISTRY[_BY_CLASS[layer]]
    if not isinstance(layer, str):
        raise TypeError(f"expected a layer name or class, got {type(layer).__name__}")
    key = normalize_name(layer)
    if key not in _LOOKUP:
        raise UnknownLayerError(layer, _suggest(layer))
    return _REGISTRY[_LOOKUP[key]]


info = get_info


def list_layers(kind: str | None = None) -> list[str]:
    """The registered names, sorted; only those of one ``kind`` (norm, act, attention, weight, block) if given."""
    if kind is not None and kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    return sorted(n for n, i in _REGISTRY.items() if kind is None or i.kind == kind)


def resolve(layer: LayerType) -> Callable[..., nn.Module]:
    """A factory for a :data:`LayerType`: a registry name, an ``nn.Module`` subclass or a callable."""
    if isinstance(layer, str):
        return get_info(layer).factory
    if isinstance(layer, type):
        if not issubclass(layer, nn.Module):
            raise TypeError(f"a layer class must subclass torch.nn.Module, got {layer.__qualname__}")
        return layer
    if callable(layer):
        return layer
    raise TypeError(f"a layer is a registry name, an nn.Module class or a factory callable, got {type(layer).__name__}")


def create(layer: LayerType, *args: Any, **kwargs: Any) -> nn.Module:
    """Build a layer from a name, class or factory: ``normact.create("dyt", 768)``."""
    module = resolve(layer)(*args, **kwargs)
    if not isinstance(module, nn.Module):
        raise TypeError(f"the factory for {layer!r} returned {type(module).__name__}, not an nn.Module")
    return module
