"""A small declarative pattern language for aten-level torch.fx graphs.

Patterns are built from a handful of constructors and read like the math they match:

    d = Var("d")
    gaussian = exp(mul(Const("coeff"), pow_(sub(unsqueeze(d), Const("offsets")), 2)))

* ``Var(name)`` matches any value and captures it (the same name must bind the same node).
* ``Const(name)`` matches a value known at optimize time (a folded constant, a buffer or a
  Python number) and captures that value.
* ``Op(targets, *args)`` matches a call_function node whose aten overload packet is one of
  ``targets`` and whose arguments match ``args`` (sub-patterns or literals); ``commutative``
  operators try both argument orders; ``name=`` captures the node itself.
* ``AnyOf(p, q, ...)`` matches the first alternative that fits; ``Lit(pred)`` matches a
  literal argument satisfying ``pred``.

Matching walks from a candidate node down through its arguments and returns the capture
dict (or None). Constants are looked up through a ``ConstantTable`` built by the capture
pass, which knows which placeholders are buffers and what value each folded node has.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any as AnyT
from typing import Callable, Optional, Sequence

import torch
import torch.fx as fx

aten = torch.ops.aten


class Pattern:
    def match(self, value, ctx: "MatchContext", caps: dict) -> Optional[dict]:
        raise NotImplementedError


@dataclass
class MatchContext:
    """What the matcher needs to know beyond the graph: known constant values per node."""

    constants: dict  # fx.Node -> tensor or number


def _bind(caps: dict, name: Optional[str], value) -> Optional[dict]:
    if name is None:
        return caps
    if name in caps:
        same = caps[name] is value or (
            not isinstance(value, fx.Node) and not isinstance(caps[name], fx.Node) and _eq(caps[name], value)
        )
        return caps if same else None
    out = dict(caps)
    out[name] = value
    return out


def _eq(a, b) -> bool:
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.shape == b.shape and bool(torch.equal(a, b))
    return a == b


@dataclass(frozen=True)
class Var(Pattern):
    name: Optional[str] = None
    where: Optional[Callable[[AnyT], bool]] = None

    def match(self, value, ctx, caps):
        if self.where is not None and not self.where(value):
            return None
        return _bind(caps, self.name, value)


@dataclass(frozen=True)
class Const(Pattern):
    """A value known at optimize time; captured as a tensor (or Python number)."""

    name: Optional[str] = None

    def match(self, value, ctx, caps):
        if isinstance(value, fx.Node):
            if value not in ctx.constants:
                return None
            value = ctx.constants[value]
        elif not isinstance(value, (int, float)) or isinstance(value, bool):
            return None
        return _bind(caps, self.name, value)


@dataclass(frozen=True)
class Lit(Pattern):
    """A literal (non-node) argument: equal to ``value`` or satisfying ``pred``."""

    value: AnyT = None
    pred: Optional[Callable[[AnyT], bool]] = None

    def match(self, value, ctx, caps):
        if isinstance(value, fx.Node):
            return None
        if self.pred is not None:
            return caps if self.pred(value) else None
        return caps if value == self.value else None


@dataclass(frozen=True)
class AnyOf(Pattern):
    options: tuple

    def match(self, value, ctx, caps):
        for option in self.options:
            got = option.match(value, ctx, caps)
            if got is not None:
                return got
        return None


def _packet(target):
    return getattr(target, "overloadpacket", target)


@dataclass(frozen=True)
class Op(Pattern):
    targets: tuple
    args: tuple
    name: Optional[str] = None
    commutative: bool = False

    def match(self, value, ctx, caps):
        if not isinstance(value, fx.Node) or value.op != "call_function":
            return None
        if _packet(value.target) not in self.targets and value.target not in self.targets:
            return None
        args = list(value.args)
        if len(args) < len(self.args):
            return None
        orders = [args[: len(self.args)]]
        if self.commutative and len(self.args) == 2:
            orders.append(orders[0][::-1])
        for order in orders:
            got = caps
            for pat, arg in zip(self.args, order):
                got = _match_arg(pat, arg, ctx, got)
                if got is None:
                    break
            if got is not None:
                return _bind(got, self.name, value)
        return None


def _match_arg(pat, arg, ctx, caps):
    if isinstance(pat, Pattern):
        return pat.match(arg, ctx, caps)
    if isinstance(pat, (list, tuple)):
        if not isinstance(arg, (list, tuple)) or len(arg) != len(pat):
            return None
        for p, a in zip(pat, arg):
            caps = _match_arg(p, a, ctx, caps)
            if caps is None:
                return None
        return caps
    return caps if (not isinstance(arg, fx.Node) and arg == pat) else None


def op(*targets, commutative: bool = False):
    """Constructor for an operator pattern: ``mul = op(aten.mul, commutative=True)``."""
    packets = tuple(_packet(t) for t in targets)

    def make(*args, name: Optional[str] = None):
        return Op(packets, tuple(args), name=name, commutative=commutative)

    return make


def any_of(*options) -> AnyOf:
    return AnyOf(tuple(options))


# The vocabulary, one constructor per canonical aten operator.
exp = op(aten.exp)
sin = op(aten.sin)
cos = op(aten.cos)
sqrt = op(aten.sqrt)
mul = op(aten.mul, commutative=True)
add = op(aten.add, commutative=True)
sub = op(aten.sub)
div = op(aten.div)
pow_ = op(aten.pow)
lt = op(aten.lt)
where = op(aten.where)
eq = op(aten.eq)
unsqueeze = op(aten.unsqueeze)
index = op(aten.index)
index_add = op(aten.index_add)
split = op(aten.split, aten.split_with_sizes)
getitem = op(__import__("operator").getitem)
linear = op(aten.linear)
norm = op(aten.linalg_vector_norm)
to_dtype = op(aten._to_copy, aten.to)
zeros = op(aten.zeros, aten.zeros_like, aten.new_zeros)
ones_like = op(aten.ones_like)


def find_all(graph: fx.Graph, pattern: Pattern, ctx: MatchContext) -> list[dict]:
    """Every node where ``pattern`` matches (in graph order), with its captures (the root
    node under ``"_root"``)."""
    found = []
    for node in graph.nodes:
        caps = pattern.match(node, ctx, {})
        if caps is not None:
            caps = dict(caps)
            caps["_root"] = node
            found.append(caps)
    return found


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
        for a in n.all_input_nodes:
            todo.append(a)
    return seen
