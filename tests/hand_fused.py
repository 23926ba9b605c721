"""A hand-assembled fused PaiNN, for tests: the same network with each interaction's edge work
done by ``painnfx.ops.painn_message`` (geometry, basis, cutoff, filter, gather, products, scatter
in one op with an analytical backward). It shares its parameters with the PaiNN it wraps and has
the same call signature, so energies, forces and stress are directly comparable.

This is what ``optimize`` produces from a traced graph; assembled by hand it tests the fused
message op inside a whole model without the rewriter.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from painnfx.ops import painn_message, prepare_edges
from painnfx.ops.radial import basis_of_module, cutoff_of_module

from painnfx.model.painn import PaiNN


class FusedPaiNN(nn.Module):
    def __init__(self, model: PaiNN, chunk_size: int = 0):
        super().__init__()
        self.model = model
        self.cutoff = model.cutoff
        self.config = model.config
        self.chunk_size = chunk_size

    def forward(self, positions: torch.Tensor, numbers: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor,
                batch: Optional[torch.Tensor] = None, n_systems: int = 1) -> torch.Tensor:
        """PaiNN.forward's energies, each interaction's edge work in one painn_message call."""
        m = self.model
        f = m.n_atom_basis
        idx_i, idx_j = edge_index[0], edge_index[1]
        r = positions.index_select(0, idx_j) - positions.index_select(0, idx_i) + shifts
        basis, basis_params = basis_of_module(m.radial_basis)
        cutoff, cutoff_params = cutoff_of_module(m.cutoff_fn)
        weight, bias = m.filter_net.weight, m.filter_net.bias
        edges = list(prepare_edges(r, idx_i, idx_j, numbers.shape[0]))

        q = m.embedding(numbers)[:, None]
        mu = None  # zero in the first layer: the op skips the mu_j term
        for layer, (interaction, mixing) in enumerate(zip(m.interactions, m.mixing)):
            rows = slice(0, 3 * f) if m.share_filters else slice(3 * f * layer, 3 * f * (layer + 1))
            x = interaction.interatomic_context_net(q).squeeze(1)
            dq, dmu = painn_message(r, idx_i, idx_j, edges, x, mu, weight[rows], bias[rows], basis_params.to(r.dtype),
                                    basis, cutoff, list(cutoff_params), self.chunk_size)
            q = q + dq[:, None]
            mu = dmu if mu is None else mu + dmu
            q, mu = mixing(q, mu)
        return m.readout(q.squeeze(1), numbers, batch, n_systems)
