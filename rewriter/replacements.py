"""The leaf functions a rewritten graph calls in place of a matched region.

Each adapts shapes between the model's spelling and a fused op's contract and calls the op.
Replacements are plain Python functions traced into the graph (``splice``); these adapters
stay one ``call_function`` node each, so the rewritten graph reads as the model with fused
nodes. The fusion registry (``fusions.FUSIONS``) says which fusion puts each into the graph, and
derives from that the tracer's leaves (``fusions.LEAVES``).
"""

from __future__ import annotations

from typing import Optional

import torch

from painnfx.ops import radial_filter
from painnfx.ops.edges import prepare
from painnfx.ops.message import message


def fused_radial_filter(d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, basis_params: torch.Tensor,
                        basis: str, cutoff: str, cutoff_params: list) -> torch.Tensor:
    """W = (phi(d) Wf^T + bf) fc(d) with the shape d.shape + (out,)."""
    out = radial_filter(d.reshape(-1), weight, bias, basis_params.to(d.dtype), basis, cutoff, cutoff_params)
    return out.reshape(*d.shape, weight.shape[0])


def edge_plan(r: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, x: torch.Tensor):
    """The prepared edges (CSR/CSC) of this edge list; ``x`` only gives the atom count N."""
    return prepare(r, idx_i, idx_j, x.shape[0])


def fused_painn_message(r: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, edges, x: torch.Tensor,
                        mu: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
                        basis_params: torch.Tensor, basis: str, cutoff: str, cutoff_params: list):
    """(dq, dmu) of one interaction; dq has x's shape with F instead of 3F features."""
    n = x.shape[0]
    f = x.shape[-1] // 3
    x2 = x.reshape(n, 3 * f)
    if mu is not None and mu.dtype != x.dtype:
        mu = mu.to(x.dtype)
    dq, dmu = message(r, idx_i, idx_j, edges, x2, mu, weight, bias, basis_params.to(r.dtype), basis, cutoff,
                      cutoff_params)
    return dq.reshape(*x.shape[:-1], f), dmu
