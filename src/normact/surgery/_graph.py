"""The data-flow graph of a model: which module call or torch function produces and consumes each value.

:func:`build_graph` uses ``torch.fx`` symbolic tracing when the model traces (torchvision, timm and most plain
``nn.Module`` models), else one recorded forward pass on example inputs: module forward hooks plus a
``TorchFunctionMode`` record, for every tensor, the module or function that produced it and who consumed it (how
Hugging Face models, which fx cannot trace, are handled). :func:`sequential_pairs` is the last resort
(adjacency inside an ``nn.Sequential``). Modules the matcher gives a :func:`~normact.surgery._match.role` to
are kept opaque (one node per call).

The queries rewrites need: :meth:`Graph.producer` (the single call that alone feeds a module),
:meth:`Graph.readers` (who reads a module's output, seen through vector-preserving ops: reshapes that keep the
last dimension, eval-mode dropout), :meth:`Graph.residual_terms` (the terms of a residual-stream value, through
additions), :meth:`Graph.downstream`; :func:`call_order` (the order in which a forward pass first calls
modules); and of the module tree: :func:`module_paths`, :func:`module_names`, :func:`alias_count`,
:func:`param_users` / :func:`shared_with` (tied parameters).
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from normact.surgery._match import DROPOUT, role

ADD_OPS = {"add", "iadd", "radd"}
_IDENTITY_OPS = {"dropout", "contiguous", "clone", "to", "type_as", "float", "detach"}
_RESHAPE_OPS = {"view", "reshape", "flatten", "unsqueeze", "squeeze", "getitem"}


class Node:
    """One value in the data-flow graph: a model input, a constant, a module call, a function call or the output."""

    __slots__ = ("in_shape", "index", "inputs", "kind", "module", "out_shape", "target", "users")

    def __init__(self, kind: str, target: str, module: nn.Module | None = None) -> None:
        self.kind, self.target, self.module = kind, target, module
        self.inputs: list[Node] = []
        self.users: list[Node] = []
        self.in_shape: tuple[int, ...] | None = None
        self.out_shape: tuple[int, ...] | None = None
        self.index: Any = None

    def __repr__(self) -> str:
        return f"{self.kind}:{self.target}"


class Graph:
    """The values of one forward pass (``method``: ``"fx"``, ``"trace"`` or ``"sequential"``, the last built from
    ``nn.Sequential`` adjacency after ``failures`` to trace) and each module's calls."""

    def __init__(self, method: str, failures: Iterable[str] = ()) -> None:
        self.method = method
        self.failures = list(failures)
        self.nodes: list[Node] = []
        self.calls: dict[int, list[Node]] = {}
        self.output: Any = None  # the model's output on the example input (trace only)

    def _untraced(self, what: str, relation: str) -> str:
        """The reason of a query that an ``nn.Sequential`` adjacency graph cannot answer."""
        failures = "; ".join(self.failures)
        return (
            f"no provable {what}: the data flow could not be traced ({failures}) and it {relation} in an nn.Sequential"
        )

    def add(self, kind: str, target: str, inputs: Iterable[Node] = (), module: nn.Module | None = None) -> Node:
        node = Node(kind, target, module)
        for i in inputs:
            node.inputs.append(i)
            if node not in i.users:
                i.users.append(node)
        self.nodes.append(node)
        if module is not None:
            self.calls.setdefault(id(module), []).append(node)
        return node

    def calls_of(self, module: nn.Module) -> list[Node]:
        return self.calls.get(id(module), [])

    def sole_call(self, module: nn.Module) -> Node | str:
        """The one call of ``module`` in the forward pass, or why there is not exactly one."""
        calls = self.calls_of(module)
        if not calls:
            return f"not called in the traced forward pass ({self.method})"
        if len(calls) > 1:
            return f"called {len(calls)} times in one forward pass (shared module)"
        return calls[0]

    def producer(self, module: nn.Module, accept: Callable[[nn.Module], bool], expected: str) -> nn.Module | str:
        """The module (one that ``accept``s) whose single call feeds ``module``'s single call and nothing else, or
        why there is none; ``expected`` names the accepted modules in that reason."""
        found = self._producer(module, accept, expected)
        if isinstance(found, str) and self.method == "sequential":
            return self._untraced("producer", f"does not directly follow {expected}")
        return found

    def _producer(self, module: nn.Module, accept: Callable[[nn.Module], bool], expected: str) -> nn.Module | str:
        node = self.sole_call(module)
        if isinstance(node, str):
            return node
        if not node.inputs:
            return "its input is not traced to any layer"
        src = node.inputs[0]
        if src.kind != "module" or not accept(src.module):
            return f"its input comes from {describe(src, plain=True)}, not from {expected}"
        if len(self.calls_of(src.module)) > 1:
            return f"its producer {src.target} is called several times (shared module)"
        others = [u for u in src.users if u is not node]
        if others:
            return f"the output of its producer {src.target} is also read by {', '.join(map(repr, others[:3]))}"
        return src.module

    @staticmethod
    def readers(node: Node, accept: Callable[[nn.Module], bool]) -> tuple[list[Node], list[Node]]:
        """Consumers of ``node``'s output seen through vector-preserving ops: (calls of modules that ``accept``
        and read that value alone, anything else)."""
        taken, others = [], []
        for u, n in _uses(node, is_pass):
            if u.kind == "module" and accept(u.module) and u.inputs[:1] == [n] and len(u.inputs) == 1:
                taken.append(u)
            else:
                others.append(u)
        return taken, others

    def sole_readers(self, module: nn.Module, accept: Callable[[nn.Module], bool], what: str) -> list[nn.Module] | str:
        """The ``what`` modules (``accept``ed, each called once) that alone read ``module``'s single output (seen
        through vector-preserving ops), or why not."""
        found = self._sole_readers(module, accept, what)
        if isinstance(found, str) and self.method == "sequential":
            return self._untraced("consumer", f"is not directly followed by a {what}")
        return found

    def _sole_readers(self, module: nn.Module, accept: Callable[[nn.Module], bool], what: str) -> list[nn.Module] | str:
        node = self.sole_call(module)
        if isinstance(node, str):
            return node
        taken, others = self.readers(node, accept)
        if others:
            return f"its output is also read by {', '.join(map(repr, others[:3]))}, not only by {what} layers"
        if not taken:
            return f"its output is not read by any {what} layer"
        mods = unique_modules([n.module for n in taken])
        for m in mods:
            if len(self.calls_of(m)) != 1:
                return f"the {what} {self.calls_of(m)[0].target} reading it is called several times (shared module)"
        return mods

    @staticmethod
    def residual_terms(node: Node) -> list[Node]:
        """The terms of a residual-stream value: walks back through additions and vector-preserving ops."""
        leaves, stack = [], [node]
        while stack:
            n = stack.pop()
            if n.kind == "op" and n.target in ADD_OPS:
                stack.extend(n.inputs)
            elif is_pass(n):
                stack.append(n.inputs[0])
            else:
                leaves.append(n)
        return leaves

    def first_other_use(self, module: nn.Module, allowed: Callable[[Node, Node], bool]) -> Node | None:
        """Follows every value computed from ``module``'s outputs through additions and vector-preserving ops; the
        first use (a node reading value ``n``) for which ``allowed(use, n)`` is false, else None."""
        for call in self.calls_of(module):
            for use, n in _uses(call, lambda u: (u.kind == "op" and u.target in ADD_OPS) or is_pass(u)):
                if not allowed(use, n):
                    return use
        return None

    def downstream(self, module: nn.Module, stop: Callable[[nn.Module], bool]) -> list[nn.Module]:
        """The modules that ``stop`` the walk over everything computed from ``module``'s outputs."""
        found: list[nn.Module] = []
        for call in self.calls_of(module):
            found += [u.module for u, _ in _uses(call, lambda u: not (u.kind == "module" and stop(u.module)))]
        return unique_modules(found)


def _uses(start: Node, through: Callable[[Node], bool]) -> Iterator[tuple[Node, Node]]:
    """Walks the users of ``start``'s value, and on through every use for which ``through`` holds; yields each use
    it stops at with the value that use reads, once."""
    stack, seen = [start], set()
    while stack:
        n = stack.pop()
        for u in n.users:
            if id(u) in seen:
                continue
            seen.add(id(u))
            if through(u):
                stack.append(u)
            else:
                yield u, n


def describe(node: Node, plain: bool = False) -> str:
    """A node for a reason: ``"Linear 'h.0.mlp'"``, ``"a constant or parameter term"`` (``plain``: ``"const
    'x'"``), ``"op 'mul'"``."""
    if node.kind == "module":
        return f"{type(node.module).__name__} {node.target!r}"
    if node.kind == "const" and not plain:
        return "a constant or parameter term"
    return f"{node.kind} {node.target!r}"


def unique_modules(mods: Iterable[nn.Module]) -> list[nn.Module]:
    """``mods`` without repeats (by identity), in order."""
    out: list[nn.Module] = []
    for m in mods:
        if all(m is not o for o in out):
            out.append(m)
    return out


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


def tensors(obj: Any) -> list[Tensor]:
    return [t for t in _flatten(obj) if isinstance(t, Tensor)]


def is_pass(node: Node) -> bool:
    """True when ``node`` maps each last-dimension vector of its input to itself (identity in eval, or a reshape /
    selection of the leading dimensions, checked on the recorded shapes)."""
    if node.kind == "module":
        return isinstance(node.module, (DROPOUT, nn.Identity)) and not node.module.training
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

    def __init__(self, graph: Graph, names: dict[int, str]) -> None:
        super().__init__()
        self.graph, self.names = graph, names
        self.producer: dict[int, Node] = {}
        self.alive: list[Tensor] = []  # keeps every recorded tensor alive so that ids are not reused
        self.depth = 0
        self.stack: list[list[Node] | None] = []

    def bind(self, t: Tensor, node: Node) -> None:
        self.producer[id(t)] = node
        self.alive.append(t)

    def node_of(self, t: Tensor) -> Node | None:
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
        outs = tensors(out)
        if not outs:
            return
        inputs = [n for n in (self.node_of(t) for t in tensors((args, kwargs))) if n is not None]
        if not inputs:
            return  # built from parameters and constants only
        operands: list[Node] = []
        if name in ADD_OPS:
            if kwargs.get("alpha", 1) != 1 or (len(args) > 2 and args[2] != 1):
                name = "add_alpha"
            for a in args[:2]:
                n = self.node_of(a) if isinstance(a, Tensor) else None
                operands.append(n if n is not None else self.graph.add("const", repr(type(a).__name__)))
        node = self.graph.add("op", name, operands or _unique(inputs))
        first = next(t for t in tensors((args, kwargs)) if self.node_of(t) is not None)
        node.in_shape, node.out_shape = tuple(first.shape), tuple(outs[0].shape)
        if name == "getitem" and len(args) > 1:
            node.index = args[1]
        elif name == "dropout":
            node.index = _dropout_is_identity(args, kwargs)
        for t in outs:
            self.bind(t, node)

    def pre_hook(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if self.depth == 0:
            self.stack.append([n for n in (self.node_of(t) for t in tensors((args, kwargs))) if n is not None])
        else:
            self.stack.append(None)
        self.depth += 1

    def post_hook(self, module: nn.Module, args: Any, kwargs: Any, output: Any) -> None:
        self.depth -= 1
        inputs = self.stack.pop()
        if inputs is None:
            return
        node = self.graph.add("module", self.names.get(id(module), type(module).__name__), inputs, module)
        ins, outs = tensors((args, kwargs)), tensors(output)
        node.in_shape = tuple(ins[0].shape) if ins else None
        node.out_shape = tuple(outs[0].shape) if outs else None
        for t in outs:
            self.bind(t, node)


def _unique(nodes: list[Node]) -> list[Node]:
    seen: list[Node] = []
    for n in nodes:
        if n not in seen:
            seen.append(n)
    return seen


def module_names(model: nn.Module) -> dict[int, str]:
    names: dict[int, str] = {}
    for name, m in model.named_modules():
        names.setdefault(id(m), name or "<model>")
    return names


def call_model(model: nn.Module, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def trace_graph(model: nn.Module, example_inputs: Any) -> Graph:
    """The data flow of one forward pass on ``example_inputs`` (module calls of "opaque" modules: leaves and the
    layers the analyses know, plus every torch function called outside them)."""
    graph = Graph("trace")
    names = module_names(model)
    rec = _Recorder(graph, names)
    for t in tensors(example_inputs):
        rec.bind(t, graph.add("input", "input"))
    handles = []
    try:
        for m in model.modules():
            if role(m) is not None or not any(True for _ in m.children()):
                handles.append(m.register_forward_pre_hook(rec.pre_hook, with_kwargs=True))
                handles.append(m.register_forward_hook(rec.post_hook, with_kwargs=True))
        with torch.no_grad(), rec:
            out = call_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    graph.output = out
    outs = [n for n in (rec.node_of(t) for t in tensors(out)) if n is not None]
    graph.add("output", "output", _unique(outs))
    return graph


def fx_graph(model: nn.Module) -> Graph:
    """The data flow from ``torch.fx`` symbolic tracing (raises whatever fx raises when the model does not trace)."""
    import torch.fx

    known = {id(m) for m in model.modules() if role(m) is not None}  # before tracing: fx proxies parameters

    class _Tracer(torch.fx.Tracer):
        def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
            return id(m) in known or super().is_leaf_module(m, qualname)

    fx_graph = _Tracer().trace(model)
    graph = Graph("fx")
    mapped: dict[torch.fx.Node, Node] = {}
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
            if name in ADD_OPS:
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


def default_example(model: nn.Module) -> Any:
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


def build_graph(
    model: nn.Module, example_inputs: Any, *, sequential: bool = False
) -> tuple[Graph | None, list[str], Any]:
    """fx, else a recorded forward pass on ``example_inputs`` (default: :func:`default_example`), else with
    ``sequential`` the adjacency graph of the model's ``nn.Sequential`` containers (:func:`sequential_graph`);
    returns the graph (None when none could be built), the reasons for failures, and the inputs used."""
    failures = []
    try:
        graph = fx_graph(model)
        return graph, failures, example_inputs
    except Exception as e:  # any tracing failure: fall back
        failures.append(f"torch.fx: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200])
    inputs = example_inputs if example_inputs is not None else default_example(model)
    if inputs is None:
        failures.append("no example_inputs to record a forward pass")
    else:
        what = "example_inputs" if example_inputs is not None else "a default input (pass example_inputs)"
        try:
            return trace_graph(model, inputs), failures, inputs
        except Exception as e:
            failures.append(f"forward pass on {what}: {type(e).__name__}: {e}"[:240])
    return (sequential_graph(model, failures) if sequential else None), failures, None


def sequential_graph(model: nn.Module, failures: Iterable[str] = ()) -> Graph:
    """The graph in which each child of an ``nn.Sequential`` reads the output of the child before it (true as long as
    the Sequential's own forward is used) and nothing else is known."""
    graph = Graph("sequential", failures)
    names = module_names(model)
    for m in model.modules():
        if isinstance(m, nn.Sequential):
            prev: list[Node] = []
            for child in m.children():
                prev = [graph.add("module", names.get(id(child), type(child).__name__), prev, child)]
    return graph


def call_order(modules: Mapping[str, nn.Module], run: Callable[[], Any]) -> list[str]:
    """The names of ``modules`` in the order in which ``run()`` (one forward pass) first calls them (modules it
    does not call are absent)."""
    order: list[str] = []
    handles = [
        m.register_forward_hook(lambda mod, a, o, n=name: None if n in order else order.append(n))
        for name, m in modules.items()
    ]
    try:
        run()
    finally:
        for h in handles:
            h.remove()
    return order


def module_paths(model: nn.Module) -> tuple[dict[int, list[str]], dict[int, nn.Module]]:
    """Every module (by id) with all the names it is reachable under, in order of first appearance, and the
    modules by id."""
    paths: dict[int, list[str]] = {}
    modules: dict[int, nn.Module] = {}
    for name, m in model.named_modules(remove_duplicate=False):
        paths.setdefault(id(m), []).append(name)
        modules.setdefault(id(m), m)
    return paths, modules


def alias_count(model: nn.Module) -> dict[int, int]:
    """How many names each module (by id) is reachable under (more than one: a shared module)."""
    return {key: len(names) for key, names in module_paths(model)[0].items()}


def param_users(model: nn.Module) -> dict[int, list[tuple[str, nn.Module, str]]]:
    """For each parameter (by id): every (module name, module, attribute) that holds it."""
    users: dict[int, list[tuple[str, nn.Module, str]]] = {}
    seen: set[tuple[int, str]] = set()
    for name, m in model.named_modules(remove_duplicate=False):
        for pname, p in m._parameters.items():
            if p is not None and (id(m), pname) not in seen:
                seen.add((id(m), pname))
                users.setdefault(id(p), []).append((name, m, pname))
    return users


def shared_with(model: nn.Module, module: nn.Module, users: dict[int, list[tuple[str, nn.Module, str]]]) -> list[str]:
    """Names of other modules holding one of ``module``'s own parameters (tied weights)."""
    out = []
    for p in module._parameters.values():
        if p is not None:
            out += [f"{n}.{a}" for n, m, a in users.get(id(p), []) if m is not module]
    return out
