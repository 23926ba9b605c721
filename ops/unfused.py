"""The plain, unfused PyTorch expressions the fused ops replace: the test oracle.

Autograd of these functions defines what the fused ops' analytical backwards must give.
They follow the model's own spelling (schnetpack's), not the fused ops' code.
"""

from __future__ import annotations

import math

import torch


def basis_unfused(d: torch.Tensor, basis: str, basis_params: torch.Tensor) -> torch.Tensor:
    p = basis_params.to(d.dtype)
    if basis == "gaussian":
        coeff = -0.5 / torch.pow(p[1], 2)
        return torch.exp(coeff * torch.pow(d[:, None] - p[0], 2))
    norm = torch.where(d == 0, torch.ones_like(d), d)
    return torch.sin(d[:, None] * p[0]) / norm[:, None]


def radial_filter_unfused(d, weight, bias, basis_params, basis: str, cutoff: float) -> torch.Tensor:
    phi = basis_unfused(d, basis, basis_params)
    fc = 0.5 * (torch.cos(d * math.pi / cutoff) + 1.0) * (d < cutoff).to(d.dtype)
    return torch.nn.functional.linear(phi, weight, bias) * fc[:, None]


def painn_message_unfused(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis: str, cutoff: float):
    """dq (N, F), dmu (N, 3, F) of one PaiNN interaction, written the way the model writes it."""
    n_atoms, f = x.shape[0], x.shape[1] // 3
    if mu is None:  # first layer: mu = 0
        mu = torch.zeros(n_atoms, 3, f, dtype=x.dtype, device=x.device)
    d = torch.norm(r, dim=1)
    u = r / d[:, None]
    w = radial_filter_unfused(d, weight, bias, basis_params, basis, cutoff)
    m = w * x[idx_j]
    ms, mvr, mvv = torch.split(m, f, dim=-1)
    dq = torch.zeros(n_atoms, f, dtype=x.dtype, device=x.device).index_add(0, idx_i, ms)
    dmu_e = mvr[:, None, :] * u[:, :, None] + mvv[:, None, :] * mu[idx_j]
    dmu = torch.zeros(n_atoms, 3, f, dtype=x.dtype, device=x.device).index_add(0, idx_i, dmu_e)
    return dq, dmu
