"""The rewrite passes, in pipeline order. Each takes the ``RewriteState`` and returns a
``PassResult`` saying what it matched, replaced or rejected.

    match_radial_basis        annotate Gaussian / Bessel RBF subgraphs, read centres, widths, freqs
    match_cosine_cutoff       annotate cosine cutoffs, read r_c
    match_radial_filter       linear(RBF) * cutoff -> fused_radial_filter   (verified)
    fold_zero_mu              prove which vector features are zero (the first layer's mu)
    match_message             annotate PaiNN message blocks (gather, products, scatter)
    fuse_filter_into_message  radial filter + its messages -> fused_painn_message per layer (verified)
    eliminate_dead_code       drop what the replacements made unused
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.fx as fx

from . import patterns as P
from .capture import Captured
from .normalize import constant_nodes
from .pattern import MatchContext, covered_nodes, find_all, norm, div, Var, Lit
from .replacements import fused_painn_message, fused_radial_filter
from .report import PassResult
from .verify import compare, evaluate_region, probe_systems, record_values, tolerance

aten = torch.ops.aten


@dataclass
class RewriteState:
    cap: Captured
    backend: str = "auto"
    verify: bool = True
    dtype: torch.dtype = torch.float64
    basis: dict = field(default_factory=dict)  # root node -> constants
    cutoffs: dict = field(default_factory=dict)  # root node -> constants
    filters: dict = field(default_factory=dict)  # fused_radial_filter node -> info
    zeros: set = field(default_factory=set)
    messages: list = field(default_factory=list)
    _envs: Optional[list] = None
    _probe_args: Optional[list] = None
    sabotage: Optional[Callable] = None  # tests: corrupt a replacement to exercise rejection

    @property
    def graph(self) -> fx.Graph:
        return self.cap.gm.graph

    def ctx(self) -> MatchContext:
        return MatchContext(constants=constant_nodes(self.cap))

    def envs(self) -> list:
        if self._envs is None:
            if self._probe_args is None:
                self._probe_args = probe_systems(self.cap)
            self.cap.gm.recompile()
            self._envs = [record_values(self.cap.gm, args) for args in self._probe_args]
        return self._envs

    def changed(self) -> None:
        self._envs = None

    def constant(self, name: str, value: torch.Tensor, anchor: fx.Node) -> fx.Node:
        gm = self.cap.gm
        attr = f"_painnfx_{name}_{anchor.name}"
        gm.register_buffer(attr, value.detach().clone(), persistent=False)
        with self.graph.inserting_before(anchor):
            node = self.graph.get_attr(attr)
        node.meta["painnfx_constant"] = True
        return node

    def check(self, region: list, outputs: list, replacement: Callable[[dict], list]) -> tuple[bool, float, str]:
        """Run region and replacement on every probe's values; (agree, worst error, reason)."""
        if not self.verify:
            return True, float("nan"), "not verified"
        order = {n: k for k, n in enumerate(self.graph.nodes)}
        region = sorted(set(region), key=order.__getitem__)
        rset = set(region)
        inputs = []
        for n in region:
            for a in n.all_input_nodes:
                if a not in rset and a not in inputs:
                    inputs.append(a)
        constants = constant_nodes(self.cap)
        differentiable = [a not in constants and a not in self.zeros for a in inputs]
        worst = 0.0
        for seed, env in enumerate(self.envs()):
            values = [env[a] for a in inputs]

            def region_fn(leaves):
                return evaluate_region(region, outputs, dict(zip(inputs, leaves)))

            def replacement_fn(leaves):
                out = replacement(dict(zip(inputs, leaves)))
                return self.sabotage(out) if self.sabotage else out

            verdict = compare(region_fn, replacement_fn, values, tolerance(self.dtype), seed, differentiable)
            worst = max(worst, verdict.max_rel_error)
            if not verdict.ok:
                return False, worst, verdict.detail
        return True, worst, ""


def _fmt(t: torch.Tensor, n: int = 3) -> str:
    v = t.reshape(-1).tolist()
    head = ", ".join(f"{x:.4g}" for x in v[:n])
    return f"[{head}{', ...' if len(v) > n else ''}] ({len(v)})"


def match_radial_basis(state: RewriteState) -> PassResult:
    res = PassResult("match_radial_basis")
    ctx = state.ctx()
    for kind, pattern, read in (("gaussian", P.GAUSSIAN_RBF, P.gaussian_constants),
                                ("bessel", P.BESSEL_RBF, P.bessel_constants)):
        for caps in find_all(state.graph, pattern, ctx):
            consts = read(caps)
            root = caps["_root"]
            if consts is None:
                res.rejected.append(f"{kind} RBF shape at {root.name}: constants do not describe a {kind} basis")
                continue
            state.basis[root] = dict(consts, d=caps["d"])
            params = consts["basis_params"]
            info = {"kind": f"{kind}_rbf", "node": root.name, "K": consts["n_rbf"]}
            if kind == "gaussian":
                info.update(centers=_fmt(params[0]), widths=_fmt(params[1]))
            else:
                info.update(freqs=_fmt(params[0]))
            res.matches.append(info)
    return res


def match_cosine_cutoff(state: RewriteState) -> PassResult:
    res = PassResult("match_cosine_cutoff")
    for caps in find_all(state.graph, P.COSINE_CUTOFF, state.ctx()):
        consts = P.cutoff_constants(caps)
        root = caps["_root"]
        if consts is None:
            res.rejected.append(f"cosine cutoff shape at {root.name}: pi/rc factor and rc disagree")
            continue
        state.cutoffs[root] = dict(consts, d=caps["d"])
        res.matches.append({"kind": "cosine_cutoff", "node": root.name, "rc": consts["cutoff"]})
    return res


def match_radial_filter(state: RewriteState) -> PassResult:
    res = PassResult("match_radial_filter")
    for caps in find_all(state.graph, P.RADIAL_FILTER, state.ctx()):
        root, phi, fc = caps["_root"], caps["phi"], caps["fc"]
        basis, cut = state.basis.get(phi), state.cutoffs.get(fc)
        if basis is None or cut is None:
            what = "radial basis" if basis is None else "cosine cutoff"
            res.rejected.append(f"linear * cutoff at {root.name}: its input is not a matched {what}")
            continue
        if basis["d"] is not cut["d"]:
            res.rejected.append(f"filter at {root.name}: basis and cutoff take different distances")
            continue
        d, weight, bias = basis["d"], caps["weight"], caps["bias"]
        region = covered_nodes(root, [d, weight, bias])
        bp = basis["basis_params"]

        def replacement(v, d=d, weight=weight, bias=bias, bp=bp, basis=basis, cut=cut):
            return [fused_radial_filter(v[d], v[weight], v[bias], bp, basis["basis"], cut["cutoff"], state.backend)]

        ok, err, why = state.check(region, [root], replacement)
        if not ok:
            res.rejected.append(f"radial filter at {root.name}: verification failed ({why})")
            continue
        bp_node = state.constant("basis_params", bp, root)
        with state.graph.inserting_before(root):
            new = state.graph.call_function(
                fused_radial_filter, (d, weight, bias, bp_node, basis["basis"], cut["cutoff"], state.backend))
        new.meta = dict(root.meta)
        root.replace_all_uses_with(new)
        state.filters[new] = dict(d=d, weight=weight, bias=bias, basis=basis["basis"], basis_params=bp,
                                  cutoff=cut["cutoff"], n_rbf=basis["n_rbf"])
        state.changed()
        res.matches.append({"kind": "radial_filter", "node": new.name, "basis": basis["basis"], "K": basis["n_rbf"],
                            "rc": cut["cutoff"], "weight": weight.name, "verified_rel_error": f"{err:.1e}",
                            "region": sorted(n.name for n in region)})
    return res


_ZERO_MAKERS = {aten.zeros, aten.zeros_like, aten.new_zeros}
_ZERO_PRESERVING = {aten._to_copy, aten.to, aten.index, aten.index_select, aten.clone, aten.view, aten.reshape,
                    aten.expand, aten.contiguous}


def fold_zero_mu(state: RewriteState) -> PassResult:
    """Find tensors that are provably zero (zeros and what gathers/casts/views of zeros give),
    so the first layer's mu_j term can be dropped from its message."""
    res = PassResult("fold_zero_mu")
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


_DIRECTION = div(Var("r"), norm(Var("r"), Lit(2), Var(), Lit(True), name="d"))


def match_message(state: RewriteState) -> PassResult:
    res = PassResult("match_message")
    ctx = state.ctx()
    vectors = {c["_root"]: c for c in find_all(state.graph, P.MESSAGE_VECTOR, ctx)}
    for caps in find_all(state.graph, P.MESSAGE_SCALAR, ctx):
        vec = next((v for v in vectors.values() if v["split"] is caps["split"] and v["idx_i"] is caps["idx_i"]), None)
        if vec is None:
            res.rejected.append(f"scalar message at {caps['_root'].name} has no matching vector message")
            continue
        geo = _DIRECTION.match(vec["u"], ctx, {})
        if geo is None:
            res.rejected.append(f"message at {caps['_root'].name}: direction is not r / |r|")
            continue
        if caps["zeros_q"] not in state.zeros or vec["zeros_mu"] not in state.zeros:
            res.rejected.append(f"message at {caps['_root'].name}: scatter target is not zero")
            continue
        msg = dict(
            dq=caps["_root"], dmu=vec["_root"], w=caps["w"], x=caps["x"], mu=vec["mu"], idx_i=caps["idx_i"],
            idx_j=caps["idx_j"], u=vec["u"], r=geo["r"], d=geo["d"], split=caps["split"], f=caps["f"],
            mu_zero=vec["mu"] in state.zeros, zeros_q=caps["zeros_q"], zeros_mu=vec["zeros_mu"],
        )
        state.messages.append(msg)
        res.matches.append({"kind": "painn_message", "scatter": msg["dq"].name, "F": msg["f"],
                            "mu": "zero (folded)" if msg["mu_zero"] else msg["mu"].name})
    return res


def _filter_slice(state: RewriteState, w: fx.Node):
    """(fused filter node, first row, rows) if w is that filter or a split piece of it."""
    if w in state.filters:
        return w, 0, None
    if w.op == "call_function" and w.target is operator.getitem:
        sp, k = w.args
        if (isinstance(sp, fx.Node) and getattr(sp.target, "overloadpacket", None) in (aten.split, aten.split_with_sizes)
                and sp.args[0] in state.filters and isinstance(sp.args[1], int) and sp.args[2] in (-1, 2)):
            size = sp.args[1]
            return sp.args[0], k * size, size
    return None


def fuse_filter_into_message(state: RewriteState) -> PassResult:
    res = PassResult("fuse_filter_into_message")
    by_filter: dict = {}
    for msg in state.messages:
        found = _filter_slice(state, msg["w"])
        if found is None:
            res.rejected.append(f"message at {msg['dq'].name}: its filter is not a fused radial filter")
            continue
        by_filter.setdefault(found[0], []).append((msg, found[1], found[2]))
    for rf, items in by_filter.items():
        info = state.filters[rf]
        inside = set()
        for msg, _, _ in items:
            stops = [msg["x"], msg["mu"], msg["idx_i"], msg["idx_j"], msg["u"], msg["w"], msg["zeros_q"], msg["zeros_mu"]]
            inside.update(covered_nodes(msg["dq"], stops) + covered_nodes(msg["dmu"], stops))
        pieces = {m["w"] for m, _, _ in items if m["w"] is not rf}
        outside = [u for u in rf.users if u not in inside and not all(g in pieces for g in u.users)]
        outside += [u for w in pieces for u in w.users if u not in inside]
        if outside:
            res.rejected.append(f"filter {rf.name} has consumers besides messages ({[u.name for u in outside]}); kept unfused")
            continue
        for msg, _, _ in items:
            if msg["d"] is not info["d"]:
                res.rejected.append(f"message at {msg['dq'].name}: filter distance differs from |r|")
                break
        else:
            _fuse_group(state, rf, info, items, res)
    return res


def _fuse_group(state, rf, info, items, res):
    for layer, (msg, row0, rows) in enumerate(items):
        f3 = 3 * msg["f"] if isinstance(msg["f"], int) else None
        rows = rows or f3
        if rows != f3:
            res.rejected.append(f"message at {msg['dq'].name}: filter slice of {rows} rows for 3F = {f3}")
            return
        stops = [msg["x"], msg["mu"], msg["idx_i"], msg["idx_j"], msg["u"], msg["w"], msg["zeros_q"], msg["zeros_mu"]]
        region = covered_nodes(msg["dq"], stops) + covered_nodes(msg["dmu"], stops)
        region += covered_nodes(msg["w"], [info["d"], info["weight"], info["bias"]])
        region += [msg["u"], msg["d"]]
        bp, basis, rc = info["basis_params"], info["basis"], info["cutoff"]
        mu_zero = msg["mu_zero"]

        def replacement(v, msg=msg, row0=row0, rows=rows):
            w = v[info["weight"]][row0:row0 + rows]
            b = v[info["bias"]][row0:row0 + rows]
            dq, dmu = fused_painn_message(v[msg["r"]], v[msg["idx_i"]], v[msg["idx_j"]], v[msg["x"]],
                                          None if mu_zero else v[msg["mu"]], w, b, bp, basis, rc, state.backend)
            return [dq, dmu]

        ok, err, why = state.check(region, [msg["dq"], msg["dmu"]], replacement)
        if not ok:
            res.rejected.append(f"message at {msg['dq'].name}: verification failed ({why})")
            continue
        g = state.graph
        order = {n: k for k, n in enumerate(g.nodes)}
        first = min((msg["dq"], msg["dmu"]), key=order.__getitem__)
        bp_node = state.constant("basis_params", bp, first)
        with g.inserting_before(first):
            w = g.call_function(aten.slice.Tensor, (info["weight"], 0, row0, row0 + rows))
            b = g.call_function(aten.slice.Tensor, (info["bias"], 0, row0, row0 + rows))
            fused = g.call_function(fused_painn_message, (
                msg["r"], msg["idx_i"], msg["idx_j"], msg["x"], None if mu_zero else msg["mu"], w, b, bp_node,
                basis, rc, state.backend))
            dq = g.call_function(operator.getitem, (fused, 0))
            dmu = g.call_function(operator.getitem, (fused, 1))
        dq.meta, dmu.meta = dict(msg["dq"].meta), dict(msg["dmu"].meta)
        msg["dq"].replace_all_uses_with(dq)
        msg["dmu"].replace_all_uses_with(dmu)
        state.changed()
        res.matches.append({"kind": "fused_painn_message", "node": fused.name, "layer_rows": f"{row0}:{row0 + rows}",
                            "mu": "None (folded zero)" if mu_zero else msg["mu"].name,
                            "verified_rel_error": f"{err:.1e}",
                            "region": sorted(n.name for n in set(region) if n.target is not fused_radial_filter)})
        if mu_zero:
            res.lines.append(f"{fused.name}: mu is provably zero, the mu_j term is folded away")


def eliminate_dead_code(state: RewriteState) -> PassResult:
    before = len(state.graph.nodes)
    state.graph.eliminate_dead_code()
    removed = before - len(state.graph.nodes)
    for name, _ in list(state.cap.gm.named_buffers()):
        if name.startswith("_painnfx_") and not any(n.op == "get_attr" and n.target == name for n in state.graph.nodes):
            delattr(state.cap.gm, name)
    state.changed()
    return PassResult("eliminate_dead_code", lines=[f"removed {removed} nodes"])
