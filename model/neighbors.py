"""Full, symmetric neighbor lists with periodic shifts, computed by vesin.

Convention used everywhere in painnfx: an edge e = (i <- j) has ``edge_index[:, e] = (i, j)``
and ``r_ij = R[j] - R[i] + S_e @ cell``; both (i, j) and (j, i) are present. Pairs are
included when ``d < cutoff`` (strictly), the same rule the cosine cutoff uses, so an atom
exactly at the cutoff contributes nothing either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import vesin

from .validation import (MAX_NEIGHBORS, MAX_SPAN_CUTOFFS, InputError, check_cell, check_positions, check_span,
                         estimated_neighbors)


@dataclass
class NeighborList:
    """Edges of one system: index (2, E) int64, integer cell shifts (E, 3), Cartesian shifts (E, 3)."""

    edge_index: torch.Tensor
    cell_shifts: torch.Tensor
    shifts: torch.Tensor

    @property
    def n_edges(self) -> int:
        return int(self.edge_index.shape[1])


def neighbor_list(
    positions,
    cutoff: float,
    cell=None,
    pbc=False,
    *,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    max_neighbors: int = MAX_NEIGHBORS,
) -> NeighborList:
    """Neighbor list of one system.

    ``positions`` (N, 3) in Angstrom; ``cell`` (3, 3) rows are lattice vectors (or None);
    ``pbc`` a bool or three bools. Non-periodic directions need no cell: a cell that is
    zero along them is allowed. An empty system or isolated atoms give E = 0.
    ``max_neighbors``: an atom with more neighbors than this is an ``InputError`` (estimated
    from the density before the search, so that a tiny cell fails before allocating gigabytes,
    and counted exactly after it; ``validation.MAX_NEIGHBORS``).
    """
    pos, cell, pbc = _checked(positions, cutoff, cell, pbc, max_neighbors)
    i, j, s = _search(pos, cutoff, cell, pbc)
    return _result(i, j, s, len(pos), cutoff, cell, dtype, device, max_neighbors)


def _checked(positions, cutoff: float, cell, pbc, max_neighbors: int) -> tuple:
    """(positions, cell, pbc) as float64/bool numpy arrays, after the input checks of ``neighbor_list``."""
    pos = np.ascontiguousarray(
        positions.detach().cpu().numpy() if torch.is_tensor(positions) else positions,
        dtype=np.float64,
    )
    if pos.ndim != 2 or pos.shape[1] != 3:
        raise InputError(f"positions must have shape (N, 3), got {pos.shape}")
    check_positions(pos)
    pbc = np.broadcast_to(np.asarray(pbc, dtype=bool), (3,)).copy()
    cell = np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64).reshape(3, 3)
    check_cell(cell, pbc)
    if not cutoff > 0:
        raise InputError(f"cutoff must be positive, got {cutoff}")
    check_span(pos, cutoff, cell, pbc)
    estimate = estimated_neighbors(pos, cutoff, cell, pbc)
    if estimate > max_neighbors:
        raise InputError(_too_many(f"about {estimate:.3g}", len(pos), cutoff, max_neighbors))
    return pos, cell, pbc


def _search(pos: np.ndarray, cutoff: float, cell: np.ndarray, pbc: np.ndarray) -> tuple:
    """(i, j, integer shifts) of the pairs within ``cutoff`` (strictly), from a vesin search."""
    if len(pos) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64), np.zeros((0, 3), dtype=np.int64)
    nl = vesin.NeighborList(cutoff=float(cutoff), full_list=True)
    i, j, s = nl.compute(points=pos, box=cell, periodic=pbc.tolist(), quantities="ijS")
    return _within(pos, i.astype(np.int64), j.astype(np.int64), s.astype(np.int64), cell, cutoff)


def _result(i, j, s, n_atoms: int, cutoff: float, cell: np.ndarray, dtype, device, max_neighbors: int) -> NeighborList:
    most = int(np.bincount(i).max()) if len(i) else 0
    if most > max_neighbors:
        raise InputError(_too_many(str(most), n_atoms, cutoff, max_neighbors))
    edge_index = torch.from_numpy(np.stack([i, j])).to(device)
    cell_shifts = torch.from_numpy(s).to(device)
    shifts = cell_shifts.to(dtype) @ torch.as_tensor(cell, dtype=dtype, device=device)
    return NeighborList(edge_index, cell_shifts, shifts)


class SkinNeighborList:
    """Neighbor lists of one system along a trajectory (MD, relaxations): one vesin search of
    radius ``cutoff + skin`` gives candidate pairs, and each call keeps those within the cutoff
    on the current positions, until an atom has moved ``skin / 2`` from where the search saw it,
    or the cell, the periodicity or the number of atoms changed; then it searches again. No
    pair can be missed: two atoms approach by at most twice the largest displacement, under
    ``skin``. In a cell periodic in all three directions an atom wrapped back into the cell (by
    the engine, or ``atoms.wrap()``) counts as moved by its displacement less the lattice vectors
    it crossed, and its pairs' shifts follow. The result is the same as ``neighbor_list``'s (the
    same edges in the same order, both sorted by atoms and shift, the same strict rule d < cutoff
    on the same coordinates), so energies and forces do not change, bit for bit. ``searches`` and
    ``calls`` count the work (approximately, when threads share the list). Threads may share one:
    each call checks and uses one snapshot of the last search, so a search by another thread
    costs at most a search more, never a wrong edge."""

    def __init__(self, cutoff: float, skin: float = 1.0, max_neighbors: int = MAX_NEIGHBORS):
        if not skin >= 0:
            raise InputError(f"skin must be >= 0, got {skin}")
        self.cutoff, self.skin, self.max_neighbors = float(cutoff), float(skin), max_neighbors
        self.searches = self.calls = 0
        self._seen = None  # (positions, cell, pbc) of the last search, and its candidates (i, j, s)

    def __call__(self, positions, cell=None, pbc=False, *, dtype: torch.dtype = torch.float64,
                 device: torch.device | str = "cpu") -> NeighborList:
        pos, cell, pbc = _checked(positions, self.cutoff, cell, pbc, self.max_neighbors)
        self.calls += 1
        seen = self._seen  # one snapshot: a call from another thread may replace it meanwhile
        crossed = self._crossed(seen, pos, cell, pbc)
        if crossed is None:
            candidates = _search(pos, self.cutoff + self.skin, cell, pbc)
            seen = self._seen = (pos.copy(), cell.copy(), pbc.copy(), candidates)
            self.searches += 1
            crossed = np.zeros((0, 3), dtype=np.int64)
        i, j, s = seen[3]
        if crossed.any():  # x = x_seen + crossed cell + a move below reach: each pair's image, new shift
            i, j, s = _within(pos, i, j, s - crossed[j] + crossed[i], cell, self.cutoff)
        else:
            i, j, s = _within(pos, i, j, s, cell, self.cutoff, ordered=True)
        return _result(i, j, s, len(pos), self.cutoff, cell, dtype, device, self.max_neighbors)

    def _crossed(self, last, pos: np.ndarray, cell: np.ndarray, pbc: np.ndarray) -> Optional[np.ndarray]:
        """The lattice vectors (N, 3) integer each atom crossed since the search ``last``, if its
        candidates still hold every pair within the cutoff; None if a search is due."""
        if last is None:
            return None
        seen, seen_cell, seen_pbc, _ = last
        if seen.shape != pos.shape or not np.array_equal(seen_cell, cell) or not np.array_equal(seen_pbc, pbc):
            return None
        moved = pos - seen
        crossed = np.zeros(pos.shape, dtype=np.int64)
        if pbc.all() and len(pos):
            crossed = np.rint(np.linalg.solve(cell.T, moved.T).T).astype(np.int64)
            moved = moved - crossed @ cell
        # (skin / 2) less a margin for the rounding of the search's and this filter's distances
        reach = max(0.5 * self.skin - 1e-6 * (1.0 + self.cutoff), 0.0)
        if len(pos) and float(np.einsum("ij,ij->i", moved, moved).max()) >= reach * reach:
            return None
        return crossed


#: apart from the cutoff, how far the structures of one ``cluster_neighbor_lists`` search are set
#: from each other (Angstrom): no pair across two of them can be within the search radius
CLUSTER_GAP = 1.0


def cluster_neighbor_lists(positions: list, cutoff: float, *, dtype: torch.dtype = torch.float64) -> list:
    """Neighbor lists of many non-periodic structures (a list of (N_k, 3) float64 arrays, checked
    by the caller) from one vesin search: each structure is translated to its own place on a cubic
    grid whose spacing exceeds every structure's extent by more than the cutoff, so no pair crosses
    two of them, and the edges are split back per structure. One search instead of one per structure
    (a few hundred microseconds of Python and checks each, most of what a batch of small molecules
    costs besides the model). The same edges as ``neighbor_list`` of each: found with a slightly
    larger radius (the translation rounds coordinates), then kept by the strict rule d < cutoff on
    the structure's own coordinates, sorted by (i, j)."""
    sizes = np.array([len(p) for p in positions], dtype=np.int64)
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    lists = [None] * len(positions)
    if offsets[-1] == 0:
        empty = NeighborList(torch.zeros((2, 0), dtype=torch.long), torch.zeros((0, 3), dtype=torch.long),
                             torch.zeros((0, 3), dtype=dtype))
        return [empty] * len(positions)
    pos = np.concatenate([np.asarray(p, dtype=np.float64).reshape(-1, 3) for p in positions])
    owner = np.repeat(np.arange(len(positions)), sizes)
    lows = np.full((len(positions), 3), np.inf)
    highs = np.full((len(positions), 3), -np.inf)
    np.minimum.at(lows, owner, pos)
    np.maximum.at(highs, owner, pos)
    filled = sizes > 0
    spacing = float((highs[filled] - lows[filled]).max()) + cutoff + CLUSTER_GAP
    side = int(np.ceil(len(positions) ** (1 / 3)))
    k = np.arange(len(positions))
    corner = np.stack([k % side, (k // side) % side, k // (side * side)], axis=1) * spacing
    placed = pos + (corner - np.where(filled[:, None], lows, 0.0))[owner]
    if float(np.abs(placed).max()) > MAX_SPAN_CUTOFFS * cutoff:
        raise InputError(f"the structures side by side span more than {MAX_SPAN_CUTOFFS:g} cutoffs: search each alone")
    radius = float(cutoff) * (1 + 1e-9) + 1e-9 * float(np.abs(placed).max())
    i, j = vesin.NeighborList(cutoff=radius, full_list=True).compute(
        points=placed, box=np.zeros((3, 3)), periodic=False, quantities="ij")
    i, j = i.astype(np.int64), j.astype(np.int64)
    if (owner[i] != owner[j]).any():
        raise RuntimeError("cluster_neighbor_lists: a pair crosses two structures (the grid spacing is wrong)")
    i, j, _ = _within(pos, i, j, np.zeros((len(i), 3), dtype=np.int64), np.zeros((3, 3)), cutoff)
    bounds = np.searchsorted(i, offsets)
    for n, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        local = torch.from_numpy(np.stack([i[a:b], j[a:b]]) - offsets[n])
        lists[n] = NeighborList(local, torch.zeros((b - a, 3), dtype=torch.long), torch.zeros((b - a, 3), dtype=dtype))
    return lists


def _within(pos: np.ndarray, i: np.ndarray, j: np.ndarray, s: np.ndarray, cell: np.ndarray, cutoff: float,
            ordered: bool = False) -> tuple:
    """The pairs (i, j, integer shift s) a search found, kept by the strict rule d < cutoff (vesin
    includes d <= its radius), computed on ``pos`` as given, sorted by (i, j, s) (``ordered``:
    they already are)."""
    r = pos[j] - pos[i] + s @ cell
    keep = np.einsum("ij,ij->i", r, r) < cutoff * cutoff
    i, j, s = i[keep], j[keep], s[keep]
    if ordered:
        return i, j, s
    order = _order(i, j, s, len(pos))
    return i[order], j[order], s[order]


def _order(i: np.ndarray, j: np.ndarray, s: np.ndarray, n_atoms: int) -> np.ndarray:
    """The permutation that sorts pairs by (i, j, s): one stable sort of a single int64 key where it
    fits (a third of a two-key lexsort's time), else a lexsort of the five columns."""
    span = int(np.abs(s).max()) + 1 if len(s) else 1
    width = 2 * span + 1
    if float(n_atoms) ** 2 * width ** 3 < 2.0 ** 62:
        shift = ((s[:, 0] + span) * width + (s[:, 1] + span)) * width + (s[:, 2] + span)
        return np.argsort((i * n_atoms + j) * width ** 3 + shift, kind="stable")
    return np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))


def _too_many(count: str, n_atoms: int, cutoff: float, limit: int) -> str:
    return (f"{count} neighbors within the {cutoff:g} A cutoff for one atom ({n_atoms} atoms), more than "
            f"max_neighbors = {limit}: the cell is far smaller than the cutoff, or the structure has collapsed. "
            "Check the cell; pass a larger max_neighbors (e.g. PaiNNCalculator(max_neighbors=5000)) if it is meant")
