"""Recognise radial bases and cutoff functions: one pass each, over the spec registry
(``painnfx.ops.radial``). A spec's pattern finds the subgraph; its ``read`` checks that the
constants describe the function (a near miss with the same shape but other maths is
reported, not fused). Matches annotate the state for the filter fusion."""

from __future__ import annotations

import sys

from painnfx.ops.radial import BASES, CUTOFFS

from .pattern import find_all
from .report import PassResult
from .state import BasisInfo, CutoffInfo, RewriteState

#: the pattern vocabulary handed to the specs (they import nothing from this layer)
VOCABULARY = sys.modules[__package__ + ".pattern"]


def _fmt(t, n: int = 3) -> str:
    v = t.reshape(-1).tolist() if hasattr(t, "reshape") else list(t)
    head = ", ".join(f"{x:.4g}" for x in v[:n])
    return f"[{head}{', ...' if len(v) > n else ''}] ({len(v)})"


def match_radial_basis(state: RewriteState) -> PassResult:
    res = PassResult("match_radial_basis")
    ctx = state.ctx()
    for spec in BASES.values():
        found, missed = find_all(state.graph, spec.pattern(VOCABULARY), ctx)
        res.near_misses += [f"{spec.name} basis at {m.root.name}: {m.reason}" for m in missed]
        for m in found:
            params = spec.read(m)
            if params is None:
                res.rejected.append(f"{spec.name} RBF shape at {m.root.name}: constants do not describe "
                                    f"{spec.formula}")
                continue
            state.basis[m.root] = BasisInfo(spec.name, params, m.node("d"))
            info = {"kind": f"{spec.name}_rbf", "node": m.root.name, "K": params.shape[1]}
            info.update({row: _fmt(params[k]) for k, row in enumerate(spec.param_rows)})
            res.matches.append(info)
    return res


def match_cutoff(state: RewriteState) -> PassResult:
    res = PassResult("match_cutoff")
    ctx = state.ctx()
    for spec in CUTOFFS.values():
        found, missed = find_all(state.graph, spec.pattern(VOCABULARY), ctx)
        res.near_misses += [f"{spec.name} cutoff at {m.root.name}: {m.reason}" for m in missed]
        for m in found:
            params = spec.read(m)
            if params is None:
                res.rejected.append(f"{spec.name} cutoff shape at {m.root.name}: constants do not describe "
                                    f"{spec.formula}")
                continue
            state.cutoffs[m.root] = CutoffInfo(spec.name, params, m.node("d"))
            res.matches.append({"kind": f"{spec.name}_cutoff", "node": m.root.name,
                                **dict(zip(spec.param_names, params))})
    return res
