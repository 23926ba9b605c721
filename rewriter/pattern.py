"""A small declarative pattern language for aten-level torch.fx graphs.

Patterns read like the math they match:

    d = Var("d")
    gaussian = exp(mul(Const("gamma"), pow_(sub(unsqueeze(d, -1), Const("centers")), 2)))

* ``Var(name)`` matches a graph value (an fx.Node) and binds it; the same name must bind the
  same node everywhere in a match. ``where=`` adds a predicate on the node.
* ``Const(name)`` matches a value known at optimize time (a buffer, a folded constant or a
  Python number) and binds that value.
* ``Lit(value)`` / ``Lit(pred=...)`` matches a literal argument (not a node); ``name=`` binds it.
* ``op(aten.x)(*args, name=, users=)`` matches a call of that aten operator. Its arguments are
  normalised against the operator's schema (keyword arguments moved to their positions,
  defaults filled in) and the arity is exact: arguments the pattern does not list must hold
  their default value. ``commutative`` operators try both orders; ``name=`` binds the node;
  ``users=n`` requires exactly n users (a node read elsewhere cannot be folded into a region).
* ``any_of(p, q, ...)`` tries each alternative, and matching backtracks: if a later part of the
  pattern fails, the next alternative (or argument order) is tried.

``find_all`` returns a typed ``Match`` per node where a pattern matches, and, for each
candidate whose root operator matched but whose match failed further down, the reason of the
deepest failure (``Miss``), which the report shows as a near miss.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.fx as fx

aten = torch.ops.aten
_NO_DEFAULT = object()


@dataclass
class Binding:
    kind: str  # "node" | "const" | "literal"
    value: Any


class Match:
    """The bindings of one successful match: ``m["d"]`` is the bound value (an fx.Node for a
    ``Var`` or a named op, a tensor/number for a ``Const``, a Python value for a named ``Lit``)."""

    def __init__(self, root: fx.Node, bindings: dict):
        self.root = root
        self._b = bindings

    def __getitem__(self, name: str):
        if name not in self._b:
            raise KeyError(f"pattern binds no {name!r} (it binds {sorted(self._b)})")
        return self._b[name].value

    def __contains__(self, name: str) -> bool:
        return name in self._b

    def node(self, name: str) -> fx.Node:
        b = self._b[name]
        if b.kind != "node":
            raise TypeError(f"{name!r} is bound to a {b.kind}, not a graph node")
        return b.value

    def kind(self, name: str) -> str:
        return self._b[name].kind



@dataclass
class Miss:
    root: fx.Node
    reason: str


@dataclass
class MatchContext:
    """What the matcher needs beyond the graph: known constant values per node; it also keeps
    the deepest failure seen while matching one candidate."""

    constants: dict  # fx.Node -> tensor or number
    depth: int = field(default=0)
    reason: str = ""

    def fail(self, depth: int, reason: str) -> None:
        if depth > self.depth or not self.reason:
            self.depth, self.reason = depth, reason


class Pattern:
    def matches(self, value, ctx: MatchContext, caps: dict, depth: int) -> Iterator[dict]:
        raise NotImplementedError


def _describe(value) -> str:
    if isinstance(value, fx.Node):
        return f"{value.name} ({_target_name(value)})" if value.op == "call_function" else f"{value.name} ({value.op})"
    return repr(value)


def _target_name(node: fx.Node) -> str:
    t = node.target
    packet = getattr(t, "overloadpacket", None)
    return f"aten.{packet.__name__}" if packet is not None else getattr(t, "__name__", str(t))


def _bind(caps: dict, name: Optional[str], kind: str, value, ctx, depth) -> Optional[dict]:
    if name is None:
        return caps
    if name in caps:
        old = caps[name]
        same = old.value is value or (kind != "node" and old.kind != "node" and _eq(old.value, value))
        if not same:
            ctx.fail(depth, f"{name!r} would bind both {_describe(old.value)} and {_describe(value)}")
            return None
        return caps
    out = dict(caps)
    out[name] = Binding(kind, value)
    return out


def _eq(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


def _one(caps):
    if caps is not None:
        yield caps


@dataclass(frozen=True)
class Var(Pattern):
    """A graph value; ``constant=False`` refuses one known at optimize time."""

    name: Optional[str] = None
    where: Optional[Callable[[fx.Node], bool]] = None
    constant: Optional[bool] = None

    def matches(self, value, ctx, caps, depth):
        if not isinstance(value, fx.Node):
            ctx.fail(depth, f"expected a graph value for {self.name or 'a variable'}, found literal {value!r}")
            return
        if self.constant is False and value in ctx.constants:
            ctx.fail(depth, f"{_describe(value)} is a constant, the pattern needs a variable {self.name or ''}")
            return
        if self.where is not None and not self.where(value):
            ctx.fail(depth, f"{_describe(value)} is not a valid {self.name or 'value'} here")
            return
        yield from _one(_bind(caps, self.name, "node", value, ctx, depth))


@dataclass(frozen=True)
class Const(Pattern):
    """A value known at optimize time; bound as a tensor (or Python number)."""

    name: Optional[str] = None

    def matches(self, value, ctx, caps, depth):
        if isinstance(value, fx.Node):
            if value not in ctx.constants:
                ctx.fail(depth, f"{_describe(value)} is not a constant (needed for {self.name})")
                return
            value = ctx.constants[value]
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            ctx.fail(depth, f"{value!r} is not a number (needed for {self.name})")
            return
        yield from _one(_bind(caps, self.name, "const", value, ctx, depth))


@dataclass(frozen=True)
class Lit(Pattern):
    """A literal (non-node) argument: equal to ``value`` or satisfying ``pred``."""

    value: Any = None
    pred: Optional[Callable[[Any], bool]] = None
    name: Optional[str] = None

    def matches(self, value, ctx, caps, depth):
        ok = not isinstance(value, fx.Node) and (self.pred(value) if self.pred is not None else value == self.value)
        if not ok:
            ctx.fail(depth, f"expected literal {self.value if self.pred is None else '(condition)'}, found {_describe(value)}")
            return
        yield from _one(_bind(caps, self.name, "literal", value, ctx, depth))


@dataclass(frozen=True)
class AnyOf(Pattern):
    options: tuple

    def matches(self, value, ctx, caps, depth):
        for option in self.options:
            yield from option.matches(value, ctx, caps, depth)


def _packet(target):
    return getattr(target, "overloadpacket", target)


def normalized_args(node: fx.Node) -> tuple[list, list]:
    """(arguments, defaults): the node's arguments in schema order with keyword arguments in
    place and defaults filled in; ``defaults[k]`` is argument k's default (or a sentinel)."""
    schema = getattr(node.target, "_schema", None)
    if schema is None:
        return list(node.args), [_NO_DEFAULT] * len(node.args)
    args, defaults = [], []
    for k, a in enumerate(schema.arguments):
        default = a.default_value if a.has_default_value() else _NO_DEFAULT
        if k < len(node.args):
            args.append(node.args[k])
        elif a.name in node.kwargs:
            args.append(node.kwargs[a.name])
        else:
            args.append(default)
        defaults.append(default)
    return args, defaults


@dataclass(frozen=True)
class Op(Pattern):
    targets: tuple
    args: tuple
    name: Optional[str] = None
    commutative: bool = False
    users: Optional[int] = None
    free_tail: bool = False  # arguments after the listed ones may take any value (casts)

    def matches(self, value, ctx, caps, depth):
        label = "/".join(getattr(t, "__name__", str(t)) for t in self.targets)
        if not isinstance(value, fx.Node) or value.op != "call_function":
            ctx.fail(depth, f"expected {label}, found {_describe(value)}")
            return
        if _packet(value.target) not in self.targets and value.target not in self.targets:
            ctx.fail(depth, f"expected {label}, found {_describe(value)}")
            return
        if self.users is not None and len(value.users) != self.users:
            ctx.fail(depth, f"{value.name} has {len(value.users)} users, the pattern needs {self.users}")
            return
        args, defaults = normalized_args(value)
        n = len(self.args)
        if len(args) < n:
            ctx.fail(depth, f"{value.name} has {len(args)} arguments, the pattern needs {n}")
            return
        if not self.free_tail:
            for k in range(n, len(args)):
                if defaults[k] is _NO_DEFAULT or not _same_literal(args[k], defaults[k]):
                    ctx.fail(depth, f"{value.name}: argument {k} is {_describe(args[k])}, not its default")
                    return
        orders = [args[:n]]
        if self.commutative and n == 2:
            orders.append(orders[0][::-1])
        for order in orders:
            for got in _match_args(self.args, order, ctx, caps, depth + 1):
                yield from _one(_bind(got, self.name, "node", value, ctx, depth))


def _same_literal(a, b) -> bool:
    if isinstance(a, fx.Node):
        return False
    try:
        return bool(a == b)
    except (TypeError, RuntimeError):
        return False


def _match_args(pats, args, ctx, caps, depth) -> Iterator[dict]:
    if not pats:
        yield caps
        return
    for got in _match_arg(pats[0], args[0], ctx, caps, depth):
        yield from _match_args(pats[1:], args[1:], ctx, got, depth)


def _match_arg(pat, arg, ctx, caps, depth) -> Iterator[dict]:
    if isinstance(pat, Pattern):
        yield from pat.matches(arg, ctx, caps, depth)
    elif isinstance(pat, (list, tuple)):
        if not isinstance(arg, (list, tuple)) or len(arg) != len(pat):
            ctx.fail(depth, f"expected a list of {len(pat)}, found {_describe(arg)}")
            return
        yield from _match_args(list(pat), list(arg), ctx, caps, depth)
    elif not isinstance(arg, fx.Node) and _same_literal(arg, pat):
        yield caps
    else:
        ctx.fail(depth, f"expected literal {pat!r}, found {_describe(arg)}")


def op(*targets, commutative: bool = False, free_tail: bool = False):
    """Constructor for an operator pattern: ``mul = op(aten.mul, commutative=True)``."""
    packets = tuple(_packet(t) for t in targets)

    def make(*args, name: Optional[str] = None, users: Optional[int] = None):
        return Op(packets, tuple(args), name=name, commutative=commutative, users=users, free_tail=free_tail)

    return make


def any_of(*options) -> AnyOf:
    return AnyOf(tuple(options))


# The vocabulary, one constructor per canonical aten operator (see normalize.py), grouped by kind.
exp, sin, cos, sqrt, reciprocal, silu = map(op, (aten.exp, aten.sin, aten.cos, aten.sqrt, aten.reciprocal, aten.silu))
mul, add = op(aten.mul, commutative=True), op(aten.add, commutative=True)
sub, rsub, div, pow_ = map(op, (aten.sub, aten.rsub, aten.div, aten.pow))
lt, eq, where = map(op, (aten.lt, aten.eq, aten.where))
linear, sum_, norm = map(op, (aten.linear, aten.sum, aten.linalg_vector_norm))
unsqueeze, cat, getitem, index, index_add = map(op, (aten.unsqueeze, aten.cat, operator.getitem, aten.index,
                                                     aten.index_add))
split = op(aten.split, aten.split_with_sizes)
cast = op(aten._to_copy, aten.to, free_tail=True)
ones_like = op(aten.ones_like, free_tail=True)


def match_at(node: fx.Node, pattern: Pattern, ctx: MatchContext) -> tuple[Optional[Match], str, int]:
    """(Match or None, reason of the deepest failure, its depth) of ``pattern`` rooted at ``node``."""
    ctx.depth, ctx.reason = 0, ""
    for caps in pattern.matches(node, ctx, {}, 0):
        return Match(node, caps), "", 0
    return None, ctx.reason, ctx.depth


def find_all(graph: fx.Graph, pattern: Pattern, ctx: MatchContext) -> tuple[list[Match], list[Miss]]:
    """Every node where ``pattern`` matches (graph order), and the near misses: candidates whose
    root operator matched but whose match failed below it, with the reason."""
    found, missed = [], []
    for node in graph.nodes:
        m, reason, depth = match_at(node, pattern, ctx)
        if m is not None:
            found.append(m)
        elif depth >= 2:
            missed.append(Miss(node, reason))
    return found, missed


def covered_nodes(root: fx.Node, stop: Sequence[fx.Node]) -> list[fx.Node]:
    """The call_function nodes between ``root`` and the boundary values ``stop`` (inclusive of
    root): the region a match replaces."""
    stop_set = set(stop)
    seen: list[fx.Node] = []
    todo = [root]
    while todo:
        n = todo.pop()
        if n in stop_set or n in seen or not isinstance(n, fx.Node) or n.op != "call_function":
            continue
        seen.append(n)
        todo.extend(n.all_input_nodes)
    return seen
