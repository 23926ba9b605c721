"""Radial basis expansions phi_k(d) of interatomic distances.

Both classes keep their constants as buffers with schnetpack's names and values
(``offsets``/``widths`` for the Gaussian, ``freqs`` for the Bessel basis), so weights
move between the two libraries unchanged and the rewriter can read the constants
out of a traced graph.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class GaussianRBF(nn.Module):
    r"""Gaussians on a uniform grid:
    :math:`\phi_k(d) = \exp(-(d - c_k)^2 / (2 w_k^2))`, :math:`c = \mathrm{linspace}(start, r_c, K)`,
    :math:`w_k = c_1 - c_0`.
    """

    def __init__(self, n_rbf: int, cutoff: float, start: float = 0.0):
        super().__init__()
        if n_rbf < 2:
            raise ValueError(f"GaussianRBF needs n_rbf >= 2 to define a width, got {n_rbf}")
        self.n_rbf = n_rbf
        # Built in float32 like schnetpack, so a float64 copy of either model holds the
        # very same (float32-rounded) constants.
        offsets = torch.linspace(start, cutoff, n_rbf, dtype=torch.float32)
        widths = torch.abs(offsets[1] - offsets[0]) * torch.ones_like(offsets)
        self.register_buffer("offsets", offsets)
        self.register_buffer("widths", widths)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        coeff = -0.5 / torch.pow(self.widths, 2)
        diff = d[..., None] - self.offsets
        return torch.exp(coeff * torch.pow(diff, 2))


class BesselRBF(nn.Module):
    r"""Sine ("0th-order Bessel") basis :math:`\phi_k(d) = \sin(k \pi d / r_c) / d`, k = 1..K;
    at d = 0 the division is by 1, as in schnetpack."""

    def __init__(self, n_rbf: int, cutoff: float):
        super().__init__()
        if n_rbf < 1:
            raise ValueError(f"BesselRBF needs n_rbf >= 1, got {n_rbf}")
        self.n_rbf = n_rbf
        freqs = torch.arange(1, n_rbf + 1, dtype=torch.float32) * math.pi / cutoff
        self.register_buffer("freqs", freqs)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        sinax = torch.sin(d[..., None] * self.freqs)
        norm = torch.where(d == 0, torch.ones_like(d), d)
        return sinax / norm[..., None]


RADIAL_BASES = {"gaussian": GaussianRBF, "bessel": BesselRBF}
