"""The plain, unfused PyTorch expressions the fused ops replace: the test oracle.

Autograd of these functions defines what the fused ops' analytical backwards must give.
Basis and cutoff are each spec's own ``unfused`` spelling (the model's, i.e. schnetpack's),
not the fused ops' code.
"""

from __future__ import annotations

import torch

from .radial import basis_spec, cutoff_spec


def radial_filter_unfused(d, weight, bias, basis_params, basis: str, cutoff: str, cutoff_params) -> torch.Tensor:
    phi = basis_spec(basis).unfused(d, basis_params.to(d.dtype))
    fc = cutoff_spec(cutoff).unfused(d, tuple(cutoff_params))
    return torch.nn.functional.linear(phi, weight, bias) * fc[:, None]


def painn_message_unfused(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis: str, cutoff: str, cutoff_params):
    """dq (N, F), dmu (N, 3, F) of one PaiNN interaction, written the way the model writes it."""
    n_atoms, f = x.shape[0], x.shape[1] // 3
    if mu is None:  # first layer: mu = 0
        mu = torch.zeros(n_atoms, 3, f, dtype=x.dtype, device=x.device)
    d = torch.norm(r, dim=1)
    u = r / d[:, None]
    w = radial_filter_unfused(d, weight, bias, basis_params, basis, cutoff, cutoff_params)
    m = w * x[idx_j]
    ms, mvr, mvv = torch.split(m, f, dim=-1)
    dq = torch.zeros(n_atoms, f, dtype=x.dtype, device=x.device).index_add(0, idx_i, ms)
    dmu_e = mvr[:, None, :] * u[:, :, None] + mvv[:, None, :] * mu[idx_j]
    dmu = torch.zeros(n_atoms, 3, f, dtype=x.dtype, device=x.device).index_add(0, idx_i, dmu_e)
    return dq, dmu
