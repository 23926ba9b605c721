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
"""

from __future__ import annotations

import operator
from typing import Callable

import torch
import torch.fx as fx

from .capture import Captured

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


def constant_nodes(cap: Captured) -> dict:
    """fx.Node -> value for buffer/constant placeholders and folded get_attr constants."""
    out = {}
    for node in cap.gm.graph.nodes:
        if node.op == "placeholder" and node.name in cap.constants:
            out[node] = cap.constants[node.name]
        elif node.op == "get_attr" and node.meta.get("painnfx_constant"):
            out[node] = getattr(cap.gm, node.target)
    return out


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


def _scalar(a):
    return isinstance(a, (int, float)) and not isinstance(a, bool)


def canonicalize(cap: Captured) -> list[str]:
    """Apply the canonical-form rewrites until nothing changes."""
    g = cap.gm.graph
    counts: dict[str, int] = {}
    changed = True
    while changed:
        changed = False
        consts = constant_nodes(cap)
        for node in list(g.nodes):
            if node.op != "call_function" or node not in g.nodes:
                continue
            for name, rule in _RULES:
                if rule(g, node, consts):
                    counts[name] = counts.get(name, 0) + 1
                    changed = True
                    break
    return [f"{name}: {n}" for name, n in counts.items()]


def _rule_norm(g, node, consts):
    if not _is(node, aten.sqrt):
        return False
    s = node.args[0]
    if not _is(s, aten.sum) or len(s.args) < 2:
        return False
    sq = s.args[0]
    if _is(sq, aten.pow) and sq.args[1] == 2:
        x = sq.args[0]
    elif _is(sq, aten.mul) and sq.args[0] is sq.args[1]:
        x = sq.args[0]
    else:
        return False
    keepdim = s.args[2] if len(s.args) > 2 else s.kwargs.get("keepdim", False)
    _replace(g, node, aten.linalg_vector_norm.default, [x, 2, s.args[1], keepdim])
    return True


def _rule_reciprocal(g, node, consts):
    if not _is(node, aten.mul):
        return False
    a, b = node.args[:2]
    for x, y in ((a, b), (b, a)):
        if not isinstance(x, fx.Node) or x in consts:
            continue
        if _is(y, aten.reciprocal):
            _replace(g, node, aten.div.Tensor, [x, y.args[0]])
            return True
        if _is(y, aten.pow) and y.args[1] == -1:
            _replace(g, node, aten.div.Tensor, [x, y.args[0]])
            return True
    return False


def _rule_square(g, node, consts):
    if _is(node, aten.mul) and node.args[0] is node.args[1] and isinstance(node.args[0], fx.Node):
        _replace(g, node, aten.pow.Tensor_Scalar, [node.args[0], 2])
        return True
    return False


def _rule_square_op(g, node, consts):
    if _is(node, aten.square):
        _replace(g, node, aten.pow.Tensor_Scalar, [node.args[0], 2])
        return True
    return False


def _rule_mul_one(g, node, consts):
    if _is(node, aten.mul) and len(node.args) == 2:
        for x, c in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if isinstance(x, fx.Node) and _scalar(c) and c == 1:
                node.replace_all_uses_with(x)
                g.erase_node(node)
                return True
    return False


def _rule_neg(g, node, consts):
    if _is(node, aten.neg):
        _replace(g, node, aten.mul.Tensor, [node.args[0], -1.0])
        return True
    return False


def _const_value(a, consts):
    if _scalar(a):
        return a
    if isinstance(a, fx.Node) and a in consts:
        return consts[a]
    return None


def _rule_div_by_constant(g, node, consts):
    if not _is(node, aten.div) or len(node.args) != 2 or node.kwargs.get("rounding_mode"):
        return False
    x, c = node.args
    value = _const_value(c, consts)
    if value is None or _const_value(x, consts) is not None:
        return False
    inv = 1.0 / value
    _replace(g, node, aten.mul.Tensor, [x, inv if _scalar(inv) else add_constant(g.owning_module, node, f"const_{node.name}", inv)])
    return True


def _rule_scale_chain(g, node, consts):
    """(x * c1) * c2 -> x * (c1 c2), for constants c1, c2."""
    if not _is(node, aten.mul):
        return False
    for inner, c2 in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
        v2 = _const_value(c2, consts)
        if v2 is None or not _is(inner, aten.mul) or len(inner.users) != 1:
            continue
        for x, c1 in ((inner.args[0], inner.args[1]), (inner.args[1], inner.args[0])):
            v1 = _const_value(c1, consts)
            if v1 is None or _const_value(x, consts) is not None:
                continue
            prod = v1 * v2
            c = prod if _scalar(prod) else add_constant(g.owning_module, node, f"const_{node.name}", torch.as_tensor(prod))
            _replace(g, node, aten.mul.Tensor, [x, c])
            return True
    return False


def _rule_index_select(g, node, consts):
    if _is(node, aten.index_select) and node.args[1] == 0:
        _replace(g, node, aten.index.Tensor, [node.args[0], [node.args[2]]])
        return True
    return False


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


def _rule_scatter_add(g, node, consts):
    if not _is(node, aten.scatter_add) or node.args[1] != 0:
        return False
    base, index, src = node.args[0], node.args[2], node.args[3]
    idx = _base_index(index)
    if idx is None:
        return False
    _replace(g, node, aten.index_add.default, [base, 0, idx, src])
    return True


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


def _rule_linear(g, node, consts):
    if _is(node, aten.addmm) and len(node.args) == 3 and not node.kwargs:
        w = _transposed_weight(node.args[2])
        if w is not None:
            _replace(g, node, aten.linear.default, [node.args[1], w, node.args[0]])
            return True
    if _is(node, aten.matmul, aten.mm):
        w = _transposed_weight(node.args[1])
        if w is not None:
            _replace(g, node, aten.linear.default, [node.args[0], w])
            return True
    if _is(node, aten.add) and len(node.args) == 2:
        for lin, b in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if _is(lin, aten.linear) and len(lin.args) == 2 and len(lin.users) == 1 and isinstance(b, fx.Node):
                bval, wval = b.meta.get("val"), lin.args[1].meta.get("val")
                if bval is not None and wval is not None and bval.dim() == 1 and bval.shape[0] == wval.shape[0]:
                    _replace(g, node, aten.linear.default, [lin.args[0], lin.args[1], b])
                    return True
    return False


_IDENTITIES = {aten.detach, aten.detach_, aten.lift_fresh_copy, aten.lift_fresh, aten.alias}


def _rule_identity(g, node, consts):
    """detach / lift_fresh_copy / alias return their input's values: use the input."""
    if node.op == "call_function" and _packet(node.target) in _IDENTITIES and isinstance(node.args[0], fx.Node):
        node.replace_all_uses_with(node.args[0])
        g.erase_node(node)
        return True
    return False


_RULES: list[tuple[str, Callable]] = [
    ("identity", _rule_identity),
    ("norm", _rule_norm),
    ("division", _rule_reciprocal),
    ("square", _rule_square),
    ("square op", _rule_square_op),
    ("multiplication by one", _rule_mul_one),
    ("negation", _rule_neg),
    ("division by constant", _rule_div_by_constant),
    ("constant scale chain", _rule_scale_chain),
    ("gather", _rule_index_select),
    ("scatter", _rule_scatter_add),
    ("linear", _rule_linear),
]
