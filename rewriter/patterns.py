r"""The physics patterns, one per concept, in canonical aten form (see normalize.py).

    Gaussian RBF   phi = exp(gamma * (d[..., None] - c)^2),   gamma = -1 / (2 w^2)
    Bessel RBF     phi = sin(d[..., None] * f) / where(d == 0, 1, d)[..., None]
    cosine cutoff  fc  = 0.5 * (cos(d * pi / rc) + 1) * (d < rc)
    filter         W   = linear(phi, Wf, bf) * fc[..., None]
    message        dq  = index_add(0, i, split(W_l * x[j])[0])
                   dmu = index_add(0, i, split(W_l * x[j])[1] * u[..., None] + split(W_l * x[j])[2] * mu[j])

Each ``*_constants`` function reads the constants out of a match and checks they describe
the function (e.g. gamma really is -1/(2 w^2) for positive widths, k really is pi / rc);
a near-miss returns None and is reported as not matched.
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from .pattern import (
    Const, Lit, Var, add, any_of, cos, div, eq, exp, getitem, index, index_add, linear, lt, mul, pow_, sin,
    ones_like, split, sub, to_dtype, unsqueeze, where, zeros,
)

d = Var("d")
d_col = unsqueeze(d, Lit(pred=lambda v: v in (-1, 1, 2)))  # d[..., None]

GAUSSIAN_RBF = exp(mul(Const("gamma"), any_of(
    pow_(sub(d_col, Const("centers")), 2),
    pow_(sub(Const("centers"), d_col), 2),
)))

_safe_d = where(eq(d, Lit(pred=lambda v: v == 0)), any_of(Const("one"), ones_like(d, name="one_like")), d)
BESSEL_RBF = div(sin(mul(d_col, Const("freqs"))), unsqueeze(_safe_d, Lit(pred=lambda v: v in (-1, 1, 2))))

_mask = any_of(to_dtype(lt(d, Const("rc")), Var()), lt(d, Const("rc")))
COSINE_CUTOFF = mul(mul(add(cos(mul(d, Const("k"))), Lit(1.0)), Lit(0.5)), _mask)

RADIAL_FILTER = mul(
    linear(Var("phi"), Var("weight"), Var("bias")),
    unsqueeze(Var("fc"), Lit(pred=lambda v: v in (-1, 2))),
)

_xj = index(Var("x"), [Var("idx_j")])
_m = split(mul(Var("w"), _xj), Var("f"), Lit(pred=lambda v: v in (-1, 2)), name="split")
_is_zero_like = zeros(Var())
MESSAGE_SCALAR = index_add(Var("zeros_q"), Lit(0), Var("idx_i"), getitem(_m, 0))
MESSAGE_VECTOR = index_add(
    Var("zeros_mu"), Lit(0), Var("idx_i"),
    add(
        mul(getitem(_m, 1), unsqueeze(Var("u"), Lit(pred=lambda v: v in (-1, 2)))),
        mul(getitem(_m, 2), index(Var("mu"), [Var("idx_j")])),
    ),
)


def _flat(t) -> Optional[torch.Tensor]:
    if not torch.is_tensor(t):
        return None
    return t.detach().reshape(-1).to(torch.float64)


def gaussian_constants(caps) -> Optional[dict]:
    gamma, centers = _flat(caps["gamma"]), _flat(caps["centers"])
    if gamma is None or centers is None or centers.numel() < 1:
        return None
    if gamma.numel() == 1:
        gamma = gamma.expand_as(centers)
    if gamma.shape != centers.shape or not bool((gamma < 0).all()):
        return None
    widths = torch.sqrt(-0.5 / gamma)
    return {"basis": "gaussian", "basis_params": torch.stack([centers, widths]), "n_rbf": centers.numel()}


def bessel_constants(caps) -> Optional[dict]:
    freqs = _flat(caps["freqs"])
    one = caps.get("one", 1.0)
    one = float(one) if not torch.is_tensor(one) else float(one.reshape(-1)[0]) if one.numel() == 1 else None
    if freqs is None or one != 1.0:
        return None
    return {"basis": "bessel", "basis_params": freqs[None], "n_rbf": freqs.numel()}


def cutoff_constants(caps) -> Optional[dict]:
    rc, k = _flat(torch.as_tensor(caps["rc"])), _flat(torch.as_tensor(caps["k"]))
    if rc is None or k is None or rc.numel() != 1 or k.numel() != 1:
        return None
    rc, k = float(rc), float(k)
    if not rc > 0 or not math.isclose(k, math.pi / rc, rel_tol=1e-6):
        return None
    return {"cutoff": rc}
