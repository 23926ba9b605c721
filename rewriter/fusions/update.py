r"""Fusion: PaiNN update (mixing) block.

    V, W = split(linear(mu, U), F)            a, b, c = split(linear(silu(linear(cat[q, |V|], W1, b1)), W2, b2), F)
    |V|  = sqrt(sum(V ** 2, vector axis) + eps)
    q'   = q + a + c * sum(V * W, vector axis)
    mu'  = mu + b * W                          (absent after the last layer: nothing reads it)

-> one ``fused_painn_update`` per layer (verified). painnfx's and schnetpack's PaiNNMixing spell
it the same way at the aten level; the vector axis may be written 1 or -2, the feature axis -1
or 2, V ** 2 as V * V, and additions and products in either order.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Optional

import torch
import torch.fx as fx

from painnfx.ops.update import update

from ..pattern import Lit, Var, add, any_of, cat, covered_nodes, find_all, getitem, linear, match_at, mul, pow_, silu, \
    split, sqrt, sum_
from ..report import PassResult
from ..state import Replacement, RewriteState

NAME = "painn_update"

_features = Lit(pred=lambda v: v in (-1, 2))
_vector_axis = Lit(pred=lambda v: isinstance(v, (list, tuple)) and list(v) in ([1], [-2]))
_vw = split(linear(Var("mu"), Var("mix_weight")), Lit(name="f", pred=lambda v: isinstance(v, int)), _features,
            name="vw")
_v, _w = getitem(_vw, 0), getitem(_vw, 1)
_norm = sqrt(add(sum_(any_of(pow_(_v, 2), mul(_v, _v)), _vector_axis, True),
                 Lit(name="epsilon", pred=lambda v: isinstance(v, float) and v >= 0)))
_x = split(linear(silu(linear(cat([Var("q"), _norm], _features), Var("w1"), Var("b1"))), Var("w2"), Var("b2")),
           Lit(name="f2", pred=lambda v: isinstance(v, int)), _features, name="x")
Q_OUT = add(add(Var("q"), getitem(_x, 0)), mul(getitem(_x, 2), sum_(mul(_v, _w), _vector_axis, True)))
MU_OUT = add(Var("mu_in"), mul(getitem(Var("x_split"), 1), getitem(Var("vw_split"), 1)))


def fused_painn_update(q: torch.Tensor, mu: torch.Tensor, mix_weight: torch.Tensor, w1: torch.Tensor,
                       b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor, epsilon: float):
    """(q', mu') of one update block; q keeps its shape ((N, 1, F) in both PaiNN spellings)."""
    n, f = mu.shape[0], mu.shape[-1]
    q_out, mu_out = update(q.reshape(n, f), mu, mix_weight, w1, b1, w2, b2, epsilon)
    return q_out.reshape(q.shape), mu_out


@dataclass
class UpdateInfo:
    q: fx.Node
    mu: fx.Node
    weights: list  # U, W1, b1, W2, b2
    epsilon: float
    q_out: fx.Node
    mu_out: Optional[fx.Node]


def _mu_output(m, ctx) -> Optional[fx.Node]:
    """The node mu + b * W of this block, if anything reads mu' (not after the last layer)."""
    for g in m["x"].users:
        if g.target is not operator.getitem or g.args[1] != 1:
            continue
        for prod in g.users:
            for out in prod.users:
                found, _, _ = match_at(out, MU_OUT, ctx)
                if found is not None and found["mu_in"] is m["mu"] and found["x_split"] is m["x"] \
                        and found["vw_split"] is m["vw"]:
                    return out
    return None


def replacement(info: UpdateInfo) -> Replacement:
    eps = info.epsilon
    if info.mu_out is None:  # the last layer: only q' is read
        def fn(q, mu, mix_weight, w1, b1, w2, b2):
            return fused_painn_update(q, mu, mix_weight, w1, b1, w2, b2, eps)[0]

        return Replacement(fn, [info.q, info.mu, *info.weights])

    def fn(q, mu, mix_weight, w1, b1, w2, b2):
        out = fused_painn_update(q, mu, mix_weight, w1, b1, w2, b2, eps)
        return out[0], out[1]

    return Replacement(fn, [info.q, info.mu, *info.weights])


def fuse_update(state: RewriteState) -> PassResult:
    res = PassResult("fuse_update")
    ctx = state.ctx()
    found, missed = find_all(state.graph, Q_OUT, ctx)
    res.near_misses += [f"update block at {m.root.name}: {m.reason}" for m in missed]
    for m in found:
        name = m.root.name
        if m["f"] != m["f2"]:
            res.rejected.append(f"update block at {name}: V/W split {m['f']} and context split {m['f2']} differ")
            continue
        info = UpdateInfo(m["q"], m["mu"], [m[k] for k in ("mix_weight", "w1", "b1", "w2", "b2")], m["epsilon"],
                          m.root, _mu_output(m, ctx))
        outputs = [info.q_out] + ([info.mu_out] if info.mu_out is not None else [])
        stops = [info.q, info.mu, *info.weights]
        region = list(dict.fromkeys(n for out in outputs for n in covered_nodes(out, stops)))
        inside = set(region)
        leaked = [n.name for n in region if n not in outputs and any(u not in inside for u in n.users)]
        if leaked:
            res.rejected.append(f"update block at {name}: intermediate values read elsewhere ({leaked})")
            continue
        repl = replacement(info)
        ok, err, why = state.check(region, outputs, repl, f"fused_painn_update at {name}")
        if not ok:
            res.rejected.append(f"update block at {name}: verification failed ({why})")
            continue
        new_nodes = state.replace_outputs(repl, outputs, "update")
        res.matches.append({"kind": "fused_painn_update", "node": new_nodes[0].args[0].name, "F": m["f"],
                            "mu_out": info.mu_out.name if info.mu_out is not None else "unused (last layer)",
                            "verified_rel_error": f"{err:.1e}", "region": sorted(n.name for n in region)})
    return res


PASSES = [fuse_update]
