r"""Mollifier cutoff (schnetpack's MollifierCutoff), parameters (rc, eps):

    m = [d + eps < rc],  x = d m / rc,  g = 1 - x^2
    fc(d)  = exp(1 - 1 / g) m
    fc'(d) = -2 x / (rc g^2) fc

Smooth to all orders at rc (every derivative vanishes there). Model spelling:
exp(1 - 1 / (1 - (d * mask / rc)^2)) * mask with mask = (d + eps < rc).float(); after
normalisation the division by rc is a multiplication by the folded constant 1 / rc.
"""

from __future__ import annotations

import math

import torch

from .spec import CutoffSpec, buffers, scalar


def values(d, params, derivative):
    rc, eps = params
    mask = (d + eps < rc).to(d.dtype)
    x = d * mask / rc
    inv_g = 1.0 / (1.0 - x * x)
    fc = torch.exp(1.0 - inv_g) * mask
    return fc, (-2.0 / rc * x * inv_g * inv_g * fc if derivative else None)


def unfused(d, params):
    rc, eps = params
    mask = (d + eps < rc).to(d.dtype)
    return torch.exp(1.0 - 1.0 / (1.0 - torch.pow(d * mask / rc, 2))) * mask


def pattern(v):
    d = v.Var("d")
    mask = v.any_of(v.cast(v.lt(v.add(d, v.Const("eps")), v.Const("rc")), name="mask"),
                    v.lt(v.add(d, v.Const("eps")), v.Const("rc"), name="mask"))
    x = v.mul(v.mul(d, mask), v.Const("inv_rc"))
    exponent = v.rsub(v.reciprocal(v.rsub(v.pow_(x, 2), 1.0)), 1.0)
    return v.mul(v.exp(exponent), v.Var("mask"))


def read(m):
    """1 / rc must be the reciprocal of the mask's radius, and eps small and non-negative."""
    rc, eps, inv = scalar(m["rc"]), scalar(m["eps"]), scalar(m["inv_rc"])
    if rc is None or eps is None or inv is None or not rc > 0 or not 0 <= eps < rc:
        return None
    if not math.isclose(inv, 1.0 / rc, rel_tol=1e-6):
        return None
    return (rc, eps)


def from_module(module):
    got = buffers(module, "MollifierCutoff", ("cutoff", "eps"))
    return None if got is None else (float(got[0].reshape(-1)[0]), float(got[1].reshape(-1)[0]))


SPEC = CutoffSpec(name="mollifier", kernel_id=1, param_names=("rc", "eps"), values=values, unfused=unfused,
                  pattern=pattern, read=read, from_module=from_module,
                  formula="exp(1 - 1 / (1 - (d / rc)^2)) [d + eps < rc]")
