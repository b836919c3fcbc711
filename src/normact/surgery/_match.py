"""The matcher: what a module is, for every rewrite (swap, fold, adapt, and the rewrites to come).

One place recognises layers across torch.nn, normact, Hugging Face transformers, timm and torchvision classes,
by type where torch or normact defines the class and by class name and duck typing otherwise (nothing
third-party is imported):

- projections: :func:`is_linear` (``nn.Linear`` and transformers' ``Conv1D``, weight ``(in, out)``),
  :func:`is_conv`, :func:`role` (the part a module plays in a data-flow analysis);
- norms by the computation they perform (:func:`is_layernorm`, :func:`is_rmsnorm` incl. T5-style RMS
  "LayerNorms" and Gemma's ``1 + weight`` gain, :func:`is_batchnorm`, :func:`is_instancenorm`,
  :func:`is_groupnorm`), each with ``candidate=True`` for the wider set that a caller which verifies the
  computation numerically may try (fold), and :func:`is_batchnorm_layer` for the layers whose running
  statistics are updated with a momentum (AdaBN re-estimates them; an InstanceNorm is never one of them, even
  one that fold may fold in eval);
- activations: the families of :func:`family` (a registry name and the equivalent torch, transformers and timm
  classes, and the torch functions stored as attributes or called in a forward);
- what a norm holds: :func:`features`, :func:`norm_eps`, :func:`affine_flags`, :func:`affine_params`,
  :func:`factory_kwargs`, :func:`norm_layout`, :func:`fixed_ranks`, :func:`channel_axis`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from normact.probing.probe import module_kind
from normact.registry import LayerInfo, UnknownLayerError, get_info, normalize_name

DROPOUT = nn.modules.dropout._DropoutNd

# ---------------------------------------------------------------------------------------------------- classes


def class_label(cls: type) -> str:
    """``"torch.LayerNorm"``, ``"transformers.LlamaRMSNorm"``, ``"normact.DyT"``: package and class name."""
    return f"{cls.__module__.split('.')[0]}.{cls.__qualname__}"


def mro_names(module: nn.Module) -> list[str]:
    """Lower-case names of the module's classes (its own first), without ``nn.Module`` and ``object``."""
    return [c.__name__.lower() for c in type(module).__mro__ if c not in (nn.Module, object)]


def is_normact(module: nn.Module) -> bool:
    return type(module).__module__.startswith("normact.")


def is_leaf(module: nn.Module) -> bool:
    return next(module.children(), None) is None


def is_norm_act(module: nn.Module) -> bool:
    """A timm fused norm + activation (``BatchNormAct2d``...): ``act`` and ``drop`` submodules."""
    return set(dict(module.named_children())) == {"act", "drop"}


@functools.cache
def forward_source(cls: type) -> str:
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
_GAIN_OFFSET = re.compile(r"\(\s*1(?:\.0*)?\s*\+\s*self\.weight")


@functools.cache
def rms_like_class(cls: type) -> bool:
    """Whether a ``*LayerNorm`` class (not a ``torch.nn.LayerNorm``) is in fact an RMSNorm: its forward squares
    and averages once (the mean square) and never computes a mean to subtract (``T5LayerNorm``). Without source
    (compiled classes) it is taken for a LayerNorm."""
    src = forward_source(cls)
    if not src:
        return False
    return bool(_RMS_HINT.search(src)) and not _LN_HINT.search(src) and len(_MEAN_CALL.findall(src)) <= 1


@functools.cache
def gain_offset(cls: type) -> float:
    """1.0 for norms that scale by ``1 + weight`` (Gemma's RMSNorm), found in the forward's source; else 0."""
    return 1.0 if _GAIN_OFFSET.search(forward_source(cls)) else 0.0


# ---------------------------------------------------------------------------------------------------- projections


def is_hf_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer ``x @ weight + bias`` with ``weight`` of shape (in, out)."""
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "Conv1D"
        and isinstance(w, Tensor)
        and w.dim() == 2
        and getattr(m, "nf", None) == w.shape[1]
        and isinstance(getattr(m, "bias", None), Tensor)
    )


def is_linear(m: nn.Module) -> bool:
    """``nn.Linear`` or transformers' ``Conv1D``."""
    return isinstance(m, nn.Linear) or is_hf_conv1d(m)


def is_conv(m: nn.Module) -> bool:
    return isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d))


def linear_dims(m: nn.Module) -> tuple[int, int]:
    """(in, out) features of a linear layer (``Conv1D``'s weight is (in, out))."""
    if is_hf_conv1d(m):
        return m.weight.shape[0], m.weight.shape[1]
    return m.in_features, m.out_features


# ---------------------------------------------------------------------------------------------------- norms

_LN_NAME = re.compile(r"LayerNorm(\d+d|Nd)?$")
_RMS_NAME = re.compile(r"rmsnorm", re.IGNORECASE)
_BN_NAME = re.compile(r"BatchNorm(\dd)?$")


def is_rmsnorm(module: nn.Module, *, candidate: bool = False) -> bool:
    """An RMSNorm: torch's and normact's (subclasses included), leaf modules named ``*RMSNorm``/``*RmsNorm`` (or
    timm's fused ``*NormAct``) and ``*LayerNorm`` classes whose forward computes a root mean square and no mean.
    ``candidate=True``: any class named ``*rmsnorm`` with a ``weight`` tensor (the caller checks the formula)."""
    if isinstance(module, (*((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()), get_info("rmsnorm").cls)):
        return True
    name = type(module).__name__
    if candidate:
        return name.lower().endswith("rmsnorm") and isinstance(getattr(module, "weight", None), Tensor)
    if is_normact(module) or isinstance(module, nn.LayerNorm) or not (is_leaf(module) or is_norm_act(module)):
        return False
    return bool(_RMS_NAME.search(name)) or bool(_LN_NAME.search(name) and rms_like_class(type(module)))


def is_layernorm(module: nn.Module, *, candidate: bool = False) -> bool:
    """A LayerNorm: ``nn.LayerNorm`` and subclasses, normact's ``layernorm``/``layernorm2d``, leaf modules named
    ``*LayerNorm``/``*LayerNorm2d`` that subtract a mean. ``candidate=True``: any class named ``*layernorm``
    (not ``*rms*``, not a BatchNorm by its buffers), normact's L1/MS/time-dependent variants included (the
    caller checks the formula)."""
    if isinstance(module, nn.LayerNorm):
        return True
    name = type(module).__name__
    if candidate:
        lower = name.lower()
        return lower.endswith("layernorm") and "rms" not in lower and not is_batchnorm(module, candidate=True)
    if is_normact(module):
        return isinstance(module, (get_info("layernorm").cls, get_info("layernorm2d").cls))
    return bool(_LN_NAME.search(name)) and is_leaf(module) and not rms_like_class(type(module))


def is_batchnorm(module: nn.Module, dims: str | None = None, *, candidate: bool = False) -> bool:
    """A BatchNorm (``dims`` ``"1d"``/``"2d"``/``"3d"`` for one kind): torch's ``_BatchNorm`` subclasses
    (``SyncBatchNorm``, timm ``BatchNormAct2d``), normact's, leaf modules named ``*BatchNorm{1,2,3}d``
    (torchvision's ``FrozenBatchNorm2d``). ``candidate=True`` (``dims`` ignored): anything that in eval mode may
    normalize with stored per-channel statistics, by its buffers (``running_mean``, ``running_var``, ``eps`` and
    ``affine`` or ``weight``): normact's batch variants, an InstanceNorm with tracked statistics (the caller
    checks the computation)."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm):
        if candidate or dims is None or isinstance(module, nn.SyncBatchNorm):
            return True
        return any(n.endswith(f"batchnorm{dims}") for n in mro_names(module))
    if candidate:
        return all(hasattr(module, a) for a in ("running_mean", "running_var", "eps")) and (
            hasattr(module, "affine") or hasattr(module, "weight")
        )
    from normact.layers.norm.batch import _BatchNorm

    bn = isinstance(module, _BatchNorm) or (
        bool(_BN_NAME.search(type(module).__name__)) and is_leaf(module) and not is_normact(module)
    )
    return bn and (dims is None or any(n.endswith(f"batchnorm{dims}") for n in mro_names(module)))


def is_instancenorm(module: nn.Module, dims: str | None = None, *, candidate: bool = False) -> bool:
    """An InstanceNorm: torch's and normact's, leaf modules named ``*InstanceNorm{1,2,3}d``; ``candidate=True``:
    any class with ``InstanceNorm`` in its name."""
    if isinstance(module, nn.modules.instancenorm._InstanceNorm):
        ok = True
    elif candidate:
        return "InstanceNorm" in type(module).__name__
    elif is_normact(module):
        ok = isinstance(module, get_info("instancenorm2d").cls)
    else:
        ok = bool(re.search(r"InstanceNorm(\dd)?$", type(module).__name__)) and is_leaf(module)
    return ok and (dims is None or any(n.endswith(f"instancenorm{dims}") for n in mro_names(module)))


def is_groupnorm(module: nn.Module) -> bool:
    """``nn.GroupNorm`` and subclasses (timm ``GroupNorm``/``GroupNorm1``), normact's, leaf ``*GroupNorm(1)``."""
    if isinstance(module, nn.GroupNorm):
        return True
    if is_normact(module):
        return isinstance(module, (get_info("groupnorm").cls, get_info("groupnorm1").cls))
    return bool(re.search(r"GroupNorm1?$", type(module).__name__)) and is_leaf(module)


def is_batchnorm_layer(module: nn.Module) -> bool:
    """A layer whose running statistics are batch statistics updated with a momentum: a ``running_mean`` or
    ``running_var`` tensor and a ``momentum`` attribute, instance norms excepted (what AdaBN re-estimates and
    freezing keeps; layers with running statistics but no momentum, such as ``online_norm``, are not)."""
    stats = any(isinstance(getattr(module, k, None), Tensor) for k in ("running_mean", "running_var"))
    return stats and hasattr(module, "momentum") and not is_instancenorm(module, candidate=True)


def plain_batchnorm_classes() -> tuple[type[nn.Module], ...]:
    """Classes whose running statistics are torch's (mean and unbiased variance over dim 1, per channel)."""
    return (nn.modules.batchnorm._BatchNorm, *(get_info(n).cls for n in ("batchnorm1d", "batchnorm2d", "alpha_bn")))


def is_norm(module: nn.Module) -> bool:
    """Any normalization layer: normact's registered norms, torch's, and classes named ``*Norm``/``*Normalization``
    (the probe's kind ``norm``)."""
    return module_kind(module) == "norm"


def role(m: nn.Module) -> str | None:
    """The part a module plays in a data-flow analysis: ``conv``, ``linear``, ``conv1d`` (transformers),
    ``embedding``, ``bn`` (per-channel statistics in eval), ``ln``, ``rms``, ``pass`` (dropout, identity) or None.
    Norms are candidates: a rewrite checks their computation before relying on it."""
    if is_conv(m):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if is_hf_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Embedding):
        return "embedding"
    if is_batchnorm(m, candidate=True):
        return "bn"
    if is_layernorm(m, candidate=True):
        return "ln"
    if is_rmsnorm(m, candidate=True):
        return "rms"
    if isinstance(m, (DROPOUT, nn.Identity)):
        return "pass"
    return None


# ---------------------------------------------------------------------------------------------------- what a norm holds


def features(module: nn.Module) -> tuple[int, ...] | None:
    """The normalized shape (``normalized_shape``, ``num_features``, ``num_channels``, else a 1-D gain's size)."""
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


def norm_eps(module: nn.Module) -> tuple[bool, float | None]:
    """(found, value) of the first of ``eps``, ``variance_epsilon``, ``epsilon`` holding a number or None."""
    for attr in ("eps", "variance_epsilon", "epsilon"):
        if hasattr(module, attr):
            v = getattr(module, attr)
            if v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)):
                return True, None if v is None else float(v)
    return False, None


def affine_flags(module: nn.Module) -> tuple[bool, bool]:
    """(affine, has bias) of a norm (``elementwise_affine``/``affine``, else whether a weight exists)."""
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


def affine_params(norm: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    """The norm's ``weight`` and ``bias`` tensors (None where absent)."""
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    return (w if isinstance(w, Tensor) else None), (b if isinstance(b, Tensor) else None)


def factory_kwargs(module: nn.Module) -> dict[str, Any]:
    """``device`` of the module's first tensor and ``dtype`` of its first floating-point one."""
    tensors = [*module.parameters(), *module.buffers()]
    floating = [t for t in tensors if t.is_floating_point()]
    if not tensors:
        return {}
    out: dict[str, Any] = {"device": tensors[0].device}
    if floating:
        out["dtype"] = floating[0].dtype
    return out


_CHANNELS_FIRST_NAMES = {"VitDetLayerNorm"}  # channels-first layer norms whose name does not say so


def norm_layout(module: nn.Module) -> str:
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
    return "last_dims" if features(module) is not None else "any"


def fixed_ranks(module: nn.Module) -> tuple[int, ...] | None:
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


TORCH_NORMS_FIRST = (nn.modules.batchnorm._NormBase, nn.GroupNorm)  # channel axis 1, self.weight/bias in forward
TORCH_NORMS_LAST = (nn.LayerNorm, *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()))


def channel_axis(name: str, module: nn.Module) -> tuple[int, str]:
    """(channel axis of the output, kind) with kind ``"proj"`` (conv/linear) or ``"norm"``; TypeError for
    other modules."""
    if isinstance(module, nn.modules.conv._ConvNd) and not module.transposed:
        return 1, "proj"
    if isinstance(module, nn.Linear):
        return -1, "proj"
    if isinstance(module, TORCH_NORMS_FIRST):
        return 1, "norm"
    if isinstance(module, TORCH_NORMS_LAST) and len(module.normalized_shape) == 1:
        return -1, "norm"
    if not isinstance(module, TORCH_NORMS_LAST) and is_norm(module):
        try:
            layout = get_info(type(module)).input_layout
        except KeyError:  # a third-party norm (LlamaRMSNorm, T5LayerNorm): features last
            layout = "tokens"
        if layout == "channels_first":
            return 1, "norm"
        shape = getattr(module, "normalized_shape", None)
        one_dim = shape is None or isinstance(shape, int) or len(tuple(shape)) == 1
        if layout in ("tokens", "last_dims") and one_dim:
            return -1, "norm"
    raise TypeError(
        f"{name} ({type(module).__name__}): per-channel statistics and corrections are defined for the outputs "
        "of torch.nn.Conv1d/2d/3d (channel axis 1), torch.nn.Linear (last axis) and normalization layers "
        "(channel-first norms: axis 1; LayerNorm/RMSNorm over one dim and transformers-style *Norm: last axis)"
    )


def select(model: nn.Module, modules: Any) -> dict[str, nn.Module]:
    """Modules chosen by names / fnmatch patterns / classes / instances / predicates (name, module) -> bool, or
    a list of these; ValueError for a selector that matches nothing."""
    named = dict(model.named_modules())
    items = [modules] if isinstance(modules, (str, type, nn.Module)) or callable(modules) else modules
    if not isinstance(items, Iterable):
        raise TypeError(f"modules must be a name, pattern, class, module, predicate or a list of them, got {modules!r}")
    out: dict[str, nn.Module] = {}
    for sel in items:
        if isinstance(sel, str):
            hits = [sel] if sel in named else [n for n in named if n and fnmatch.fnmatchcase(n, sel)]
        elif isinstance(sel, type) and issubclass(sel, nn.Module):
            hits = [n for n, m in named.items() if isinstance(m, sel)]
        elif isinstance(sel, nn.Module):
            hits = [n for n, m in named.items() if m is sel][:1]
        elif callable(sel):
            hits = [n for n, m in named.items() if sel(n, m)]
        else:
            raise TypeError(f"a module selector is a name, pattern, class, module or predicate, got {sel!r}")
        if not hits:
            raise ValueError(f"no module of {type(model).__name__} matches {sel!r}")
        out.update((n, named[n]) for n in hits)
    return out


# ---------------------------------------------------------------------------------------------------- families

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
# Functions of torch per activation family (else the registry name): attributes holding them are swapped, calls
# in a forward are reported.
_FUNCTION_NAMES: dict[str, tuple[str, ...]] = {"gelu": ("gelu",), "gelu_tanh": ("gelu",)}
_HF_ACT_ALIASES = {  # transformers' ACT2FN names that are not registry names
    "gelunew": "gelu_tanh",
    "gelufast": "gelu_tanh",
    "gelupytorchtanh": "gelu_tanh",
    "geluaccurate": "gelu_tanh",
    "quickgelu": "gelu_sigmoid",
    "swish": "silu",
}


@dataclass
class Family:
    """A registry-name source: a module predicate, the torch functions of the same computation, its kind."""

    key: str
    label: str
    kind: str
    matches: Callable[[nn.Module], bool]
    functions: tuple[str, ...] = ()
    approximate: str | None = None  # gelu_tanh: only partial(F.gelu, approximate="tanh") function attributes


def _same_defaults(module: nn.Module, info: LayerInfo) -> bool:
    return all(getattr(module, k, v) == v for k, v in info.defaults.items())


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
            if info is not None and is_normact(module):
                return isinstance(module, info.cls) and _same_defaults(module, info)
            if tanh_only:
                return getattr(module, "approximate", "none") == "tanh"
            return True
        if is_normact(module):
            return False
        if key == "silu" and type(module).__name__ == "Swish" and type(module).__module__.startswith("timm"):
            return True  # timm's Swish is x * sigmoid(x)
        return any(n in names for n in mro_names(module)) and (
            not tanh_only or getattr(module, "approximate", "tanh") == "tanh"
        )

    return matches


# Registry norms matched by computation across libraries: (predicate, torch functions of the same computation).
_NORM_FAMILIES: dict[str, tuple[Callable[[nn.Module], bool], tuple[str, ...]]] = {
    "batchnorm": (is_batchnorm, ("batch_norm",)),
    "batchnorm1d": (lambda m: is_batchnorm(m, "1d"), ("batch_norm",)),
    "batchnorm2d": (lambda m: is_batchnorm(m, "2d"), ("batch_norm",)),
    "instancenorm": (is_instancenorm, ("instance_norm",)),
    "instancenorm2d": (lambda m: is_instancenorm(m, "2d"), ("instance_norm",)),
    "layernorm": (is_layernorm, ("layer_norm",)),
    "rmsnorm": (is_rmsnorm, ("rms_norm",)),
    "groupnorm": (is_groupnorm, ("group_norm",)),
}


def family(source: str) -> Family | None:
    """The family of the registry name (or transformers activation name) ``source``; None when it is neither."""
    key = normalize_name(source)
    if key in ("batchnorm", "instancenorm"):  # every dimension: not registry names
        return Family(key, source, "norm", *_NORM_FAMILIES[key])
    key = normalize_name(_HF_ACT_ALIASES.get(key, key))
    try:
        info = get_info(key)
    except UnknownLayerError:
        return None
    name = info.name
    if name in _NORM_FAMILIES:
        return Family(name, source, "norm", *_NORM_FAMILIES[name])
    if info.kind == "act":
        functions = _FUNCTION_NAMES.get(name) or ((name,) if name.isidentifier() else ())
        approximate = "tanh" if name == "gelu_tanh" else None
        return Family(name, source, "act", _act_matcher(name, info), functions, approximate)
    cls = info.cls
    torch_cls = getattr(nn, cls.__name__, None)
    torch_cls = torch_cls if isinstance(torch_cls, type) and issubclass(torch_cls, nn.Module) else None
    lower = cls.__name__.lower()

    def matches(module: nn.Module) -> bool:
        if isinstance(module, cls):
            return _same_defaults(module, info)
        if torch_cls is not None and isinstance(module, torch_cls):
            return True
        return not is_normact(module) and lower in mro_names(module) and is_leaf(module)

    return Family(name, source, info.kind, matches)


def function_matches(value: Any, fam: Family) -> bool:
    """Whether ``value`` (a module attribute) is one of the family's torch functions (or a partial of it)."""
    if isinstance(value, nn.Module) or not callable(value) or not fam.functions:
        return False
    keywords: dict[str, Any] = {}
    if isinstance(value, functools.partial):
        keywords, value = dict(value.keywords), value.func
    targets = [getattr(ns, n, None) for n in fam.functions for ns in (F, torch)]
    if not any(value is t for t in targets if t is not None):
        return False
    if fam.approximate is not None:
        return keywords.get("approximate") == fam.approximate
    return True


def function_label(value: Any) -> str:
    """``"function torch.nn.functional.gelu(approximate='tanh')"``."""
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


OWN_DEFINITIONS = ("torch.", "normact.", "transformers.activations", "timm.layers.activations")
_FUNCTIONAL_PREFIX = r"(?<![\w.])(?:torch\.nn\.functional|nn\.functional|F|torch)\."


@functools.cache
def functional_calls(cls: type, names: tuple[str, ...]) -> tuple[str, ...]:
    """The calls of the torch functions ``names`` in the source of ``cls.forward`` (``"F.gelu"``...)."""
    src = forward_source(cls)
    if not src or not names:
        return ()
    pattern = re.compile(_FUNCTIONAL_PREFIX + r"(" + "|".join(re.escape(n) for n in names) + r")_?\s*\(")
    return tuple(sorted({m.group(0).rstrip("( ").strip() for m in pattern.finditer(src)}))
