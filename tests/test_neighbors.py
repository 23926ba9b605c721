"""The vesin-based neighbor list against ASE's, on the edge cases that break neighbor lists."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.model.neighbors import SkinNeighborList, cluster_neighbor_lists, neighbor_list
from painnfx.model.validation import InputError
from strategies import molecules, periodic_cells


def _edge_set(i, j, S):
    return sorted(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(S).tolist())))


def _compare_with_ase(atoms, cutoff):
    nl = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc)
    i, j, S, d = ase_neighbor_list("ijSd", atoms, cutoff)
    keep = d < cutoff  # both libraries use "<=" at the boundary; painnfx keeps d < cutoff
    ours = _edge_set(nl.edge_index[0], nl.edge_index[1], nl.cell_shifts)
    assert ours == _edge_set(i[keep], j[keep], S[keep])
    r = atoms.positions[nl.edge_index[1]] - atoms.positions[nl.edge_index[0]] + nl.shifts.numpy()
    assert np.all(np.linalg.norm(r, axis=1) < cutoff)
    return nl


@given(periodic_cells(max_atoms=6), st.floats(1.0, 5.0))
def test_periodic_matches_ase(atoms, cutoff):
    _compare_with_ase(atoms, cutoff)


@given(molecules(max_atoms=10), st.floats(0.5, 4.0))
def test_molecules_match_ase(atoms, cutoff):
    _compare_with_ase(atoms, cutoff)


def test_list_is_symmetric_with_opposite_shifts():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.0, 0.4, 0.2]], cell=np.diag([2.1, 2.5, 2.9]), pbc=True)
    nl = neighbor_list(atoms.positions, 4.0, atoms.cell.array, atoms.pbc)
    fwd = _edge_set(nl.edge_index[0], nl.edge_index[1], nl.cell_shifts)
    rev = _edge_set(nl.edge_index[1], nl.edge_index[0], -nl.cell_shifts)
    assert fwd == rev


def test_single_atom_sees_its_own_images():
    atoms = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=np.eye(3) * 2.0, pbc=True)
    nl = _compare_with_ase(atoms, 3.0)
    assert nl.n_edges > 0
    assert bool((nl.edge_index[0] == nl.edge_index[1]).all())
    assert bool((nl.cell_shifts.abs().sum(1) > 0).all())


def test_empty_and_isolated_and_one_atom():
    assert neighbor_list(np.zeros((0, 3)), 5.0).n_edges == 0
    assert neighbor_list(np.zeros((1, 3)), 5.0).n_edges == 0
    nl = neighbor_list(np.array([[0.0, 0, 0], [1.0, 0, 0], [20.0, 0, 0]]), 3.0)
    assert nl.n_edges == 2
    assert 2 not in nl.edge_index.flatten().tolist()


def test_pair_exactly_at_cutoff_is_excluded():
    nl = neighbor_list(np.array([[0.0, 0, 0], [2.5, 0, 0]]), 2.5)
    assert nl.n_edges == 0
    nl = neighbor_list(np.array([[0.0, 0, 0], [2.5 - 1e-9, 0, 0]]), 2.5)
    assert nl.n_edges == 2


def test_mixed_periodicity_with_zero_cell_vector():
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [1.2, 1.2, 0.5]], cell=[[2.5, 0, 0], [0, 2.5, 0], [0, 0, 0]], pbc=[True, True, False])
    _compare_with_ase(atoms, 3.0)


def test_shifts_follow_dtype():
    nl = neighbor_list(np.zeros((1, 3)), 3.0, np.eye(3) * 2, True, dtype=torch.float32)
    assert nl.shifts.dtype == torch.float32 and nl.edge_index.dtype == torch.long


@pytest.mark.parametrize(
    "pos, cell, pbc, match",
    [
        ([[0, 0, 0], [np.nan, 0, 0]], None, False, "NaN"),
        ([[0, 0, 0], [np.inf, 0, 0]], None, False, "NaN or inf"),
        ([[0, 0, 0]], np.zeros((3, 3)), True, "cell vector 0 is zero"),
        ([[0, 0, 0]], [[1, 0, 0], [2, 0, 0], [0, 0, 1]], True, "linearly dependent"),
        ([[0, 0]], None, False, r"shape \(N, 3\)"),
    ],
)
def test_bad_inputs_raise(pos, cell, pbc, match):
    with pytest.raises(ValueError, match=match):
        neighbor_list(np.array(pos, dtype=float), 3.0, cell, pbc)


def test_input_error_is_value_error():
    assert issubclass(InputError, ValueError)


@given(st.lists(molecules(max_atoms=13), min_size=1, max_size=40), st.floats(0.5, 5.0),
       st.lists(st.floats(-300.0, 300.0), min_size=3, max_size=3))
def test_one_search_for_many_clusters_equals_each_alone(clusters, cutoff, offset):
    """The shared search of many non-periodic structures (each moved to its own place on a grid)
    gives each one the edges, order and zero shifts of its own search, wherever the structures
    sit; empty structures and pairs exactly at the cutoff included."""
    positions = [a.positions + np.array(offset) for a in clusters]
    positions += [np.zeros((0, 3)), np.array([[0.0, 0, 0], [cutoff, 0, 0], [0, cutoff - 1e-9, 0]])]
    for alone, shared in zip([neighbor_list(p, cutoff) for p in positions],
                             cluster_neighbor_lists(positions, cutoff), strict=True):
        assert torch.equal(shared.edge_index, alone.edge_index)
        assert torch.equal(shared.cell_shifts, alone.cell_shifts) and torch.equal(shared.shifts, alone.shifts)
    assert cluster_neighbor_lists(positions[-1:], cutoff)[0].edge_index.tolist() == [[0, 2], [2, 0]]


def test_a_shared_search_beyond_the_span_is_refused():
    """Structures that side by side would span more than the neighbor search handles are refused
    (the batch then searches each alone)."""
    far = [np.array([[0.0, 0, 0], [2e4, 0, 0]])] * 8  # each within the span alone, not on a 2 x 2 x 2 grid
    with pytest.raises(InputError, match="search each alone"):
        cluster_neighbor_lists(far, 1.0)


# --- one search along a trajectory (SkinNeighborList) ---------------------------------------------


def _same(a, b):
    assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.cell_shifts, b.cell_shifts)
    assert torch.equal(a.shifts, b.shifts)


@settings(max_examples=40, deadline=None)
@given(atoms=st.one_of(periodic_cells(max_atoms=6), molecules(max_atoms=8)), cutoff=st.floats(1.0, 4.0),
       skin=st.sampled_from([0.0, 0.3, 1.0]), seed=st.integers(0, 2**16),
       steps=st.lists(st.sampled_from(["small", "large", "cell", "wrap"]), min_size=1, max_size=12))
def test_a_skin_list_equals_a_new_search_along_a_trajectory(atoms, cutoff, skin, seed, steps):
    """Random walks of drawn cells (atoms that see their own images) and molecules: steps below and
    above half the skin, changed cells, atoms moved by lattice vectors (wrapped). Every call gives
    neighbor_list's edges, shifts and order exactly; a search runs only when one is due."""
    rng = np.random.default_rng(seed)
    skinned = SkinNeighborList(cutoff, skin)
    pos, cell = atoms.positions.copy(), atoms.cell.array.copy()
    _same(skinned(pos, cell, atoms.pbc), neighbor_list(pos, cutoff, cell, atoms.pbc))
    seen, seen_cell = pos.copy(), cell.copy()  # where the last search saw the atoms
    for step in steps:
        before = skinned.searches
        if step == "small":
            pos = pos + rng.uniform(-1, 1, pos.shape) * 0.2 * skin / np.sqrt(3)
        elif step == "large":
            pos = pos + rng.normal(scale=0.5, size=pos.shape)
        elif step == "cell" and atoms.pbc.any():
            cell = cell * (1 + 0.01 * rng.uniform(-1, 1))
        elif step == "wrap" and atoms.pbc.all() and len(pos):
            pos[0] += cell[0] - cell[2]  # the same structure, one atom two images away: its shifts follow
        try:
            want = neighbor_list(pos, cutoff, cell, atoms.pbc)
        except InputError as exc:  # overlapping or spread too far: the skin list refuses the same
            with pytest.raises(InputError, match=str(exc)[:30].replace("(", r"\(")):
                skinned(pos, cell, atoms.pbc)
            return
        _same(skinned(pos, cell, atoms.pbc), want)
        moved = pos - seen
        if atoms.pbc.all() and len(pos):  # an atom wrapped by lattice vectors has moved only the rest
            moved = moved - np.rint(np.linalg.solve(cell.T, moved.T).T) @ cell
        moved = float(np.linalg.norm(moved, axis=1).max()) if len(pos) else 0.0
        if np.array_equal(cell, seen_cell) and moved < 0.49 * skin:
            assert skinned.searches == before  # the candidates still hold every pair
        elif moved > 0.5 * skin or not np.array_equal(cell, seen_cell):
            assert skinned.searches == before + 1
        if skinned.searches > before:
            seen, seen_cell = pos.copy(), cell.copy()


def test_a_skin_list_searches_when_an_atom_moves_half_the_skin():
    atoms = Atoms("Cu4", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0], [0, 0, 2.5]])
    skinned = SkinNeighborList(3.0, skin=1.0)
    pos = atoms.positions.copy()
    skinned(pos)
    pos[1, 0] += 0.49
    skinned(pos)
    assert (skinned.searches, skinned.calls) == (1, 2)
    pos[1, 0] += 0.02  # 0.51 A from where the search saw it
    _same(skinned(pos), neighbor_list(pos, 3.0))
    assert skinned.searches == 2


def test_a_skin_list_checks_every_call():
    skinned = SkinNeighborList(3.0, skin=1.0, max_neighbors=2)
    pos = np.array([[0.0, 0, 0], [2.0, 0, 0]])
    skinned(pos)
    bad = pos.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        skinned(bad)
    # three atoms far away keep the density estimate (checked before a search) low
    crowd = np.array([[0.0, 0, 0], [2.0, 0, 0], [0, 2.0, 0], [0, 0, 3.2], [30, 0, 0], [0, 30, 0], [0, 0, 30]])
    skinned(crowd)  # at most two neighbors each within 3 A
    crowd[3, 2] = 2.9  # 0.3 A: no new search, and a third neighbor of atom 0
    with pytest.raises(InputError, match="more than max_neighbors = 2"):
        skinned(crowd)
    assert skinned.searches == 2
    with pytest.raises(InputError, match="skin"):
        SkinNeighborList(3.0, skin=-1.0)


def test_a_skin_list_shared_by_threads_gives_each_its_own_structures_edges():
    """Threads that share one list, each walking its own structure (so each call may find the
    other's search): every call still equals a new search of its own positions."""
    import threading

    from ase.build import bulk

    structures = [bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2), bulk("Cu", "fcc", a=3.7, cubic=True) * (2, 2, 2)]
    shared = SkinNeighborList(4.0, skin=0.5)
    errors = []

    def walk(atoms, seed):
        rng = np.random.default_rng(seed)
        try:
            for _ in range(40):
                pos = atoms.positions + rng.normal(scale=0.05, size=atoms.positions.shape)
                _same(shared(pos, atoms.cell.array, True), neighbor_list(pos, 4.0, atoms.cell.array, True))
        except Exception as exc:  # reported below, in the test's own thread
            errors.append(exc)

    threads = [threading.Thread(target=walk, args=(a, k)) for k, a in enumerate(structures)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors


def test_the_edge_order_is_by_atoms_then_shift_with_either_sort():
    """The one-key sort and the five-column lexsort (for keys that would not fit int64) agree."""
    from painnfx.model.neighbors import _order

    rng = np.random.default_rng(0)
    i, j = rng.integers(0, 5, 400), rng.integers(0, 5, 400)
    s = rng.integers(-3, 4, (400, 3))
    want = np.lexsort((s[:, 2], s[:, 1], s[:, 0], j, i))
    assert np.array_equal(_order(i, j, s, 5), want)
    assert np.array_equal(_order(i, j, s, 2**31), want)  # n^2 w^3 beyond int64: the lexsort
