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
    stress: Optional[torch.Tensor] = None  # (3, 3) for one system, (n_systems, 3, 3) for a batch


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
    """Evaluate E, F = -dE/dR and, with ``stress=True`` and ``cell`` given, sigma.

    One system: ``cell`` (3, 3), sigma (3, 3). A batch (``batch`` assigns atoms to
    ``n_systems`` systems): ``cell`` (n_systems, 3, 3), one strain per system, sigma
    (n_systems, 3, 3); a system whose cell has no volume (not periodic) gets NaN there."""
    check_system_tensors(model, positions, numbers, edge_index, shifts)
    joint = getattr(model, "joint_properties", None)
    capturing = positions.is_cuda and torch.cuda.is_current_stream_capturing()
    # a batch of one system keeps autograd: its batch graph would be recompiled for a system count
    # of 1, where Inductor's code generation of the per-system sum fails (torch 2.13)
    one_of_a_batch = batch is not None and n_systems == 1
    if joint is not None and not create_graph and not capturing and not one_of_a_batch:
        out = _joint(joint, positions, numbers, edge_index, shifts, cell, stress, batch, n_systems)
        if out is not None:
            return out
    return derive_properties(model, positions, numbers, edge_index, shifts, cell, stress, create_graph, batch, n_systems)


def _joint(joint, positions, numbers, edge_index, shifts, cell, stress: bool, batch, n_systems: int):
    """Through one of an optimized model's compiled joint graphs (rewriter/joint.py), when its
    path rule takes one for this call; None otherwise. A batch is traced with its system count
    as the length of an empty (n_systems, 0) tensor, so that one graph serves every count."""
    if stress and cell is None:
        raise ValueError("stress needs the cell of each system")
    batched = batch is not None

    def make(energy):
        def fn(positions, numbers, edge_index, shifts, *rest):
            b, systems, c = (rest[0], rest[1].shape[0], rest[2:]) if batched else (None, 1, rest)
            p = derive_properties(energy, positions, numbers, edge_index, shifts, c[0] if stress else None, stress,
                                  False, b, systems)
            return (p.energy, p.forces, p.stress) if stress else (p.energy, p.forces)
        return fn

    tensors = [positions, numbers, edge_index, shifts]
    example = None
    if batched:
        tensors += [batch, positions.new_empty(n_systems, 0)]
        example = _batch_example(positions, numbers, edge_index, shifts, cell if stress else None)
    if stress:
        tensors.append(cell.to(positions.dtype))
    key = ("batch " if batched else "") + ("energy+forces+stress" if stress else "energy+forces")
    out = joint(key, make, tuple(tensors), example=example)
    return None if out is None else Properties(*out)


#: systems of the batch joint graphs are traced on: rewriter/joint.trace_example's 7 atoms in 5
#: systems (a count that coincides with no other size: 3 would be taken for the spatial dimension)
_TRACE_SYSTEMS = (0, 0, 1, 2, 3, 3, 4)


def _batch_example(positions, numbers, edge_index, shifts, cell) -> tuple:
    from painnfx.rewriter.joint import trace_example

    pos, z, ei, sh = trace_example(positions, numbers, edge_index, shifts)
    b = torch.tensor(_TRACE_SYSTEMS, dtype=torch.long, device=positions.device)
    systems = len(set(_TRACE_SYSTEMS))
    rest = [b, positions.new_empty(systems, 0)]
    if cell is not None:
        rest.append(torch.eye(3, dtype=positions.dtype, device=positions.device).expand(systems, 3, 3).clone() * 9.0)
    return (pos, z, ei, sh, *rest)


def derive_properties(model, positions, numbers, edge_index, shifts, cell, stress: bool, create_graph: bool, batch,
                      n_systems: int) -> Properties:
    """E, F and sigma by autograd (what ``compute_properties`` computes, its inputs checked)."""
    positions = positions.detach().requires_grad_(True)
    inputs = [positions]
    if stress:
        if cell is None:
            raise ValueError("stress needs the cell of each system")
        systems = 1 if batch is None else n_systems
        if batch is not None and tuple(cell.shape) != (n_systems, 3, 3):
            raise ValueError(f"a batch's stress needs one cell per system, shape ({n_systems}, 3, 3); got {tuple(cell.shape)}")
        strain = torch.zeros(systems, 3, 3, dtype=positions.dtype, device=positions.device, requires_grad=True)
        sym = 0.5 * (strain + strain.transpose(1, 2))
        if batch is None:
            pos = positions + positions @ sym[0]
            sh = shifts + shifts @ sym[0]
        else:  # each atom, and each edge's shift (an edge lies in its centre atom's system), in its own frame
            pos = positions + torch.bmm(positions[:, None], sym[batch])[:, 0]
            sh = shifts + torch.bmm(shifts[:, None], sym[batch[edge_index[0]]])[:, 0]
        inputs.append(strain)
    else:
        pos, sh = positions, shifts
    with torch.enable_grad():
        if batch is None:
            energy = model(pos, numbers, edge_index, sh)
        else:
            energy = model(pos, numbers, edge_index, sh, batch, n_systems)
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
    forces = -grads[0] if grads[0] is not None else torch.zeros_like(positions)
    sigma = None
    if stress:
        volume = torch.abs(torch.linalg.det(cell.to(positions.dtype)))
        g = grads[1] if grads[1] is not None else torch.zeros_like(strain)
        if batch is None:
            sigma = g[0] / volume
        else:
            volume = volume[:, None, None]
            sigma = torch.where(volume > 0, g / volume.clamp_min(torch.finfo(g.dtype).tiny), float("nan"))
    if not create_graph:
        energy, forces = energy.detach(), forces.detach()
        sigma = None if sigma is None else sigma.detach()
    return Properties(energy, forces, sigma)
