"""Exact model surgery on normalization layers: folding and equivalent conversions.

- :func:`fold_batchnorm`: eval-mode BatchNorm folded into the convolution or linear layer before it.
- :func:`fold_norm_affine`: a LayerNorm's / RMSNorm's gain and bias folded into the linear layers after it.
- :func:`convert_preln_to_rmsnorm`: the exact Pre-LN -> Pre-RMSNorm (or Pre-CRMSNorm) conversion of Jiang et al.
  (arXiv:2305.14858).
- :func:`freeze_layernorm_scale`: each LayerNorm replaced by a :class:`FakeLayerNorm` with a fixed, measured scale
  (Heimersheim, arXiv:2409.13710; Baroni et al., arXiv:2507.02559). Not exact: it changes the model a little.

How a function learns which layer feeds which (it never guesses from names):

1. ``torch.fx`` symbolic tracing, when the model traces (torchvision, timm and most plain ``nn.Module`` models);
2. else one recorded forward pass on ``example_inputs`` (by default a synthetic input: two rows of 8 token ids for a
   model with an ``nn.Embedding``, else random inputs shaped for its first conv/linear layer): module forward hooks
   plus a ``TorchFunctionMode`` record, for every tensor, the module or function that produced it and who consumed
   it (this is how Hugging Face models, which fx cannot trace, are handled);
3. else (BatchNorm and norm-affine folding only) adjacency inside an ``nn.Sequential``.

Every fold is then checked on a small random input against the unmodified layers, and undone if it does not
match (a layer that only looks like a BatchNorm or a plain linear, e.g. a weight-standardized convolution). Anything
not folded or not converted is listed in the returned report with the reason; nothing is skipped silently.
Third-party classes (transformers' ``Conv1D``, ``*RMSNorm``, timm layers) are recognized by duck typing; nothing
outside torch and normact is imported.
"""

from __future__ import annotations

import contextlib
import copy
import itertools
import math
import operator
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

import normact
from normact.layers.norm.layer import RMSNorm
from normact.surgery._state import ParamSnapshot

__all__ = [
    "CRMSNormDecompress",
    "ConversionReport",
    "FakeLayerNorm",
    "FoldReport",
    "Folded",
    "RMSNormWithBias",
    "Skipped",
    "convert_preln_to_rmsnorm",
    "fold_batchnorm",
    "fold_norm_affine",
    "freeze_layernorm_scale",
]


# ---------------------------------------------------------------------------------------------------- reports


@dataclass(frozen=True)
class Folded:
    """One layer that was folded or converted: ``name`` (its module name), ``into`` (the layers that absorbed it,
    or the class that replaced it) and a short ``detail``."""

    name: str
    into: tuple[str, ...] = ()
    detail: str = ""


@dataclass(frozen=True)
class Skipped:
    """One layer left as it was, and why."""

    name: str
    reason: str


@dataclass
class FoldReport:
    """What a folding function did to ``model`` (the model modified, or the copy with ``inplace=False``).

    ``method`` says how the data flow was found (``"fx"``, ``"trace"``, ``"sequential"``, ``"hooks"``); ``folded``
    and ``skipped`` list every candidate layer; ``untied`` the parameters given their own copy; ``scales`` (only
    :func:`freeze_layernorm_scale`) maps each frozen LayerNorm to ``(sigma, sigma_bos)``.
    """

    model: nn.Module = field(repr=False)
    method: str
    folded: list[Folded] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)
    scales: dict[str, tuple[float, float | None]] = field(default_factory=dict)

    @property
    def num_folded(self) -> int:
        return len(self.folded)

    def summary(self) -> str:
        """One line per folded and per skipped layer, after a count."""
        lines = [f"{len(self.folded)} folded, {len(self.skipped)} not folded (data flow from {self.method})"]
        lines += [
            f"  folded {f.name} -> {', '.join(f.into) or '-'}{f'  ({f.detail})' if f.detail else ''}"
            for f in self.folded
        ]
        lines += [f"  untied {u}" for u in self.untied]
        lines += [f"  NOT folded {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


@dataclass
class ConversionReport:
    """What :func:`convert_preln_to_rmsnorm` did.

    ``converted``: each LayerNorm replaced (``into`` = the new class); ``recentered``: the embeddings and residual
    writers made zero-mean; ``untied``: parameters given their own copy (a tied LM head); ``skipped``: LayerNorms
    and candidate writers left unchanged, with the reason; ``strategy``: ``"rmsnorm"``, ``"crms-fold"`` (CRMSNorm,
    gain/bias and the decompression folded into the next linears) or ``"crms-decompress"`` (CRMSNorm followed by an
    explicit reconstruction of the d-th coordinate); ``max_abs_diff``: the largest output difference against the
    unconverted model on the example input (None without one).
    """

    model: nn.Module = field(repr=False)
    method: str
    strategy: str
    converted: list[Folded] = field(default_factory=list)
    recentered: list[str] = field(default_factory=list)
    untied: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    max_abs_diff: float | None = None

    def summary(self) -> str:
        diff = "n/a" if self.max_abs_diff is None else f"{self.max_abs_diff:.3g}"
        lines = [
            f"{len(self.converted)} LayerNorms converted ({self.strategy}), {len(self.recentered)} layers recentered, "
            f"max |output diff| {diff} (data flow from {self.method})"
        ]
        lines += [f"  {c.name} -> {', '.join(c.into)}{f'  ({c.detail})' if c.detail else ''}" for c in self.converted]
        lines += [f"  recentered {r}" for r in self.recentered]
        lines += [f"  untied {u}" for u in self.untied]
        lines += [f"  NOT converted {s.name}: {s.reason}" for s in self.skipped]
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------------------- layer kinds

_DROPOUT = nn.modules.dropout._DropoutNd


def _is_hf_conv1d(m: nn.Module) -> bool:
    """transformers' ``Conv1D`` (GPT-2): a linear layer ``x @ weight + bias`` with ``weight`` of shape (in, out)."""
    w = getattr(m, "weight", None)
    return (
        type(m).__name__ == "Conv1D"
        and isinstance(w, Tensor)
        and w.dim() == 2
        and getattr(m, "nf", None) == w.shape[1]
        and isinstance(getattr(m, "bias", None), Tensor)
    )


def _is_bn(m: nn.Module) -> bool:
    if isinstance(m, nn.modules.batchnorm._BatchNorm):
        return True
    return all(hasattr(m, a) for a in ("running_mean", "running_var", "eps")) and (
        hasattr(m, "affine") or hasattr(m, "weight")
    )


def _norm_eps(m: nn.Module) -> float | None:
    for attr in ("eps", "variance_epsilon", "epsilon"):
        v = getattr(m, attr, None)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return None


def _is_ln(m: nn.Module) -> bool:
    """A LayerNorm by type or by name (the formula is checked numerically before any use, see :func:`_ln_check`)."""
    if isinstance(m, nn.LayerNorm):
        return True
    name = type(m).__name__.lower()
    return name.endswith("layernorm") and "rms" not in name and not _is_bn(m)


def _is_rms(m: nn.Module) -> bool:
    if isinstance(m, (nn.RMSNorm, RMSNorm)):
        return True
    name = type(m).__name__.lower()
    return name.endswith("rmsnorm") and isinstance(getattr(m, "weight", None), Tensor)


def _kind(m: nn.Module) -> str | None:
    """The role of a module in the analyses, or None for any other module."""
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return "conv"
    if isinstance(m, nn.Linear):
        return "linear"
    if _is_hf_conv1d(m):
        return "conv1d"
    if isinstance(m, nn.Embedding):
        return "embedding"
    if _is_bn(m):
        return "bn"
    if _is_ln(m):
        return "ln"
    if _is_rms(m):
        return "rms"
    if isinstance(m, (_DROPOUT, nn.Identity)):
        return "pass"
    return None


def _is_linear(m: nn.Module) -> bool:
    return isinstance(m, nn.Linear) or _is_hf_conv1d(m)


# ---------------------------------------------------------------------------------------------------- data-flow graph

_ADD_OPS = {"add", "iadd", "radd"}
_IDENTITY_OPS = {"dropout", "contiguous", "clone", "to", "type_as", "float", "detach"}
_RESHAPE_OPS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "getitem"}


class _Node:
    """One value in the data-flow graph: a model input, a constant, a module call, a function call or the output."""

    __slots__ = ("in_shape", "index", "inputs", "kind", "module", "out_shape", "target", "users")

    def __init__(self, kind: str, target: str, module: nn.Module | None = None) -> None:
        self.kind, self.target, self.module = kind, target, module
        self.inputs: list[_Node] = []
        self.users: list[_Node] = []
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.index: Any = None

    def __repr__(self) -> str:
        return f"{self.kind}:{self.target}"


class _Graph:
    def __init__(self, method: str) -> None:
        self.method = method
        self.nodes: list[_Node] = []
        self.calls: dict[int, list[_Node]] = {}
        self.output: Any = None  # the model's output on the example input (trace only)

    def add(self, kind: str, target: str, inputs: Iterable[_Node] = (), module: nn.Module | None = None) -> _Node:
        node = _Node(kind, target, module)
        for i in inputs:
            node.inputs.append(i)
            if node not in i.users:
                i.users.append(node)
        self.nodes.append(node)
        if module is not None:
            self.calls.setdefault(id(module), []).append(node)
        return node

    def calls_of(self, module: nn.Module) -> list[_Node]:
        return self.calls.get(id(module), [])


def _op_name(target: Any) -> str:
    name = target if isinstance(target, str) else getattr(target, "__name__", repr(target))
    return name.strip("_")


def _flatten(obj: Any) -> Iterator[Any]:
    if isinstance(obj, (list, tuple)):
        for o in obj:
            yield from _flatten(o)
    elif isinstance(obj, dict):
        for o in obj.values():
            yield from _flatten(o)
    else:
        yield obj


def _tensors(obj: Any) -> list[Tensor]:
    return [t for t in _flatten(obj) if isinstance(t, Tensor)]


def _is_pass(node: _Node) -> bool:
    """True when ``node`` maps each last-dimension vector of its input to itself (identity in eval, or a reshape /
    selection of the leading dimensions, checked on the recorded shapes)."""
    if node.kind == "module":
        return isinstance(node.module, (_DROPOUT, nn.Identity)) and not node.module.training
    if node.kind != "op" or len(node.inputs) != 1:
        return False
    if node.target == "dropout":
        return node.index is True
    if node.target in _IDENTITY_OPS:
        return True
    if node.target not in _RESHAPE_OPS or node.in_shape is None or node.out_shape is None:
        return False
    if not node.in_shape or not node.out_shape or node.in_shape[-1] != node.out_shape[-1]:
        return False
    if node.target != "getitem":
        return True
    return _index_keeps_last(node.index, len(node.in_shape))


def _dropout_is_identity(args: Any, kwargs: Any) -> bool:
    """``F.dropout(x, p, training)`` / ``torch.dropout(x, p, train)`` called with p = 0 or not training."""
    p = args[1] if len(args) > 1 else kwargs.get("p", 0.5)
    training = args[2] if len(args) > 2 else kwargs.get("training", kwargs.get("train", True))
    return (isinstance(p, (int, float)) and p == 0) or training is False


def _index_keeps_last(index: Any, ndim: int) -> bool:
    """An indexing expression that leaves the last dimension whole."""
    items = index if isinstance(index, tuple) else (index,)
    if any(isinstance(i, Tensor) and i.dtype == torch.bool and i.dim() >= ndim for i in items):
        return False
    if any(i is Ellipsis for i in items):
        after = items[[i is Ellipsis for i in items].index(True) + 1 :]
        return all(isinstance(i, slice) and i == slice(None) for i in after if i is not None)
    used = sum(1 if not (isinstance(i, Tensor) and i.dtype == torch.bool) else i.dim() for i in items if i is not None)
    if used < ndim:
        return True
    last = [i for i in items if i is not None][-1]
    return isinstance(last, slice) and last == slice(None)


class _Recorder(TorchFunctionMode):
    """Records which module call or torch function produced and consumed every tensor during one forward pass."""

    def __init__(self, graph: _Graph, names: dict[int, str]) -> None:
        super().__init__()
        self.graph, self.names = graph, names
        self.producer: dict[int, _Node] = {}
        self.alive: list[Tensor] = []  # keeps every recorded tensor alive so that ids are not reused
        self.depth = 0
        self.stack: list[list[_Node] | None] = []

    def bind(self, t: Tensor, node: _Node) -> None:
        self.producer[id(t)] = node
        self.alive.append(t)

    def node_of(self, t: Tensor) -> _Node | None:
        return self.producer.get(id(t))

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth:
            return out
        name = _op_name(func)
        if name == "iter" and isinstance(out, Iterator):  # `a, b, c = tensor` iterates over unbind(0)
            items = list(out)
            self._record(name, args, kwargs, items)
            return iter(items)
        if name == "setitem" and args and isinstance(args[0], Tensor):  # in place, returns None
            self._record(name, args, kwargs, [args[0]])
            return out
        self._record(name, args, kwargs, out)
        return out

    def _record(self, name: str, args: Any, kwargs: Any, out: Any) -> None:
        outs = _tensors(out)
        if not outs:
            return
        inputs = [n for n in (self.node_of(t) for t in _tensors((args, kwargs))) if n is not None]
        if not inputs:
            return  # built from parameters and constants only
        operands: list[_Node] = []
        if name in _ADD_OPS:
            if kwargs.get("alpha", 1) != 1 or (len(args) > 2 and args[2] != 1):
                name = "add_alpha"
            for a in args[:2]:
                n = self.node_of(a) if isinstance(a, Tensor) else None
                operands.append(n if n is not None else self.graph.add("const", repr(type(a).__name__)))
        node = self.graph.add("op", name, operands or _unique(inputs))
        first = next(t for t in _tensors((args, kwargs)) if self.node_of(t) is not None)
        node.in_shape, node.out_shape = tuple(first.shape), tuple(outs[0].shape)
        if name == "getitem" and len(args) > 1:
            node.index = args[1]
        elif name == "dropout":
            node.index = _dropout_is_identity(args, kwargs)
        for t in outs:
            self.bind(t, node)

    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.depth == 0:
            self.stack.append([n for n in (self.node_of(t) for t in _tensors((args, kwargs))) if n is not None])
        else:
            self.stack.append(None)
        self.depth += 1

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self.depth -= 1
        inputs = self.stack.pop()
        if inputs is None:
            return
        node = self.graph.add("module", self.names.get(id(module), type(module).__name__), inputs, module)
        ins, outs = _tensors((args, kwargs)), _tensors(output)
        node.in_shape = tuple(ins[0].shape) if ins else None
        node.out_shape = tuple(outs[0].shape) if outs else None
        for t in outs:
            self.bind(t, node)


def _unique(nodes: list[_Node]) -> list[_Node]:
    seen: list[_Node] = []
    for n in nodes:
        if n not in seen:
            seen.append(n)
    return seen


def _module_names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name or "<model>")
    return names


def _call(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def _trace_graph(model: nn.Module, example_inputs: Any) -> _Graph:
    """The data flow of one forward pass on ``example_inputs`` (module calls of "opaque" modules: leaves and the
    layers the analyses know, plus every torch function called outside them)."""
    graph = _Graph("trace")
    names = _module_names(model)
    rec = _Recorder(graph, names)
    for t in _tensors(example_inputs):
        rec.bind(t, graph.add("input", "input"))
    handles = []
    try:
        for m in model.modules():
            if _kind(m) is not None or not any(True for _ in m.children()):
                handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
        with torch.no_grad(), rec:
            out = _call(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    graph.output = out
    outs = [n for n in (rec.node_of(t) for t in _tensors(out)) if n is not None]
    graph.add("output", "output", _unique(outs))
    return graph


def _fx_graph(model: nn.Module) -> _Graph:
    """The data flow from ``torch.fx`` symbolic tracing (raises whatever fx raises when the model does not trace)."""
    import torch.fx

    known = {id(m) for m in model.modules() if _kind(m) is not None}  # before tracing: fx proxies parameters

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return id(m) in known or super().is_leaf_module(m, qualname)

    fx_graph = _Tracer().trace(model)
    graph = _Graph("fx")
    mapped: dict[torch.fx.Node, _Node] = {}
    for n in fx_graph.nodes:
        inputs = [mapped[i] for i in n.all_input_nodes if i in mapped]
        if n.op == "placeholder":
            node = graph.add("input", n.name)
        elif n.op == "get_attr":
            node = graph.add("const", str(n.target))
        elif n.op == "call_module":
            module = model.get_submodule(n.target)
            node = graph.add("module", str(n.target), inputs, module)
        elif n.op in ("call_function", "call_method"):
            name = "add" if n.target in (operator.add, operator.iadd) else _op_name(n.target)
            if name in _ADD_OPS:
                if n.kwargs.get("alpha", 1) != 1:
                    name = "add_alpha"
                operands = []
                for a in n.args[:2]:
                    operands.append(mapped[a] if isinstance(a, torch.fx.Node) else graph.add("const", repr(a)))
                inputs = operands
            node = graph.add("op", name, inputs)
            if name == "dropout":
                node.index = _dropout_is_identity(n.args, n.kwargs)
        else:  # output
            node = graph.add("output", "output", inputs)
        mapped[n] = node
    return graph


def _default_example(model: nn.Module) -> Any:
    """A synthetic input for one recorded forward pass (it only serves to see which layer feeds which): two rows
    of at most 8 token ids (at most the size of any other embedding, e.g. the positions) for a model with an
    ``nn.Embedding`` (the first one is taken as the token embedding); else two random inputs shaped for the first
    convolution or linear layer (spatial size 32 in 2-D, 64 in 1-D, 16 in 3-D); else None."""
    gen = torch.Generator().manual_seed(0)
    embs = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    if embs:
        length = min([8, *(e.num_embeddings for e in embs[1:])])
        return torch.randint(embs[0].num_embeddings, (2, length), generator=gen).to(embs[0].weight.device)
    for m in model.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            dims = m.weight.dim() - 2
            size = (2, m.in_channels, *([{1: 64, 2: 32, 3: 16}[dims]] * dims))
        elif isinstance(m, nn.Linear):
            size = (2, m.in_features)
        else:
            continue
        return torch.randn(size, generator=gen).to(device=m.weight.device, dtype=m.weight.dtype)
    return None


def _build_graph(model: nn.Module, example_inputs: Any) -> tuple[_Graph | None, list[str], Any]:
    """fx, else a recorded forward pass; returns the graph (or None), the reasons for failures, and the inputs."""
    failures = []
    try:
        graph = _fx_graph(model)
        return graph, failures, example_inputs
    except Exception as e:  # any tracing failure: fall back
        failures.append(f"torch.fx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    inputs = example_inputs if example_inputs is not None else _default_example(model)
    if inputs is None:
        failures.append("no example_inputs to record a forward pass")
        return None, failures, None
    what = "example_inputs" if example_inputs is not None else "a default input (pass example_inputs)"
    try:
        return _trace_graph(model, inputs), failures, inputs
    except Exception as e:
        failures.append(f"forward pass on {what}: {type(e).__name__}: {e}"[:240])
        return None, failures, None


def _sequential_pairs(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """Every (a, b) where b directly follows a inside an ``nn.Sequential`` (b reads a's output and nothing else
    does, as long as the Sequential's own forward is used)."""
    pairs = []
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            children = list(m.children())
            pairs += list(itertools.pairwise(children))
    return pairs


def _alias_count(model: nn.Module) -> dict[int, int]:
    counts: dict[int, int] = {}
    for _, m in model.named_modules(remove_duplicate=False):
        counts[id(m)] = counts.get(id(m), 0) + 1
    return counts


def _param_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """For each parameter (by id): every (module name, module, attribute) that holds it."""
    users: dict[int, list[tuple[str, nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None and (id(m), pname) not in seen:
                seen.add((id(m), pname))
                users.setdefault(id(p), []).append((name, m, pname))
    return users


def _shared_with(model: nn.Module, module: nn.Module, users: dict[int, list[tuple[str, nn.Module, str]]]) -> list[str]:
    """Names of other modules holding one of ``module``'s own parameters (tied weights)."""
    out = []
    for p in module._parameters.values():
        if p is not None:
            out += [f"{n}.{a}" for n, m, a in users.get(id(p), []) if m is not module]
    return out


def _replace_module(model: nn.Module, old: nn.Module, new: nn.Module) -> list[str]:
    """Put ``new`` wherever ``old`` is a child (all its names); returns those names."""
    names = []
    for name, parent in model.named_modules(remove_duplicate=False):
        for cname, child in list(parent._modules.items()):
            if child is old:
                parent._modules[cname] = new
                names.append(f"{name}.{cname}" if name else cname)
    return names


def _set_param(module: nn.Module, name: str, value: Tensor) -> None:
    """Set (or create) parameter ``name`` with ``value``, keeping dtype, device and requires_grad."""
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


@contextlib.contextmanager
def _eval_mode(*modules: nn.Module) -> Iterator[None]:
    modes = [m.training for m in modules]
    try:
        for m in modules:
            m.eval()
        yield
    finally:
        for m, t in zip(modules, modes, strict=True):
            m.train(t)


def _close(got: Tensor, ref: Tensor, rtol: float = 1e-4) -> bool:
    if got.shape != ref.shape:
        return False
    scale = float(ref.detach().abs().max()) if ref.numel() else 0.0
    return bool((got.detach().float() - ref.detach().float()).abs().max() <= rtol * max(scale, 1e-3) + 1e-6)


_LINEAR_ATTRS = ("in_features", "out_features", "nf", "nx")  # sizes a fold may change (CRMS compression)


# ---------------------------------------------------------------------------------------------------- BatchNorm


def _bn_stats(bn: nn.Module) -> tuple[Tensor, Tensor] | str:
    """(scale, shift) of an eval-mode BatchNorm, y = x * scale + shift per channel (float64), or why not."""
    mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
    if not isinstance(mean, Tensor) or not isinstance(var, Tensor):
        return "no running statistics (track_running_stats=False): it normalizes with batch statistics in eval"
    if getattr(bn, "track_running_stats", True) is False:
        return "track_running_stats=False: it normalizes with batch statistics in eval"
    eps = _norm_eps(bn)
    if eps is None:
        return "no numeric eps attribute"
    weight, bias = getattr(bn, "weight", None), getattr(bn, "bias", None)
    scale = torch.rsqrt(var.double() + eps)
    if isinstance(weight, Tensor):
        scale = scale * weight.detach().double()
    shift = -mean.double() * scale
    if isinstance(bias, Tensor):
        shift = shift + bias.detach().double()
    return scale, shift


def _probe_input(layer: nn.Module) -> Tensor:
    """A small random input for a conv or linear layer."""
    gen = torch.Generator().manual_seed(1234)
    w = layer.weight
    if isinstance(layer, nn.Linear):
        x = torch.randn(3, layer.in_features, generator=gen)
    elif _is_hf_conv1d(layer):
        x = torch.randn(3, w.shape[0], generator=gen)
    else:
        dims = w.dim() - 2
        k, dil, stride = layer.kernel_size, layer.dilation, layer.stride
        pad = layer.padding if isinstance(layer.padding, tuple) else (0,) * dims
        size = [max(dil[i] * (k[i] - 1) + 1, 2 * pad[i] + 1) + stride[i] + 1 for i in range(dims)]
        x = torch.randn(2, layer.in_channels, *size, generator=gen)
    return x.to(device=w.device, dtype=w.dtype)


def _fold_bn_into(layer: nn.Module, bn: nn.Module) -> str | None:
    """Fold ``bn`` into ``layer`` (conv or linear), checked on a random input; None, or why it was not folded."""
    stats = _bn_stats(bn)
    if isinstance(stats, str):
        return stats
    scale, shift = stats
    out_features = layer.out_channels if isinstance(layer, nn.modules.conv._ConvNd) else layer.out_features
    if scale.numel() != out_features:
        return f"{scale.numel()} channels but its producer has {out_features} outputs"
    try:
        x = _probe_input(layer)
        with torch.no_grad(), _eval_mode(layer, bn):
            ref = bn(layer(x))
    except Exception as e:
        return f"its producer and it cannot be run together on a probe input ({type(e).__name__}: {e})"[:200]
    snap = ParamSnapshot([layer], _LINEAR_ATTRS)
    w = layer.weight.detach().double()
    view = (-1,) + (1,) * (w.dim() - 1)
    b = layer.bias.detach().double() if layer.bias is not None else torch.zeros_like(scale)
    with torch.no_grad():
        _set_param(layer, "weight", w * scale.to(w.device).view(view))
        _set_param(layer, "bias", b * scale.to(w.device) + shift.to(w.device))
        got = layer(x)
    if not _close(got, ref):
        snap.restore()
        return "folding does not reproduce its output on a probe input (the layer is not a plain conv/linear)"
    return None


def fold_batchnorm(model: nn.Module, *, inplace: bool = True, example_inputs: Any = None) -> FoldReport:
    r"""Fold every eval-mode BatchNorm into the convolution or linear layer that feeds it.

    For a producer :math:`z = W x + b` (``nn.Conv1d/2d/3d`` of any ``groups``, depthwise included, or
    ``nn.Linear``; with or without bias) followed by :math:`y = \gamma (z - \mu) / \sqrt{\sigma^2 + \epsilon} +
    \beta` with the running statistics :math:`\mu, \sigma^2`, per output channel :math:`s = \gamma /
    \sqrt{\sigma^2 + \epsilon}`:

    .. math::
        W' = W \cdot s, \qquad b' = (b - \mu)\, s + \beta

    and the BatchNorm is replaced by ``nn.Identity``. BatchNorm classes are matched by type
    (``torch.nn.modules.batchnorm._BatchNorm``) or by duck typing (``running_mean``, ``running_var``, ``eps``,
    ``affine``/``weight``: normact's and timm's). A BatchNorm is folded only when its input is the output of
    exactly one conv/linear call that nothing else reads (found by ``torch.fx``, else a forward pass on
    ``example_inputs``, else direct adjacency in an ``nn.Sequential``), and only when the folded layer reproduces
    ``bn(layer(x))`` on a random probe input; every other BatchNorm is listed in ``report.skipped`` with the reason.

    A Linear followed by BatchNorm1d is folded as if the BatchNorm's channels were the Linear's features (true for
    ``(N, C)`` input, the usual MLP case).

    Args:
        model: the network. Its BatchNorms must be in eval mode: training-mode BatchNorm normalizes with batch
            statistics, which folding cannot reproduce, so a ``ValueError`` names them.
        inplace: modify ``model`` (default) or a deep copy (``report.model``).
        example_inputs: input(s) for one forward pass (a tensor, a tuple of positional inputs or a dict of keyword
            inputs), used only when ``torch.fx`` cannot trace the model; default: a synthetic input shaped for the
            first conv/linear layer (or token ids), and if the model does not accept it, Sequential adjacency.

    Returns:
        :class:`FoldReport` (``report.model`` is the folded model).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    names = _module_names(model)
    bns = [m for m in model.modules() if _kind(m) == "bn"]
    training = [names[id(m)] for m in bns if m.training]
    if training:
        raise ValueError(
            "fold_batchnorm needs eval-mode BatchNorm (running statistics); in training mode: "
            f"{', '.join(training[:5])}{' ...' if len(training) > 5 else ''}. Call model.eval() first"
        )
    if not inplace:
        model = copy.deepcopy(model)
        names = _module_names(model)
        bns = [m for m in model.modules() if _kind(m) == "bn"]
    graph, failures, _ = _build_graph(model, example_inputs)
    aliases = _alias_count(model)
    producers: dict[int, nn.Module | str] = {}
    if graph is not None:
        for bn in bns:
            producers[id(bn)] = _graph_producer(graph, bn, names)
        method = graph.method
    else:
        pairs = {id(b): a for a, b in _sequential_pairs(model) if _kind(a) in ("conv", "linear")}
        for bn in bns:
            producers[id(bn)] = pairs.get(
                id(bn),
                "no provable producer: the data flow could not be traced ("
                + "; ".join(failures)
                + ") and it does not directly follow a conv/linear in an nn.Sequential",
            )
        method = "sequential"
    report = FoldReport(model, method)
    users = _param_users(model)
    for bn in bns:
        name, producer = names[id(bn)], producers[id(bn)]
        if isinstance(producer, str):
            report.skipped.append(Skipped(name, producer))
            continue
        pname = names[id(producer)]
        if aliases.get(id(bn), 1) > 1 or aliases.get(id(producer), 1) > 1:
            report.skipped.append(Skipped(name, f"it or its producer {pname} is registered under several names"))
            continue
        shared = _shared_with(model, producer, users)
        if shared:
            report.skipped.append(Skipped(name, f"the weights of its producer {pname} are shared with {shared}"))
            continue
        reason = _fold_bn_into(producer, bn)
        if reason is not None:
            report.skipped.append(Skipped(name, reason))
            continue
        _replace_module(model, bn, nn.Identity())
        report.folded.append(Folded(name, (pname,), type(bn).__name__))
    return report


def _graph_producer(graph: _Graph, bn: nn.Module, names: dict[int, str]) -> nn.Module | str:
    """The conv/linear module whose single call feeds ``bn``'s single call and nothing else, or why there is none."""
    calls = graph.calls_of(bn)
    if not calls:
        return f"not called in the traced forward pass ({graph.method})"
    if len(calls) > 1:
        return f"called {len(calls)} times in one forward pass (shared module)"
    node = calls[0]
    if not node.inputs:
        return "its input is not traced to any layer"
    src = node.inputs[0]
    if src.kind != "module" or _kind(src.module) not in ("conv", "linear"):
        what = f"{src.kind} {src.target!r}" if src.kind != "module" else f"{type(src.module).__name__} {src.target!r}"
        return f"its input comes from {what}, not from a Conv1d/2d/3d or Linear"
    if len(graph.calls_of(src.module)) > 1:
        return f"its producer {src.target} is called several times (shared module)"
    others = [u for u in src.users if u is not node]
    if others:
        return f"the output of its producer {src.target} is also read by {', '.join(map(repr, others[:3]))}"
    return src.module


# ---------------------------------------------------------------------------------------------------- norm affine


def _consumers(node: _Node) -> tuple[list[_Node], list[_Node]]:
    """Consumers of ``node``'s output seen through vector-preserving ops: (linear module calls, anything else)."""
    linears, others = [], []
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        for u in n.users:
            if id(u) in seen:
                continue
            seen.add(id(u))
            if _is_pass(u):
                stack.append(u)
            elif u.kind == "module" and _is_linear(u.module) and u.inputs[:1] == [n] and len(u.inputs) == 1:
                linears.append(u)
            else:
                others.append(u)
    return linears, others


def _affine_params(norm: nn.Module) -> tuple[Tensor | None, Tensor | None]:
    w, b = getattr(norm, "weight", None), getattr(norm, "bias", None)
    return (w if isinstance(w, Tensor) else None), (b if isinstance(b, Tensor) else None)


def _unit_affine(norm: nn.Module) -> None:
    w, b = _affine_params(norm)
    with torch.no_grad():
        if w is not None:
            w.fill_(1)
        if b is not None:
            b.zero_()


def _fold_affine_into_linear(lin: nn.Module, g: Tensor, b: Tensor | None, *, compress: bool = False) -> None:
    r"""``lin(x * g + b)`` as ``lin'(x)``: :math:`W' = W \operatorname{diag}(g)`, :math:`c' = c + W b`. With
    ``compress`` the input is the first d-1 coordinates of a zero-mean d-vector :math:`u` (:math:`u_d = -\sum_{i<d}
    u_i`), so :math:`W'_{:,i} = W_{:,i} g_i - W_{:,d} g_d` for :math:`i < d`."""
    hf = _is_hf_conv1d(lin)
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
        _set_param(lin, "weight", w.t().contiguous())
        lin.nx = w.shape[1]
    else:
        _set_param(lin, "weight", w)
        lin.in_features = w.shape[1]
    if lin.bias is not None or b is not None:
        _set_param(lin, "bias", bias)


def _probe_vectors(d: int, ref: Tensor) -> Tensor:
    gen = torch.Generator().manual_seed(4321)
    x = torch.randn(4, d, generator=gen) * 2 + torch.randn(4, 1, generator=gen)
    return x.to(device=ref.device, dtype=ref.dtype)


def fold_norm_affine(
    model: nn.Module, *, inplace: bool = True, example_inputs: Any = None, untie: bool = False
) -> FoldReport:
    r"""Fold the gain :math:`\gamma` and bias :math:`\beta` of LayerNorms and RMSNorms into the linear layers that
    read them, leaving each norm with weight 1 and bias 0.

    With :math:`y = u(x) \odot \gamma + \beta` (:math:`u` the normalized input) read only by linears
    :math:`W y + c`:

    .. math::
        W' = W \operatorname{diag}(\gamma), \qquad c' = c + W \beta

    (transformers' ``Conv1D``, weight (in, out), is handled transposed; a linear without bias gets one when
    :math:`\beta \ne 0`). Norms: ``nn.LayerNorm``, ``nn.RMSNorm``, normact's ``layernorm``/``rmsnorm`` and classes
    named ``*LayerNorm``/``*RMSNorm`` with a ``weight`` (Hugging Face's ``LlamaRMSNorm``...). A norm is folded only
    when its output, seen through reshapes that keep the last dimension and eval-mode dropout, is read by linear
    layers only, each called once and fed by nothing else; and only if the module really computes
    :math:`u(x) \odot \gamma + \beta` (checked numerically, which rules out e.g. Gemma's :math:`(1 + \gamma)`).
    The result is checked on a probe input; the rest is listed in ``report.skipped``.

    Args:
        model: the network.
        inplace: modify ``model`` (default) or a deep copy.
        example_inputs: input(s) for one forward pass when ``torch.fx`` cannot trace the model (default for models
            with an ``nn.Embedding``: two rows of token ids).
        untie: give a reading linear whose weight is tied to another module (an LM head tied to the token
            embedding) its own copy, instead of skipping that norm.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    names = _module_names(model)
    norms = [m for m in model.modules() if _kind(m) in ("ln", "rms")]
    graph, failures, _ = _build_graph(model, example_inputs)
    report = FoldReport(model, graph.method if graph is not None else "sequential")
    seq_next = {id(a): b for a, b in _sequential_pairs(model)} if graph is None else {}
    users = _param_users(model)
    aliases = _alias_count(model)
    for norm in norms:
        name = names[id(norm)]
        if graph is not None:
            found = _norm_consumers(graph, norm)
        else:
            nxt = seq_next.get(id(norm))
            found = (
                [nxt]
                if nxt is not None and _is_linear(nxt)
                else "no provable consumer: the data flow could not be traced ("
                + "; ".join(failures)
                + ") and it is not directly followed by a linear in an nn.Sequential"
            )
        if isinstance(found, str):
            report.skipped.append(Skipped(name, found))
            continue
        reason = _fold_norm_into(model, norm, found, names, users, aliases, untie, report)
        if reason is not None:
            report.skipped.append(Skipped(name, reason))
        else:
            report.folded.append(Folded(name, tuple(names[id(c)] for c in found), type(norm).__name__))
    return report


def _norm_consumers(graph: _Graph, norm: nn.Module) -> list[nn.Module] | str:
    calls = graph.calls_of(norm)
    if not calls:
        return f"not called in the traced forward pass ({graph.method})"
    if len(calls) > 1:
        return f"called {len(calls)} times in one forward pass (shared module)"
    linears, others = _consumers(calls[0])
    if others:
        return f"its output is also read by {', '.join(map(repr, others[:3]))}, not only by linear layers"
    if not linears:
        return "its output is not read by any linear layer"
    mods = _unique_modules([n.module for n in linears])
    for m in mods:
        if len(graph.calls_of(m)) != 1:
            return f"the linear {graph.calls_of(m)[0].target} reading it is called several times (shared module)"
    return mods


def _unique_modules(mods: list[nn.Module]) -> list[nn.Module]:
    out: list[nn.Module] = []
    for m in mods:
        if all(m is not o for o in out):
            out.append(m)
    return out


def _affine_check(norm: nn.Module) -> tuple[Tensor, Tensor | None] | str:
    """(gamma, beta) after checking that ``norm(x) == norm_unit(x) * gamma + beta``; restores the parameters."""
    w, b = _affine_params(norm)
    if w is None or w.dim() != 1:
        return "no per-feature affine weight (nothing to fold)" if w is None else "its weight is not 1-D"
    g = w.detach().clone()
    beta = b.detach().clone() if b is not None else None
    x = _probe_vectors(w.shape[0], w)
    try:
        with torch.no_grad(), _eval_mode(norm):
            y = norm(x)
            _unit_affine(norm)
            u = norm(x)
    except Exception as e:
        return f"cannot be run on a probe input ({type(e).__name__}: {e})"[:200]
    finally:
        with torch.no_grad():
            w.copy_(g)
            if b is not None:
                b.copy_(beta)
    expect = u * g + (beta if beta is not None else 0)
    if not _close(y, expect):
        return "does not compute u(x) * weight + bias (a different parametrization of the gain)"
    return g, beta


def _fold_norm_into(
    model: nn.Module,
    norm: nn.Module,
    linears: list[nn.Module],
    names: dict[int, str],
    users: dict[int, list[tuple[str, nn.Module, str]]],
    aliases: dict[int, int],
    untie: bool,
    report: FoldReport,
) -> str | None:
    if aliases.get(id(norm), 1) > 1 or any(aliases.get(id(m), 1) > 1 for m in linears):
        return "it or a linear reading it is registered under several names"
    params = _affine_check(norm)
    if isinstance(params, str):
        return params
    g, beta = params
    d = g.shape[0]
    for lin in linears:
        in_dim = lin.weight.shape[0] if _is_hf_conv1d(lin) else lin.in_features
        if in_dim != d:
            return f"the linear {names[id(lin)]} reads {in_dim} features, the norm has {d}"
        shared = _shared_with(model, lin, users)
        if shared and not untie:
            return f"the weights of {names[id(lin)]} are tied to {shared} (pass untie=True to give it its own copy)"
    for lin in linears:
        if _shared_with(model, lin, users):
            report.untied += _untie(lin, names[id(lin)])
    x = _probe_vectors(d, g)
    with torch.no_grad(), _eval_mode(norm, *linears):
        refs = [lin(norm(x)) for lin in linears]
    snap = ParamSnapshot([norm, *linears], _LINEAR_ATTRS)
    with torch.no_grad():
        for lin in linears:
            _fold_affine_into_linear(lin, g, beta)
        _unit_affine(norm)
        with _eval_mode(norm, *linears):
            got = [lin(norm(x)) for lin in linears]
    if not all(_close(a, r, 1e-5) for a, r in zip(got, refs, strict=True)):
        snap.restore()
        return "folding does not reproduce the output on a probe input"
    return None


def _untie(module: nn.Module, name: str) -> list[str]:
    """Give ``module`` its own copy of each of its parameters (breaking weight tying); returns what was untied."""
    out = []
    for pname, p in list(module._parameters.items()):
        if p is not None:
            module._parameters[pname] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
            out.append(f"{name}.{pname}")
    return out


# ---------------------------------------------------------------------------------------------------- Pre-LN -> RMS


class RMSNormWithBias(RMSNorm):
    r"""RMSNorm with a bias: :math:`y = x / \sqrt{\operatorname{mean}(x^2) + \epsilon} \odot \gamma + \beta`.

    normact's ``rmsnorm`` (torch semantics) has no bias; this subclass adds the bias that a converted Pre-LN model
    needs: for zero-mean :math:`x` it equals ``LayerNorm(x)`` with the same :math:`\gamma, \beta, \epsilon`
    (Jiang et al., 2023, arXiv:2305.14858).
    """

    def __init__(
        self,
        normalized_shape: int | tuple[int, ...],
        eps: float | None = None,
        elementwise_affine: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__(normalized_shape, eps, elementwise_affine, device=device, dtype=dtype)
        self.bias = nn.Parameter(torch.zeros(self.normalized_shape, device=device, dtype=dtype))

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x) + self.bias

    def extra_repr(self) -> str:
        return super().extra_repr() + ", bias=True"


class CRMSNormDecompress(nn.Module):
    r"""CRMSNorm on the compressed (d-1)-vector, then the full d-vector with gain and bias.

    A zero-mean :math:`z \in \mathbb{R}^d` is stored as :math:`x = z_{1..d-1}` (:math:`z_d = -\sum_i x_i`).
    normact's ``crmsnorm`` (no affine) gives :math:`n = x / \sqrt{(\lVert x\rVert^2 + (\sum_i x_i)^2)/d +
    \epsilon} = \mathrm{RMSNorm}(z)_{1..d-1}`; this module returns

    .. math::
        y = [n, -\textstyle\sum_i n_i] \odot \gamma + \beta = \mathrm{LayerNorm}(z)

    (Jiang et al., 2023, arXiv:2305.14858). Used when the layers after the norm cannot take the compressed vector.
    Input ``(*, d-1)``, output ``(*, d)``.
    """

    def __init__(self, d: int, eps: float, weight: Tensor | None, bias: Tensor | None) -> None:
        super().__init__()
        self.d = int(d)
        ref = weight if weight is not None else bias
        self.norm = normact.create("crmsnorm", self.d - 1, eps=eps, elementwise_affine=False)
        if ref is not None:
            self.norm.to(device=ref.device)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        n = self.norm(x)
        y = torch.cat([n, -n.sum(-1, keepdim=True)], dim=-1)
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        return f"{self.d - 1} -> {self.d}, affine={self.weight is not None}, bias={self.bias is not None}"


def _ln_check(m: nn.Module) -> tuple[int, float] | str:
    """(d, eps) of a module that computes LayerNorm over its last dimension (checked numerically), or why not."""
    w, b = _affine_params(m)
    shape = getattr(m, "normalized_shape", None)
    d = int(shape[0]) if isinstance(shape, (tuple, list, torch.Size)) and len(shape) == 1 else None
    if d is None and w is not None and w.dim() == 1:
        d = w.shape[0]
    if d is None:
        return "normalizes over more than the last dimension (or its size is unknown)"
    eps = _norm_eps(m)
    if eps is None:
        return "no numeric eps attribute"
    ref_t = w if w is not None else next(iter(m.parameters()), torch.zeros(()))
    x = _probe_vectors(d, ref_t)
    try:
        with torch.no_grad():
            y = m(x)
    except Exception as e:
        return f"cannot be run on a probe input ({type(e).__name__}: {e})"[:200]
    expect = torch.nn.functional.layer_norm(x, (d,), w, b, eps)
    if not _close(y, expect):
        return "does not compute LayerNorm over its last dimension"
    return d, eps


def _sum_leaves(node: _Node) -> list[_Node]:
    """The terms of a residual-stream value: walks back through additions and vector-preserving ops."""
    leaves, stack = [], [node]
    while stack:
        n = stack.pop()
        if n.kind == "op" and n.target in _ADD_OPS:
            stack.extend(n.inputs)
        elif _is_pass(n):
            stack.append(n.inputs[0])
        else:
            leaves.append(n)
    return leaves


def _describe(node: _Node) -> str:
    if node.kind == "module":
        return f"{type(node.module).__name__} {node.target!r}"
    if node.kind == "const":
        return "a constant or parameter term"
    return f"{node.kind} {node.target!r}"


@dataclass
class _Plan:
    converted: dict[str, tuple[int, float]]  # LN name -> (d, eps)
    recenter: dict[str, str]  # module name -> kind (embedding, linear, conv1d)
    consumers: dict[str, list[str] | None]  # LN name -> linear readers (None: not only linears)
    skipped: list[Skipped]


def _plan_conversion(model: nn.Module, graph: _Graph) -> _Plan:
    names = _module_names(model)
    aliases = _alias_count(model)
    lns = [m for m in model.modules() if _kind(m) == "ln"]
    skipped: list[Skipped] = []
    valid: dict[int, tuple[int, float]] = {}
    for ln in lns:
        chk = _ln_check(ln)
        if isinstance(chk, str):
            skipped.append(Skipped(names[id(ln)], chk))
        elif aliases.get(id(ln), 1) > 1:
            skipped.append(Skipped(names[id(ln)], "registered under several names"))
        else:
            valid[id(ln)] = chk
    ln_ids = set(valid)

    # Candidate writers: the terms of every LayerNorm input.
    leaves_of: dict[int, list[_Node]] = {}
    for ln_id in list(valid):
        calls = graph.calls.get(ln_id, [])
        name = names[ln_id]
        if not calls:
            skipped.append(Skipped(name, f"not called in the traced forward pass ({graph.method})"))
            del valid[ln_id]
            continue
        leaves = []
        for c in calls:
            leaves += _sum_leaves(c.inputs[0]) if c.inputs else [c]
        leaves_of[ln_id] = leaves

    cand_ok: dict[int, str | None] = {}
    for leaves in leaves_of.values():
        for leaf in leaves:
            if leaf.kind != "module" or _kind(leaf.module) not in ("embedding", "linear", "conv1d"):
                continue
            m = leaf.module
            if id(m) in cand_ok:
                continue
            cand_ok[id(m)] = _check_writer(graph, m, ln_ids, aliases)

    plan = _Plan({}, {}, {}, skipped)
    for ln_id, leaves in leaves_of.items():
        name = names[ln_id]
        bad = [leaf for leaf in leaves if leaf.kind != "module" or cand_ok.get(id(leaf.module), "") is not None]
        if bad:
            leaf = bad[0]
            why = cand_ok.get(id(leaf.module)) if leaf.kind == "module" else None
            reason = f"its input (the residual stream) has a term from {_describe(leaf)}"
            reason += f", which cannot be recentered: {why}" if why else ", not an embedding or a linear layer"
            skipped.append(Skipped(name, reason))
            continue
        d = valid[ln_id][0]
        dims = {_out_dim(leaf.module) for leaf in leaves}
        if dims != {d}:
            skipped.append(Skipped(name, f"the terms of its input have widths {sorted(dims)}, the norm has {d}"))
            continue
        plan.converted[name] = valid[ln_id]
        for leaf in leaves:
            plan.recenter[names[id(leaf.module)]] = _kind(leaf.module) or ""
        readers: list[str] | None = []
        for c in graph.calls.get(ln_id, []):
            linears, others = _consumers(c)
            mods = _unique_modules([n.module for n in linears])
            if others or not linears or any(len(graph.calls_of(m)) != 1 or aliases.get(id(m), 1) > 1 for m in mods):
                readers = None
                break
            readers += [names[id(m)] for m in mods]
        plan.consumers[name] = readers
    for m_id, why in cand_ok.items():
        if why is not None:
            skipped.append(Skipped(names[m_id], f"not recentered: {why}"))
    return plan


def _out_dim(m: nn.Module) -> int:
    if isinstance(m, nn.Embedding):
        return m.embedding_dim
    if _is_hf_conv1d(m):
        return m.weight.shape[1]
    return m.out_features


def _check_writer(graph: _Graph, m: nn.Module, ln_ids: set[int], aliases: dict[int, int]) -> str | None:
    """None when every value computed from ``m``'s output reaches only additions and LayerNorms (so that removing
    its per-token mean changes nothing but LayerNorm inputs, by a multiple of the ones vector)."""
    if aliases.get(id(m), 1) > 1:
        return "registered under several names"
    if isinstance(m, nn.Embedding) and m.max_norm is not None:
        return "an Embedding with max_norm (renormalized rows)"
    for call in graph.calls_of(m):
        stack, seen = [call], set()
        while stack:
            n = stack.pop()
            for u in n.users:
                if id(u) in seen:
                    continue
                seen.add(id(u))
                if (u.kind == "op" and u.target in _ADD_OPS) or _is_pass(u):
                    stack.append(u)
                elif u.kind == "module" and id(u.module) in ln_ids and u.inputs[:1] == [n]:
                    continue
                else:
                    return f"its output also reaches {_describe(u)}"
    return None


def _recenter(m: nn.Module) -> None:
    """Subtract from each output vector its mean over the features (embedding rows, linear output columns)."""
    w = m.weight.detach().double()
    if isinstance(m, nn.Embedding) or _is_hf_conv1d(m):
        _set_param(m, "weight", w - w.mean(1, keepdim=True))  # (num, d) / (in, d)
    else:
        _set_param(m, "weight", w - w.mean(0, keepdim=True))  # (d, in)
    b = getattr(m, "bias", None)
    if isinstance(b, Tensor):
        _set_param(m, "bias", b.detach().double() - b.detach().double().mean())


def _compress(m: nn.Module) -> None:
    """Keep the first d-1 output features of a recentered writer (the last one is minus their sum)."""
    w = m.weight.detach()
    if isinstance(m, nn.Embedding):
        m.weight = nn.Parameter(w[:, :-1].clone(), requires_grad=m.weight.requires_grad)
        m.embedding_dim -= 1
    elif _is_hf_conv1d(m):
        m.weight = nn.Parameter(w[:, :-1].clone(), requires_grad=m.weight.requires_grad)
        m.bias = nn.Parameter(m.bias.detach()[:-1].clone(), requires_grad=m.bias.requires_grad)
        m.nf -= 1
    else:
        m.weight = nn.Parameter(w[:-1].clone(), requires_grad=m.weight.requires_grad)
        if m.bias is not None:
            m.bias = nn.Parameter(m.bias.detach()[:-1].clone(), requires_grad=m.bias.requires_grad)
        m.out_features -= 1


def _apply_conversion(model: nn.Module, plan: _Plan, strategy: str) -> tuple[list[Folded], list[str], list[str]]:
    """Untie, recenter, replace the LayerNorms; returns (converted, recentered, untied)."""
    untied: list[str] = []
    users = _param_users(model)
    writers = {name: model.get_submodule(name) for name in plan.recenter}
    writer_ids = {id(m) for m in writers.values()}
    for name, m in writers.items():
        for p in m._parameters.values():
            if p is None:
                continue
            for oname, other, attr in users.get(id(p), []):
                if other is not m and id(other) not in writer_ids:
                    other._parameters[attr] = nn.Parameter(p.detach().clone(), requires_grad=p.requires_grad)
                    untied.append(f"{oname}.{attr} (was tied to {name})")
    config = getattr(model, "config", None)
    if untied and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False
        untied.append("config.tie_word_embeddings = False")
    for m in writers.values():
        _recenter(m)
    converted = []
    for name, (d, eps) in plan.converted.items():
        ln = model.get_submodule(name)
        w, b = _affine_params(ln)
        ref = w if w is not None else b
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        readers = plan.consumers.get(name)
        if strategy == "rmsnorm":
            if b is not None:
                new: nn.Module = RMSNormWithBias(d, eps=eps, elementwise_affine=w is not None, **kw)
                with torch.no_grad():
                    new.bias.copy_(b)
            else:
                new = normact.create("rmsnorm", d, eps=eps, elementwise_affine=w is not None, **kw)
            if w is not None:
                with torch.no_grad():
                    new.weight.copy_(w)
            detail = f"eps={eps:g}"
        elif strategy == "crms-fold" and readers is not None:
            g = w.detach() if w is not None else torch.ones(d, **kw)
            for r in readers:
                reader = model.get_submodule(r)
                if _shared_with(model, reader, _param_users(model)):
                    untied += _untie(reader, r)
                _fold_affine_into_linear(reader, g, b.detach() if b is not None else None, compress=True)
            new = normact.create("crmsnorm", d - 1, eps=eps, elementwise_affine=False, **kw)
            detail = f"d-1={d - 1}, gain/bias and the d-th coordinate folded into {', '.join(readers)}"
        else:
            new = CRMSNormDecompress(d, eps, w, b)
            detail = f"d-1={d - 1}, the d-th coordinate reconstructed"
        if w is not None and w.requires_grad is False:
            new.requires_grad_(False)
        _replace_module(model, ln, new)
        converted.append(Folded(name, (type(new).__name__,), detail))
    if strategy != "rmsnorm":
        for m in writers.values():
            _compress(m)
    return converted, list(plan.recenter), untied


def _max_abs_diff(a: Any, b: Any) -> float:
    ta, tb = _tensors(a), _tensors(b)
    if len(ta) != len(tb) or any(x.shape != y.shape for x, y in zip(ta, tb, strict=True)):
        return math.inf
    return max(
        (float((x.double() - y.double()).abs().max()) for x, y in zip(ta, tb, strict=True) if x.numel()), default=0.0
    )


def _output_scale(a: Any) -> float:
    return max((float(t.detach().abs().max()) for t in _tensors(a) if t.numel() and t.is_floating_point()), default=1.0)


def convert_preln_to_rmsnorm(
    model: nn.Module, *, crms: bool = False, inplace: bool = True, example_inputs: Any = None
) -> ConversionReport:
    r"""Convert a Pre-LN transformer into the equivalent Pre-RMSNorm (or Pre-CRMSNorm) one (Jiang, Gu, Zhu & Pan,
    "Pre-RMSNorm and Pre-CRMSNorm Transformers", 2023, arXiv:2305.14858).

    Make the residual stream zero-mean over the hidden dimension :math:`d`, then every LayerNorm reading it sees
    zero-mean input, for which :math:`\mathrm{LN}(x) = x / \sqrt{\overline{x^2} + \epsilon} \odot \gamma + \beta =
    \mathrm{RMSNorm}(x)` (same :math:`\gamma, \beta, \epsilon`):

    - recenter each embedding row (token, position): :math:`E \leftarrow E - \mathrm{mean}_d(E)`;
    - recenter the output projection of every residual branch (attention out-projection, MLP down-projection):
      :math:`W_o \leftarrow W_o - \tfrac1d \mathbf{1}\mathbf{1}^\top W_o`, :math:`b_o \leftarrow b_o -
      \mathrm{mean}(b_o)`;
    - replace each such LayerNorm by normact's ``rmsnorm`` (no bias) or :class:`RMSNormWithBias`.

    The structure is found from the data flow (``torch.fx``, else one recorded forward pass on ``example_inputs``,
    by default two rows of token ids): the terms of each LayerNorm's input, followed back through additions, are
    the residual writers; each must be an ``nn.Embedding``, ``nn.Linear`` or transformers' ``Conv1D`` whose output
    reaches only additions and LayerNorms (for GPT-2: ``wte``, ``wpe``, ``attn.c_proj``, ``mlp.c_proj``; for
    normact's GPT: ``tok``, ``pos``, ``attn.proj``, ``mlp.fc2``). A weight tied to a recentered one (GPT-2's LM
    head and ``wte``) is given its own copy (``report.untied``). LayerNorms whose input is not such a sum are left
    as they are (``report.skipped``); a model with none to convert raises ``ValueError``.

    ``crms=True``: the stream is stored compressed as its first d-1 coordinates (embeddings and writers lose their
    last output feature) and each norm becomes normact's ``crmsnorm``. Where the norm's output is read only by
    linear layers, :math:`\gamma`, :math:`\beta` and the reconstruction of the d-th coordinate are folded into
    them (``"crms-fold"``, the paper's form); if the model's code does not accept that (e.g. normact's GPT
    attention reads the width of its input), the d-th coordinate is reconstructed after the norm
    (:class:`CRMSNormDecompress`, ``"crms-decompress"``). The strategy is chosen by running the example input on
    copies (at most two deep copies of the model), so ``crms=True`` needs example inputs (given or default).

    The model must be in eval mode (dropout would break the zero mean). Exact up to floating point; the report's
    ``max_abs_diff`` is measured on the example input, and a difference above 1e-3 relative raises RuntimeError.
    Not converted: LayerNorms of models whose stream has other terms (post-LN, learned constant offsets...).
    Side effect: hidden states read from inside the stream (``output_hidden_states``) become zero-mean.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("convert_preln_to_rmsnorm needs the model in eval mode (dropout off): call model.eval()")
    graph, failures, inputs = _build_graph(model, example_inputs)
    if graph is None:
        raise ValueError(
            "could not find the model's data flow ("
            + "; ".join(failures)
            + "); pass example_inputs for one forward pass"
        )
    plan = _plan_conversion(model, graph)
    if not plan.converted:
        raise ValueError(
            "expected a Pre-LN transformer: LayerNorms (nn.LayerNorm or normact layernorm) whose input is a sum of "
            "embeddings (nn.Embedding) and linear outputs (nn.Linear / Conv1D) read only by additions and "
            "LayerNorms; found none. " + "; ".join(f"{s.name}: {s.reason}" for s in plan.skipped[:4])
        )
    reference = graph.output if graph.method == "trace" else None
    if graph.method == "fx" and inputs is not None:
        with torch.no_grad():
            reference = _call(model, inputs)
    elif graph.method == "fx":  # a default input, only for the self-check: skipped if the model does not take it
        try:
            with torch.no_grad():
                inputs = _default_example(model)
                reference = _call(model, inputs) if inputs is not None else None
        except Exception:
            inputs, reference = None, None
    strategy = "rmsnorm"
    if crms:
        if reference is None:
            raise ValueError("crms=True needs example_inputs (no default input fits this model)")
        _check_crms_complete(plan, graph, model)
        strategy = _choose_crms(model, plan, inputs, reference)
    target = model if inplace else copy.deepcopy(model)
    converted, recentered, untied = _apply_conversion(target, plan, strategy)
    report = ConversionReport(target, graph.method, strategy, converted, recentered, untied, list(plan.skipped))
    if reference is not None:
        with torch.no_grad():
            out = _call(target, inputs)
        report.max_abs_diff = _max_abs_diff(out, reference)
        if not report.max_abs_diff <= 1e-3 * max(1.0, _output_scale(reference)):
            raise RuntimeError(
                f"the converted model's output differs from the original by {report.max_abs_diff:.3g} on the example "
                "input: the model's structure was not recognized correctly (the model has been modified; use "
                "inplace=False to keep it)"
            )
    return report


def _check_crms_complete(plan: _Plan, graph: _Graph, model: nn.Module) -> None:
    """CRMS shrinks the whole stream: every LayerNorm it reaches must be converted."""
    names = _module_names(model)
    reached = set()
    for name in plan.recenter:
        m = model.get_submodule(name)
        for call in graph.calls_of(m):
            stack, seen = [call], set()
            while stack:
                n = stack.pop()
                for u in n.users:
                    if id(u) not in seen:
                        seen.add(id(u))
                        if u.kind == "module" and _kind(u.module) == "ln":
                            reached.add(names[id(u.module)])
                        else:
                            stack.append(u)
    missing = sorted(reached - set(plan.converted))
    if missing:
        raise ValueError(
            f"crms=True compresses the whole residual stream, but these LayerNorms reading it cannot be converted: "
            f"{', '.join(missing)}"
        )


def _choose_crms(model: nn.Module, plan: _Plan, inputs: Any, reference: Any) -> str:
    errors = []
    tol = 1e-3 * max(1.0, _output_scale(reference))
    for strategy in ("crms-fold", "crms-decompress"):
        if strategy == "crms-fold" and all(r is None for r in plan.consumers.values()):
            continue
        trial = copy.deepcopy(model)
        try:
            _apply_conversion(trial, plan, strategy)
            with torch.no_grad():
                diff = _max_abs_diff(_call(trial, inputs), reference)
        except Exception as e:  # the model's code did not accept the compressed width
            errors.append(f"{strategy}: {type(e).__name__}: {e}"[:200])
            continue
        if diff <= tol:
            return strategy
        errors.append(f"{strategy}: output differs by {diff:.3g}")
    raise ValueError("crms=True is not feasible for this model's code: " + "; ".join(errors))


# ---------------------------------------------------------------------------------------------------- frozen LN scale


class FakeLayerNorm(nn.Module):
    r"""LayerNorm with a fixed scale (LN-free inference; Heimersheim, 2024, arXiv:2409.13710; Baroni et al., 2025,
    "Transformers Don't Need LayerNorm at Inference Time", arXiv:2507.02559).

    .. math::
        y = \frac{x - \operatorname{mean}(x)}{\bar\sigma} \odot \gamma + \beta

    over the last dimension, where :math:`\bar\sigma` is a constant (the average of the LayerNorm's denominator
    :math:`\sqrt{\mathrm{Var}[x] + \epsilon}` measured on data) instead of the per-token standard deviation; with
    ``sigma_bos`` set, position 0 of the sequence axis (dim -2 of an input with 3 or more dims) uses
    :math:`\bar\sigma_0` instead (the first token's residual stream has a much larger norm in GPT-2). The result is
    affine in :math:`x`, so it could be folded into the next linear layer. Equal to LayerNorm for inputs whose
    :math:`\sqrt{\mathrm{Var}[x] + \epsilon}` is :math:`\bar\sigma`.

    Args:
        normalized_shape: the size d of the last dimension.
        sigma: the fixed scale :math:`\bar\sigma` (> 0).
        sigma_bos: the scale for position 0, or None to use ``sigma`` everywhere.
        weight, bias: :math:`\gamma`, :math:`\beta` (copied), or None.
    """

    def __init__(
        self,
        normalized_shape: int,
        sigma: float,
        sigma_bos: float | None = None,
        weight: Tensor | None = None,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if not (sigma > 0 and math.isfinite(sigma)) or (sigma_bos is not None and not sigma_bos > 0):
            raise ValueError(f"sigma and sigma_bos must be positive, got {sigma}, {sigma_bos}")
        self.normalized_shape = (int(normalized_shape),)
        ref = weight if weight is not None else bias
        kw = {"device": ref.device, "dtype": ref.dtype} if ref is not None else {}
        self.register_buffer("sigma", torch.tensor(float(sigma), **kw))
        self.register_buffer("sigma_bos", torch.tensor(float(sigma_bos), **kw) if sigma_bos is not None else None)
        self.weight = nn.Parameter(weight.detach().clone()) if weight is not None else None
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    def forward(self, x: Tensor) -> Tensor:
        xc = x - x.mean(-1, keepdim=True)
        if self.sigma_bos is not None and x.dim() >= 3 and x.shape[-2] > 0:
            y = torch.cat([xc[..., :1, :] / self.sigma_bos, xc[..., 1:, :] / self.sigma], dim=-2)
        else:
            y = xc / self.sigma
        if self.weight is not None:
            y = y * self.weight
        if self.bias is not None:
            y = y + self.bias
        return y

    def extra_repr(self) -> str:
        bos = "None" if self.sigma_bos is None else f"{float(self.sigma_bos):.4g}"
        return (
            f"{self.normalized_shape}, sigma={float(self.sigma):.4g}, sigma_bos={bos}, "
            f"elementwise_affine={self.weight is not None}, bias={self.bias is not None}"
        )


def freeze_layernorm_scale(
    model: nn.Module, batches: Iterable[Any], *, bos_separate: bool = True, inplace: bool = True
) -> FoldReport:
    r"""Replace every LayerNorm by a :class:`FakeLayerNorm` whose scale is its average input scale on ``batches``.

    For each LayerNorm, :math:`\bar\sigma` is the mean over all tokens seen of :math:`\sqrt{\mathrm{Var}[x] +
    \epsilon}` (the denominator LayerNorm uses); with ``bos_separate`` (default), position 0 of the sequence axis
    (dim -2 of inputs with 3 or more dims) gets its own :math:`\bar\sigma_0` and the others are averaged without it.
    Tokens masked out by an ``attention_mask`` in a dict batch are not counted. Heimersheim (2024,
    arXiv:2409.13710) and Baroni et al. (2025, arXiv:2507.02559) then fine-tune the model to recover; the authors'
    code averages, per position, the standard deviation pooled over the batch and hidden dimension without
    :math:`\epsilon`; the per-token average here makes FakeLayerNorm equal LayerNorm exactly on tokens at the
    average scale. This changes the model's outputs (by how much depends on how much the per-token scale varies);
    ``position 0`` means the first position of each call, so incremental decoding with a cache needs
    ``bos_separate=False``.

    Args:
        model: the network, in eval mode (dropout would randomize the statistics).
        batches: inputs: tensors (``model(x)``), tuples (``model(*x)``) or dicts (``model(**x)``).
        bos_separate: measure and use a separate scale for position 0.
        inplace: modify ``model`` (default) or a deep copy.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("freeze_layernorm_scale needs the model in eval mode (dropout off): call model.eval()")
    if not inplace:
        model = copy.deepcopy(model)
    names = _module_names(model)
    report = FoldReport(model, "hooks")
    lns: dict[int, tuple[nn.Module, int, float]] = {}
    for m in model.modules():
        if _kind(m) != "ln":
            continue
        chk = _ln_check(m)
        if isinstance(chk, str):
            report.skipped.append(Skipped(names[id(m)], chk))
        else:
            lns[id(m)] = (m, *chk)
    sums: dict[int, list[float]] = {k: [0.0, 0.0, 0.0, 0.0] for k in lns}  # sum, count, sum at pos 0, count at 0
    current_mask: list[Tensor | None] = [None]

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        x = args[0] if args else None
        if not isinstance(x, Tensor):
            return
        _, _, eps = lns[id(module)]
        s = torch.sqrt(x.detach().double().var(-1, unbiased=False) + eps)  # (*lead)
        weight = torch.ones_like(s)
        mask = current_mask[0]
        if mask is not None and tuple(mask.shape) == tuple(s.shape):
            weight = mask.to(s)
        acc = sums[id(module)]
        if bos_separate and s.dim() >= 2:
            acc[2] += float((s[..., 0] * weight[..., 0]).sum())
            acc[3] += float(weight[..., 0].sum())
            s, weight = s[..., 1:], weight[..., 1:]
        acc[0] += float((s * weight).sum())
        acc[1] += float(weight.sum())

    handles = [m.register_forward_pre_hook(hook) for m, _, _ in lns.values()]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                current_mask[0] = batch.get("attention_mask") if isinstance(batch, dict) else None
                _call(model, batch)
                seen += 1
    finally:
        for h in handles:
            h.remove()
    if seen == 0:
        raise ValueError("batches is empty: freeze_layernorm_scale needs at least one batch to measure the scales")
    for key, (m, d, _) in lns.items():
        name = names[key]
        total, count, total0, count0 = sums[key]
        if count == 0 and count0 == 0:
            report.skipped.append(Skipped(name, "never called on the batches (no input seen)"))
            continue
        sigma = total / count if count else total0 / count0
        sigma_bos = (total0 / count0 if count0 else None) if bos_separate else None
        w, b = _affine_params(m)
        fake = FakeLayerNorm(d, sigma, sigma_bos, w, b)
        if w is not None:
            fake.weight.requires_grad_(w.requires_grad)
        _replace_module(model, m, fake)
        report.scales[name] = (sigma, sigma_bos)
        bos = "" if sigma_bos is None else f", sigma_bos={sigma_bos:.4g}"
        report.folded.append(Folded(name, ("FakeLayerNorm",), f"sigma={sigma:.4g}{bos}"))
    return report
