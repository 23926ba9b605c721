"""Energy modules with one call signature, ``energy(positions, numbers, edge_index, shifts)``,
for the model families ``optimize`` understands: painnfx's PaiNN (already of that form) and a
schnetpack ``NeuralNetworkPotential`` with a PaiNN representation, whose dict-based forward
is driven through plain tensors here without changing its code."""

from __future__ import annotations

import torch
from torch import nn


def is_schnetpack_potential(model) -> bool:
    mod = type(model).__module__
    return mod.startswith("schnetpack") and hasattr(model, "representation") and hasattr(model, "output_modules")


class SchnetpackEnergy(nn.Module):
    """Energy of a schnetpack NeuralNetworkPotential as a function of plain tensors.

    Runs the representation on the inputs dict and the energy ``Atomwise`` head's MLP, summed
    (``aggregation_mode="sum"``; "avg" divides by the atom count). Input modules (pairwise
    distances, strain) are replaced by computing r_ij from the arguments; forces and stress
    come from autograd on the result like for any painnfx energy module.
    """

    def __init__(self, nnpot, energy_key: str = "energy"):
        super().__init__()
        from painnfx.model.schnetpack_interop import import_schnetpack

        spk = import_schnetpack()
        heads = [m for m in nnpot.output_modules if isinstance(m, spk.atomistic.Atomwise) and m.output_key == energy_key]
        if len(heads) != 1:
            raise ValueError(f"expected one Atomwise output module with output_key={energy_key!r}")
        self.representation = nnpot.representation
        self.head = heads[0]
        self.keys = spk.properties
        self.cutoff = float(getattr(self.representation, "cutoff", torch.tensor(0.0)))

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        p = self.keys
        r = positions[edge_index[1]] - positions[edge_index[0]] + shifts
        inputs = {p.Z: numbers, p.Rij: r, p.idx_i: edge_index[0], p.idx_j: edge_index[1]}
        inputs = self.representation(inputs)
        y = self.head.outnet(inputs["scalar_representation"]).squeeze(-1)
        if batch is None:
            total = y.sum()[None]
            return total / numbers.shape[0] if self.head.aggregation_mode == "avg" else total
        out = torch.zeros(n_systems, dtype=y.dtype, device=y.device).index_add(0, batch, y)
        if self.head.aggregation_mode == "avg":
            counts = torch.zeros(n_systems, dtype=y.dtype, device=y.device).index_add(0, batch, torch.ones_like(y))
            out = out / counts
        return out


def energy_module(model) -> nn.Module:
    """The energy module for ``model`` with the painnfx call signature."""
    if is_schnetpack_potential(model):
        return SchnetpackEnergy(model)
    return model
