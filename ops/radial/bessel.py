r"""Sine ("0th-order Bessel") radial basis  phi_k(d) = sin(f_k d) / d  (d = 0: sin(f_k d) = 0).

    phi_k' = (x cos x - sin x) / d^2 = f_k^3 d h(x),   x = f_k d,   h(x) = (x cos x - sin x) / x^3

which cancels catastrophically for small x: below x = 0.05 h is taken from its series
(-1/3 + x^2/30 - x^4/840 + x^6/45360), more accurate than autograd of the plain expression.
basis_params rows: freqs f. Model spelling (schnetpack's BesselRBF):
sin(d[..., None] * freqs) / where(d == 0, 1, d)[..., None].
"""

from __future__ import annotations

import torch

from .spec import BasisSpec, buffers, flat, scalar


def values(d, p, derivative):
    freqs = p[0]
    ax = d[:, None] * freqs
    safe = torch.where(d == 0, torch.ones_like(d), d)[:, None]
    phi = torch.sin(ax) / safe
    if not derivative:
        return phi, None
    direct = (freqs * torch.cos(ax) - phi) / safe
    x2 = ax * ax
    series = freqs**3 * d[:, None] * (-1.0 / 3 + x2 * (1.0 / 30 + x2 * (-1.0 / 840 + x2 / 45360)))
    return phi, torch.where(ax.abs() < 0.05, series, direct)


def unfused(d, p):
    norm = torch.where(d == 0, torch.ones_like(d), d)
    return torch.sin(d[:, None] * p[0]) / norm[:, None]


def pattern(v):
    d = v.Var("d")
    dim = v.Lit(pred=lambda a: a in (-1, 1, 2))
    safe_d = v.where(v.eq(d, v.Lit(pred=lambda a: a == 0)), v.any_of(v.Const("one"), v.ones_like(d)), d)
    return v.div(v.sin(v.mul(v.unsqueeze(d, dim), v.Const("freqs"))), v.unsqueeze(safe_d, dim))


def read(m):
    """The d = 0 guard must divide by exactly 1."""
    freqs = flat(m["freqs"])
    one = scalar(m["one"]) if "one" in m else 1.0
    if freqs is None or one != 1.0:
        return None
    return freqs[None]


def from_module(module):
    got = buffers(module, "BesselRBF", ("freqs",))
    return None if got is None else got[0].reshape(1, -1)


SPEC = BasisSpec(name="bessel", kernel_id=1, param_rows=("freqs",), values=values, unfused=unfused,
                 pattern=pattern, read=read, from_module=from_module, formula="sin(f_k d) / d")
