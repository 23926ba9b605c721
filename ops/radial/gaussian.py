r"""Gaussian radial basis  phi_k(d) = exp(-(d - c_k)^2 / (2 w_k^2)),  phi_k' = -(d - c_k) / w_k^2 phi_k.

basis_params rows: offsets c, widths w. Model spelling (schnetpack's GaussianRBF):
exp(coeff * (d[..., None] - offsets)^2) with coeff = -0.5 / widths^2 (a folded constant).
"""

from __future__ import annotations

import torch

from .spec import BasisSpec, buffers, flat


def values(d, p, derivative):
    offsets, widths = p[0], p[1]
    diff = d[:, None] - offsets
    inv_w2 = 1.0 / (widths * widths)
    phi = torch.exp(-0.5 * inv_w2 * diff * diff)
    return phi, (-diff * inv_w2 * phi if derivative else None)


def unfused(d, p):
    coeff = -0.5 / torch.pow(p[1], 2)
    return torch.exp(coeff * torch.pow(d[:, None] - p[0], 2))


def pattern(v):
    d_col = v.unsqueeze(v.Var("d"), v.Lit(pred=lambda a: a in (-1, 1, 2)))
    return v.exp(v.mul(v.Const("gamma"), v.any_of(
        v.pow_(v.sub(d_col, v.Const("centers")), 2),
        v.pow_(v.sub(v.Const("centers"), d_col), 2),
    )))


def read(m):
    """coeff must be -1/(2 w^2) < 0 for each centre (a positive exponent is no Gaussian)."""
    gamma, centers = flat(m["gamma"]), flat(m["centers"])
    if gamma is None or centers is None or centers.numel() < 1:
        return None
    if gamma.numel() == 1:
        gamma = gamma.expand_as(centers)
    if gamma.shape != centers.shape or not bool((gamma < 0).all()):
        return None
    return torch.stack([centers, torch.sqrt(-0.5 / gamma)])


def from_module(module):
    got = buffers(module, "GaussianRBF", ("offsets", "widths"))
    return None if got is None else torch.stack(got)


SPEC = BasisSpec(name="gaussian", kernel_id=0, param_rows=("offsets", "widths"), values=values, unfused=unfused,
                 pattern=pattern, read=read, from_module=from_module,
                 formula="exp(-(d - c_k)^2 / (2 w_k^2))")
