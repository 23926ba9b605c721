"""Energy, forces and stress of any module with PaiNN's call signature.

Forces are -dE/dR. Stress uses the strain derivative: positions and periodic shifts are
deformed by a symmetric strain eps, and sigma = (1/V) dE/deps at eps = 0 (ASE's sign and
units: eV/A^3). The same function serves the eager model and ``optimize``'d ones, which is
what makes their results directly comparable.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np
import torch

from .validation import check_system_tensors


@dataclass
class Properties:
    energy: torch.Tensor  # (n_systems,)
    forces: torch.Tensor  # (N, 3)
    stress: Optional[torch.Tensor] = None  # (3, 3), only for a single periodic system


def voigt(stress) -> np.ndarray:
    """A (3, 3) stress as ASE's Voigt 6-vector (xx, yy, zz, yz, xz, xy), float64 numpy."""
    s = stress.detach().cpu().numpy() if torch.is_tensor(stress) else np.asarray(stress)
    return np.array([s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], dtype=np.float64)


def compute_properties(
    model: Callable[..., torch.Tensor],
    positions: torch.Tensor,
    numbers: torch.Tensor,
    edge_index: torch.Tensor,
    shifts: torch.Tensor,
    cell: Optional[torch.Tensor] = None,
    *,
    stress: bool = False,
    create_graph: bool = False,
    batch: Optional[torch.Tensor] = None,
    n_systems: int = 1,
) -> Properties:
    """Evaluate E, F = -dE/dR and, with ``stress=True`` (one system, ``cell`` given), sigma."""
    check_system_tensors(model, positions, numbers, edge_index, shifts)
    positions = positions.detach().requires_grad_(True)
    inputs = [positions]
    if stress:
        if cell is None or batch is not None:
            raise ValueError("stress needs a single periodic system with its cell")
        strain = torch.zeros(3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
        sym = 0.5 * (strain + strain.T)
        pos = positions + positions @ sym
        sh = shifts + shifts @ sym
        inputs.append(strain)
    else:
        pos, sh = positions, shifts
    if batch is None:
        energy = model(pos, numbers, edge_index, sh)
    else:
        energy = model(pos, numbers, edge_index, sh, batch, n_systems)
    grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
    sigma = None
    if stress:
        volume = torch.abs(torch.linalg.det(cell.to(positions.dtype)))
        g = grads[1] if grads[1] is not None else torch.zeros(3, 3, dtype=positions.dtype)
        sigma = g / volume
    if not create_graph:
        energy, forces = energy.detach(), forces.detach()
        sigma = None if sigma is None else sigma.detach()
    return Properties(energy, forces, sigma)
