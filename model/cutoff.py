"""Cutoff functions f_c(d) that switch pair contributions off at r_c, spelled as schnetpack spells
them (so the same rewrites match both):

* cosine (Behler): f_c(d) = 0.5 (cos(pi d / r_c) + 1) for d < r_c, else 0;
* mollifier: f_c(d) = exp(1 - 1 / (1 - (d / r_c)^2)) for d + eps < r_c, else 0: smooth to all
  orders at r_c (every derivative vanishes there).
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CosineCutoff(nn.Module):
    """Smoothly switches pair contributions off at the cutoff radius ``r_c``.

    The radius is a float32 buffer named ``cutoff``, as in schnetpack.
    """

    def __init__(self, cutoff: float):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        self.register_buffer("cutoff", torch.tensor([float(cutoff)], dtype=torch.float32))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        fc = 0.5 * (torch.cos(d * math.pi / self.cutoff) + 1.0)
        return fc * (d < self.cutoff).to(d.dtype)


class MollifierCutoff(nn.Module):
    """schnetpack's ``MollifierCutoff``: buffers ``cutoff`` and ``eps`` (float32, as there)."""

    def __init__(self, cutoff: float, eps: float = 1e-7):
        super().__init__()
        if not cutoff > 0:
            raise ValueError(f"cutoff must be positive, got {cutoff}")
        if not 0 <= eps < cutoff:
            raise ValueError(f"eps must lie in [0, cutoff), got {eps}")
        self.register_buffer("cutoff", torch.tensor([float(cutoff)], dtype=torch.float32))
        self.register_buffer("eps", torch.tensor([float(eps)], dtype=torch.float32))

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        mask = (d + self.eps < self.cutoff).to(d.dtype)
        exponent = 1.0 - 1.0 / (1.0 - torch.pow(d * mask / self.cutoff, 2))
        return torch.exp(exponent) * mask


CUTOFFS = {"cosine": CosineCutoff, "mollifier": MollifierCutoff}
