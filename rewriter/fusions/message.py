r"""Fusion: PaiNN message (with its radial filter).

    dq  = index_add(0, i, split(W_l * x[j])[0])
    dmu = index_add(0, i, split(W_l * x[j])[1] * u[..., None] + split(W_l * x[j])[2] * mu[j])
    u   = r / |r|,   W_l = a fused radial filter or its layer slice

-> one ``fused_painn_message`` per layer, fed by one ``edge_plan`` (``prepare_edges``) per
edge list. Passes, in order:

    find_zero_mu              prove which vector features are zero (the first layer's mu)
    match_message             annotate message blocks (gather, products, scatter)
    fuse_filter_into_message  filter + its messages -> fused_painn_message per layer (verified)
    share_edge_plans          one edge plan per edge list, not per layer
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
import torch.fx as fx

from ..pattern import (
    Lit, Var, add, covered_nodes, div, find_all, getitem, index, index_add, mul, norm, split, unsqueeze,
)
from ..replacements import edge_plan, fused_painn_message, fused_radial_filter
from ..report import PassResult
from ..state import Replacement, RewriteState
from .radial_filter import FilterInfo, filters

NAME = "painn_message"


@dataclass
class MessageInfo:
    dq: fx.Node
    dmu: fx.Node
    w: fx.Node
    x: fx.Node
    mu: fx.Node
    idx_i: fx.Node
    idx_j: fx.Node
    u: fx.Node
    r: fx.Node
    d: fx.Node
    f: int
    mu_zero: bool
    region: list  # the gather-product-scatter nodes between the inputs and the two scatters


def messages(state: RewriteState) -> list:
    """The messages ``match_message`` found, for ``fuse_filter_into_message``."""
    return state.found.setdefault(NAME, [])

aten = torch.ops.aten

_last = Lit(pred=lambda v: v in (-1, 2))
_m = split(mul(Var("w"), index(Var("x"), [Var("idx_j")])), Lit(name="f", pred=lambda v: isinstance(v, int)), _last,
           name="split")
MESSAGE_SCALAR = index_add(Var("zeros_q"), 0, Var("idx_i"), getitem(_m, 0))
MESSAGE_VECTOR = index_add(
    Var("zeros_mu"), 0, Var("idx_i"),
    add(mul(getitem(_m, 1), unsqueeze(Var("u"), _last)), mul(getitem(_m, 2), index(Var("mu"), [Var("idx_j")]))),
)
DIRECTION = div(Var("r"), norm(Var("r"), 2, Lit(pred=lambda v: list(v) in ([1], [-1])), True, name="d"))

_ZERO_MAKERS = {aten.zeros, aten.zeros_like, aten.new_zeros}
_ZERO_PRESERVING = {aten._to_copy, aten.to, aten.index, aten.index_select, aten.clone, aten.view, aten.reshape,
                    aten.expand, aten.contiguous}


def find_zero_mu(state: RewriteState) -> PassResult:
    """Find tensors that are provably zero (zeros and what gathers/casts/views of zeros give),
    so the first layer's mu_j term can be dropped from its message."""
    res = PassResult("find_zero_mu")
    for node in state.graph.nodes:
        if node.op != "call_function":
            continue
        packet = getattr(node.target, "overloadpacket", None)
        if packet in _ZERO_MAKERS or (packet is aten.full and len(node.args) > 1 and node.args[1] == 0):
            state.zeros.add(node)
        elif packet in _ZERO_PRESERVING and node.args and node.args[0] in state.zeros:
            state.zeros.add(node)
    if state.zeros:
        res.lines.append(f"provably zero: {sorted(n.name for n in state.zeros)}")
    return res


def match_message(state: RewriteState) -> PassResult:
    res = PassResult("match_message")
    ctx = state.ctx()
    vectors, missed_v = find_all(state.graph, MESSAGE_VECTOR, ctx)
    scalars, missed_s = find_all(state.graph, MESSAGE_SCALAR, ctx)
    res.near_misses += [f"message scatter at {m.root.name}: {m.reason}" for m in missed_s + missed_v]
    for s in scalars:
        v = next((v for v in vectors if v["split"] is s["split"] and v["idx_i"] is s["idx_i"]), None)
        name = s.root.name
        if v is None:
            res.rejected.append(f"scalar message at {name} has no matching vector message")
            continue
        geo = DIRECTION.matches(v["u"], ctx, {}, 0)
        geo = next(iter(geo), None)
        if geo is None:
            res.rejected.append(f"message at {name}: direction is not r / |r| ({ctx.reason})")
            continue
        if s["zeros_q"] not in state.zeros or v["zeros_mu"] not in state.zeros:
            res.rejected.append(f"message at {name}: scatter target is not zero")
            continue
        stops = [s["x"], v["mu"], s["idx_i"], s["idx_j"], v["u"], s["w"], s["zeros_q"], v["zeros_mu"]]
        msg = MessageInfo(dq=s.root, dmu=v.root, w=s["w"], x=s["x"], mu=v["mu"], idx_i=s["idx_i"], idx_j=s["idx_j"],
                          u=v["u"], r=geo["r"].value, d=geo["d"].value, f=s["f"], mu_zero=v["mu"] in state.zeros,
                          region=covered_nodes(s.root, stops) + covered_nodes(v.root, stops))
        messages(state).append(msg)
        res.matches.append({"kind": "painn_message", "scatter": name, "F": msg.f,
                            "mu": "zero (folded)" if msg.mu_zero else msg.mu.name})
    return res


def _filter_slice(state: RewriteState, w: fx.Node):
    """(fused filter node, first row, rows) if w is that filter or a split piece of it."""
    if w in filters(state):
        return w, 0, None
    if w.op == "call_function" and w.target is operator.getitem:
        sp, k = w.args
        if (isinstance(sp, fx.Node) and getattr(sp.target, "overloadpacket", None) in (aten.split, aten.split_with_sizes)
                and sp.args[0] in filters(state) and isinstance(sp.args[1], int) and sp.args[2] in (-1, 2)):
            size = sp.args[1]
            return sp.args[0], k * size, size
    return None


def replacement(msg: MessageInfo, info: FilterInfo, row0: int, rows: int) -> Replacement:
    basis, cut = info.basis, info.cutoff
    consts = (basis.spec, cut.spec, list(cut.params))
    if msg.mu_zero:
        def fn(r, idx_i, idx_j, x, weight, bias, basis_params):
            edges = edge_plan(r, idx_i, idx_j, x)
            out = fused_painn_message(r, idx_i, idx_j, edges, x, None, weight[row0:row0 + rows],
                                      bias[row0:row0 + rows], basis_params, *consts)
            return out[0], out[1]

        return Replacement(fn, [msg.r, msg.idx_i, msg.idx_j, msg.x, info.weight, info.bias, basis.params])

    def fn(r, idx_i, idx_j, x, mu, weight, bias, basis_params):
        edges = edge_plan(r, idx_i, idx_j, x)
        out = fused_painn_message(r, idx_i, idx_j, edges, x, mu, weight[row0:row0 + rows], bias[row0:row0 + rows],
                                  basis_params, *consts)
        return out[0], out[1]

    return Replacement(fn, [msg.r, msg.idx_i, msg.idx_j, msg.x, msg.mu, info.weight, info.bias, basis.params])


def fuse_filter_into_message(state: RewriteState) -> PassResult:
    res = PassResult("fuse_filter_into_message")
    by_filter: dict = {}
    for msg in messages(state):
        found = _filter_slice(state, msg.w)
        if found is None:
            res.rejected.append(f"message at {msg.dq.name}: its filter is not a fused radial filter")
            continue
        by_filter.setdefault(found[0], []).append((msg, found[1], found[2]))
    for rf, items in by_filter.items():
        info = filters(state)[rf]
        inside = {n for msg, _, _ in items for n in msg.region}
        pieces = {m.w for m, _, _ in items if m.w is not rf}
        outside = [u for u in rf.users if u not in inside and not all(g in pieces for g in u.users)]
        outside += [u for w in pieces for u in w.users if u not in inside]
        if outside:
            res.rejected.append(f"filter {rf.name} has consumers besides messages ({[u.name for u in outside]}); "
                                "kept unfused")
            continue
        bad = next((msg for msg, _, _ in items if msg.d is not info.d), None)
        if bad is not None:
            res.rejected.append(f"message at {bad.dq.name}: filter distance differs from |r|")
            continue
        _fuse_group(state, info, items, res)
    return res


def _fuse_group(state: RewriteState, info: FilterInfo, items, res: PassResult) -> None:
    for msg, row0, rows in items:
        f3 = 3 * msg.f
        rows = rows or f3
        if rows != f3:
            res.rejected.append(f"message at {msg.dq.name}: filter slice of {rows} rows for 3F = {f3}")
            return
        region = msg.region + covered_nodes(msg.w, [info.d, info.weight, info.bias]) + [msg.u, msg.d]
        repl = replacement(msg, info, row0, rows)
        ok, err, why = state.check(region, [msg.dq, msg.dmu], repl, f"fused_painn_message at {msg.dq.name}")
        if not ok:
            res.rejected.append(f"message at {msg.dq.name}: verification failed ({why})")
            continue
        dq, _ = state.replace_outputs(repl, [msg.dq, msg.dmu], "basis_params")
        fused = dq.args[0]
        res.matches.append({"kind": "fused_painn_message", "node": fused.name, "layer_rows": f"{row0}:{row0 + rows}",
                            "mu": "None (folded zero)" if msg.mu_zero else msg.mu.name,
                            "verified_rel_error": f"{err:.1e}",
                            "region": sorted(n.name for n in set(region) if n.target is not fused_radial_filter)})
        if msg.mu_zero:
            res.lines.append(f"{fused.name}: mu is provably zero, the mu_j term is folded away")


def share_edge_plans(state: RewriteState) -> PassResult:
    """Every layer's replacement prepared its own edges (so each was verified whole); the plans
    of one edge list (same r, idx_i, idx_j: the atom count is the same for every layer) are
    merged into the first, so edges are sorted once per evaluation."""
    res = PassResult("share_edge_plans")
    first: dict = {}
    merged = 0
    for node in list(state.graph.nodes):
        if node.op != "call_function" or node.target is not edge_plan:
            continue
        key = tuple(node.args[:3])
        if key in first:
            node.replace_all_uses_with(first[key])
            state.graph.erase_node(node)
            merged += 1
        else:
            first[key] = node
    if first:
        res.lines.append(f"{len(first)} edge plan(s) shared by all layers ({merged} merged)")
    state.changed()
    return res


PASSES = [find_zero_mu, match_message, fuse_filter_into_message, share_edge_plans]
