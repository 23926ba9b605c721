"""The functions a rewritten graph calls in place of a matched region. Each adapts shapes
between the model's spelling and the fused op's contract and calls the op; in the graph it
is one ``call_function`` node, so the rewritten graph reads as the model with fused nodes."""

from __future__ import annotations

from typing import Optional

import torch

from painnfx.ops import painn_message, radial_filter


def fused_radial_filter(d: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, basis_params: torch.Tensor,
                        basis: str, cutoff: float, backend: str = "auto") -> torch.Tensor:
    """W = (phi(d) Wf^T + bf) fc(d) with the shape d.shape + (out,)."""
    out = radial_filter(d.reshape(-1), weight, bias, basis_params.to(d.dtype), basis, cutoff, backend)
    return out.reshape(*d.shape, weight.shape[0])


def fused_painn_message(r: torch.Tensor, idx_i: torch.Tensor, idx_j: torch.Tensor, x: torch.Tensor,
                        mu: Optional[torch.Tensor], weight: torch.Tensor, bias: torch.Tensor,
                        basis_params: torch.Tensor, basis: str, cutoff: float, backend: str = "auto"):
    """(dq, dmu) of one interaction; dq has x's shape with F instead of 3F features."""
    n = x.shape[0]
    f = x.shape[-1] // 3
    x2 = x.reshape(n, 3 * f)
    if mu is not None and mu.dtype != x.dtype:
        mu = mu.to(x.dtype)
    dq, dmu = painn_message(r, idx_i, idx_j, x2, mu, weight, bias, basis_params.to(r.dtype), basis, cutoff, 0, backend)
    return dq.reshape(*x.shape[:-1], f), dmu
