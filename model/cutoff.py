"""Cosine cutoff f_c(d) = 0.5 (cos(pi d / r_c) + 1) for d < r_c, else 0 (Behler)."""

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
