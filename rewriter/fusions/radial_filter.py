r"""Fusion: radial filter.   linear(phi(d), Wf, bf) * fc(d)[..., None]  ->  fused_radial_filter

phi and fc must be a recognised basis and cutoff of the same distances d. The node stays
in the graph where the filter has consumers besides PaiNN messages; otherwise the message
fusion absorbs it and W is never materialised.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.fx as fx

from ..pattern import Lit, Var, covered_nodes, find_all, linear, mul, unsqueeze
from ..replacements import fused_radial_filter
from ..report import PassResult
from ..state import BasisInfo, CutoffInfo, Replacement, RewriteState

NAME = "radial_filter"


@dataclass
class FilterInfo:
    d: fx.Node
    weight: fx.Node
    bias: fx.Node
    basis: BasisInfo
    cutoff: CutoffInfo


def filters(state: RewriteState) -> dict:
    """The filters this fusion replaced: fused_radial_filter node -> FilterInfo (the message
    fusion folds them into its messages)."""
    return state.found.setdefault(NAME, {})

PATTERN = mul(
    linear(Var("phi"), Var("weight"), Var("bias")),
    unsqueeze(Var("fc"), Lit(pred=lambda v: v in (-1, 2))),
)


def replacement(info: FilterInfo) -> Replacement:
    basis, cutoff = info.basis, info.cutoff

    def fn(d, weight, bias, basis_params):
        return fused_radial_filter(d, weight, bias, basis_params, basis.spec, cutoff.spec, list(cutoff.params))

    return Replacement(fn, [info.d, info.weight, info.bias, basis.params])


def match_radial_filter(state: RewriteState) -> PassResult:
    res = PassResult("match_radial_filter")
    found, missed = find_all(state.graph, PATTERN, state.ctx())
    res.near_misses += [f"filter at {m.root.name}: {m.reason}" for m in missed]
    for m in found:
        root, phi, fc = m.root, m.node("phi"), m.node("fc")
        basis, cut = state.basis.get(phi), state.cutoffs.get(fc)
        if basis is None or cut is None:
            what = "radial basis" if basis is None else "cutoff function"
            res.rejected.append(f"linear * cutoff at {root.name}: its input is not a recognised {what}")
            continue
        if basis.d is not cut.d:
            res.rejected.append(f"filter at {root.name}: basis and cutoff take different distances")
            continue
        info = FilterInfo(basis.d, m.node("weight"), m.node("bias"), basis, cut)
        region = covered_nodes(root, [info.d, info.weight, info.bias])
        repl = replacement(info)
        ok, err, why = state.check(region, [root], repl, f"radial filter at {root.name}")
        if not ok:
            res.rejected.append(f"radial filter at {root.name}: verification failed ({why})")
            continue
        (new,) = state.replace_outputs(repl, [root], "basis_params")
        filters(state)[new] = info
        res.matches.append({"kind": "radial_filter", "node": new.name, "basis": basis.spec, "K": basis.n_rbf,
                            "cutoff": cut.spec, "cutoff_params": list(cut.params), "weight": info.weight.name,
                            "verified_rel_error": f"{err:.1e}", "region": sorted(n.name for n in region)})
    return res


PASSES = [match_radial_filter]
