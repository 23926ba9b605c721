"""Random small systems: the example that ``torch.export`` traces with, and the probes on which
every rewrite (and the whole rewritten graph) is verified. One generator for both."""

from __future__ import annotations

import torch


def random_system(dtype: torch.dtype, device, n_atoms: int = 7, seed: int = 0, box: float = 2.5,
                  shifted: bool = False, min_distance: float = 0.0):
    """(positions, numbers, edge_index, shifts): ``n_atoms`` atoms uniformly in a cube of side
    ``box`` with all ordered pairs as edges; ``shifted`` gives every fifth edge a random
    periodic-image shift; edges shorter than ``min_distance`` are dropped."""
    gen = torch.Generator().manual_seed(seed)
    pos = torch.rand(n_atoms, 3, generator=gen, dtype=torch.float64) * box
    numbers = torch.tensor(([1, 6, 7, 8] * n_atoms)[seed % 4:][:n_atoms])
    if len(numbers) < n_atoms:
        numbers = torch.tensor(([1, 6, 7, 8] * n_atoms)[:n_atoms])
    ii, jj = torch.meshgrid(torch.arange(n_atoms), torch.arange(n_atoms), indexing="ij")
    keep = ii != jj
    edge_index = torch.stack([ii[keep], jj[keep]])
    shifts = torch.zeros(edge_index.shape[1], 3, dtype=torch.float64)
    if shifted:
        shifts[::5] = torch.randn(len(shifts[::5]), 3, generator=gen, dtype=torch.float64) * 0.5
    if min_distance > 0:
        r = pos[edge_index[1]] - pos[edge_index[0]] + shifts
        keep = r.norm(dim=1) > min_distance
        edge_index, shifts = edge_index[:, keep], shifts[keep]
    return (pos.to(dtype=dtype, device=device), numbers.to(device), edge_index.to(device),
            shifts.to(dtype=dtype, device=device))


def probe_systems(dtype: torch.dtype, device, cutoff: float, seeds=(1, 2)) -> list:
    """A cluster and a system whose edges carry periodic-image shifts, well separated (> 0.3 A)."""
    return [random_system(dtype, device, n_atoms=6 + s, seed=s, box=0.6 * cutoff, shifted=s % 2 == 0,
                          min_distance=0.3) for s in seeds]
