r"""Radial functions with their analytical derivatives, in plain differentiable torch.

    Gaussian: phi_k = exp(-(d - c_k)^2 / (2 w_k^2)),   phi_k' = -(d - c_k) / w_k^2 * phi_k
    Bessel:   phi_k = sin(f_k d) / d   (d = 0: sin(f_k d)),
              phi_k' = (x cos x - sin x) / d^2 = f_k^3 d h(x),  x = f_k d,
              h(x) = (x cos x - sin x) / x^3, by its series below x = 0.05 (no cancellation)
    cutoff:   fc = 0.5 (cos(pi d / rc) + 1) [d < rc],  fc' = -0.5 (pi / rc) sin(pi d / rc) [d < rc]

``basis_params`` packs the constants: rows (offsets, widths) for "gaussian", (freqs,) for
"bessel". These functions are the single source of the math for the reference backend
and the oracle for the CUDA kernels.
"""

from __future__ import annotations

import math

import torch

BASES = ("gaussian", "bessel")


def check_basis(basis: str, basis_params: torch.Tensor) -> None:
    rows = {"gaussian": 2, "bessel": 1}.get(basis)
    if rows is None:
        raise ValueError(f"unknown radial basis {basis!r}; expected one of {BASES}")
    if basis_params.ndim != 2 or basis_params.shape[0] != rows:
        raise ValueError(
            f"basis_params for {basis!r} must have shape ({rows}, K), got {tuple(basis_params.shape)}"
        )


def basis_values(d: torch.Tensor, basis: str, basis_params: torch.Tensor, derivative: bool = True):
    """phi (E, K) and, if asked, dphi/dd (E, K) for distances d (E,)."""
    p = basis_params.to(d.dtype)
    if basis == "gaussian":
        offsets, widths = p[0], p[1]
        diff = d[:, None] - offsets
        inv_w2 = 1.0 / (widths * widths)
        phi = torch.exp(-0.5 * inv_w2 * diff * diff)
        dphi = -diff * inv_w2 * phi if derivative else None
        return phi, dphi
    if basis == "bessel":
        freqs = p[0]
        ax = d[:, None] * freqs
        s = torch.sin(ax)
        safe = torch.where(d == 0, torch.ones_like(d), d)[:, None]
        phi = s / safe
        dphi = None
        if derivative:
            direct = (freqs * torch.cos(ax) - phi) / safe
            x2 = ax * ax
            series = freqs**3 * d[:, None] * (-1.0 / 3 + x2 * (1.0 / 30 + x2 * (-1.0 / 840 + x2 / 45360)))
            dphi = torch.where(ax.abs() < 0.05, series, direct)
        return phi, dphi
    raise ValueError(f"unknown radial basis {basis!r}")


def cosine_cutoff(d: torch.Tensor, cutoff: float, derivative: bool = True):
    """fc (E,) and, if asked, dfc/dd (E,)."""
    inside = (d < cutoff).to(d.dtype)
    arg = d * (math.pi / cutoff)
    fc = 0.5 * (torch.cos(arg) + 1.0) * inside
    dfc = -0.5 * (math.pi / cutoff) * torch.sin(arg) * inside if derivative else None
    return fc, dfc
