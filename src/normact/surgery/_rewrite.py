"""The rewrite transaction: change a model by path, build layers like the ones they replace, carry their weights,
check the model against its own earlier output, and undo everything on failure.

- :class:`Rewrite`: every edit made through it (a child replaced or wrapped wherever it sits, an attribute set,
  parameters untied, modules' parameters or buffers protected before in-place edits) is logged with its undo;
  :meth:`Rewrite.mark` / :meth:`Rewrite.rollback` undo back to a point (one fold that does not reproduce its
  layer), and leaving the ``with`` block by an exception undoes all of it. :meth:`Rewrite.check` compares the
  model's output with a reference.
- :func:`compile_target` and :func:`build_like`: a registry name, a class or a factory made into a layer with the
  old layer's features, eps, affine switches, momentum, groups, ``inplace``, device and dtype, wrapped in a
  :class:`~normact.surgery._layout.LayoutAdapter` where the layouts differ.
- :func:`carry_weights`: the old layer's tensors copied into the new layer's of the same name and shape;
  :func:`set_param` and :func:`fold_affine_into_linear` edit weights in place.
- checks on probe inputs: :func:`close`, :func:`affine_check` (a norm computes ``u(x) * weight + bias``),
  :func:`layernorm_check` (a module computes LayerNorm), :func:`max_abs_diff`.
- :class:`RewriteReport`: the base of every rewrite's report (its rows, parameter counts before and after,
  ``str``, ``to_dict``/``to_json``, a rich table).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from normact.registry import LayerInfo, UnknownLayerError, get_info
from normact.surgery import _match as match
from normact.surgery._graph import call_model, tensors
from normact.surgery._layout import LayoutAdapter, NormAct

LINEAR_ATTRS = ("in_features", "out_features", "nf", "nx")  # sizes an edit may change (CRMS compression)

# ---------------------------------------------------------------------------------------------------- transaction


class ParamSnapshot:
    """The parameters of ``modules`` (the objects and copies of their values, ``None`` entries included) and the
    attributes named in ``attrs`` that they have (``in_features``, ``affine``...). :meth:`restore` puts the original
    parameter objects back with their values (undoing in-place changes, replacements and parameters created since)
    and the attributes."""

    def __init__(self, modules: Iterable[nn.Module], attrs: Iterable[str] = ()) -> None:
        attrs = tuple(attrs)
        self.params: dict[nn.Module, dict[str, tuple[nn.Parameter | None, Tensor | None]]] = {
            m: {k: (p, None if p is None else p.detach().clone()) for k, p in m._parameters.items()} for m in modules
        }
        self.attrs = {m: {a: getattr(m, a) for a in attrs if hasattr(m, a)} for m in self.params}

    def restore(self) -> None:
        with torch.no_grad():
            for m, params in self.params.items():
                for k in [k for k in m._parameters if k not in params]:
                    del m._parameters[k]
                for k, (p, value) in params.items():
                    if p is not None:
                        p.copy_(value)
                    m._parameters[k] = p
                for a, value in self.attrs[m].items():
                    setattr(m, a, value)


class BufferSnapshot:
    """Copies of the buffers of ``modules``; :meth:`restore` writes them back (into all modules, or the given
    ones)."""

    def __init__(self, modules: Iterable[nn.Module]) -> None:
        self.buffers = {
            m: {k: b.detach().clone() for k, b in m.named_buffers(recurse=False) if b is not None} for m in modules
        }

    def restore(self, modules: Iterable[nn.Module] | None = None) -> None:
        with torch.no_grad():
            for m in self.buffers if modules is None else modules:
                for k, v in self.buffers[m].items():
                    getattr(m, k).copy_(v)


class Rewrite:
    """A transaction over ``model``: the edits made through it are undone together (:meth:`rollback`), and all
    of them when the ``with`` block is left by an exception.

    >>> with Rewrite(model) as rw:                       # doctest: +SKIP
    ...     rw.protect(linear)                            # its parameters and sizes can be restored
    ...     set_param(linear, "weight", w)
    ...     rw.replace(norm, nn.Identity())
    ...     rw.check(x, reference)                        # raises (and undoes) if the output moved
    """

    def __init__(self, model: nn.Module) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self._log: list[Callable[[], None]] = []

    def __enter__(self) -> Rewrite:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.rollback()

    def mark(self) -> int:
        """A point to :meth:`rollback` to."""
        return len(self._log)

    def rollback(self, mark: int = 0) -> None:
        """Undo, newest first, every edit made since ``mark`` (all of them by default)."""
        while len(self._log) > mark:
            self._log.pop()()

    def protect(self, *modules: nn.Module, attrs: Iterable[str] = LINEAR_ATTRS) -> None:
        """Snapshot the parameters (and the attributes ``attrs``) of ``modules`` before editing them in place."""
        self._log.append(ParamSnapshot(modules, attrs).restore)

    def protect_buffers(self, *modules: nn.Module) -> BufferSnapshot:
        """Snapshot the buffers of ``modules`` (running statistics) before they change; the snapshot can also
        restore single modules."""
        snap = BufferSnapshot(modules)
        self._log.append(snap.restore)
        return snap

    def set_attr(self, owner: object, name: str, value: Any) -> None:
        """``setattr(owner, name, value)``, undone by restoring the old value (or deleting a new attribute)."""
        had, old = hasattr(owner, name), getattr(owner, name, None)
        setattr(owner, name, value)
        self._log.append(lambda: setattr(owner, name, old) if had else delattr(owner, name))

    def set_child(self, path: str, new: nn.Module) -> None:
        """Install ``new`` at the qualified name ``path`` (not the root)."""
        parent_name, _, attr = path.rpartition(".")
        parent = self.model.get_submodule(parent_name) if parent_name else self.model
        self._set_child(parent, attr, new)

    def _set_child(self, parent: nn.Module, attr: str, new: nn.Module) -> None:
        old = parent._modules[attr]
        setattr(parent, attr, new)
        self._log.append(lambda: parent._modules.__setitem__(attr, old))

    def replace(self, old: nn.Module, new: nn.Module) -> list[str]:
        """Put ``new`` wherever ``old`` is a child (every name of a shared module); returns those names."""
        names = []
        for name, parent in list(self.model.named_modules(remove_duplicate=False)):
            for cname, child in list(parent._modules.items()):
                if child is old:
                    self._set_child(parent, cname, new)
                    names.append(f"{name}.{cname}" if name else cname)
        return names

    def wrap(self, module: nn.Module, wrapper: Callable[[nn.Module], nn.Module]) -> nn.Module:
        """Replace ``module`` (at every name) by ``wrapper(module)``, which holds it; returns the wrapper."""
        outer = wrapper(module)
        self.replace(module, outer)
        return outer

    def replace_each(
        self, make: Callable[[str, nn.Module], nn.Module | None]
    ) -> list[tuple[str, nn.Module, nn.Module]]:
        """Replace each child for which ``make(name, child)`` returns another module (``make`` is called once per
        module, shared ones included); returns (name, old, new) per installed name."""
        done: dict[int, nn.Module | None] = {}
        swaps = []
        for parent_name, parent in list(self.model.named_modules()):
            for child_name, child in list(parent.named_children()):
                name = f"{parent_name}.{child_name}" if parent_name else child_name
                if id(child) not in done:
                    done[id(child)] = make(name, child)
                new = done[id(child)]
                if new is not None and new is not child:
                    self._set_child(parent, child_name, new)
                    swaps.append((name, child, new))
        return swaps

    def untie(self, module: nn.Module, name: str) -> list[str]:
        """Give ``module`` its own copy of each of its parameters (breaking weight tying); returns what was untied."""
        self.protect(module, attrs=())
        out = []
        for pname, p in list(module._parameters.items()):
            if p is not None:
                module._parameters[pname] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                out.append(f"{name}.{pname}")
        return out

    def check(
        self, inputs: Any, reference: Any, rtol: float = 1e-3, what: str = "the rewritten model", hint: str = ""
    ) -> float:
        """Run the model on ``inputs`` (no grad) and return the largest difference from ``reference``; raise
        ``RuntimeError`` (which undoes everything when raised inside the ``with`` block) when it exceeds ``rtol``
        times the reference's scale (at least 1). ``what`` and ``hint`` word the message."""
        with torch.no_grad():
            diff = max_abs_diff(call_model(self.model, inputs), reference)
        if not diff <= rtol * max(1.0, output_scale(reference)):
            hint = f": {hint}" if hint else ""
            raise RuntimeError(f"{what}'s output differs from the original by {diff:.3g} on the example input{hint}")
        return diff


def set_param(module: nn.Module, name: str, value: Tensor) -> None:
    """Set (or create) parameter ``name`` with ``value``, keeping dtype, device and requires_grad (of the old
    parameter, else of ``weight``)."""
    old = getattr(module, name, None)
    if isinstance(old, nn.Parameter):
        with torch.no_grad():
            if old.shape == value.shape:
                old.copy_(value.to(old.dtype))
                return
        setattr(module, name, nn.Parameter(value.to(old.dtype), requires_grad=old.requires_grad))
    else:
        ref = module.weight
        setattr(module, name, nn.Parameter(value.to(ref.dtype), requires_grad=ref.requires_grad))


def close(got: Tensor, ref: Tensor, rtol: float = 1e-4) -> bool:
    """``got`` equals ``ref`` up to ``rtol`` of ``ref``'s largest magnitude (at least 1e-3) plus 1e-6."""
    if got.shape != ref.shape:
        return False
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return bool((got.detach().float() - ref.detach().float()).abs().max() <= rtol * max(scale, 1e-3) + 1e-6)


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest absolute difference between the tensors of two outputs (inf when their structure differs)."""
    ta, tb = tensors(a), tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        return math.inf
    return max(
        (float((x.double() - y.double()).abs().max()) for x, y in zip(ta, tb, strict=True) if x.numel()), default=0.0
    )


def output_scale(a: Any) -> float:
    """The largest magnitude among an output's floating-point tensors (1 when it has none)."""
    return max((float(t.detach().abs().max()) for t in tensors(a) if t.numel() and t.is_floating_point()), default=1.0)


@contextlib.contextmanager
def eval_mode(*modules: nn.Module) -> Iterator[None]:
    """``modules`` in eval mode inside the block, their modes restored after."""
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, t in zip(modules, modes, strict=True):
            m.train(t)


def probe_vectors(d: int, ref: Tensor) -> Tensor:
    """Four seeded random d-vectors (offset per row) on ``ref``'s device and dtype."""
    gen = torch.Generator().manual_seed(4321)
    x = torch.randn(4, d, generator=gen) * 2 + torch.randn(4, 1, generator=gen)
    return x.to(device=ref.device, dtype=ref.dtype)


def unit_affine(norm: nn.Module) -> None:
    """A norm's weight set to 1 and bias to 0 (in place)."""
    w, b = match.affine_params(norm)
    with torch.no_grad():
        if w is not None:
            w.fill_(1)
        if b is not None:
            b.zero_()


def affine_check(norm: nn.Module) -> tuple[Tensor, Tensor | None] | str:
    """(gamma, beta) after checking on probe vectors that ``norm(x) == norm_unit(x) * gamma + beta`` (the norm with
    unit affine), or why not; the parameters are left as they were."""
    w, b = match.affine_params(norm)
    if w is None or w.dim() != 1:
        return "no per-feature affine weight (nothing to fold)" if w is None else "its weight is not 1-D"
    g = w.detach().clone()
    beta = b.detach().clone() if b is not None else None
    x = probe_vectors(w.shape[0], w)
    try:
        with torch.no_grad(), eval_mode(norm):
            y = norm(x)
            unit_affine(norm)
            u = norm(x)
    except Exception as e:
        return f"cannot be run on a probe input ({type(e).__name__}: {e})"[:200]
    finally:
        with torch.no_grad():
            w.copy_(g)
            if b is not None:
                b.copy_(beta)
    expect = u * g + (beta if beta is not None else 0)
    if not close(y, expect):
        return "does not compute u(x) * weight + bias (a different parametrization of the gain)"
    return g, beta


def layernorm_check(m: nn.Module) -> tuple[int, float] | str:
    """(d, eps) of a module that computes LayerNorm over its last dimension (checked numerically), or why not."""
    w, b = match.affine_params(m)
    shape = getattr(m, "normalized_shape", None)
    d = int(shape[0]) if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1 else None
    if d is None and w is not None and w.dim() == 1:
        d = w.shape[0]
    if d is None:
        return "normalizes over more than the last dimension (or its size is unknown)"
    eps = match.norm_eps(m)[1]
    if eps is None:
        return "no numeric eps attribute"
    ref_t = w if w is not None else next(iter(m.parameters()), torch.zeros(()))
    x = probe_vectors(d, ref_t)
    try:
        with torch.no_grad():
            y = m(x)
    except Exception as e:
        return f"cannot be run on a probe input ({type(e).__name__}: {e})"[:200]
    expect = torch.nn.functional.layer_norm(x, (d,), w, b, eps)
    if not close(y, expect):
        return "does not compute LayerNorm over its last dimension"
    return d, eps


def fold_affine_into_linear(lin: nn.Module, g: Tensor, b: Tensor | None, *, compress: bool = False) -> None:
    r"""``lin(x * g + b)`` as ``lin'(x)``: :math:`W' = W \operatorname{diag}(g)`, :math:`c' = c + W b` (transformers'
    ``Conv1D`` handled transposed; a bias created where needed). With ``compress`` the input is the first d-1
    coordinates of a zero-mean d-vector :math:`u` (:math:`u_d = -\sum_{i<d} u_i`), so :math:`W'_{:,i} = W_{:,i} g_i
    - W_{:,d} g_d` for :math:`i < d`."""
    hf = match.is_hf_conv1d(lin)
    w = lin.weight.detach().double()
    w = w.t() if hf else w  # (out, in)
    g = g.detach().double().to(w.device)
    bias = (
        lin.bias.detach().double() if lin.bias is not None else torch.zeros(w.shape[0], dtype=w.dtype, device=w.device)
    )
    if b is not None:
        bias = bias + w @ b.detach().double().to(w.device)
    w = w * g
    if compress:
        w = w[:, :-1] - w[:, -1:]
    if hf:
        set_param(lin, "weight", w.t().contiguous())
        lin.nx = w.shape[1]
    else:
        set_param(lin, "weight", w)
        lin.in_features = w.shape[1]
    if lin.bias is not None or b is not None:
        set_param(lin, "bias", bias)


# ---------------------------------------------------------------------------------------------------- report


class Row(NamedTuple):
    """One line of a rewrite's report: what happened (``replaced``, ``wrapped``, ``folded``, ``recentered``,
    ``untied``, ``skipped``...) to which module, from what to what, and the details or reason."""

    action: str
    name: str
    old: str = ""
    new: str = ""
    detail: str = ""


class RewriteReport:
    """What a rewrite did: the base of every surgery report. Subclasses (dataclasses) keep their own fields, among
    them ``params_before`` and ``params_after`` (``sum(p.numel() for p in model.parameters())`` before and after),
    and give :meth:`rows` and :meth:`summary`; this base gives ``str``, :meth:`to_dict`, :meth:`to_json` (written
    atomically) and a rich :meth:`table`."""

    params_before: int
    params_after: int

    def rows(self) -> list[Row]:
        raise NotImplementedError

    def summary(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self.summary()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly view: the summary's first line, the rows and the parameter counts."""
        return {
            "summary": self.summary().splitlines()[0],
            "rows": [r._asdict() for r in self.rows()],
            "params_before": self.params_before,
            "params_after": self.params_after,
        }

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON to ``path`` (through a temporary file, then renamed); returns the path."""
        path = Path(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(self.to_dict(), indent=2) + "\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    _COLUMNS: tuple[str, ...] = ("action", "module", "old", "new", "detail")

    def table_rows(self) -> list[tuple[str, ...]]:
        return [tuple(r) for r in self.rows()]

    def table(self, title: str | None = None, max_rows: int | None = None) -> Any:
        """A ``rich.table.Table`` with one row per module the rewrite touched or skipped (names printed verbatim)."""
        from rich.markup import escape
        from rich.table import Table

        rows = self.table_rows()
        title = title or self.summary().splitlines()[0]
        if max_rows is not None and len(rows) > max_rows:
            title = f"{title} (first {max_rows} of {len(rows)} rows)"
            rows = rows[:max_rows]
        table = Table(title=escape(title))
        for col in self._COLUMNS:
            table.add_column(col, overflow="fold", no_wrap=col == "module")
        for row in rows:
            table.add_row(*(escape(c) for c in row))
        return table

    def __rich__(self) -> Any:
        return self.table()


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------- targets

Target = str | type[nn.Module] | Callable[..., nn.Module]


class SkipError(Exception):
    """This module cannot be rewritten, for the reason given (reported as skipped)."""


@dataclass
class CompiledTarget:
    """A target made callable: how it is built (``registry``, ``class`` or ``factory``), its registry entry and
    constructor parameters, and its JSON form for recipes (None when not serializable)."""

    how: str
    factory: Callable[..., nn.Module]
    label: str
    info: LayerInfo | None
    params: dict[str, inspect.Parameter]
    var_kw: bool
    json: Any


FEATURE_PARAMS = ("normalized_shape", "num_features", "num_channels", "hidden_size", "channels", "dim")


def class_ref(cls: type) -> dict[str, str] | None:
    """``{"class": "module:QualName"}`` when the class is importable under that name, else None."""
    if "<locals>" in cls.__qualname__:
        return None
    return {"class": f"{cls.__module__}:{cls.__qualname__}"}


def compile_target(target: Target, kwargs: dict[str, Any]) -> CompiledTarget:
    """Check ``target`` (a registry name, an ``nn.Module`` class or a factory) and the keyword arguments it gets."""
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
        how, factory, label, ref = "class", target, match.class_label(target), class_ref(target)
    elif callable(target):
        label = getattr(target, "__name__", type(target).__name__)
        return CompiledTarget("factory", target, f"factory {label}", None, {}, True, None)
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
    return CompiledTarget(how, factory, label, info, params, var_kw, ref)


def _is_norm_target(target: CompiledTarget) -> bool:
    if target.info is not None:
        return target.info.kind == "norm"
    for name in FEATURE_PARAMS:
        p = target.params.get(name)
        if p is not None and p.default is inspect.Parameter.empty:
            return True
    return False


def _norm_args(
    target: CompiledTarget, old: nn.Module, kwargs: dict[str, Any], src_layout: str, tgt_layout: str | None
) -> tuple[dict[str, Any], str | None, list[str]]:
    """The norm arguments derived from ``old`` (features, eps, affine, bias, momentum, groups, channels_last), the
    target's layout after them, and notes."""
    params, args, notes = target.params, {}, []
    feats = match.features(old)
    if feats is None:
        raise SkipError(
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
    feature_param = next((n for n in FEATURE_PARAMS if n in params), None)
    if feature_param is None:
        raise SkipError(f"{target.label} takes no feature count ({', '.join(FEATURE_PARAMS)})")
    cross = src_layout == "channels_first" or tgt_layout in ("channels_first", "tokens")
    if len(feats) != 1 and (cross or feature_param != "normalized_shape"):
        raise SkipError(f"normalizes over the trailing dims {feats}: no single channel count for {target.label}")
    args[feature_param] = feats[0] if len(feats) == 1 else feats
    found, eps = match.norm_eps(old)
    if found and "eps" in params:
        if eps is None and params["eps"].default is not None:
            notes.append("the old eps is None (machine epsilon): the target's default eps is used")
        else:
            args["eps"] = eps
    elif "eps" in params:
        notes.append("no eps found on the old layer: the target's default eps is used")
    affine, has_bias = match.affine_flags(old)
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
    return args, tgt_layout, notes


def build_like(
    target: CompiledTarget, old: Any, kwargs: dict[str, Any], is_function: bool, src_layout: str | None = None
) -> tuple[nn.Module, nn.Module, list[str]]:
    """Build ``target`` to replace ``old`` (a module, or a function attribute): (the module to install, the new
    layer inside it, notes). Raises :class:`SkipError` when ``old`` gives no arguments for it."""
    if target.how == "factory":
        new = target.factory(old, **kwargs)
        if not isinstance(new, nn.Module):
            raise TypeError(f"the target {target.label} returned {type(new).__name__}, not an nn.Module")
        if isinstance(old, nn.Module):
            new.train(old.training)
        return new, new, []
    params = target.params
    args: dict[str, Any] = {}
    notes: list[str] = []
    tgt_layout = target.info.input_layout if target.info is not None else None
    norm_target = _is_norm_target(target)
    if norm_target:
        if is_function:
            raise SkipError(f"a function attribute has no feature count for the norm {target.label}")
        src_layout = src_layout or match.norm_layout(old)
        args, tgt_layout, notes = _norm_args(target, old, kwargs, src_layout, tgt_layout)
    if not is_function and "inplace" in params and isinstance(getattr(old, "inplace", None), bool):
        args["inplace"] = old.inplace
    fkw = match.factory_kwargs(old) if isinstance(old, nn.Module) else {}
    for k in ("device", "dtype"):
        if k in params and k in fkw:
            args[k] = fkw[k]
    args.update(kwargs)
    try:
        new = target.factory(**args)
    except (TypeError, ValueError, RuntimeError) as e:
        raise SkipError(f"{target.label} could not be built with {_fmt_args(args)}: {e}") from e
    if not isinstance(new, nn.Module):
        raise TypeError(f"the target {target.label} returned {type(new).__name__}, not an nn.Module")
    if fkw and not ("device" in params and "dtype" in params):
        new.to(**fkw)
    if isinstance(old, nn.Module):
        new.train(old.training)
    outer = new
    if norm_target:
        if tgt_layout is None:
            tgt_layout = match.norm_layout(new)
        outer, note = _adapt_layout(new, src_layout, tgt_layout, old, target.label)
        if note:
            notes.append(note)
    if isinstance(old, nn.Module) and match.is_norm_act(old):
        outer = NormAct(outer, old.drop, old.act)
        notes.append(f"kept the fused {type(old.act).__name__} activation (NormAct)")
    return outer, new, notes


def _fmt_args(args: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in args.items() if k not in ("device", "dtype")) or "no arguments"


def _adapt_layout(new: nn.Module, src: str, tgt: str, old: nn.Module, label: str) -> tuple[nn.Module, str | None]:
    """``new`` wrapped in a LayoutAdapter where the old layer's inputs are not in the layout it expects."""
    if tgt in ("other", "any") or src not in ("channels_first", "last_dims"):
        if tgt == "other":
            raise SkipError(f"{label} has a structured input layout: it cannot replace a {src} norm")
        return new, None
    feats = match.features(old)
    if src == "last_dims" and tgt != "last_dims" and feats is not None and len(feats) != 1:
        raise SkipError(f"normalizes over the trailing dims {feats}: no single channel count for {label}")
    ranks = match.fixed_ranks(new) if tgt == "channels_first" else None
    if src == tgt:
        if src == "channels_first" and ranks is not None:
            old_ranks = match.fixed_ranks(old)
            if old_ranks is None or not set(old_ranks) <= set(ranks):
                return LayoutAdapter(new, src, tgt, ranks), f"wrapped in LayoutAdapter (input ranks {ranks})"
        return new, None
    return LayoutAdapter(new, src, tgt, ranks), f"wrapped in LayoutAdapter ({src} -> {tgt})"


# ---------------------------------------------------------------------------------------------------- weights

_ALIASES = {"gamma": "weight", "beta": "bias"}


class Carried(NamedTuple):
    """What :func:`carry_weights` did: the new layer's tensors copied and left at init, the old tensors with no
    destination, notes."""

    copied: list[str]
    left_at_init: list[str]
    dropped: list[str]
    notes: list[str]


def own_tensors(module: nn.Module, recurse: bool = True) -> Iterator[tuple[str, Tensor]]:
    yield from module.named_parameters(recurse=recurse)
    yield from module.named_buffers(recurse=recurse)


def carry_weights(old: nn.Module, new: nn.Module) -> Carried:
    """Copy the old layer's tensors into the new layer's tensors of the same name and shape (``gamma``/``beta``
    read as ``weight``/``bias``; a gain stored as ``1 + weight`` converted; ``requires_grad`` carried)."""
    olds = {_ALIASES.get(name, name): t for name, t in own_tensors(old, recurse=False)}
    src_offset, dst_offset = match.gain_offset(type(old)), match.gain_offset(type(new))
    copied, left, notes = [], [], []
    used: set[str] = set()
    with torch.no_grad():
        for name, dst in own_tensors(new):
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
    return Carried(copied, left, [n for n in olds if n not in used], notes)
