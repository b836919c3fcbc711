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
import importlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from normact.registry import get_info
from normact.surgery import _match as match
from normact.surgery._graph import module_paths
from normact.surgery._layout import LayoutAdapter, NormAct
from normact.surgery._rewrite import (
    CompiledTarget,
    Rewrite,
    RewriteReport,
    Row,
    SkipError,
    Target,
    build_like,
    carry_weights,
    class_ref,
    compile_target,
    own_tensors,
    param_count,
)

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
class SwapReport(RewriteReport):
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

    def rows(self) -> list[Row]:
        out = [
            Row(
                "replaced",
                r.name,
                r.old_class,
                r.new_class,
                "; ".join([*(f"dropped {d}" for d in r.dropped), *r.notes]),
            )
            for r in self.replaced
        ]
        return out + [Row("skipped", s.name, s.old_class, "", s.reason) for s in self.skipped]

    _COLUMNS = ("module", "old", "new", "copied", "left at init", "notes")

    def table_rows(self) -> list[tuple[str, ...]]:
        rows: list[tuple[str, ...]] = []
        for r in self.replaced:
            notes = "; ".join([*(f"dropped {d}" for d in r.dropped), *r.notes])
            rows.append(
                (r.name, r.old_class, r.new_class, ", ".join(r.copied) or "-", ", ".join(r.left_at_init) or "-", notes)
            )
        return rows + [(s.name, s.old_class, "[skipped]", "-", "-", s.reason) for s in self.skipped]


_PATTERN_CHARS = set(".*?[")


def _compile_source(
    source: Source, model: nn.Module
) -> tuple[Callable[[str, nn.Module], bool], match.Family | None, str, Any]:
    """A predicate over (name, module), the family of a registry-name source, a label and the JSON form."""
    if isinstance(source, str):
        prefix, _, rest = source.partition(":")
        if prefix == "name" and rest:
            return (lambda name, m: fnmatch.fnmatchcase(name, rest)), None, source, source
        if prefix == "layer" and rest:
            fam = match.family(rest)
            if fam is None:
                get_info(rest)  # raises UnknownLayerError with suggestions
                raise ValueError(f"unknown layer {rest!r}")
            return (lambda name, m: fam.matches(m)), fam, source, source
        if _PATTERN_CHARS & set(source):
            return (lambda name, m: fnmatch.fnmatchcase(name, source)), None, source, source
        fam = match.family(source)
        if fam is not None:
            return (lambda name, m: fam.matches(m)), fam, source, source
        if source in dict(model.named_modules()):
            return (lambda name, m: name == source), None, source, source
        get_info(source)  # raises UnknownLayerError (a ValueError) with the closest names
        raise ValueError(f"unknown source {source!r}")  # pragma: no cover (get_info raised)
    if isinstance(source, type):
        if not issubclass(source, nn.Module):
            raise TypeError(f"a source class must subclass torch.nn.Module, got {source.__qualname__}")
        return (lambda name, m: isinstance(m, source)), None, match.class_label(source), class_ref(source)
    if callable(source):
        label = getattr(source, "__name__", type(source).__name__)
        return (lambda name, m: bool(source(name, m))), None, f"predicate {label}", None
    raise TypeError(
        "source must be a registry name, a name pattern, an nn.Module class or a predicate f(name, module) -> bool, "
        f"got {type(source).__name__}"
    )


def _import_class(ref: str) -> type:
    module, _, qual = ref.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    if not isinstance(obj, type):
        raise TypeError(f"{ref} is not a class")
    return obj


# ---------------------------------------------------------------------------------------------------- swap


def _inside(name: str, prefixes: list[str]) -> str | None:
    for p in prefixes:
        if name.startswith(p + "."):
            return p
    return None


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
    tgt = compile_target(target, target_kwargs)
    params_before = param_count(model)
    paths, modules = module_paths(model)

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
        label = match.class_label(type(m))
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
            outer, inner, notes = build_like(tgt, m, target_kwargs, is_function=False, src_layout=layout)
        except SkipError as e:
            skipped.append(Skipped(names[0], label, str(e)))
            continue
        notes = unwrap + notes
        if copy_weights:
            copied, left, dropped, copy_notes = carry_weights(m, inner)
        else:
            copied, left = [], [n for n, _ in own_tensors(inner)]
            dropped = [n for n, _ in own_tensors(m, recurse=False)]
            copy_notes = ["copy_weights=False"]
        new_label = match.class_label(type(inner)) + ("" if outer is inner else f" in {type(outer).__name__}")
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

    with Rewrite(model) as rw:
        for names, outer in plan:
            for n in names:
                rw.set_child(n, outer)
        for owner, attr, new in attr_plan:
            rw.set_attr(owner, attr, new)
            if isinstance(getattr(owner, "activation_relu_or_gelu", None), (bool, int)):
                rw.set_attr(owner, "activation_relu_or_gelu", 0)  # torch's fast path would bypass the module

    report = SwapReport(
        source=source_label,
        target=tgt.label,
        replaced=replaced,
        skipped=skipped,
        params_before=params_before,
        params_after=param_count(model),
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
        raise SkipError(
            f"not a drop-in layer: forward({', '.join(named)}) takes more than one input; pass it as a class "
            "source with a factory target to replace it"
        )


def _scan_functions(
    model: nn.Module,
    modules: dict[int, nn.Module],
    paths: dict[int, list[str]],
    family: match.Family,
    tgt: CompiledTarget,
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
        label = match.class_label(type(m))
        for attr, value in list(vars(m).items()):
            if attr.startswith("_") or not match.function_matches(value, family):
                continue
            qual = f"{name}.{attr}" if name else attr
            flabel = match.function_label(value)
            try:
                outer, inner, notes = build_like(tgt, value, kwargs, is_function=True)
            except SkipError as e:
                skipped.append(Skipped(qual, flabel, str(e)))
                continue
            attr_plan.append((m, attr, outer))
            if hasattr(m, "activation_relu_or_gelu"):
                notes.append("activation_relu_or_gelu=0 (disables torch's fused fast path, which ignores the module)")
            left = [n for n, _ in own_tensors(inner)]
            notes = ["function attribute", *notes]
            replaced.append(Replacement(qual, flabel, match.class_label(type(inner)), [], left, [], notes, []))
        if type(m).__module__.startswith(match.OWN_DEFINITIONS):
            continue  # torch's, normact's and the activation libraries' functional calls define their modules
        calls = match.functional_calls(type(m), family.functions)
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
