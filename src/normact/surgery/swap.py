"""Swap layers in a trained model: every module matching ``source`` is replaced by one built from ``target``.

>>> report = swap(model, "layernorm", "dyt")         # doctest: +SKIP
>>> print(report)                                    # doctest: +SKIP

**Sources** (what to replace):

- a registry name (``"layernorm"``, ``"rmsnorm"``, ``"batchnorm"``, ``"groupnorm"``, ``"gelu"``, ``"silu"``,
  ``"relu"``...; case-, underscore- and hyphen-insensitive; or ``"layer:NAME"``). It matches the normact class
  registered under that name, torch's class of the same name and the equivalent third-party classes, found by
  class name and duck typing (nothing is imported):

  - ``layernorm``: ``torch.nn.LayerNorm`` and its subclasses (timm ``LayerNorm``/``LayerNorm2d``, Hugging Face
    ``ConvNextLayerNorm``...), normact ``LayerNorm``/``LayerNorm2d``, and leaf modules named ``*LayerNorm`` or
    ``*LayerNorm2d`` that subtract a mean (``VitDetLayerNorm``);
  - ``rmsnorm``: ``torch.nn.RMSNorm``, normact ``RMSNorm``, leaf modules named ``*RMSNorm``/``*RmsNorm``
    (``LlamaRMSNorm``, ``Qwen2RMSNorm``, timm ``RmsNorm``/``RmsNorm2d``) and ``*LayerNorm`` classes whose forward
    divides by the root mean square without subtracting a mean (``T5LayerNorm``, ``CpmAntLayerNorm``);
  - ``batchnorm`` (every dimension; ``batchnorm1d``/``batchnorm2d`` one): torch's ``_BatchNorm`` subclasses
    (with ``SyncBatchNorm`` and timm ``BatchNormAct2d``), normact's, and ``*BatchNorm{1,2,3}d`` leaves
    (torchvision's ``FrozenBatchNorm2d``); ``instancenorm`` likewise; ``groupnorm``: ``torch.nn.GroupNorm``
    subclasses (timm ``GroupNorm``/``GroupNorm1``) and normact ``GroupNorm``/``GroupNorm1``;
  - activations: torch's class, normact's, and the ``transformers.activations`` / timm classes of the same
    function: ``gelu`` (erf and tanh forms: ``GELUActivation``, ``NewGELUActivation`` (``gelu_new``),
    ``FastGELUActivation``, ``GELUTanh``/``PytorchGELUTanh``, ``AccurateGELUActivation``; ``gelu_tanh`` only the
    tanh forms), ``silu`` (``SiLUActivation``), ``gelu_sigmoid``/``quick_gelu`` (``QuickGELUActivation``),
    ``relu2`` (``ReLUSquaredActivation``), ``mish`` (``MishActivation``), and, for any other name, classes named
    like the registered class (optionally with an ``Activation`` suffix). Activations stored as plain function
    attributes (``self.act = torch.nn.functional.gelu``, ``nn.TransformerEncoderLayer.activation``) are replaced
    by the new module too and reported (``old_class`` ``"function ..."``).

  A name that is neither a registry name nor a family above raises :class:`~normact.registry.UnknownLayerError`
  (a ``ValueError``) with the closest names, unless it is exactly a module name of the model.
- an fnmatch pattern over module qualified names: any string containing ``.``, ``*``, ``?`` or ``[``
  (``"encoder.layer.*.output.LayerNorm"``), or any string prefixed with ``"name:"`` (``"name:classifier"``).
  As in :func:`normact.probe`, ``*`` also matches dots: the example matches ``encoder.layer.0.output.LayerNorm``
  and ``encoder.layer.0.attention.output.LayerNorm``; ``"encoder.layer.[0-9].output.LayerNorm"`` only the first;
- a module class (matches its subclasses), or a predicate ``f(name, module) -> bool``.

Registry-name sources only replace modules whose ``forward`` takes one input (gated norms such as
``Qwen3NextRMSNormGated(x, gate)`` are skipped with a reason); class, pattern and predicate sources replace what
they match. A module reachable under several names (a shared instance) is replaced by one new module at all of
them (``Replacement.aliases``).

**Targets**: a registry name (built as :func:`normact.create` would), an ``nn.Module`` class (registered or not:
torch, timm or Hugging Face classes work), or a factory ``callable(old_module) -> nn.Module`` (called with the
old module, or the old function for function attributes, plus ``target_kwargs``; no argument derivation, no
layout adaptation).

**Arguments** of the new layer are derived from the old one and passed by keyword where the target's
constructor takes them; ``target_kwargs`` override them:

- the feature count (``normalized_shape``, ``num_features``, ``num_channels``, else the 1-D ``weight``'s size),
  to the target's ``normalized_shape`` / ``num_features`` / ``num_channels`` / ``hidden_size`` / ``channels``;
- ``eps`` (``eps``, ``variance_epsilon``, ``epsilon``); the affine switch (``elementwise_affine``, ``affine``,
  else the presence of ``weight``) to ``elementwise_affine`` or ``affine``, and ``bias`` = whether the old
  layer has a bias; ``momentum`` and ``track_running_stats``; ``num_groups`` (the old layer's when it divides
  the channels, else ``gcd(C, 32)``); ``inplace`` of activations; ``device`` and ``dtype`` of the old tensors.

**Layouts**: each side's layout is ``channels_first`` (``(N, C, *)``: BatchNorm, GroupNorm, timm
``LayerNorm2d``, ``data_format="channels_first"``), ``last_dims`` (``(*, C)``: LayerNorm, RMSNorm, DyT) or
``tokens`` (``(N, L, C)``, the registry's ``input_layout``). When they differ the new layer is wrapped in a
:class:`LayoutAdapter` that moves the channels where it expects them (a channels-first source and a target with
a ``channels_last`` switch, as DyT, gets ``channels_last=False`` instead); channel norms of a fixed rank
(``BatchNorm2d`` needs 4-D input) see ``(N, C, L)`` or ``(N, C, L, 1)`` views. Targets that are not drop-in
(``normact.info(name).properties.drop_in`` false: conditioning inputs, structured layouts) are refused with a
``ValueError``; a last-dims source over several trailing dims cannot become a channel norm (skipped).
A timm fused norm + activation (``BatchNormAct2d``...) becomes :class:`NormAct` (the new norm, then the old
``drop`` and ``act``).

**Weights** (``copy_weights=True``): every parameter and buffer of the new layer takes the value of the old
layer's tensor of the same name and shape (``gamma``/``beta`` read as ``weight``/``bias``): LayerNorm's weight
and bias go to DyT's (DyT's ``alpha`` keeps its initial value), LayerNorm's weight to RMSNorm's (the bias is
dropped), BatchNorm's affine and running statistics to another BatchNorm. A gain stored as ``1 + weight``
(Gemma-style RMSNorms, detected in the forward's source) is converted. The report names, per module, what was
copied, what was left at its initial value and which old tensors were dropped.

**Not handled** (documented limits): functional calls inside a ``forward`` (``F.gelu(x)``,
``torch.nn.functional.layer_norm(...)``) cannot be swapped; they are detected by reading the source of the
``forward`` method of the model's own classes (not torch's or normact's, not helper methods) and reported as
skipped (``"not swappable: functional call in forward"``). A Hugging Face config still names the old activation
(``hidden_act``) after a swap, and ``from_pretrained`` with the original classes cannot load a swapped model:
:func:`save_swapped` writes the swap recipe (``normact_swap.json``) next to the weights and
:func:`load_swapped` rebuilds the model from its config, re-applies the swaps and loads the weights.
"""

from __future__ import annotations

import fnmatch
import functools
import importlib
import inspect
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact.registry import LayerInfo, UnknownLayerError, get_info, normalize_name

__all__ = [
    "RECIPE_FILE",
    "REPORT_FILE",
    "LayoutAdapter",
    "NormAct",
    "Replacement",
    "Skipped",
    "SwapReport",
    "load_swapped",
    "save_swapped",
    "swap",
    "swap_recipes",
]

RECIPE_FILE = "normact_swap.json"
REPORT_FILE = "swap_report.json"
_RECIPE_FORMAT = "normact.surgery.swap"
_RECIPE_VERSION = 1
_RECIPES_ATTR = "_normact_swap_recipes"

Source = str | type[nn.Module] | Callable[[str, nn.Module], bool]
Target = str | type[nn.Module] | Callable[..., nn.Module]


# ---------------------------------------------------------------------------------------------------- report


class Replacement(NamedTuple):
    """One replaced module: its (first) qualified name, the old and new classes (``"torch.LayerNorm"``,
    ``"normact.DyT"``), the new layer's tensors copied from the old one and those left at their initial value,
    the old tensors that had no destination, notes (layout adapter, derived arguments) and the other names
    under which the same module was reachable."""

    name: str
    old_class: str
    new_class: str
    copied: list[str]
    left_at_init: list[str]
    dropped: list[str]
    notes: list[str]
    aliases: list[str]


class Skipped(NamedTuple):
    """A module (or functional call) that matched ``source`` but was not replaced, and why."""

    name: str
    old_class: str
    reason: str


@dataclass
class SwapReport:
    """What :func:`swap` did: ``replaced`` and ``skipped`` entries, the model's parameter count before and after
    (``sum(p.numel() for p in model.parameters())``) and the JSON recipe that replays the swap (``None`` when the
    source, target or keyword arguments are not serializable: predicates, factories, lambdas)."""

    source: str
    target: str
    replaced: list[Replacement] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    params_before: int = 0
    params_after: int = 0
    recipe: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view (what ``swap_report.json`` holds)."""
        return {
            "source": self.source,
            "target": self.target,
            "replaced": [r._asdict() for r in self.replaced],
            "skipped": [s._asdict() for s in self.skipped],
            "params_before": self.params_before,
            "params_after": self.params_after,
            "recipe": self.recipe,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``; returns the path."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    def summary(self) -> str:
        """One line: counts and parameter change."""
        delta = self.params_after - self.params_before
        return (
            f"swap {self.source} -> {self.target}: {len(self.replaced)} replaced, {len(self.skipped)} skipped; "
            f"parameters {self.params_before:,} -> {self.params_after:,} ({delta:+,})"
        )

    def __str__(self) -> str:
        lines = [self.summary()]
        for r in self.replaced:
            left = ", ".join(r.left_at_init) or "-"
            lines.append(
                f"  replaced {r.name}: {r.old_class} -> {r.new_class}; copied {', '.join(r.copied) or '-'}; "
                f"left at init {left}" + (f"; dropped {', '.join(r.dropped)}" if r.dropped else "")
            )
            lines += [f"    note: {n}" for n in r.notes]
        lines += [f"  skipped  {s.name}: {s.old_class}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def table(self, title: str | None = None, max_rows: int | None = None) -> Any:
        """A ``rich.table.Table`` with one row per replaced or skipped module (names printed verbatim)."""
        from rich.markup import escape
        from rich.table import Table

        rows: list[tuple[str, ...]] = []
        for r in self.replaced:
            rows.append(
                (
                    r.name,
                    r.old_class,
                    r.new_class,
                    ", ".join(r.copied) or "-",
                    ", ".join(r.left_at_init) or "-",
                    "; ".join([*(f"dropped {d}" for d in r.dropped), *r.notes]),
                )
            )
        for s in self.skipped:
            rows.append((s.name, s.old_class, "[skipped]", "-", "-", s.reason))
        title = title or self.summary()
        if max_rows is not None and len(rows) > max_rows:
            title = f"{title} (first {max_rows} of {len(rows)} rows)"
            rows = rows[:max_rows]
        table = Table(title=escape(title))
        for col in ("module", "old", "new", "copied", "left at init", "notes"):
            table.add_column(col, overflow="fold", no_wrap=col == "module")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        return table

    def __rich__(self) -> Any:
        return self.table()


class _SkipError(Exception):
    """Internal: this module cannot be replaced, for the reason given."""


# ---------------------------------------------------------------------------------------------------- adapters


def _fixed_ranks(module: nn.Module) -> tuple[int, ...] | None:
    """The input ranks a channels-first layer accepts when fixed by its kind (``*1d``: 2 or 3, ``*2d``: 4,
    ``*3d``: 5; normact's ``_ranks``), else None (any rank >= 2)."""
    ranks = getattr(type(module), "_ranks", None)
    if isinstance(ranks, tuple) and ranks and all(isinstance(r, int) for r in ranks):
        return ranks
    name = type(module).__name__
    for suffix, ranks in (("1d", (2, 3)), ("2d", (4,)), ("3d", (5,))):
        if name.endswith(suffix):
            return ranks
    return None


class LayoutAdapter(nn.Module):
    """Run ``norm`` (which expects ``target_layout``) where the replaced layer saw ``source_layout`` inputs.

    - ``channels_first`` (``(N, C, *)``) -> ``last_dims``: the channels are moved last and back;
    - ``channels_first`` -> ``tokens``: ``(N, C, *)`` is seen as ``(N, L, C)`` tokens (``(N, C)`` as ``(N, 1, C)``);
    - ``last_dims`` (``(*, C)``) -> ``channels_first``: ``(N, *, C)`` is seen as ``(N, C, L)`` (the channel
      statistics pool the batch and all positions, as in the benchmark models);
    - ``last_dims`` -> ``tokens``: ``(N, *, C)`` as ``(N, L, C)``;
    - channels-first layers of a fixed rank (``ranks``, e.g. ``(4,)`` for ``BatchNorm2d``) get ``(N, C, L)`` or
      ``(N, C, L, 1)`` views of other ranks (per-channel statistics are unchanged by flattening the positions).

    The wrapped layer is the submodule ``norm`` (state-dict keys ``norm.weight``...).
    """

    LAYOUTS = ("channels_first", "last_dims", "tokens")

    def __init__(
        self, norm: nn.Module, source_layout: str, target_layout: str, ranks: tuple[int, ...] | None = None
    ) -> None:
        super().__init__()
        for what, layout in (("source_layout", source_layout), ("target_layout", target_layout)):
            if layout not in self.LAYOUTS:
                raise ValueError(f"{what} must be one of {self.LAYOUTS}, got {layout!r}")
        if source_layout == "tokens":
            raise ValueError("source_layout 'tokens' is not supported: the source is channels_first or last_dims")
        self.norm = norm
        self.source_layout = source_layout
        self.target_layout = target_layout
        self.ranks = tuple(ranks) if ranks else None

    def _ranked(self, x: Tensor) -> Tensor:
        """Apply the channels-first ``norm`` to ``(N, C, *)`` ``x`` in a rank it accepts."""
        if self.ranks is None or x.dim() in self.ranks:
            return self.norm(x)
        rank = 3 if 3 in self.ranks else self.ranks[0]
        y = x.reshape(x.shape[0], x.shape[1], -1)
        y = y.reshape(*y.shape, *([1] * (rank - 3)))
        return self.norm(y).reshape(x.shape)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() < 2:
            raise ValueError(f"LayoutAdapter expects input with a batch dim and channels, got shape {tuple(x.shape)}")
        if self.source_layout == "channels_first":
            if self.target_layout == "channels_first":
                return self._ranked(x)
            if self.target_layout == "last_dims":
                return self.norm(x.movedim(1, -1)).movedim(-1, 1)
            if x.dim() == 2:
                return self.norm(x.unsqueeze(1)).squeeze(1)
            tokens = x.flatten(2).transpose(1, 2)  # (N, L, C)
            return self.norm(tokens).transpose(1, 2).reshape(x.shape)
        shape = x.shape
        if self.target_layout == "last_dims":
            return self.norm(x)
        tokens = x.reshape(shape[0], -1, shape[-1])  # (N, L, C)
        if self.target_layout == "tokens":
            return self.norm(tokens).reshape(shape)
        return self._ranked(tokens.transpose(1, 2)).transpose(1, 2).reshape(shape)

    def extra_repr(self) -> str:
        ranks = f", ranks={self.ranks}" if self.ranks else ""
        return f"{self.source_layout} -> {self.target_layout}{ranks}"


class NormAct(nn.Module):
    """A norm followed by the dropout and activation of the fused timm layer it replaces (``BatchNormAct2d``,
    ``GroupNormAct``, ``LayerNormAct``...): ``act(drop(norm(x)))``."""

    def __init__(self, norm: nn.Module, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.norm, self.drop, self.act = norm, drop, act

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.drop(self.norm(x)))


# ---------------------------------------------------------------------------------------------------- matching


def _class_label(cls: type) -> str:
    """``"torch.LayerNorm"``, ``"transformers.LlamaRMSNorm"``, ``"normact.DyT"``: package and class name."""
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def _mro_names(module: nn.Module) -> list[str]:
    return [c.__name__.lower() for c in type(module).__mro__ if c not in (nn.Module, object)]


def _is_normact(module: nn.Module) -> bool:
    return type(module).__module__.startswith("normact.")


def _is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def _is_norm_act(module: nn.Module) -> bool:
    """A timm fused norm + activation (``BatchNormAct2d``...): ``act`` and ``drop`` submodules."""
    children = dict(module.named_children())
    return set(children) == {"act", "drop"}


@functools.cache
def _forward_source(cls: type) -> str:
    """The source of ``cls.forward`` (empty when unavailable: builtins, compiled code)."""
    fwd = getattr(cls, "forward", None)
    if fwd is None:
        return ""
    try:
        return inspect.getsource(fwd)
    except (OSError, TypeError):
        return ""


_MEAN_CALL = re.compile(r"\.mean\(|torch\.mean\(")
_RMS_HINT = re.compile(r"pow\(2\)|\.square\(\)|\*\*\s*2|rsqrt|rms_norm")
_LN_HINT = re.compile(r"layer_norm\(|\.var\(|var_mean\(|\.std\(")


@functools.cache
def _rms_like_class(cls: type) -> bool:
    """Whether a ``*LayerNorm`` class (not a ``torch.nn.LayerNorm``) is in fact an RMSNorm: its forward squares
    and averages once (the mean square) and never computes a mean to subtract (``T5LayerNorm``). Without source
    (compiled classes) it is taken for a LayerNorm."""
    src = _forward_source(cls)
    if not src:
        return False
    return bool(_RMS_HINT.search(src)) and not _LN_HINT.search(src) and len(_MEAN_CALL.findall(src)) <= 1


_GAIN_OFFSET = re.compile(r"\(\s*1(?:\.0*)?\s*\+\s*self\.weight")


@functools.cache
def _gain_offset(cls: type) -> float:
    """1.0 for norms that scale by ``1 + weight`` (Gemma's RMSNorm), found in the forward's source; else 0."""
    return 1.0 if _GAIN_OFFSET.search(_forward_source(cls)) else 0.0


_LN_NAME = re.compile(r"LayerNorm(\d+d|Nd)?$")
_RMS_NAME = re.compile(r"rmsnorm", re.IGNORECASE)


def _is_rmsnorm(module: nn.Module) -> bool:
    if hasattr(nn, "RMSNorm") and isinstance(module, nn.RMSNorm):
        return True
    if _is_normact(module):
        return isinstance(module, get_info("rmsnorm").cls)
    name = type(module).__name__
    if isinstance(module, nn.LayerNorm) or not (_is_leaf(module) or _is_norm_act(module)):
        return False
    return bool(_RMS_NAME.search(name)) or bool(_LN_NAME.search(name) and _rms_like_class(type(module)))


def _is_layernorm(module: nn.Module) -> bool:
    if isinstance(module, nn.LayerNorm):
        return True
    if _is_normact(module):
        return isinstance(module, (get_info("layernorm").cls, get_info("layernorm2d").cls))
    name = type(module).__name__
    return bool(_LN_NAME.search(name)) and _is_leaf(module) and not _rms_like_class(type(module))


_BN_NAME = re.compile(r"BatchNorm(\dd)?$")


def _is_batchnorm(module: nn.Module, dims: str | None) -> bool:
    from normact.layers.norm.batch import _BatchNorm

    bn = isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm))
    if not bn:
        cls_name = type(module).__name__
        bn = bool(_BN_NAME.search(cls_name)) and _is_leaf(module) and not _is_normact(module)
    if not bn or dims is None:
        return bn
    if isinstance(module, nn.SyncBatchNorm):
        return True
    return any(n.endswith(f"batchnorm{dims}") for n in _mro_names(module))


def _is_instancenorm(module: nn.Module, dims: str | None) -> bool:
    ok = isinstance(module, (nn.modules.instancenorm._InstanceNorm, get_info("instancenorm2d").cls))
    if not ok and not _is_normact(module):
        ok = bool(re.search(r"InstanceNorm(\dd)?$", type(module).__name__)) and _is_leaf(module)
    return ok and (dims is None or any(n.endswith(f"instancenorm{dims}") for n in _mro_names(module)))


def _is_groupnorm(module: nn.Module) -> bool:
    if isinstance(module, nn.GroupNorm):
        return True
    if _is_normact(module):
        return isinstance(module, (get_info("groupnorm").cls, get_info("groupnorm1").cls))
    return bool(re.search(r"GroupNorm1?$", type(module).__name__)) and _is_leaf(module)


# Third-party activation classes per family (lower-case class names), besides torch's and normact's.
_GELU_TANH = {"newgeluactivation", "fastgeluactivation", "gelutanh", "pytorchgelutanh", "accurategeluactivation"}
_ACT_NAMES: dict[str, set[str]] = {
    "gelu": {"gelu", "geluactivation", *_GELU_TANH},
    "gelu_tanh": set(_GELU_TANH),
    "gelu_sigmoid": {"quickgeluactivation", "quickgelu", "gelusigmoid"},
    "silu": {"silu", "siluactivation"},
    "relu2": {"relusquaredactivation", "relu2"},
    "mish": {"mish", "mishactivation"},
}
# Functions of torch per family: attributes holding them are swapped, calls in a forward are reported.
_FUNCTION_NAMES: dict[str, tuple[str, ...]] = {
    "gelu": ("gelu",),
    "gelu_tanh": ("gelu",),
    "silu": ("silu",),
    "relu": ("relu",),
    "layernorm": ("layer_norm",),
    "rmsnorm": ("rms_norm",),
    "batchnorm": ("batch_norm",),
    "groupnorm": ("group_norm",),
    "instancenorm": ("instance_norm",),
}
_HF_ACT_ALIASES = {  # transformers' ACT2FN names that are not registry names
    "gelunew": "gelu_tanh",
    "gelufast": "gelu_tanh",
    "gelupytorchtanh": "gelu_tanh",
    "geluaccurate": "gelu_tanh",
    "quickgelu": "gelu_sigmoid",
    "swish": "silu",
}


@dataclass
class _Family:
    """A registry-name source: a module predicate, the torch functions of the same computation, its kind."""

    key: str
    label: str
    kind: str
    matches: Callable[[nn.Module], bool]
    functions: tuple[str, ...] = ()
    approximate: str | None = None  # gelu_tanh: only partial(F.gelu, approximate="tanh") function attributes


def _act_matcher(key: str, info: LayerInfo | None) -> Callable[[nn.Module], bool]:
    names = set(_ACT_NAMES.get(key, set()))
    classes: list[type] = []
    if info is not None:
        names |= {info.cls.__name__.lower(), info.cls.__name__.lower() + "activation"}
        classes.append(info.cls)
        torch_cls = getattr(nn, info.cls.__name__, None)
        if isinstance(torch_cls, type) and issubclass(torch_cls, nn.Module):
            classes.append(torch_cls)
    tanh_only = key == "gelu_tanh"

    def matches(module: nn.Module) -> bool:
        if isinstance(module, tuple(classes)):
            if info is not None and _is_normact(module):
                return isinstance(module, info.cls) and all(
                    getattr(module, k, v) == v for k, v in info.defaults.items()
                )
            if tanh_only:
                return getattr(module, "approximate", "none") == "tanh"
            return True
        if _is_normact(module):
            return False
        cls_names = _mro_names(module)
        if key == "silu" and type(module).__name__ == "Swish" and type(module).__module__.startswith("timm"):
            return True  # timm's Swish is x * sigmoid(x)
        return any(n in names for n in cls_names) and (
            not tanh_only or getattr(module, "approximate", "tanh") == "tanh"
        )

    return matches


def _family(source: str) -> _Family | None:
    """The registry-name source ``source`` (``None`` when it is not one)."""
    key = normalize_name(source)
    if key == "batchnorm":
        return _Family("batchnorm", source, "norm", lambda m: _is_batchnorm(m, None), _FUNCTION_NAMES["batchnorm"])
    if key == "instancenorm":
        return _Family(
            "instancenorm", source, "norm", lambda m: _is_instancenorm(m, None), _FUNCTION_NAMES["instancenorm"]
        )
    key = normalize_name(_HF_ACT_ALIASES.get(key, key))
    try:
        info = get_info(key)
    except UnknownLayerError:
        return None
    name = info.name
    if name in ("batchnorm1d", "batchnorm2d"):
        dims = name[-2:]
        return _Family(name, source, "norm", lambda m: _is_batchnorm(m, dims), _FUNCTION_NAMES["batchnorm"])
    if name == "instancenorm2d":
        return _Family(name, source, "norm", lambda m: _is_instancenorm(m, "2d"), _FUNCTION_NAMES["instancenorm"])
    if name == "layernorm":
        return _Family(name, source, "norm", _is_layernorm, _FUNCTION_NAMES["layernorm"])
    if name == "rmsnorm":
        return _Family(name, source, "norm", _is_rmsnorm, _FUNCTION_NAMES["rmsnorm"])
    if name == "groupnorm":
        return _Family(name, source, "norm", _is_groupnorm, _FUNCTION_NAMES["groupnorm"])
    if info.kind == "act":
        functions = _FUNCTION_NAMES.get(name) or ((name,) if name.isidentifier() else ())
        approximate = "tanh" if name == "gelu_tanh" else None
        return _Family(name, source, "act", _act_matcher(name, info), functions, approximate)
    cls = info.cls
    torch_cls = getattr(nn, cls.__name__, None)
    torch_cls = torch_cls if isinstance(torch_cls, type) and issubclass(torch_cls, nn.Module) else None
    lower = cls.__name__.lower()

    def matches(module: nn.Module) -> bool:
        if isinstance(module, cls):
            return all(getattr(module, k, v) == v for k, v in info.defaults.items())
        if torch_cls is not None and isinstance(module, torch_cls):
            return True
        return not _is_normact(module) and lower in _mro_names(module) and _is_leaf(module)

    return _Family(name, source, info.kind, matches)


_PATTERN_CHARS = set(".*?[")


def _compile_source(
    source: Source, model: nn.Module
) -> tuple[Callable[[str, nn.Module], bool], _Family | None, str, Any]:
    """A predicate over (name, module), the family of a registry-name source, a label and the JSON form."""
    if isinstance(source, str):
        prefix, _, rest = source.partition(":")
        if prefix == "name" and rest:
            return (lambda name, m: fnmatch.fnmatchcase(name, rest)), None, source, source
        if prefix == "layer" and rest:
            fam = _family(rest)
            if fam is None:
                get_info(rest)  # raises UnknownLayerError with suggestions
                raise ValueError(f"unknown layer {rest!r}")
            return (lambda name, m: fam.matches(m)), fam, source, source
        if _PATTERN_CHARS & set(source):
            return (lambda name, m: fnmatch.fnmatchcase(name, source)), None, source, source
        fam = _family(source)
        if fam is not None:
            return (lambda name, m: fam.matches(m)), fam, source, source
        if source in dict(model.named_modules()):
            return (lambda name, m: name == source), None, source, source
        get_info(source)  # raises UnknownLayerError (a ValueError) with the closest names
        raise ValueError(f"unknown source {source!r}")  # pragma: no cover (get_info raised)
    if isinstance(source, type):
        if not issubclass(source, nn.Module):
            raise TypeError(f"a source class must subclass torch.nn.Module, got {source.__qualname__}")
        return (lambda name, m: isinstance(m, source)), None, _class_label(source), _class_ref(source)
    if callable(source):
        label = getattr(source, "__name__", type(source).__name__)
        return (lambda name, m: bool(source(name, m))), None, f"predicate {label}", None
    raise TypeError(
        "source must be a registry name, a name pattern, an nn.Module class or a predicate f(name, module) -> bool, "
        f"got {type(source).__name__}"
    )


def _class_ref(cls: type) -> dict[str, str] | None:
    """``{"class": "module:QualName"}`` when the class is importable under that name, else None."""
    if "<locals>" in cls.__qualname__:
        return None
    return {"class": f"{cls.__module__}:{cls.__qualname__}"}


def _import_class(ref: str) -> type:
    module, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{ref} is not a class")
    return obj


# ---------------------------------------------------------------------------------------------------- targets


@dataclass
class _Target:
    how: str  # "registry", "class" or "factory"
    factory: Callable[..., nn.Module]
    label: str
    info: LayerInfo | None
    params: dict[str, inspect.Parameter]
    var_kw: bool
    json: Any


_FEATURE_PARAMS = ("normalized_shape", "num_features", "num_channels", "hidden_size", "channels", "dim")
_FORWARDED = ("eps", "elementwise_affine", "affine", "bias", "momentum", "track_running_stats", "num_groups")


def _compile_target(target: Target, kwargs: dict[str, Any]) -> _Target:
    info: LayerInfo | None = None
    if isinstance(target, str):
        info = get_info(target)
        how, factory, label, ref = "registry", info.factory, info.name, info.name
    elif isinstance(target, type):
        if not issubclass(target, nn.Module):
            raise TypeError(f"a target class must subclass torch.nn.Module, got {target.__qualname__}")
        try:
            info = get_info(target)
        except UnknownLayerError:
            info = None
        how, factory, label, ref = "class", target, _class_label(target), _class_ref(target)
    elif callable(target):
        label = getattr(target, "__name__", type(target).__name__)
        return _Target("factory", target, f"factory {label}", None, {}, True, None)
    else:
        raise TypeError(
            f"target must be a registry name, an nn.Module class or a factory callable(old_module), "
            f"got {type(target).__name__}"
        )
    if info is not None and info.kind == "norm" and (not info.properties.drop_in or info.input_layout == "other"):
        raise ValueError(
            f"{info.name!r} is not a drop-in normalization (it takes a conditioning input or a structured layout, "
            f"see `normact info {info.name}`): it cannot replace a layer"
        )
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        params, var_kw = {}, True
    else:
        params = {
            n: p
            for n, p in sig.parameters.items()
            if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        }
        var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values())
    unknown = [k for k in kwargs if k not in params]
    if unknown and not var_kw:
        raise TypeError(
            f"{label} does not take {', '.join(repr(k) for k in unknown)} (its arguments: {', '.join(params)})"
        )
    return _Target(how, factory, label, info, params, var_kw, ref)


def _features(module: nn.Module) -> tuple[int, ...] | None:
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, int) and not isinstance(shape, bool):
        return (shape,)
    if isinstance(shape, (tuple, list, torch.Size)) and shape and all(isinstance(s, int) for s in shape):
        return tuple(int(s) for s in shape)
    for attr in ("num_features", "num_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return (v,)
    for attr in ("weight", "bias", "gamma", "beta"):
        t = getattr(module, attr, None)
        if isinstance(t, Tensor) and t.dim() == 1:
            return (t.numel(),)
    return None


def _eps(module: nn.Module) -> tuple[bool, float | None]:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if hasattr(module, attr):
            v = getattr(module, attr)
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                return True, None if v is None else float(v)
    return False, None


def _affine(module: nn.Module) -> tuple[bool, bool]:
    """(affine, has bias) of a norm."""
    weight = getattr(module, "weight", getattr(module, "gamma", None))
    bias = getattr(module, "bias", getattr(module, "beta", None))
    affine = None
    for attr in ("elementwise_affine", "affine"):
        v = getattr(module, attr, None)
        if isinstance(v, bool):
            affine = v
            break
    if affine is None:
        affine = isinstance(weight, Tensor)
    return affine, affine and isinstance(bias, Tensor)


def _factory_kwargs(module: nn.Module) -> dict[str, Any]:
    tensors = [*module.parameters(), *module.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return {}
    out: dict[str, Any] = {"device": tensors[0].device}
    if floating:
        out["dtype"] = floating[0].dtype
    return out


def _module_layout(module: nn.Module) -> str:
    """Where a norm module's features sit: ``channels_first``, ``last_dims``, ``tokens``, ``other`` or ``any``."""
    fmt = getattr(module, "data_format", None)
    if fmt in ("channels_first", "channels_last"):
        return "channels_first" if fmt == "channels_first" else "last_dims"
    try:
        info = get_info(type(module))
    except UnknownLayerError:
        info = None
    if info is not None:
        if info.kind != "norm":
            return "any"
        if info.input_layout == "last_dims" and getattr(module, "channels_last", True) is False:
            return "channels_first"
        return info.input_layout
    name = type(module).__name__
    if name in _CHANNELS_FIRST_NAMES or re.search(r"\dd$", name):
        return "channels_first"
    if isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LocalResponseNorm)):
        return "channels_first"
    if getattr(module, "normalized_shape", None) is not None:
        return "last_dims"
    if any(isinstance(getattr(module, a, None), int) for a in ("num_features", "num_channels")):
        return "channels_first"
    return "last_dims" if _features(module) is not None else "any"


_CHANNELS_FIRST_NAMES = {"VitDetLayerNorm"}  # channels-first layer norms whose name does not say so


def _is_norm_target(target: _Target) -> bool:
    if target.info is not None:
        return target.info.kind == "norm"
    for name in _FEATURE_PARAMS:
        p = target.params.get(name)
        if p is not None and p.default is inspect.Parameter.empty:
            return True
    return False


def _build(
    target: _Target, old: Any, kwargs: dict[str, Any], is_function: bool, src_layout: str | None = None
) -> tuple[nn.Module, nn.Module, list[str]]:
    """(the module to install, the new layer inside it, notes)."""
    notes: list[str] = []
    if target.how == "factory":
        new = target.factory(old, **kwargs)
        if not isinstance(new, nn.Module):
            raise TypeError(f"the target {target.label} returned {type(new).__name__}, not an nn.Module")
        if isinstance(old, nn.Module):
            new.train(old.training)
        return new, new, notes
    params = target.params
    args: dict[str, Any] = {}
    tgt_layout = target.info.input_layout if target.info is not None else None
    norm_target = _is_norm_target(target)
    if norm_target:
        if is_function:
            raise _SkipError(f"a function attribute has no feature count for the norm {target.label}")
        src_layout = src_layout or _module_layout(old)
        feats = _features(old)
        if feats is None:
            raise _SkipError(
                "cannot derive the feature count (no normalized_shape, num_features, num_channels or 1-D weight); "
                "pass a factory target"
            )
        if (
            "channels_last" in params
            and "channels_last" not in kwargs
            and src_layout == "channels_first"
            and tgt_layout == "last_dims"
        ):
            args["channels_last"] = False
            tgt_layout = "channels_first"
            notes.append("channels_last=False (channels-first input)")
        feature_param = next((n for n in _FEATURE_PARAMS if n in params), None)
        if feature_param is None:
            raise _SkipError(f"{target.label} takes no feature count ({', '.join(_FEATURE_PARAMS)})")
        cross = src_layout == "channels_first" or tgt_layout in ("channels_first", "tokens")
        if len(feats) != 1 and (cross or feature_param != "normalized_shape"):
            raise _SkipError(f"normalizes over the trailing dims {feats}: no single channel count for {target.label}")
        args[feature_param] = feats[0] if len(feats) == 1 else feats
        found, eps = _eps(old)
        if found and "eps" in params:
            if eps is None and params["eps"].default is not None:
                notes.append("the old eps is None (machine epsilon): the target's default eps is used")
            else:
                args["eps"] = eps
        elif "eps" in params:
            notes.append("no eps found on the old layer: the target's default eps is used")
        affine, has_bias = _affine(old)
        for name in ("elementwise_affine", "affine"):
            if name in params:
                args[name] = affine
                break
        if "bias" in params and affine and isinstance(params["bias"].default, bool):
            args["bias"] = has_bias
        for name in ("momentum", "track_running_stats"):
            v = getattr(old, name, None)
            valid = isinstance(v, (bool, float)) or (name == "momentum" and v is None)
            if name in params and hasattr(old, name) and valid:
                args[name] = v
        if "num_groups" in params and "num_groups" not in kwargs and len(feats) == 1:
            c = feats[0]
            g = getattr(old, "num_groups", None)
            if not (isinstance(g, int) and g > 0 and c % g == 0):
                g = math.gcd(c, 32)
                notes.append(f"num_groups={g} (gcd(C, 32))")
            args["num_groups"] = g
    if not is_function and "inplace" in params and isinstance(getattr(old, "inplace", None), bool):
        args["inplace"] = old.inplace
    fkw = _factory_kwargs(old) if isinstance(old, nn.Module) else {}
    for k in ("device", "dtype"):
        if k in params and k in fkw:
            args[k] = fkw[k]
    args.update(kwargs)
    try:
        new = target.factory(**args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise _SkipError(f"{target.label} could not be built with {_fmt_args(args)}: {e}") from e
    if not isinstance(new, nn.Module):
        raise TypeError(f"the target {target.label} returned {type(new).__name__}, not an nn.Module")
    if fkw and not ("device" in params and "dtype" in params):
        new.to(**fkw)
    if isinstance(old, nn.Module):
        new.train(old.training)
    outer = new
    if norm_target:
        if tgt_layout is None:
            tgt_layout = _module_layout(new)
        outer, note = _adapt(new, src_layout, tgt_layout, old, target.label)
        if note:
            notes.append(note)
    if isinstance(old, nn.Module) and _is_norm_act(old):
        outer = NormAct(outer, old.drop, old.act)
        notes.append(f"kept the fused {type(old.act).__name__} activation (NormAct)")
    return outer, new, notes


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in ("device", "dtype")) or "no arguments"


def _adapt(new: nn.Module, src: str, tgt: str, old: nn.Module, label: str) -> tuple[nn.Module, str | None]:
    if tgt in ("other", "any") or src not in ("channels_first", "last_dims"):
        if tgt == "other":
            raise _SkipError(f"{label} has a structured input layout: it cannot replace a {src} norm")
        return new, None
    feats = _features(old)
    if src == "last_dims" and tgt != "last_dims" and feats is not None and len(feats) != 1:
        raise _SkipError(f"normalizes over the trailing dims {feats}: no single channel count for {label}")
    ranks = _fixed_ranks(new) if tgt == "channels_first" else None
    if src == tgt:
        if src == "channels_first" and ranks is not None:
            old_ranks = _fixed_ranks(old)
            if old_ranks is None or not set(old_ranks) <= set(ranks):
                return LayoutAdapter(new, src, tgt, ranks), f"wrapped in LayoutAdapter (input ranks {ranks})"
        return new, None
    return LayoutAdapter(new, src, tgt, ranks), f"wrapped in LayoutAdapter ({src} -> {tgt})"


_ALIASES = {"gamma": "weight", "beta": "bias"}


def _copy(old: nn.Module, new: nn.Module) -> tuple[list[str], list[str], list[str], list[str]]:
    """Copy the old layer's tensors into the new layer's tensors of the same name and shape.
    Returns (copied, left at init, dropped, notes)."""
    olds: dict[str, Tensor] = {}
    for name, t in [*old.named_parameters(recurse=False), *old.named_buffers(recurse=False)]:
        olds[_ALIASES.get(name, name)] = t
    news = [*new.named_parameters(), *new.named_buffers()]
    src_offset, dst_offset = _gain_offset(type(old)), _gain_offset(type(new))
    copied, left, notes = [], [], []
    used: set[str] = set()
    with torch.no_grad():
        for name, dst in news:
            src = olds.get(name)
            if src is None:
                left.append(name)
                continue
            if src.shape != dst.shape:
                left.append(name)
                notes.append(f"{name}: shape {tuple(src.shape)} != {tuple(dst.shape)}, not copied")
                continue
            value = src.detach()
            if name == "weight" and src_offset != dst_offset:
                value = value.to(torch.float64) + (src_offset - dst_offset) if value.is_floating_point() else value
                notes.append(f"weight: the old layer scales by {src_offset:g} + weight; copied as that gain")
            dst.copy_(value.to(dst.dtype))
            if isinstance(dst, nn.Parameter) and isinstance(src, nn.Parameter):
                dst.requires_grad_(src.requires_grad)
            copied.append(name)
            used.add(name)
    dropped = [n for n in olds if n not in used]
    return copied, left, dropped, notes


# ---------------------------------------------------------------------------------------------------- swap


def _set(model: nn.Module, path: str, value: nn.Module) -> None:
    parent_name, _, attr = path.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, value)


def _inside(name: str, prefixes: list[str]) -> str | None:
    for p in prefixes:
        if name.startswith(p + "."):
            return p
    return None


def _function_matches(value: Any, family: _Family) -> bool:
    if isinstance(value, nn.Module) or not callable(value) or not family.functions:
        return False
    keywords: dict[str, Any] = {}
    if isinstance(value, functools.partial):
        keywords, value = dict(value.keywords), value.func
    targets = [getattr(ns, n, None) for n in family.functions for ns in (F, torch)]
    if not any(value is t for t in targets if t is not None):
        return False
    if family.approximate is not None:
        return keywords.get("approximate") == family.approximate
    return True


def _function_label(value: Any) -> str:
    fn = value.func if isinstance(value, functools.partial) else value
    name = getattr(fn, "__name__", repr(fn))
    if getattr(F, name, None) is fn:
        qual = f"torch.nn.functional.{name}"
    elif getattr(torch, name, None) is fn:
        qual = f"torch.{name}"
    else:
        qual = f"{getattr(fn, '__module__', None) or '?'}.{name}"
    if isinstance(value, functools.partial) and value.keywords:
        qual += "(" + ", ".join(f"{k}={v!r}" for k, v in value.keywords.items()) + ")"
    return f"function {qual}"


_OWN_DEFINITIONS = ("torch.", "normact.", "transformers.activations", "timm.layers.activations")
_FUNCTIONAL_PREFIX = r"(?<![\w.])(?:torch\.nn\.functional|nn\.functional|F|torch)\."


@functools.cache
def _functional_calls(cls: type, names: tuple[str, ...]) -> tuple[str, ...]:
    src = _forward_source(cls)
    if not src or not names:
        return ()
    pattern = re.compile(_FUNCTIONAL_PREFIX + r"(" + "|".join(re.escape(n) for n in names) + r")_?\s*\(")
    return tuple(sorted({m.group(0).rstrip("( ").strip() for m in pattern.finditer(src)}))


def _json_or_none(value: Any) -> Any:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return None
    return value


def swap(
    model: nn.Module,
    source: Source,
    target: Target,
    *,
    copy_weights: bool = True,
    allow_empty: bool = False,
    **target_kwargs: Any,
) -> SwapReport:
    """Replace, in place, every module of ``model`` matching ``source`` with a module built from ``target``.

    Args:
        model: the model to modify (in place; the root module itself cannot be replaced).
        source: a registry name (also matching the equivalent torch, Hugging Face and timm classes), a name
            pattern (with ``.``, ``*``, ``?`` or ``[``, or prefixed ``"name:"``), a module class or a predicate
            ``f(name, module) -> bool``; see the module docstring.
        target: a registry name, an ``nn.Module`` class, or a factory ``callable(old_module, **target_kwargs)``.
        copy_weights: copy the old tensors into the new layer's tensors of the same name and shape.
        allow_empty: return an empty report instead of raising when nothing matches.
        **target_kwargs: constructor arguments of the target, overriding the derived ones.

    Returns:
        A :class:`SwapReport`. Every match is either replaced or skipped with a reason; the new modules are
        built before any is installed, so an exception leaves the model unchanged.

    Raises:
        ValueError: nothing matched (``"no module matched ..."``), an unknown name, a non-drop-in target.
        TypeError: a source or target of the wrong type, keyword arguments the target does not take.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    predicate, family, source_label, source_json = _compile_source(source, model)
    tgt = _compile_target(target, target_kwargs)
    params_before = sum(p.numel() for p in model.parameters())

    # every module with all the names it is reachable under, in order of first appearance
    paths: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(name)
        modules.setdefault(id(m), m)

    matched: list[tuple[int, list[str]]] = []
    for key, names in paths.items():
        m = modules[key]
        hits = [n for n in names if predicate(n, m)]
        if hits:
            matched.append((key, names))

    replaced: list[Replacement] = []
    skipped: list[Skipped] = []
    plan: list[tuple[list[str], nn.Module]] = []
    done: list[str] = []  # names of replaced modules: their submodules are gone
    for key, names in matched:
        m = modules[key]
        label = _class_label(type(m))
        outer_hit = next((p for n in names if (p := _inside(n, done)) is not None), None)
        if outer_hit is not None:
            skipped.append(Skipped(names[0], label, f"inside {outer_hit!r}, which is replaced"))
            continue
        if names[0] == "":
            skipped.append(Skipped("(root)", label, "the root module cannot be replaced in place"))
            continue
        # a layer that an earlier swap wrapped in a LayoutAdapter: replace the adapter (no nesting)
        install, layout, unwrap = names, None, []
        parent_name, _, attr = names[0].rpartition(".")
        if len(names) == 1 and attr == "norm" and parent_name and tgt.how != "factory":
            parent = model.get_submodule(parent_name)
            if isinstance(parent, LayoutAdapter) and len(paths[id(parent)]) == 1:
                install, layout = [parent_name], parent.source_layout
                label += " in LayoutAdapter"
                unwrap = [f"replaced the LayoutAdapter {parent_name!r} around it ({layout} input)"]
        try:
            if family is not None and tgt.how != "factory":
                _check_single_input(m)
            outer, inner, notes = _build(tgt, m, target_kwargs, is_function=False, src_layout=layout)
        except _SkipError as e:
            skipped.append(Skipped(names[0], label, str(e)))
            continue
        notes = unwrap + notes
        if copy_weights:
            copied, left, dropped, copy_notes = _copy(m, inner)
        else:
            copied, left = [], [n for n, _ in [*inner.named_parameters(), *inner.named_buffers()]]
            dropped = [n for n, _ in [*m.named_parameters(recurse=False), *m.named_buffers(recurse=False)]]
            copy_notes = ["copy_weights=False"]
        new_label = _class_label(type(inner)) + ("" if outer is inner else f" in {type(outer).__name__}")
        plan.append((install, outer))
        done.extend(install)
        replaced.append(
            Replacement(install[0], label, new_label, copied, left, dropped, [*notes, *copy_notes], install[1:])
        )

    attr_plan: list[tuple[nn.Module, str, nn.Module]] = []
    if family is not None:
        seen = {key for key, _ in matched}
        _scan_functions(model, modules, paths, family, tgt, target_kwargs, done, seen, attr_plan, replaced, skipped)

    if not replaced and not any(not s.reason.startswith("not swappable: functional") for s in skipped):
        functional = [s for s in skipped if s.reason.startswith("not swappable")]
        if not allow_empty:
            extra = f" ({len(functional)} functional calls found: {functional[0].reason})" if functional else ""
            raise ValueError(f"no module matched {source_label!r} in {type(model).__name__}{extra}")

    for names, outer in plan:
        for n in names:
            _set(model, n, outer)
    for owner, attr, new in attr_plan:
        setattr(owner, attr, new)
        if isinstance(getattr(owner, "activation_relu_or_gelu", None), (bool, int)):
            owner.activation_relu_or_gelu = 0  # torch's TransformerEncoderLayer fast path would bypass the module

    report = SwapReport(
        source=source_label,
        target=tgt.label,
        replaced=replaced,
        skipped=skipped,
        params_before=params_before,
        params_after=sum(p.numel() for p in model.parameters()),
    )
    kwargs_json = _json_or_none(target_kwargs)
    if source_json is not None and tgt.json is not None and kwargs_json is not None:
        report.recipe = {
            "source": source_json,
            "target": tgt.json,
            "kwargs": kwargs_json,
            "copy_weights": copy_weights,
        }
    if replaced:
        recipes = list(getattr(model, _RECIPES_ATTR, []))
        unserializable = {"unserializable": f"{source_label} -> {tgt.label}"}
        recipes.append(report.recipe if report.recipe is not None else unserializable)
        object.__setattr__(model, _RECIPES_ATTR, recipes)
    return report


def _check_single_input(module: nn.Module) -> None:
    try:
        sig = inspect.signature(module.forward)
    except (TypeError, ValueError):
        return
    named = [
        n for n, p in sig.parameters.items() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    ]
    if len(named) > 1:
        raise _SkipError(
            f"not a drop-in layer: forward({', '.join(named)}) takes more than one input; pass it as a class "
            "source with a factory target to replace it"
        )


def _scan_functions(
    model: nn.Module,
    modules: dict[int, nn.Module],
    paths: dict[int, list[str]],
    family: _Family,
    tgt: _Target,
    kwargs: dict[str, Any],
    done: list[str],
    seen: set[int],
    attr_plan: list[tuple[nn.Module, str, nn.Module]],
    replaced: list[Replacement],
    skipped: list[Skipped],
) -> None:
    """Function attributes of ``family`` (replaced) and functional calls in forwards (reported)."""
    for key, names in paths.items():
        m = modules[key]
        name = names[0]
        if key in seen or _inside(name, done) is not None:
            continue
        label = _class_label(type(m))
        for attr, value in list(vars(m).items()):
            if attr.startswith("_") or not _function_matches(value, family):
                continue
            qual = f"{name}.{attr}" if name else attr
            flabel = _function_label(value)
            try:
                outer, inner, notes = _build(tgt, value, kwargs, is_function=True)
            except _SkipError as e:
                skipped.append(Skipped(qual, flabel, str(e)))
                continue
            attr_plan.append((m, attr, outer))
            if hasattr(m, "activation_relu_or_gelu"):
                notes.append("activation_relu_or_gelu=0 (disables torch's fused fast path, which ignores the module)")
            left = [n for n, _ in [*inner.named_parameters(), *inner.named_buffers()]]
            notes = ["function attribute", *notes]
            replaced.append(Replacement(qual, flabel, _class_label(type(inner)), [], left, [], notes, []))
        if type(m).__module__.startswith(_OWN_DEFINITIONS):
            continue  # torch's, normact's and the activation libraries' functional calls define their modules
        calls = _functional_calls(type(m), family.functions)
        if calls:
            skipped.append(
                Skipped(
                    name or "(root)",
                    label,
                    f"not swappable: functional call in forward ({', '.join(calls)})",
                )
            )


# ---------------------------------------------------------------------------------------------------- save / load


def swap_recipes(model: nn.Module) -> list[dict[str, Any]]:
    """The recipes of the swaps applied to ``model`` by :func:`swap`, in order (empty if none)."""
    return list(getattr(model, _RECIPES_ATTR, []))


def _write_dir(out: Path, write: Callable[[Path], None], overwrite: bool) -> None:
    """Write into a temporary sibling folder, then rename it to ``out`` (replacing it when ``overwrite``)."""
    out = Path(out)
    if out.exists() and not overwrite and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not empty (pass overwrite=True / --overwrite)")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write(tmp)
        backup = None
        if out.exists():
            backup = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
            os.replace(out, backup / "old")
        os.replace(tmp, out)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def save_swapped(
    model: nn.Module,
    out: str | os.PathLike[str],
    *,
    report: SwapReport | list[SwapReport] | None = None,
    tokenizer: Any = None,
    overwrite: bool = False,
) -> Path:
    """Save a swapped Hugging Face model to the folder ``out``, atomically (written into a temporary folder,
    then renamed): ``model.save_pretrained(..., safe_serialization=True)`` (``model.safetensors``, config), the
    tokenizer if given, ``normact_swap.json`` (the recipes :func:`load_swapped` replays) and, with ``report``,
    ``swap_report.json``. Raises ``ValueError`` when a swap is not serializable (predicate or factory) or the
    model has no ``save_pretrained``, ``FileExistsError`` when ``out`` is a non-empty folder (unless
    ``overwrite``)."""
    if not callable(getattr(model, "save_pretrained", None)):
        raise ValueError(f"{type(model).__name__} is not a Hugging Face model (no save_pretrained)")
    recipes = swap_recipes(model)
    if not recipes:
        raise ValueError("the model has no recorded swap (use normact.surgery.swap.swap first)")
    bad = [r["unserializable"] for r in recipes if "unserializable" in r]
    if bad:
        raise ValueError(
            f"swap {bad[0]!r} cannot be saved as a recipe (a predicate, a factory or non-JSON keyword arguments): "
            "use registry names, name patterns or importable classes"
        )
    recipe_doc = {
        "format": _RECIPE_FORMAT,
        "version": _RECIPE_VERSION,
        "architecture": type(model).__name__,
        "swaps": recipes,
    }
    reports = [report] if isinstance(report, SwapReport) else list(report or [])

    def write(tmp: Path) -> None:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe_doc, indent=2) + "\n")
        if reports:
            doc = reports[0].to_dict() if len(reports) == 1 else {"swaps": [r.to_dict() for r in reports]}
            (tmp / REPORT_FILE).write_text(json.dumps(doc, indent=2) + "\n")

    _write_dir(Path(out), write, overwrite)
    return Path(out)


def _from_json(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"class"}:
        return _import_class(value["class"])
    return value


def load_swapped(directory: str | os.PathLike[str], *, dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a model saved by :func:`save_swapped` (or ``normact swap``): the Hugging Face class named in
    ``normact_swap.json`` is built from ``config.json``, the recorded swaps are re-applied (without copying) and
    the safetensors weights are loaded (every tensor of the model must be in the files, up to tied weights).
    Returns the model in eval mode, in ``dtype`` (default: the saved weights' dtype when they share one)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    path = directory / RECIPE_FILE
    if not path.is_file():
        raise ValueError(f"{directory} has no {RECIPE_FILE}: not a folder written by normact swap / save_swapped")
    doc = json.loads(path.read_text())
    if doc.get("format") != _RECIPE_FORMAT:
        raise ValueError(f"{path} is not a normact swap recipe (format {doc.get('format')!r})")
    if doc.get("version") != _RECIPE_VERSION:
        raise ValueError(f"swap recipe version {doc.get('version')} is not supported (expected {_RECIPE_VERSION})")
    import transformers

    config = transformers.AutoConfig.from_pretrained(directory)
    arch = doc.get("architecture") or (getattr(config, "architectures", None) or [None])[0]
    cls = getattr(transformers, arch, None) if arch else None
    model = cls(config) if cls is not None else transformers.AutoModel.from_config(config)
    for recipe in doc["swaps"]:
        swap(
            model,
            _from_json(recipe["source"]),
            _from_json(recipe["target"]),
            copy_weights=False,
            **recipe.get("kwargs", {}),
        )
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory} has no .safetensors weights")
    state: dict[str, Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    saved = {t.dtype for t in state.values() if t.is_floating_point()}
    if dtype is None and len(saved) == 1:
        dtype = saved.pop()
    if dtype is not None:
        model.to(dtype)
    result = model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"weights in {directory} that the rebuilt model lacks: {result.unexpected_keys[:5]}")
    if result.missing_keys:
        loaded = {id(t) for n, t in model.state_dict(keep_vars=True).items() if n in state}
        tensors = model.state_dict(keep_vars=True)
        missing = [k for k in result.missing_keys if id(tensors[k]) not in loaded]
        if missing:
            raise ValueError(f"tensors of the rebuilt model missing from {directory}: {missing[:5]}")
    object.__setattr__(model, _RECIPES_ATTR, list(doc["swaps"]))
    return model.eval()
