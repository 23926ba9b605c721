"""A torch-sim model for painnfx PaiNN: many systems at once in torch-sim's batched integrators
and optimizers (``pip install "painnfx[torchsim]"``).

torch-sim (``torch-sim-atomistic``) keeps a batch of systems in one ``SimState``: positions
(N, 3), atomic numbers (N,), cell (n_systems, 3, 3) with lattice vectors as columns, pbc, and the
system of each atom (``system_idx``; releases before 0.3 call it ``batch``; both are read).
:class:`PaiNNModel` evaluates such a state as one batched graph (painnfx.model.batch: each
system gets its own vesin neighbor list, checked like every painnfx input) and returns what
torch-sim expects: ``energy`` (n_systems,) in eV, ``forces`` (N, 3) in eV/A and, with
``compute_stress``, ``stress`` (n_systems, 3, 3) in eV/A^3 (dE/d(strain) / V, the sign
torch-sim's cell filters and ASE use), in the state's dtype and on its device.
"""

from __future__ import annotations

from typing import Union

import numpy as np
import torch

try:
    from torch_sim.models.interface import ModelInterface
except ImportError as exc:  # the optional extra is not installed
    raise ImportError('painnfx.model.torchsim needs torch-sim: pip install "painnfx[torchsim]"') from exc

from .batch import BatchEvaluator, atom_offsets
from .neighbors import SkinNeighborList
from .validation import MAX_NEIGHBORS, MIN_DISTANCE, InputError


def _get(state, *names):
    """The first of ``names`` that a SimState (attribute) or a state dict (key) has."""
    for name in names:
        value = state.get(name) if isinstance(state, dict) else getattr(state, name, None)
        if value is not None:
            return value
    raise KeyError(f"the state has none of {names}")


class PaiNNModel(ModelInterface):
    """A painnfx PaiNN as a torch-sim model. ``model``: a PaiNN, ``optimize()`` of one, a checkpoint
    path, or None for the default model; ``optimize``, ``min_distance`` and ``max_neighbors`` as for
    ``PaiNNCalculator`` ("auto": the path rule, set up while the run goes). Bad systems raise
    ``InputError`` naming the system, non-finite results ``NonFiniteError``. Each system of the
    state keeps a neighbor search of radius cutoff + ``neighbor_skin`` from step to step, as the
    calculator does (``neighbors.SkinNeighborList``: the same edges as a search per step; a system
    swapped for another, or moved half the skin, is searched again)."""

    def __init__(self, model=None, *, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float64,
                 optimize: Union[bool, str] = "auto", compute_forces: bool = True, compute_stress: bool = True,
                 min_distance: float = MIN_DISTANCE, max_neighbors: int = MAX_NEIGHBORS, neighbor_skin: float = 1.0):
        super().__init__()
        self._device = torch.device(device)
        self._dtype = dtype
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self._memory_scales_with = "n_atoms_x_density"
        self.batched = BatchEvaluator(model, device=self._device, dtype=dtype, optimize=optimize,
                                      stress=self._compute_stress, min_distance=min_distance,
                                      max_neighbors=max_neighbors)
        self.model = self.batched.evaluator
        self.neighbor_skin = float(neighbor_skin)
        self.neighbors: list = []  # per system index of the state: its SkinNeighborList

    @property
    def compute_stress(self) -> bool:
        return self._compute_stress

    @compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = self.batched.stress = bool(value)

    @property
    def compute_forces(self) -> bool:
        return self._compute_forces

    @compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    def forward(self, state, **kwargs) -> dict:
        positions = _get(state, "positions")
        numbers = _get(state, "atomic_numbers")
        system_idx = _get(state, "system_idx", "batch")
        cell = _get(state, "cell")  # (n_systems, 3, 3), lattice vectors as columns
        if cell.ndim == 2:
            cell = cell[None]
        pbc = np.broadcast_to(np.asarray(torch.as_tensor(_get(state, "pbc")).cpu(), dtype=bool), (3,))
        if self._compute_stress and not pbc.all():
            raise InputError("stress needs systems periodic in all three directions; "
                             "build the model with compute_stress=False")
        if system_idx.numel() and bool((system_idx[1:] < system_idx[:-1]).any()):
            raise InputError("the atoms of each system must be contiguous, systems in order "
                             "(system_idx non-decreasing), as in a SimState")
        pos = positions.detach().double().cpu().numpy()
        z = numbers.cpu().numpy()
        rows = cell.detach().transpose(-1, -2).double().cpu().numpy()
        counts = torch.bincount(system_idx.cpu(), minlength=rows.shape[0]).tolist()
        if len(counts) != rows.shape[0] or len(pos) != len(z) or len(pos) != len(system_idx):
            raise InputError(f"the state's sizes disagree: {len(pos)} positions, {len(z)} atomic numbers, "
                             f"{len(system_idx)} system indices (up to {len(counts) - 1}), {rows.shape[0]} cells")
        starts = atom_offsets(counts)
        calc = self.batched.calc
        while len(self.neighbors) < len(counts):
            self.neighbors.append(SkinNeighborList(calc.cutoff, self.neighbor_skin, calc.max_neighbors))
        systems = []
        for k, (s, n) in enumerate(zip(starts, counts)):
            try:
                systems.append(self.batched.prepare_arrays(k, pos[s:s + n], z[s:s + n], rows[k], pbc,
                                                           neighbors=self.neighbors[k]))
            except InputError as exc:
                raise InputError(f"system {k} of the state: {exc}") from None
        out = self.batched.run_checked(systems)
        results = {"energy": out.energy.to(dtype=positions.dtype, device=positions.device)}
        if self._compute_forces:
            results["forces"] = out.forces.to(dtype=positions.dtype, device=positions.device)
        if self._compute_stress:
            results["stress"] = out.stress.to(dtype=positions.dtype, device=positions.device)
        return results
