"""Small helpers used by several test modules."""

from __future__ import annotations

import numpy as np
import torch

from painnfx.model.neighbors import neighbor_list
from painnfx.model.properties import compute_properties


def system_tensors(atoms, cutoff: float, dtype=torch.float64):
    nl = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc, dtype=dtype)
    pos = torch.tensor(atoms.positions, dtype=dtype)
    numbers = torch.tensor(atoms.numbers, dtype=torch.long)
    cell = torch.tensor(np.asarray(atoms.cell.array), dtype=dtype)
    return pos, numbers, nl, cell


def evaluate(model, atoms, dtype=torch.float64, stress=False):
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff, dtype)
    return compute_properties(model, pos, numbers, nl.edge_index, nl.shifts, cell, stress=stress)


def perturbed_model(cfg: dict, dtype=torch.float64, scale: float = 0.1):
    """A PaiNN of config ``cfg`` with every parameter nudged (non-zero biases etc.), deterministic."""
    from painnfx.model.painn import PaiNN, PaiNNConfig

    model = PaiNN(PaiNNConfig(**cfg)).to(dtype)
    with torch.no_grad():
        gen = torch.Generator().manual_seed(cfg.get("seed") or 0)
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64).to(dtype))
    return model
