"""``normact.probe``: forward hooks that fold every selected module's outputs into running statistics.

>>> with probe(model) as p:                       # doctest: +SKIP
...     for batch in loader:
...         model(batch)
>>> report = p.report()                           # doctest: +SKIP

Nothing stores an activation: each hook reduces its tensor on the tensor's device into per-channel
accumulators (:mod:`normact.probing.accumulators`) and returns, with no host synchronisation (counts come
from shapes). Hooks are removed when the ``with`` block ends, also on an exception.

**Selecting modules** (``modules=``; a selector or a list of them, whose union is probed):

- a kind: ``"norm"``, ``"act"``, ``"attention"``, ``"block"`` (or ``"kind:norm"``...);
- a registry name: ``"rmsnorm"`` (or ``"layer:rmsnorm"``): modules of that registered class;
- an fnmatch pattern over module names: ``"blocks.*.norm1"`` (or ``"name:..."``);
- a module class (``torch.nn.LayerNorm``), a module instance, or a predicate ``f(name, module) -> bool``.

The default is every normalization layer, activation, attention module and residual block.

- **norm**: normact's registered norms (the registry, kind ``norm``), torch's (BatchNorm, InstanceNorm, LayerNorm,
  GroupNorm, RMSNorm, LocalResponseNorm) and any class whose name ends in ``Norm`` or ``Normalization``
  (``LlamaRMSNorm``, ``T5LayerNorm``, ``LayerNorm2d``).
- **act**: registered activations, torch's (``torch.nn.modules.activation`` except softmax and attention) and
  the classes of ``transformers.activations`` and ``timm.layers.activations*`` (matched by module path, nothing
  is imported).
- **attention**: registered attention layers, ``torch.nn.MultiheadAttention`` and classes named ``*Attention``;
  when the module returns attention weights (an extra output ``(B, H, T, S)``, or ``(B, T, S)`` averaged over
  heads), the per-head entropy is accumulated, by the innermost of nested attention modules (with
  ``force_attention_weights=True``, MultiheadAttention and normact's attention normalizers are made to compute
  per-head weights and still return what their caller asked for; transformers models return weights under
  eager attention with ``output_attentions=True``).
- **block** (residual blocks): registered blocks, ``torch.nn.TransformerEncoderLayer``/``DecoderLayer`` and
  modules found at the first forward: user classes with weights (besides their norms': a norm wrapped in a layout
  adapter is not a block) whose output has the shape of one of their floating tensor arguments (the first such is
  the block input, for the residual-branch statistics), and the other instances of those classes (transition
  blocks that change the shape, without branch statistics); where such modules contain a norm, the innermost
  ones that contain a norm besides other weights (a ``TransformerBlock``, not the encoder around it nor its
  attention), else the outermost ones. ``blocks=`` (selectors) names them explicitly instead. Blocks also
  accumulate the moments of output minus input.

**Channels** are axis 1 for tensors of rank >= 4 and the last axis otherwise, except modules that declare
their features (``normalized_shape``, ``num_features``, ``num_channels``), whose axis is found from that
count; ``channel_dim=`` overrides (an int, or ``{name pattern: int}``).

**Statistics** (``stats=``, a set of the names below, or ``"all"``; the default is all but ``cov``):
mean, variance and mean square are always kept; ``kurtosis`` (3rd and 4th moments), ``minmax`` (per channel:
dead units, outlier channels), ``topk`` (the ``topk`` largest |x| at distinct (token, channel) positions),
``zeros`` (exact and ``|x| <= near_zero`` counts per channel), ``hist`` (histogram of |x| over float32 bit
patterns, 8 bins per octave: medians, massive activations), ``cov`` (channel covariance for the effective rank,
up to ``max_cov_features`` channels; costs a (C x C) product per batch), ``branch`` (block output minus input),
``entropy`` (attention).

**Sampling** (``sample=``, default :data:`DEFAULT_SAMPLE`): every statistic but the attention entropy reads the
samples ``0, k, 2k, ...`` of each batch (along the tensor's first axis), ``k = sample``; a batch of fewer than
``k`` samples gives its first. The zero counts and the histogram (integer and scattered passes, the costliest
per element) read one in :data:`SPARSE` of those: the samples ``0, 4k, 8k, ...``. Counts are those of the
samples read (``stats.count``; ``stats.zeros_count`` for the zero counts), and every statistic is exact for
them: the choice depends on the batch alone, so merging the reports of two parts of the data still gives the
report of the whole. ``sample=1`` reads every sample for every statistic (all the data, several times the
cost). Rare events (a unit firing once, a single large
activation) can fall outside the samples; the moments, sparsity and medians are estimates from the samples.

**Cost** (``docs/performance.md`` has figures). Per hooked tensor, the sampled view is copied into a staging
buffer with the other outputs of its shape (at most 1 MiB per group); at the end of the forward pass (and before
a report) each group is reduced by one call of :func:`~normact.probing.accumulators.batch_reductions`, a few
passes over the data with no logarithm and no host synchronisation (on one CPU thread: the groups are small),
and each record queues its small per-batch results, merged in float64 every 16 batches. The queues and the
accumulators are allocated at the first batch and written in place: after it, nothing a forward pass allocates
outlives it and, for inputs of one shape, its temporaries have the same sizes at every batch, so memory stays flat
over thousands of batches under glibc's default malloc too (:mod:`normact.probing._staging`). A module returning its
child's output unchanged (a residual block ending in its activation or norm) reuses the child's sample.
Inference tensors have no version counter, so under ``torch.inference_mode`` that reuse is off (``no_grad``
keeps it). ``compile=True`` runs the reduction function through ``torch.compile`` (compiled once per process and
input rank), which fuses it into fewer passes after a compilation of tens of seconds on a CPU.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import re
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn

from normact.layers.attention._base import AttentionNormalizer
from normact.probing._staging import _Group, _one_thread
from normact.probing.accumulators import (
    STAT_GROUPS,
    ActivationStats,
    EntropyStats,
    Moments,
    batch_reductions,
    member,
)
from normact.probing.report import ModuleRecord, Report
from normact.registry import KINDS, get_info, list_layers

__all__ = ["DEFAULT_MODULES", "DEFAULT_SAMPLE", "DEFAULT_STATS", "SPARSE", "Probe", "module_kind", "probe"]

DEFAULT_MODULES = ("norm", "act", "attention", "block")
DEFAULT_STATS = frozenset(s for s in STAT_GROUPS if s != "cov")
DEFAULT_SAMPLE = 16
SPARSE = 4  # when sampling, the zero counts and the histogram read one in SPARSE of the samples read
SELECT_KINDS = ("norm", "act", "attention", "block")

_NAME_NORM = re.compile(r"(Norm|Normalization)(\d+d)?$")
_TORCH_NORMS: tuple[type[nn.Module], ...] = (
    nn.modules.batchnorm._NormBase,  # BatchNorm*, InstanceNorm*, SyncBatchNorm
    nn.LayerNorm,
    nn.GroupNorm,
    nn.LocalResponseNorm,
    nn.CrossMapLRN2d,
    *((nn.RMSNorm,) if hasattr(nn, "RMSNorm") else ()),
)
_NOT_ACTS = {"Softmax", "Softmin", "LogSoftmax", "Softmax2d", "MultiheadAttention", "Module", "Parameter"}
_TORCH_ACTS: tuple[type[nn.Module], ...] = tuple(
    cls
    for name, cls in vars(nn.modules.activation).items()
    if isinstance(cls, type)
    and issubclass(cls, nn.Module)
    and name not in _NOT_ACTS
    and cls.__module__.endswith("activation")
)
_ACT_MODULE_PREFIXES = ("transformers.activations", "timm.layers.activations", "timm.models.layers.activations")
_TORCH_BLOCKS = (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer)
_CHANNEL_FIRST = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.modules.conv._ConvNd, nn.LocalResponseNorm)


def _registered(kind: str) -> tuple[type[nn.Module], ...]:
    return tuple({get_info(n).cls for n in list_layers(kind)})


class _Classifier:
    """Module -> kind (norm, act, attention, block or None), with the registry's classes read once."""

    def __init__(self) -> None:
        self.norms = _registered("norm") + _TORCH_NORMS
        self.acts = _registered("act") + _TORCH_ACTS
        self.attention = (*_registered("attention"), nn.MultiheadAttention)
        self.blocks = (*_registered("block"), *_TORCH_BLOCKS)

    def __call__(self, module: nn.Module) -> str | None:
        cls = type(module)
        if isinstance(module, self.norms) or _NAME_NORM.search(cls.__name__):
            return "norm"
        if isinstance(module, self.acts) or cls.__module__.startswith(_ACT_MODULE_PREFIXES):
            return "act"
        if isinstance(module, self.attention) or cls.__name__.endswith("Attention"):
            return "attention"
        if isinstance(module, self.blocks):
            return "block"
        return None


def module_kind(module: nn.Module) -> str | None:
    """The probe's kind for ``module``: ``norm``, ``act``, ``attention``, ``block`` or ``None``."""
    return _Classifier()(module)


Selector = Any  # str | type[nn.Module] | nn.Module | Callable[[str, nn.Module], bool] | Iterable of these


def _compile_selector(sel: Selector, classify: _Classifier) -> Callable[[str, nn.Module], bool]:
    """A predicate ``(name, module) -> bool`` for one selector (see the module docstring)."""
    if isinstance(sel, str):
        prefix, _, rest = sel.partition(":")
        if rest and prefix in ("kind", "layer", "name"):
            how, what = prefix, rest
        elif sel in SELECT_KINDS:
            how, what = "kind", sel
        else:
            try:
                get_info(sel)
                how, what = "layer", sel
            except KeyError:
                how, what = "name", sel
        if how == "kind":
            if what not in SELECT_KINDS:
                raise ValueError(
                    f"kind must be one of {', '.join(SELECT_KINDS)}, got {what!r} (registry kinds: {KINDS})"
                )
            return lambda name, m: classify(m) == what
        if how == "layer":
            cls = get_info(what).cls
            return lambda name, m: isinstance(m, cls)
        return lambda name, m: fnmatch.fnmatchcase(name, what)
    if isinstance(sel, type):
        if not issubclass(sel, nn.Module):
            raise TypeError(f"a module class selector must subclass torch.nn.Module, got {sel.__qualname__}")
        return lambda name, m: isinstance(m, sel)
    if isinstance(sel, nn.Module):
        return lambda name, m: m is sel
    if callable(sel):
        return lambda name, m: bool(sel(name, m))
    raise TypeError(
        "a module selector is a kind, a registry name, a name pattern, a module class, a module or a "
        f"predicate (name, module) -> bool, got {type(sel).__name__}"
    )


def _selectors(sel: Selector) -> list[Selector]:
    if isinstance(sel, (str, type, nn.Module)) or (callable(sel) and not isinstance(sel, (list, tuple, set))):
        return [sel]
    if isinstance(sel, Iterable):
        out = list(sel)
        if not out:
            raise ValueError("modules= is empty: give at least one selector")
        return out
    return [sel]


def _first_tensor(obj: Any) -> Tensor | None:
    if isinstance(obj, Tensor):
        return obj
    if isinstance(obj, (tuple, list)):
        for v in obj:
            if isinstance(v, Tensor):
                return v
        return None
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, Tensor):
                return v
        return None
    # model-output dataclasses (transformers' ModelOutput is a dict; others expose to_tuple)
    to_tuple = getattr(obj, "to_tuple", None)
    return _first_tensor(to_tuple()) if callable(to_tuple) else None


def _stream_input(args: tuple, kwargs: dict, y: Tensor) -> Tensor | None:
    """The input a block's output is compared with: the first floating tensor argument (positional, then keyword)
    with the output's shape (``x`` of ``x + f(x)``; ``input_tensor`` of BERT's ``LayerNorm(f(h) + input_tensor)``)."""
    for v in (*args, *kwargs.values()):
        if isinstance(v, Tensor) and v.shape == y.shape and v.is_floating_point():
            return v
    return None


def _attention_weights(output: Any) -> Tensor | None:
    if isinstance(output, (tuple, list)):
        for v in output[1:]:
            if isinstance(v, Tensor) and v.is_floating_point() and v.dim() >= 2:
                return v
    return None


def _feature_count(module: nn.Module) -> tuple[str, int] | None:
    shape = getattr(module, "normalized_shape", None)
    if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1:
        return "normalized", int(shape[0])
    if isinstance(shape, int):
        return "normalized", shape
    for attr in ("num_features", "num_channels"):
        v = getattr(module, attr, None)
        if isinstance(v, int) and not isinstance(v, bool):
            return "channels", v
    return None


def _default_channel_dim(module: nn.Module, shape: torch.Size) -> int:
    d = len(shape)
    if d <= 2:
        return -1
    feat = _feature_count(module)
    if feat is not None:
        how, count = feat
        if how == "normalized":  # last-dim norms; LayerNorm2d-style subclasses normalise axis 1 of NCHW
            return -1 if shape[-1] == count or shape[1] != count else 1
        return 1 if shape[1] == count or shape[-1] != count else -1
    if isinstance(module, _CHANNEL_FIRST):
        return 1
    return 1 if d >= 4 else -1


def _canonical(x: Tensor, channel_dim: int) -> tuple[Tensor, bool]:
    """``x`` as ``(B, C, S)`` (channels first, True) or ``(B, S, C)`` (False)."""
    d = x.dim()
    if d == 0:
        return x.reshape(1, 1, 1), False
    if d == 1:
        return x.reshape(1, 1, -1), False
    cd = channel_dim % d
    if cd == d - 1:
        return x.reshape(x.shape[0], -1, x.shape[-1]), False
    if cd == 1:
        return x.reshape(x.shape[0], x.shape[1], -1), True
    y = x.movedim(cd, -1)
    return y.reshape(y.shape[0], -1, y.shape[-1]), False


class _Target:
    """One hooked module: its name, kind, and whether it is a residual-block candidate still to confirm."""

    __slots__ = ("candidate", "contains_norm", "handles", "inner_entropy", "kind", "matched", "module", "name", "seen")

    def __init__(self, name: str, module: nn.Module, kind: str, candidate: bool = False) -> None:
        self.name, self.module, self.kind, self.candidate = name, module, kind, candidate
        self.matched = False  # a candidate's output had its input's shape
        self.seen = False
        self.contains_norm = False
        self.inner_entropy = False  # an attention module around another one: the inner one reports the entropy
        self.handles: list[Any] = []


_STAGE_BYTES = 1 << 20  # staged samples of one shape are reduced together, a group at most this large (a cache)
_ONE_THREAD_BYTES = 4 << 20  # CPU reductions of at most this many bytes run on one thread (see _one_thread)


class Probe:
    """The context manager returned by :func:`probe` (see the module docstring for every option)."""

    def __init__(
        self,
        model: nn.Module,
        modules: Selector = None,
        stats: Iterable[str] | str | None = None,
        *,
        blocks: Selector = None,
        topk: int = 16,
        near_zero: float = 1e-3,
        max_cov_features: int = 4096,
        channel_dim: int | dict[str, int] | None = None,
        force_attention_weights: bool = False,
        sample: int = DEFAULT_SAMPLE,
        compile: bool = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"probe expects a torch.nn.Module, got {type(model).__name__}")
        if isinstance(stats, str):
            stats = STAT_GROUPS if stats == "all" else [stats]
        chosen = DEFAULT_STATS if stats is None else frozenset(stats)
        unknown = sorted(set(chosen) - set(STAT_GROUPS))
        if unknown:
            raise ValueError(f"unknown stats {unknown}: choose among {', '.join(STAT_GROUPS)} (or 'all')")
        if not isinstance(topk, int) or isinstance(topk, bool) or topk < 0:
            raise ValueError(f"topk must be an int >= 0, got {topk!r}")
        if not isinstance(sample, int) or isinstance(sample, bool) or sample < 1:
            raise ValueError(f"sample must be an int >= 1 (1: every sample of every batch), got {sample!r}")
        if not near_zero >= 0:
            raise ValueError(f"near_zero must be >= 0, got {near_zero!r}")
        if not isinstance(max_cov_features, int) or max_cov_features < 1:
            raise ValueError(f"max_cov_features must be an int >= 1, got {max_cov_features!r}")
        if channel_dim is not None and not isinstance(channel_dim, (int, dict)):
            raise TypeError(f"channel_dim must be an int or a {{pattern: int}} dict, got {type(channel_dim).__name__}")
        self.model = model
        self.stats = chosen
        self.topk, self.near_zero, self.max_cov_features = topk, float(near_zero), max_cov_features
        self.channel_dim = channel_dim
        self.force_attention_weights = force_attention_weights
        self.sample = sample
        self._sparse = SPARSE if sample > 1 else 1
        self.compile = compile
        self._reduce = _compiled_reductions() if compile else None
        self._records: dict[str, ModuleRecord] = {}
        self._dims: dict[str, int] = {}  # record name -> channel axis fixed at its first call
        self._order = 0
        self._attached = False
        self._root_handle: Any = None
        self._end_handle: Any = None
        self._groups: dict[tuple[Any, ...], _Group] = {}  # same-shape samples staged until the forward ends
        self._mha_requests: dict[int, list[tuple[bool, bool | None]]] = {}
        # the last folded output: (weak reference, version, channel axis, sampled view shape, then its staging group,
        # slot and group generation, or None, its reductions and 0), so that a module returning its child's output
        # unchanged reuses them
        self._last: tuple[Any, ...] | None = None
        self.targets = self._select(modules, blocks)

    # selection
    def _select(self, modules: Selector, blocks: Selector) -> list[_Target]:
        classify = _Classifier()
        preds = [_compile_selector(s, classify) for s in _selectors(DEFAULT_MODULES if modules is None else modules)]
        block_preds = None if blocks is None else [_compile_selector(s, classify) for s in _selectors(blocks)]
        want_blocks = modules is None or any(
            s in ("block", "kind:block") for s in _selectors(modules) if isinstance(s, str)
        )
        named = list(self.model.named_modules())
        targets: list[_Target] = []
        for name, module in named:
            kind = classify(module)
            if block_preds is not None and any(p(name, module) for p in block_preds):
                targets.append(_Target(name, module, "block"))
            elif any(p(name, module) for p in preds):
                targets.append(_Target(name, module, kind or "other"))
        if want_blocks and block_preds is None:
            chosen = {t.name for t in targets}
            norms = {name for name, m in named if classify(m) == "norm"}
            # a known block (registered, torch's) is authoritative: what it contains is part of it
            known = tuple(name + "." for name, m in named if name and classify(m) == "block")
            for name, module in named:
                if name.startswith(known):
                    continue
                if name and name not in chosen and _block_candidate(module, classify):
                    t = _Target(name, module, "block", candidate=True)
                    prefix = name + "."
                    t.contains_norm = any(n.startswith(prefix) for n in norms) and _has_other_weights(module, classify)
                    targets.append(t)
        attention = [t.name for t in targets if t.kind == "attention"]
        for t in targets:
            if t.kind == "attention":
                t.inner_entropy = any(n.startswith(t.name + ".") for n in attention)
        return targets

    # hooks
    def __enter__(self) -> Probe:
        self.attach()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    def attach(self) -> Probe:
        """Register the hooks (``with probe(...)`` does this)."""
        if self._attached:
            raise RuntimeError("this probe is already attached")
        try:
            for t in self.targets:
                if t.kind == "attention":
                    if self.force_attention_weights and isinstance(t.module, nn.MultiheadAttention):
                        t.handles.append(t.module.register_forward_pre_hook(self._mha_pre_hook, with_kwargs=True))
                    elif self.force_attention_weights and isinstance(t.module, AttentionNormalizer):
                        hook = self._normalizer_pre_hook
                        t.handles.append(t.module.register_forward_pre_hook(hook, with_kwargs=True))
                    t.handles.append(t.module.register_forward_hook(self._attention_hook(t)))
                elif t.kind == "block":
                    t.handles.append(t.module.register_forward_hook(self._block_hook(t), with_kwargs=True))
                else:
                    t.handles.append(t.module.register_forward_hook(self._output_hook(t)))
            if any(t.candidate for t in self.targets):
                self._root_handle = self.model.register_forward_pre_hook(lambda m, a: self._finalize_blocks())
            self._end_handle = self.model.register_forward_hook(lambda m, a, o: self.flush())
        except BaseException:
            self.detach()
            raise
        self._attached = True
        return self

    def detach(self) -> None:
        """Remove every hook (idempotent); the statistics stay readable through :meth:`report`."""
        for t in self.targets:
            for h in t.handles:
                h.remove()
            t.handles.clear()
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None
        if self._end_handle is not None:
            self._end_handle.remove()
            self._end_handle = None
        self.flush()
        self._mha_requests.clear()
        self._attached = False

    close = detach

    @property
    def attached(self) -> bool:
        return self._attached

    def hooked(self) -> dict[str, str]:
        """Module name -> kind of every module currently hooked (candidate blocks included until confirmed)."""
        return {t.name: t.kind for t in self.targets if t.handles}

    def reset(self) -> None:
        """Forget every statistic (the hooks stay)."""
        self._groups.clear()
        self._records.clear()
        self._dims.clear()
        self._order = 0
        self._last = None

    def _channel_dim(self, name: str, module: nn.Module, shape: torch.Size) -> int:
        cd = self.channel_dim
        if isinstance(cd, int):
            return cd
        if isinstance(cd, dict):
            for pattern, dim in cd.items():
                if fnmatch.fnmatchcase(name, pattern):
                    return dim
        return _default_channel_dim(module, shape)

    def _next(self) -> int:
        self._order += 1
        return self._order - 1

    def _stats_record(self, t: _Target, y: Tensor) -> tuple[ModuleRecord, Tensor, bool]:
        """The record of ``t`` for ``y`` and ``y``'s canonical view. The layout is fixed at the first call; a
        later call with another channel count (a module reused at another width) gets its own record,
        ``name[C]``."""
        rec = self._records.get(t.name)
        if rec is not None:
            view, first = _canonical(y, self._dims[t.name])
            if rec.stats is not None and view.shape[1 if first else 2] == rec.stats.channels:
                return rec, view, first
        cd = self._channel_dim(t.name, t.module, y.shape)
        view, first = _canonical(y, cd)
        channels = view.shape[1 if first else 2]
        key = t.name if rec is None else f"{t.name}[{channels}]"
        other = self._records.get(key)
        if other is not None:
            return other, view, first
        d = y.dim()
        layout = "first" if first else ("last" if d < 2 or cd % d == d - 1 else f"dim{cd % d}")
        rec = ModuleRecord(key, t.kind, type(t.module).__name__, layout=layout, order=self._next(), shape=list(y.shape))
        rec.stats = ActivationStats(
            channels,
            self.stats,
            topk=self.topk,
            near_zero=self.near_zero,
            max_cov_features=self.max_cov_features,
            device=y.device,
        )
        if t.kind == "block" and "branch" in self.stats:
            rec.branch = Moments(channels, higher=False, device=y.device)
        self._records[key] = rec
        self._dims[key] = cd
        return rec, view, first

    def _entropy_record(self, t: _Target, w: Tensor, heads: int) -> ModuleRecord:
        rec = self._records.get(t.name)
        key = t.name if rec is None or (rec.entropy is not None and rec.entropy.sum.numel() == heads) else None
        if key is None:
            key = f"{t.name}[{heads} heads]"
            rec = self._records.get(key)
        if rec is None:
            rec = ModuleRecord(key, t.kind, type(t.module).__name__, order=self._next(), shape=list(w.shape))
            rec.entropy = EntropyStats(heads, device=w.device)
            self._records[key] = rec
        return rec

    def _fold(self, t: _Target, y: Tensor) -> ModuleRecord:
        rec, view, first = self._stats_record(t, y)  # under no_grad: views of y carry no graph
        rec.calls += 1
        stats = rec.stats
        assert stats is not None
        if self.sample > 1:
            view = view[:: self.sample]
        # The same tensor object as the previous hook's, not modified in place since (inference tensors have no
        # version counter: never reused), in the same layout (a block returning its last norm's or activation's
        # output): its staged copy or its reductions serve again.
        version = None if y.is_inference() else y._version
        dim = self._dims[rec.name]
        last = self._last
        if last is not None and version is not None and last[0]() is y and last[1:4] == (version, dim, view.shape):
            group, part, gen = last[4:]
            if group is None:
                stats.add_reduced(part)
                return rec
            if group.gen == gen:
                group.members.append((stats, part))
                return rec
        wdtype = torch.float64 if view.dtype == torch.float64 else torch.float32
        size = view.numel() * (8 if wdtype == torch.float64 else 4)
        if stats.cov is not None or 2 * size > _STAGE_BYTES:  # reduced alone
            with _one_thread(view.device.type == "cpu" and size <= _ONE_THREAD_BYTES):
                reduced = stats.reduce(view, first, self._reduce, self._sparse)
            stats.add_reduced(reduced)
            self._last = None if version is None else (weakref.ref(y), version, dim, view.shape, None, reduced, 0)
            return rec
        key = (view.shape, first, wdtype, view.device)
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = _Group(view.shape, first, wdtype, view.device, _STAGE_BYTES // size)
        elif group.n == group.buf.shape[0]:
            self._reduce_group(group)
        slot = group.n
        group.buf[slot].copy_(view)
        group.members.append((stats, slot))
        group.n += 1
        self._last = None if version is None else (weakref.ref(y), version, dim, view.shape, group, slot, group.gen)
        return rec

    def _reduce_group(self, group: _Group) -> None:
        """Reduce the staged samples of ``group`` at once and hand each record its part."""
        if group.n:
            x = group.buf[: group.n]
            stats0 = group.members[0][0]
            with _one_thread(x.device.type == "cpu"):
                r = stats0.reduce_group(x, group.first, self._reduce, self._sparse)
            n = x[0].numel() // stats0.channels
            for stats, slot in group.members:
                stats.add_reduced((n, member(r, slot)))
        group.members = []
        group.n = 0
        group.gen += 1

    def flush(self) -> None:
        """Reduce every staged sample (the probe does it at the end of each forward pass of the model and before
        a report); the staging buffers are released."""
        with _stats_mode():
            for group in self._groups.values():
                self._reduce_group(group)
        self._groups.clear()
        self._last = None

    def _output_hook(self, t: _Target) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, output: Any) -> None:
            y = _first_tensor(output)
            if y is None or not y.is_floating_point():
                return
            with _stats_mode():
                self._fold(t, y)

        return hook

    def _block_hook(self, t: _Target) -> Callable[..., None]:
        def hook(module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
            y = _first_tensor(output)
            if y is None or not y.is_floating_point():
                return
            x = _stream_input(args, kwargs, y)
            same = x is not None
            if t.candidate:  # folded while unconfirmed: a shape-changing block of a confirmed class stays
                t.seen = True
                t.matched = t.matched or same
            with _stats_mode():
                rec = self._fold(t, y)
                if same and rec.branch is not None:
                    assert x is not None
                    yv, first = _canonical(y.detach(), self._dims[rec.name])
                    xv, _ = _canonical(x.detach(), self._dims[rec.name])
                    if self.sample > 1:
                        yv, xv = yv[:: self.sample], xv[:: self.sample]
                    with _one_thread(yv.device.type == "cpu" and yv.numel() * 4 <= _ONE_THREAD_BYTES):
                        rec.branch.update(yv - xv, first)

        return hook

    def _attention_hook(self, t: _Target) -> Callable[..., Any]:
        def hook(module: nn.Module, args: Any, output: Any) -> Any:
            requests = self._mha_requests.get(id(module))
            request = requests.pop() if requests else None
            w = _attention_weights(output)
            if w is not None and "entropy" in self.stats and not t.inner_entropy:
                with _stats_mode():
                    w = w.detach()
                    rec = self._entropy_record(t, w, EntropyStats.canonical(w).shape[1])
                    rec.calls += 1
                    assert rec.entropy is not None
                    rec.entropy.update(w)
            if request is not None:  # give the caller the weights it asked for
                need, average = request
                out, weights = output[0], output[1]
                if average is None:  # a normact attention normalizer: its output alone unless asked
                    return (out, weights) if need else out
                if not need:
                    weights = None
                elif average and weights is not None and weights.dim() >= 3:
                    weights = weights.mean(dim=-3)
                return (out, weights)
            return None

        return hook

    def _mha_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = _MHA_SIGNATURE.bind_partial(*args, **kwargs)
        need = bound.arguments.get("need_weights", True)
        average = bound.arguments.get("average_attn_weights", True)
        self._mha_requests.setdefault(id(module), []).append((need, average))
        bound.arguments["need_weights"] = True
        bound.arguments["average_attn_weights"] = False
        return bound.args, bound.kwargs

    def _normalizer_pre_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        """normact's attention normalizers: ask for the weights (``need_weights=True``), remember whether the caller
        did."""
        self._mha_requests.setdefault(id(module), []).append((bool(kwargs.get("need_weights", False)), None))
        return args, {**kwargs, "need_weights": True}

    def _finalize_blocks(self) -> None:
        """Settle which candidate modules are residual blocks, once a forward pass has shown their shapes."""
        cands = [t for t in self.targets if t.candidate]
        if not cands or not any(t.seen for t in cands):
            return
        # residual blocks: candidates whose output had their input's shape, and the other instances of their classes
        # (transition blocks that downsample or widen: no residual-branch statistics for them)
        classes = {type(t.module) for t in cands if t.matched}
        matched = [t for t in cands if t.matched or (t.seen and type(t.module) in classes)]
        with_norm = [t for t in matched if t.contains_norm]
        if with_norm:
            keep = {
                t.name for t in with_norm if not any(o is not t and o.name.startswith(t.name + ".") for o in with_norm)
            }
        else:
            keep = {t.name for t in matched if not any(t.name.startswith(o.name + ".") for o in matched if o is not t)}
        dropped = {t.name for t in cands if t.name not in keep}
        for t in cands:
            t.candidate = False
            if t.name in dropped:
                for h in t.handles:
                    h.remove()
                t.handles.clear()
        for key in [k for k in self._records if k.split("[")[0] in dropped]:
            del self._records[key]
            self._dims.pop(key, None)
        self.targets = [t for t in self.targets if t.name not in dropped]
        if self._root_handle is not None:
            self._root_handle.remove()
            self._root_handle = None

    def report(self) -> Report:
        """A snapshot of the statistics so far (later batches do not change it)."""
        self.flush()
        self._finalize_blocks()
        config = {
            "stats": sorted(self.stats),
            "topk": self.topk,
            "near_zero": self.near_zero,
            "max_cov_features": self.max_cov_features,
            "sample": self.sample,
        }
        return Report({k: r.clone() for k, r in self._records.items()}, config)


_MHA_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)
_MHA_SIGNATURE = _MHA_SIGNATURE.replace(parameters=list(_MHA_SIGNATURE.parameters.values())[1:])  # drop self


def _stats_mode() -> Any:
    """No autograd for the statistics; and outside inference mode, so that accumulators stay normal tensors that
    later batches (with or without ``torch.inference_mode``) can update in place."""
    if torch.is_inference_mode_enabled():
        return _InferenceOffNoGrad()
    return torch.no_grad()


class _InferenceOffNoGrad:
    def __enter__(self) -> None:
        self._inference = torch.inference_mode(False)
        self._no_grad = torch.no_grad()
        self._inference.__enter__()
        self._no_grad.__enter__()

    def __exit__(self, *exc: Any) -> None:
        self._no_grad.__exit__(*exc)
        self._inference.__exit__(*exc)


@functools.cache
def _compiled_reductions() -> Callable[..., dict[str, Tensor]]:
    """:func:`batch_reductions` through ``torch.compile`` (dynamic shapes): its reductions fused into a few
    passes over each tensor. One compilation per stat combination and rank of input, shared by all probes."""
    return torch.compile(batch_reductions, dynamic=True)


def _has_weights(module: nn.Module) -> bool:
    return any(True for _ in module.parameters())


def _has_other_weights(module: nn.Module, classify: _Classifier) -> bool:
    """``module`` holds parameters outside its norms (a conv or linear layer): not a mere norm wrapper."""
    norm_params = {id(p) for m in module.modules() if classify(m) == "norm" for p in m.parameters()}
    return any(id(p) not in norm_params for p in module.parameters())


def _block_candidate(module: nn.Module, classify: _Classifier) -> bool:
    """A user-defined module with weights besides its norms' (not a norm in a layout adapter) that is not itself a
    norm, activation or attention layer."""
    if classify(module) is not None:
        return False
    if type(module).__module__.startswith("torch.") or isinstance(
        module, (nn.Sequential, nn.ModuleList, nn.ModuleDict)
    ):
        return False
    return _has_weights(module) and _has_other_weights(module, classify)


def probe(
    model: nn.Module,
    modules: Selector = None,
    stats: Iterable[str] | str | None = None,
    **options: Any,
) -> Probe:
    """Probe the activations of ``model``: ``with normact.probe(model) as p: model(x)``, then ``p.report()``.

    ``modules`` selects what to hook (default: every norm, activation, attention module and residual block),
    ``stats`` what to accumulate (default: everything but the covariance); ``options`` are :class:`Probe`'s
    keyword arguments (``blocks``, ``topk``, ``near_zero``, ``max_cov_features``, ``channel_dim``,
    ``force_attention_weights``, ``sample``, ``compile``). See :mod:`normact.probing.probe` for the selectors,
    statistics and sampling.
    """
    return Probe(model, modules, stats, **options)
