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


def _recognise(state: RewriteState, res: PassResult, registry: dict, kind: str, store: dict, info) -> PassResult:
    """Find every spec of ``registry`` in the graph, read and check its constants, and record
    ``info(spec, params, d)`` in ``store`` under the matched node."""
    ctx = state.ctx()
    for spec in registry.values():
        found, missed = find_all(state.graph, spec.pattern(VOCABULARY), ctx)
        res.near_misses += [f"{spec.name} {kind} at {m.root.name}: {m.reason}" for m in missed]
        for m in found:
            params = spec.read(m)
            if params is None:
                res.rejected.append(f"{spec.name} {kind} shape at {m.root.name}: constants do not describe "
                                    f"{spec.formula}")
                continue
            store[m.root] = info(spec, params, m.node("d"))
            res.matches.append(_describe(spec, kind, m.root.name, params))
    return res


def _describe(spec, kind: str, node: str, params) -> dict:
    if kind == "RBF":
        out = {"kind": f"{spec.name}_rbf", "node": node, "K": params.shape[1]}
        out.update({row: _fmt(params[k]) for k, row in enumerate(spec.param_rows)})
        return out
    return {"kind": f"{spec.name}_cutoff", "node": node, **dict(zip(spec.param_names, params))}


def match_radial_basis(state: RewriteState) -> PassResult:
    return _recognise(state, PassResult("match_radial_basis"), BASES, "RBF", state.basis,
                      lambda spec, params, d: BasisInfo(spec.name, params, d))


def match_cutoff(state: RewriteState) -> PassResult:
    return _recognise(state, PassResult("match_cutoff"), CUTOFFS, "cutoff", state.cutoffs,
                      lambda spec, params, d: CutoffInfo(spec.name, params, d))
