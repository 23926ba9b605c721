"""PaiNN energy model (Schuett, Unke, Gastegger, ICML 2021), numerically identical to
schnetpack 2.1's ``PaiNN`` representation + ``Atomwise`` energy head.

The forward pass takes plain tensors and no neighbor search happens inside it, so the
whole energy is one traceable function of positions (what torch.fx captures):

    energy = PaiNN(...)(positions, numbers, edge_index, shifts)

with ``edge_index = [i; j]`` (a full, symmetric list: both i<-j and j<-i present) and
``r_ij = R[j] - R[i] + shift_ij`` (``shifts`` are Cartesian: S_ij @ cell).

This module imports nothing from painnfx: it is the plain network that everything
else is measured against.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .cutoff import CUTOFFS
from .radial import RADIAL_BASES


@dataclass
class PaiNNConfig:
    """Hyperparameters; stored verbatim in checkpoints."""

    n_atom_basis: int = 128
    n_interactions: int = 3
    n_rbf: int = 20
    cutoff: float = 5.0
    radial_basis: str = "gaussian"
    cutoff_fn: str = "cosine"  # or "mollifier" (schnetpack's MollifierCutoff, eps 1e-7)
    shared_interactions: bool = False
    shared_filters: bool = False
    epsilon: float = 1e-8
    max_z: int = 100
    elements: Optional[List[int]] = None  # atomic numbers the model was trained on
    seed: Optional[int] = None

    def __post_init__(self):
        if self.radial_basis not in RADIAL_BASES:
            raise ValueError(
                f"unknown radial_basis {self.radial_basis!r}; choose one of {sorted(RADIAL_BASES)}"
            )
        if self.cutoff_fn not in CUTOFFS:
            raise ValueError(f"unknown cutoff_fn {self.cutoff_fn!r}; choose one of {sorted(CUTOFFS)}")
        for name in ("n_atom_basis", "n_interactions", "n_rbf", "max_z"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.elements is not None:
            self.elements = sorted(int(z) for z in self.elements)
            bad = [z for z in self.elements if not 0 < z < self.max_z]
            if bad:
                raise ValueError(f"elements {bad} outside 1..{self.max_z - 1}")

    def to_dict(self) -> dict:
        return asdict(self)


def _replicate(factory, n: int, shared: bool) -> nn.ModuleList:
    if shared:
        block = factory()
        return nn.ModuleList([block] * n)
    return nn.ModuleList([factory() for _ in range(n)])


class Dense(nn.Linear):
    """Linear layer with an optional SiLU, Xavier-uniform weights and zero bias (schnetpack's init)."""

    def __init__(self, n_in: int, n_out: int, bias: bool = True, activation: bool = False):
        super().__init__(n_in, n_out, bias)
        self.activation = activation

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(x, self.weight, self.bias)
        return F.silu(y) if self.activation else y


class PaiNNInteraction(nn.Module):
    """Message passing: q_i += sum_j W_s x_s,j ; mu_i += sum_j (W_vr x_vr,j u_ij + W_vv x_vv,j mu_j)."""

    def __init__(self, n_atom_basis: int):
        super().__init__()
        self.n_atom_basis = n_atom_basis
        self.interatomic_context_net = nn.Sequential(
            Dense(n_atom_basis, n_atom_basis, activation=True),
            Dense(n_atom_basis, 3 * n_atom_basis),
        )

    def forward(self, q, mu, w_ij, dir_ij, idx_i, idx_j):
        x = self.interatomic_context_net(q)
        x = w_ij * x[idx_j]
        dq, dmu_r, dmu_mu = torch.split(x, self.n_atom_basis, dim=-1)
        dq = torch.zeros_like(q).index_add(0, idx_i, dq)
        dmu = dmu_r * dir_ij[..., None] + dmu_mu * mu[idx_j]
        dmu = torch.zeros_like(mu).index_add(0, idx_i, dmu)
        return q + dq, mu + dmu


class PaiNNMixing(nn.Module):
    """Per-atom update coupling scalar and vector channels through V, W = U mu."""

    def __init__(self, n_atom_basis: int, epsilon: float = 1e-8):
        super().__init__()
        self.n_atom_basis = n_atom_basis
        self.epsilon = epsilon
        self.intraatomic_context_net = nn.Sequential(
            Dense(2 * n_atom_basis, n_atom_basis, activation=True),
            Dense(n_atom_basis, 3 * n_atom_basis),
        )
        self.mu_channel_mix = Dense(n_atom_basis, 2 * n_atom_basis, bias=False)

    def forward(self, q, mu):
        mu_v, mu_w = torch.split(self.mu_channel_mix(mu), self.n_atom_basis, dim=-1)
        mu_vn = torch.sqrt(torch.sum(mu_v**2, dim=-2, keepdim=True) + self.epsilon)
        x = self.intraatomic_context_net(torch.cat([q, mu_vn], dim=-1))
        dq, dmu, dqmu = torch.split(x, self.n_atom_basis, dim=-1)
        q = q + dq + dqmu * torch.sum(mu_v * mu_w, dim=1, keepdim=True)
        mu = mu + dmu * mu_w
        return q, mu


class PaiNN(nn.Module):
    """PaiNN potential: embedding, L x (interaction, mixing), atomwise MLP, sum.

    Per-atom energy e_i = scale * MLP(q_i) + shift + atomref[Z_i]; the total is summed
    per system (``batch`` assigns atoms to systems; ``None`` means one system).
    """

    def __init__(self, config: Optional[PaiNNConfig] = None, **kwargs):
        super().__init__()
        if config is None:
            config = PaiNNConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a PaiNNConfig or keyword arguments, not both")
        self.config = config
        if config.seed is None:
            self._build(config)
        else:  # seeded weights without touching the caller's random stream
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(config.seed)
                self._build(config)

    def _build(self, config: PaiNNConfig) -> None:
        n, L = config.n_atom_basis, config.n_interactions
        self.n_atom_basis = n
        self.n_interactions = L
        self.cutoff = float(config.cutoff)
        self.embedding = nn.Embedding(config.max_z, n)
        self.radial_basis = RADIAL_BASES[config.radial_basis](config.n_rbf, config.cutoff)
        self.cutoff_fn = CUTOFFS[config.cutoff_fn](config.cutoff)
        self.share_filters = config.shared_filters
        n_filters = 3 * n if config.shared_filters else 3 * n * L
        self.filter_net = Dense(config.n_rbf, n_filters)
        self.interactions = _replicate(lambda: PaiNNInteraction(n), L, config.shared_interactions)
        self.mixing = _replicate(
            lambda: PaiNNMixing(n, config.epsilon), L, config.shared_interactions
        )
        self.energy_head = nn.Sequential(Dense(n, max(1, n // 2), activation=True), Dense(max(1, n // 2), 1))
        self.register_buffer("atomref", torch.zeros(config.max_z))
        self.register_buffer("energy_scale", torch.ones(()))
        self.register_buffer("energy_shift", torch.zeros(()))

    def forward(
        self,
        positions: torch.Tensor,
        numbers: torch.Tensor,
        edge_index: torch.Tensor,
        shifts: torch.Tensor,
        batch: Optional[torch.Tensor] = None,
        n_systems: int = 1,
    ) -> torch.Tensor:
        """Total energy per system, shape (n_systems,)."""
        return self.aggregate(self.atomic_energies(positions, numbers, edge_index, shifts), batch, n_systems)

    def atomic_energies(
        self, positions: torch.Tensor, numbers: torch.Tensor, edge_index: torch.Tensor, shifts: torch.Tensor
    ) -> torch.Tensor:
        """Per-atom energies e_i, shape (N,)."""
        idx_i = edge_index[0]
        idx_j = edge_index[1]
        n_atoms = numbers.shape[0]

        r_ij = positions[idx_j] - positions[idx_i] + shifts
        d_ij = torch.norm(r_ij, dim=1, keepdim=True)
        dir_ij = r_ij / d_ij
        phi_ij = self.radial_basis(d_ij)
        fcut = self.cutoff_fn(d_ij)
        filters = self.filter_net(phi_ij) * fcut[..., None]
        if self.share_filters:
            filter_list = [filters] * self.n_interactions
        else:
            filter_list = torch.split(filters, 3 * self.n_atom_basis, dim=-1)

        q = self.embedding(numbers)[:, None]
        mu = torch.zeros((n_atoms, 3, self.n_atom_basis), dtype=q.dtype, device=q.device)
        for interaction, mixing, w_ij in zip(self.interactions, self.mixing, filter_list):
            q, mu = interaction(q, mu, w_ij, dir_ij, idx_i, idx_j)
            q, mu = mixing(q, mu)
        return self.atomwise(q.squeeze(1), numbers)

    def atomwise(self, q: torch.Tensor, numbers: torch.Tensor) -> torch.Tensor:
        """Per-atom energy from final scalar features q (N, F)."""
        e_atom = self.energy_head(q).squeeze(-1)
        return e_atom * self.energy_scale + self.energy_shift + self.atomref[numbers]

    def readout(self, q: torch.Tensor, numbers: torch.Tensor, batch: Optional[torch.Tensor] = None,
                n_systems: int = 1) -> torch.Tensor:
        """Per-system energy from final scalar features q (N, F)."""
        return self.aggregate(self.atomwise(q, numbers), batch, n_systems)

    @staticmethod
    def aggregate(e_atom: torch.Tensor, batch: Optional[torch.Tensor] = None, n_systems: int = 1) -> torch.Tensor:
        """Sum per-atom energies per system: (n_systems,)."""
        if batch is None:
            return e_atom.sum()[None]
        return torch.zeros(n_systems, dtype=e_atom.dtype, device=e_atom.device).index_add(0, batch, e_atom)


aggregate = PaiNN.aggregate
