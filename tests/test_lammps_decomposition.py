"""The LAMMPS adapter's arithmetic without LAMMPS: a domain decomposition is simulated here
(owned atoms per slab, ghosts = every periodic image within the ghost shell, full neighbor lists
of owned and ghost atoms, forces of ghosts summed onto their owners as LAMMPS's reverse
communication does), and the per-rank results must add up to the ASE calculator's energy,
forces and virial, for any number of slabs, layers and cutoffs, with and without folding."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import cKDTree

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.lammps_mliap import ELEMENT_TYPES, PaiNNMLIAP, needed_graph, write_line_atomically
from painnfx.model.validation import InputError

from helpers import perturbed_model

CUTOFF = 3.2


@pytest.fixture(scope="module")
def adapters():
    """Per number of layers: (plain PaiNN, adapter running it)."""
    out = {}
    for layers in (1, 2, 3):
        model = perturbed_model(dict(n_atom_basis=8, n_interactions=layers, n_rbf=6, cutoff=CUTOFF,
                                     elements=[28, 29], seed=layers), scale=0.05)
        out[layers] = (model, PaiNNMLIAP(model, optimize=False, skin=0.0))
    return out


def rank_data(atoms, owned: np.ndarray, lo: np.ndarray, hi: np.ndarray, shell: float):
    """What LAMMPS gives one rank: owned atoms, then every image within ``shell`` of its box
    [lo, hi) (orthorhombic cell), full neighbor lists (r < r_c) of all of them."""
    cell = atoms.cell.array
    lengths = np.diag(cell)
    reps = [int(np.ceil(shell / lengths[d])) + 1 if atoms.pbc[d] else 0 for d in range(3)]
    pos, tag = [atoms.positions[owned]], [np.flatnonzero(owned)]
    for n in itertools.product(*(range(-r, r + 1) for r in reps)):
        img = atoms.positions + np.array(n) @ cell
        inside = np.all((img >= lo - shell) & (img < hi + shell), axis=1)
        if not any(n):
            inside &= ~owned
        pos.append(img[inside])
        tag.append(np.flatnonzero(inside))
    pos, tag = np.concatenate(pos), np.concatenate(tag)
    pairs = np.array(sorted(cKDTree(pos).query_pairs(CUTOFF)), dtype=np.int64).reshape(-1, 2)
    pairs = pairs[np.sum((pos[pairs[:, 1]] - pos[pairs[:, 0]]) ** 2, axis=1) < CUTOFF**2]  # as LAMMPS: r^2 < r_c^2
    pairs = np.concatenate([pairs, pairs[:, ::-1]])
    elems = np.array([ELEMENT_TYPES.index(s) for s in atoms.get_chemical_symbols()])[tag]
    return elems, pairs[:, 0], pairs[:, 1], pos[pairs[:, 1]] - pos[pairs[:, 0]], int(owned.sum()), tag


def decomposed(adapter, atoms, slabs: int, fold: bool):
    """Energy, forces and virial summed over ``slabs`` ranks split along x."""
    n = len(atoms)
    lengths = np.diag(atoms.cell.array)
    energy, forces, virial = 0.0, np.zeros((n, 3)), np.zeros((3, 3))
    shell = adapter.n_layers * adapter.cutoff
    for k in range(slabs):
        lo, hi = np.zeros(3), lengths.copy()
        lo[0], hi[0] = k * lengths[0] / slabs, (k + 1) * lengths[0] / slabs
        owned = np.clip(np.floor(atoms.positions[:, 0] / lengths[0] * slabs), 0, slabs - 1) == k
        elems, pi, pj, rij, nlocal, tag = rank_data(atoms, owned, lo, hi, shell)
        eatoms, fij = adapter.evaluate(elems, pi, pj, rij, nlocal, tag + 1 if fold else None)
        energy += eatoms.sum()
        f = np.zeros((len(elems), 3))
        np.add.at(f, pi, fij)
        np.subtract.at(f, pj, fij)
        np.add.at(forces, tag, f)  # ghosts' forces go back to their owners
        virial += rij.T @ fij
    return energy, forces, virial


def reference(model, atoms):
    atoms = atoms.copy()
    atoms.calc = PaiNNCalculator(model, optimize=False)
    return atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress(voigt=False) * atoms.get_volume()


def crystal(reps, rattle, seed, nickel):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    rng = np.random.default_rng(seed)
    atoms.positions += rng.uniform(-rattle, rattle, atoms.positions.shape)
    atoms.numbers[rng.random(len(atoms)) < nickel] = 28
    atoms.wrap()
    return atoms


@settings(max_examples=12)
@given(layers=st.sampled_from([1, 2, 3]), slabs=st.integers(1, 3), fold=st.booleans(),
       reps=st.sampled_from([(2, 2, 2), (3, 2, 2), (2, 1, 1)]), rattle=st.floats(0.0, 0.3),
       seed=st.integers(0, 1000), nickel=st.floats(0.0, 0.5))
def test_ranks_add_up_to_ase(adapters, layers, slabs, fold, reps, rattle, seed, nickel):
    model, adapter = adapters[layers]
    atoms = crystal(reps, rattle, seed, nickel)
    e, f, w = decomposed(adapter, atoms, slabs, fold)
    e_ref, f_ref, w_ref = reference(model, atoms)
    assert abs(e - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert np.abs(f - f_ref).max() <= 1e-10 * max(np.abs(f_ref).max(), 1.0)
    assert np.abs(w - w_ref).max() <= 1e-10 * max(np.abs(w_ref).max(), 1.0)


def test_one_rank_folds_to_the_periodic_graph(adapters):
    """On one rank every ghost is an image of an owned atom: the model runs on the owned atoms
    with exactly the ASE edge count, however thick the ghost shell."""
    _, adapter = adapters[3]
    atoms = crystal((2, 2, 2), 0.1, 0, 0.0)
    elems, pi, pj, rij, nlocal, tag = rank_data(atoms, np.ones(len(atoms), bool), np.zeros(3),
                                                np.diag(atoms.cell.array), 3 * CUTOFF)
    graph = needed_graph(pi, pj, nlocal, len(elems), 3, tag + 1)
    assert len(graph.atoms) == len(atoms)
    assert (pi[graph.pairs] < nlocal).all() and len(graph.pairs) == int((pi < nlocal).sum())


def test_isolated_atoms_and_empty_ranks(adapters):
    """No pairs at all (atoms farther apart than the cutoff), and a rank that owns nothing."""
    model, adapter = adapters[2]
    atoms = crystal((2, 2, 2), 0.0, 0, 0.0)
    atoms.set_cell(atoms.cell.array * 3, scale_atoms=True)  # nearest neighbors at 7.7 A > r_c
    e, f, _ = decomposed(adapter, atoms, 3, True)
    e_ref, f_ref, _ = reference(model, atoms)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref) and np.abs(f).max() == 0.0 == np.abs(f_ref).max()
    empty = adapter.evaluate(np.zeros(0, np.int64), np.zeros(0), np.zeros(0), np.zeros((0, 3)), 0, np.zeros(0))
    assert empty[0].shape == (0,) and empty[1].shape == (0, 3)


def test_missing_ghost_lists_are_detected(adapters):
    _, adapter = adapters[2]
    atoms = crystal((2, 2, 2), 0.05, 1, 0.0)
    lengths = np.diag(atoms.cell.array)
    owned = atoms.positions[:, 0] < lengths[0] / 2
    elems, pi, pj, rij, nlocal, tag = rank_data(atoms, owned, np.zeros(3), lengths * [0.5, 1, 1], 2 * CUTOFF)
    only_owned = pi < nlocal  # what `pair_style mliap unified FILE 0` lists
    with pytest.raises(InputError, match="neighbor lists of ghost atoms"):
        adapter.evaluate(elems, pi[only_owned], pj[only_owned], rij[only_owned], nlocal, tag + 1)


def test_unknown_element_is_named(adapters):
    _, adapter = adapters[1]
    atoms = crystal((2, 1, 1), 0.05, 2, 0.0)
    atoms.numbers[0] = 79
    elems, pi, pj, rij, nlocal, tag = rank_data(atoms, np.ones(len(atoms), bool), np.zeros(3),
                                                np.diag(atoms.cell.array), CUTOFF)
    with pytest.raises(InputError, match=r"unknown element\(s\) \['Au'\].*knows only \['Ni', 'Cu'\]"):
        adapter.evaluate(elems, pi, pj, rij, nlocal, tag + 1)


def test_model_file_round_trip_and_float32(tmp_path, adapters):
    from painnfx.model.lammps_mliap import load

    model, adapter = adapters[2]
    adapter.save(tmp_path / "m.pkl")
    again = load(tmp_path / "m.pkl")
    assert again.comm_cutoff == adapter.comm_cutoff and again.element_types == ELEMENT_TYPES
    atoms = crystal((2, 2, 2), 0.1, 3, 0.3)
    e64, f64, _ = decomposed(again, atoms, 2, True)
    f32 = PaiNNMLIAP(model, dtype=torch.float32, optimize=False, skin=0.0)
    e32, f32_, _ = decomposed(f32, atoms, 2, True)
    assert abs(e32 - e64) <= 1e-5 * max(abs(e64), 1.0)
    assert np.abs(f32_ - f64).max() <= 1e-4 * max(np.abs(f64).max(), 1.0)


@pytest.mark.parametrize("slabs", [1, 2])
def test_one_atom_with_its_own_images(adapters, slabs):
    """One atom in a 2.7 A cubic cell: its neighbors are its own periodic images (folded onto
    itself: self-edges with r_ij a cell vector); with 2 slabs one rank owns nothing."""
    from ase import Atoms

    model, adapter = adapters[3]
    atoms = Atoms("Cu", positions=[[0.3, 0.2, 0.1]], cell=np.eye(3) * 2.7, pbc=True)
    e, f, w = decomposed(adapter, atoms, slabs, True)
    e_ref, f_ref, w_ref = reference(model, atoms)
    assert abs(e - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert np.abs(f - f_ref).max() <= 1e-10
    assert np.abs(w - w_ref).max() <= 1e-10 * max(np.abs(w_ref).max(), 1.0)


def test_atoms_at_exactly_the_cutoff(adapters):
    """A pair at exactly r_c is no pair for LAMMPS (r < r_c) and contributes exactly nothing in ASE."""
    from ase import Atoms

    model, adapter = adapters[2]
    atoms = Atoms("CuNiCu", positions=[[0.5, 5, 5], [3.7, 5, 5], [0.5, 7.5, 5]], cell=np.eye(3) * 20, pbc=True)
    assert atoms.get_distance(0, 1) == CUTOFF
    e, f, _ = decomposed(adapter, atoms, 2, True)
    e_ref, f_ref, _ = reference(model, atoms)
    assert abs(e - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert np.abs(f - f_ref).max() <= 1e-10 * max(np.abs(f_ref).max(), 1.0)


@pytest.mark.parametrize("fold", [True, False])
def test_joint_graph_ranks_add_up_to_ase(adapters, fold):
    """The adapter through the fused model's joint graph (per-atom energies of the owned atoms and
    dE/dr_ij traced ahead of time, traced on a 7-atom example and run on each rank's sizes): the
    ranks still add up to the ASE calculator's energy, forces and virial."""
    from helpers import JointKernels
    from painnfx.rewriter.joint import JointGraphs

    model, _ = adapters[2]
    adapter = PaiNNMLIAP(model, optimize=True, skin=0.0)
    fast = adapter.evaluator
    fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    atoms = crystal((3, 2, 2), 0.2, 7, 0.3)
    with JointKernels() as ran:
        e, f, w = decomposed(adapter, atoms, 2, fold)
    assert ran.calls[("painn_message_backward", "cpp")] > 0  # the fused backward ran (in the joint graph)
    assert "lammps pair forces" in fast.report.joint["graphs"]
    assert "rejected" not in fast.report.joint
    e_ref, f_ref, w_ref = reference(model, atoms)
    assert abs(e - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert np.abs(f - f_ref).max() <= 1e-10 * max(np.abs(f_ref).max(), 1.0)
    assert np.abs(w - w_ref).max() <= 1e-10 * max(np.abs(w_ref).max(), 1.0)


def test_rank_summary_is_one_write(monkeypatch):
    """The per-rank summary leaves in one write of line plus newline: the ranks share stderr, and
    two writes (print's) let another rank's line land in between (two summaries on one line)."""
    import io
    import os
    import sys

    read_fd, write_fd = os.pipe()
    stream = io.TextIOWrapper(io.FileIO(write_fd, "w"), write_through=True)  # unbuffered, as in LAMMPS
    writes = []
    real_write = os.write
    monkeypatch.setattr(sys, "stderr", stream)
    monkeypatch.setattr(os, "write", lambda fd, data: writes.append((fd, bytes(data))) or real_write(fd, data))
    try:
        write_line_atomically("painnfx: summary")
    finally:
        monkeypatch.undo()
        stream.close()
    assert writes == [(write_fd, b"painnfx: summary\n")]
    assert os.read(read_fd, 100) == b"painnfx: summary\n"
    os.close(read_fd)
