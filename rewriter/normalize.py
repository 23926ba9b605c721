"""Normalisation passes: bring different spellings of the same math to one canonical form
before matching. Each pass mutates ``captured.gm.graph`` and returns a list of what it did.

Canonical forms (aten level):
    norm      sqrt(sum(x**2 | x*x, dim, keepdim))        -> linalg_vector_norm(x, 2, dim, keepdim)
    division  x * reciprocal(y) | x * y**-1              -> x / y
    scaling   -x -> x * -1;  x / c -> x * (1/c) for a constant c;  (x * c1) * c2 -> x * (c1 c2)
    square    x * x | square(x)                          -> x ** 2;   x * 1 -> x
    gather    index_select(x, 0, i)                      -> x[i]  (aten.index)
    scatter   scatter_add(zeros, 0, i expanded, s)       -> index_add(zeros, 0, i, s)
    linear    addmm(b, x, W.t()) | x @ W.t() (+ b)       -> linear(x, W, b)
    in-place  a.mul_(b) etc. whose input is not read again -> a * b
    identity  detach(x) | lift_fresh_copy(x) | alias(x)  -> x
Constants: nodes computed only from buffers and literals are evaluated once (``fold_constants``);
parameters stay graph inputs so the optimized module keeps using the live weights.

The canonical forms are ``RULES``: (pattern, rewrite) pairs in the pattern language the fusions
use (``pattern.py``), applied by ``canonicalize`` until none matches.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Optional, Union

import torch
import torch.fx as fx

from .capture import Captured
from .pattern import (Const, Lit, Match, MatchContext, Pattern, Var, add, any_of, div, linear, match_at, mul, op, pow_,
                      reciprocal, sqrt)

aten = torch.ops.aten

_INPLACE = {
    aten.mul_.Tensor: aten.mul.Tensor,
    aten.mul_.Scalar: aten.mul.Scalar,
    aten.add_.Tensor: aten.add.Tensor,
    aten.sub_.Tensor: aten.sub.Tensor,
    aten.div_.Tensor: aten.div.Tensor,
    aten.index_add_.default: aten.index_add.default,
    aten.scatter_add_.default: aten.scatter_add.default,
}

_ASSERTS = {aten._assert_tensor_metadata.default, aten._assert_scalar.default}


def _packet(target):
    return getattr(target, "overloadpacket", None)


def _is(node, *packets) -> bool:
    return isinstance(node, fx.Node) and node.op == "call_function" and _packet(node.target) in packets


def _pure(node: fx.Node) -> bool:
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:
        return True
    name = getattr(node.target, "__name__", "")
    schema = getattr(node.target, "_schema", None)
    if schema is None or name.endswith("_") or "rand" in name or node.target in _ASSERTS:
        return False
    return not any(a.alias_info is not None and a.alias_info.is_write for a in schema.arguments)


def add_constant(gm: fx.GraphModule, anchor: fx.Node, name: str, value: torch.Tensor) -> fx.Node:
    """A ``get_attr`` node before ``anchor`` reading ``value``, stored as a non-persistent buffer
    ``_painnfx_<name>`` (suffixed if taken) and marked as a constant the patterns can read."""
    attr, k = f"_painnfx_{name}", 1
    while hasattr(gm, attr):
        attr, k = f"_painnfx_{name}_{k}", k + 1
    gm.register_buffer(attr, value.detach().clone(), persistent=False)
    with gm.graph.inserting_before(anchor):
        node = gm.graph.get_attr(attr)
    node.meta["painnfx_constant"] = True
    return node


def remove_dead_code(gm: fx.GraphModule) -> int:
    """Dead-code elimination plus the painnfx constants no node reads any more; nodes removed."""
    g = gm.graph
    before = len(g.nodes)
    g.eliminate_dead_code()
    read = {n.target for n in g.nodes if n.op == "get_attr"}
    for name, _ in list(gm.named_buffers()):
        if name.startswith("_painnfx_") and name not in read:
            delattr(gm, name)
    return before - len(g.nodes)


def drop_dead_nodes(cap: Captured) -> list[str]:
    """Remove nodes no longer used (leftovers of folding and canonicalisation)."""
    removed = remove_dead_code(cap.gm)
    return [f"removed {removed} unused nodes"] if removed else []


def strip_runtime_asserts(cap: Captured) -> list[str]:
    g, n = cap.gm.graph, 0
    for node in list(g.nodes):
        if node.op == "call_function" and (node.target in _ASSERTS or "sym_constrain_range" in str(node.target)) and not node.users:
            g.erase_node(node)
            n += 1
    return [f"removed {n} runtime assertion nodes"] if n else []


def functionalize_inplace(cap: Captured) -> list[str]:
    g, done, kept = cap.gm.graph, 0, []
    order = {node: k for k, node in enumerate(g.nodes)}
    for node in list(g.nodes):
        if node.op != "call_function" or node.target not in _INPLACE:
            continue
        target = node.args[0]
        later = [u for u in target.users if u is not node and order[u] > order[node]]
        if later:
            kept.append(node.name)
            continue
        with g.inserting_before(node):
            new = g.call_function(_INPLACE[node.target], node.args, node.kwargs)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        g.erase_node(node)
        done += 1
    out = [f"made {done} in-place ops out-of-place"] if done else []
    if kept:
        out.append(f"kept in-place ops whose input is read again: {kept}")
    return out


def _key(node: fx.Node):
    def freeze(a):
        if isinstance(a, (list, tuple)):
            return tuple(freeze(x) for x in a)
        if isinstance(a, dict):
            return tuple(sorted((k, freeze(v)) for k, v in a.items()))
        if isinstance(a, (torch.dtype, torch.device, torch.layout, torch.memory_format)):
            return str(a)
        return a

    try:
        key = (node.target, freeze(node.args), freeze(node.kwargs))
        hash(key)
        return key
    except TypeError:
        return None


def eliminate_common_subexpressions(cap: Captured) -> list[str]:
    g, seen, n = cap.gm.graph, {}, 0
    for node in list(g.nodes):
        if not _pure(node):
            continue
        key = _key(node)
        if key is None:
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
            g.erase_node(node)
            n += 1
        else:
            seen[key] = node
    return [f"merged {n} duplicate nodes"] if n else []


class ConstantValues(dict):
    """fx.Node -> value of the graph's constants. Reading a value (``[]``, ``get``) records the
    placeholders it derives from in ``read`` (``Captured.read``): those buffers are now part of the
    rewritten graph, whose results no longer follow a change of them. Asking whether a node is
    a constant (``in``) records nothing."""

    def __init__(self, values: dict, read: set):
        super().__init__(values)
        self.read = read

    def sources(self, node: fx.Node) -> set:
        if node.op == "placeholder":
            return {node.name}
        return set(node.meta.get("painnfx_sources", ()))

    def __getitem__(self, node):
        value = super().__getitem__(node)
        self.read.update(self.sources(node))
        return value

    def get(self, node, default=None):
        return self[node] if node in self else default


def constant_nodes(cap: Captured) -> ConstantValues:
    """fx.Node -> value for buffer/constant placeholders and folded get_attr constants."""
    out = {}
    for node in cap.gm.graph.nodes:
        if node.op == "placeholder" and node.name in cap.constants:
            out[node] = cap.constants[node.name]
        elif node.op == "get_attr" and node.meta.get("painnfx_constant"):
            out[node] = getattr(cap.gm, node.target)
    return ConstantValues(out, cap.read)


def fold_constants(cap: Captured) -> list[str]:
    g = cap.gm.graph
    consts = constant_nodes(cap)
    folded = 0
    for node in list(g.nodes):
        if not _pure(node) or node.target is operator.getitem:
            continue
        if not node.all_input_nodes or not all(a in consts for a in node.all_input_nodes):
            continue
        env = lambda a: consts[a] if isinstance(a, fx.Node) else a
        value = node.target(*fx.node.map_arg(node.args, env), **fx.node.map_arg(node.kwargs, env))
        if not torch.is_tensor(value):
            continue
        attr = add_constant(cap.gm, node, f"const_{node.name}", value)
        attr.meta["val"] = node.meta.get("val")
        attr.meta["painnfx_sources"] = set().union(*(consts.sources(a) for a in node.all_input_nodes))
        node.replace_all_uses_with(attr)
        g.erase_node(node)
        consts[attr] = value
        folded += 1
    return [f"folded {folded} constant subexpressions"] if folded else []


def _replace(g: fx.Graph, node: fx.Node, target, args, kwargs=None) -> fx.Node:
    with g.inserting_before(node):
        new = g.call_function(target, tuple(args), kwargs or {})
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    g.erase_node(node)
    return new


@dataclass(frozen=True)
class Rule:
    """A canonical-form rewrite: where ``pattern`` matches a node, ``rewrite(match, node, gm)``
    gives what replaces it: an existing value (an fx.Node), a call ``(aten target, args)``, or
    None to leave the node (a condition the pattern cannot state)."""

    name: str
    pattern: Pattern
    rewrite: Callable[[Match, fx.Node, fx.GraphModule], Optional[Union[fx.Node, tuple]]]


def canonicalize(cap: Captured) -> list[str]:
    """Apply the canonical-form rules (``RULES``, first match wins) until nothing changes."""
    g = cap.gm.graph
    counts: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        ctx = MatchContext(constants=constant_nodes(cap))
        for node in list(g.nodes):
            if node.op != "call_function" or node not in g.nodes:
                continue
            for rule in RULES:
                m, _, _ = match_at(node, rule.pattern, ctx)
                out = None if m is None else rule.rewrite(m, node, cap.gm)
                if out is None:
                    continue
                if isinstance(out, fx.Node):
                    node.replace_all_uses_with(out)
                    g.erase_node(node)
                else:
                    _replace(g, node, *out)
                counts[rule.name] = counts.get(rule.name, 0) + 1
                changed = True
                break
    return [f"{name}: {n}" for name, n in counts.items()]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _constant_arg(gm: fx.GraphModule, node: fx.Node, value):
    """A constant as a call argument: a Python number as is, a tensor as a new constant node."""
    return value if _number(value) else add_constant(gm, node, f"const_{node.name}", torch.as_tensor(value))


def _base_index(idx):
    """The 1-D index behind an expand/broadcast of an unsqueezed/viewed index, or None."""
    while _is(idx, aten.expand, aten.expand_as, aten.broadcast_to):
        idx = idx.args[0]
    while _is(idx, aten.unsqueeze, aten.view, aten.reshape):
        idx = idx.args[0]
    val = idx.meta.get("val") if isinstance(idx, fx.Node) else None
    if val is not None and val.dim() == 1:
        return idx
    return None


def _transposed_weight(w):
    """W if w is W transposed (W 2-D): W.t(), W.T, W.mT, W.permute(1, 0), W.transpose(0, 1)."""
    if _is(w, aten.numpy_T, aten.mT, aten.adjoint):
        val = w.args[0].meta.get("val") if isinstance(w.args[0], fx.Node) else None
        return w.args[0] if val is not None and val.dim() == 2 else None
    if _is(w, aten.t) or (_is(w, aten.permute) and list(w.args[1]) == [1, 0]):
        return w.args[0]
    if _is(w, aten.transpose) and sorted(w.args[1:3]) in ([0, 1], [-2, -1], [-1, 0]):
        return w.args[0]
    return None


def _bias_of(m: Match, node, gm):
    """linear(x, W) + b -> linear(x, W, b) when b is a 1-D bias of W's output size."""
    b, w = m.node("b"), m.node("w")
    bval, wval = b.meta.get("val"), w.meta.get("val")
    if bval is None or wval is None or bval.dim() != 1 or bval.shape[0] != wval.shape[0]:
        return None
    return aten.linear.default, [m["x"], w, b]


_x, _y = Var("x"), Var("y")
_variable = Var("x", constant=False)
_transposed = Var("wt", where=lambda n: _transposed_weight(n) is not None)
_sum, _square, _neg = op(aten.sum), op(aten.square), op(aten.neg)
_index_select, _scatter_add, _addmm, _mm = op(aten.index_select), op(aten.scatter_add), op(aten.addmm), op(aten.mm, aten.matmul)
_identity = op(aten.detach, aten.detach_, aten.lift_fresh_copy, aten.lift_fresh, aten.alias)
_dim, _keepdim = Lit(pred=lambda v: True, name="dim"), Lit(pred=lambda v: True, name="keepdim")

RULES: list[Rule] = [
    # detach / lift_fresh_copy / alias return their input's values: use the input
    Rule("identity", _identity(_x), lambda m, n, gm: m.node("x")),
    Rule("norm", sqrt(_sum(any_of(pow_(_x, 2), mul(_x, _x)), _dim, _keepdim)),
         lambda m, n, gm: (aten.linalg_vector_norm.default, [m["x"], 2, m["dim"], m["keepdim"]])),
    Rule("division", mul(_variable, any_of(reciprocal(_y), pow_(_y, -1))),
         lambda m, n, gm: (aten.div.Tensor, [m["x"], m["y"]])),
    Rule("square", mul(_x, _x), lambda m, n, gm: (aten.pow.Tensor_Scalar, [m["x"], 2])),
    Rule("square op", _square(_x), lambda m, n, gm: (aten.pow.Tensor_Scalar, [m["x"], 2])),
    Rule("multiplication by one", mul(_x, Lit(pred=lambda v: _number(v) and v == 1)), lambda m, n, gm: m.node("x")),
    Rule("negation", _neg(_x), lambda m, n, gm: (aten.mul.Tensor, [m["x"], -1.0])),
    Rule("division by constant", div(_variable, Const("c")),
         lambda m, n, gm: (aten.mul.Tensor, [m["x"], _constant_arg(gm, n, 1.0 / m["c"])])),
    # (x * c1) * c2 -> x * (c1 c2), for constants c1, c2
    Rule("constant scale chain", mul(mul(_variable, Const("c1"), users=1), Const("c2")),
         lambda m, n, gm: (aten.mul.Tensor, [m["x"], _constant_arg(gm, n, m["c1"] * m["c2"])])),
    Rule("gather", _index_select(_x, 0, Var("i")), lambda m, n, gm: (aten.index.Tensor, [m["x"], [m["i"]]])),
    Rule("scatter", _scatter_add(Var("base"), 0, Var("index", where=lambda i: _base_index(i) is not None), Var("src")),
         lambda m, n, gm: (aten.index_add.default, [m["base"], 0, _base_index(m["index"]), m["src"]])),
    Rule("linear", any_of(_addmm(Var("b"), _x, _transposed), _mm(_x, _transposed)),
         lambda m, n, gm: (aten.linear.default,
                           [m["x"], _transposed_weight(m["wt"]), *([m["b"]] if "b" in m else [])])),
    Rule("linear", add(linear(_x, Var("w"), users=1), Var("b")), _bias_of),
]
