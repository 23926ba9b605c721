"""Physical properties of the eager PaiNN: symmetries, extensivity, forces and stress as derivatives."""

import numpy as np
import pytest
import torch
from ase import Atoms
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import evaluate, system_tensors
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.model.properties import compute_properties
from strategies import SMALL_CONFIG, model_configs, molecules, periodic_cells, random_rotation


def _model(seed=0, **kw):
    cfg = dict(SMALL_CONFIG, seed=seed)
    cfg.update(kw)
    return PaiNN(PaiNNConfig(**cfg)).double()


@given(model_configs(), molecules(), st.integers(0, 2**31))
def test_rotation_translation_invariance(cfg, atoms, seed):
    model = PaiNN(PaiNNConfig(**cfg)).double()
    rng = np.random.default_rng(seed)
    ref = evaluate(model, atoms)
    rot = random_rotation(rng)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + rng.normal(size=3) * 5
    out = evaluate(model, moved)
    torch.testing.assert_close(out.energy, ref.energy, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.forces, ref.forces @ torch.tensor(rot.T), rtol=1e-9, atol=1e-10)


@given(periodic_cells(mixed_pbc=False), st.integers(0, 2**31))
def test_periodic_rotation_invariance_and_stress_covariance(atoms, seed):
    model = _model()
    rng = np.random.default_rng(seed)
    rot = random_rotation(rng)
    ref = evaluate(model, atoms, stress=True)
    moved = atoms.copy()
    moved.set_cell(atoms.cell.array @ rot.T, scale_atoms=False)
    moved.positions = atoms.positions @ rot.T
    out = evaluate(model, moved, stress=True)
    R = torch.tensor(rot)
    torch.testing.assert_close(out.energy, ref.energy, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.stress, R @ ref.stress @ R.T, rtol=1e-8, atol=1e-10)


@given(molecules(), st.integers(0, 2**31))
def test_permutation_invariance(atoms, seed):
    model = _model()
    perm = np.random.default_rng(seed).permutation(len(atoms))
    ref = evaluate(model, atoms)
    out = evaluate(model, atoms[perm])
    torch.testing.assert_close(out.energy, ref.energy, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.forces, ref.forces[perm], rtol=1e-9, atol=1e-10)


@given(molecules(max_atoms=6))
def test_extensive_for_far_apart_copies(atoms):
    model = _model()
    far = atoms.copy()
    far.positions += np.array([100.0, 0, 0])
    both = atoms + far
    e1 = evaluate(model, atoms).energy
    e2 = evaluate(model, both).energy
    torch.testing.assert_close(e2, 2 * e1, rtol=1e-10, atol=1e-10)


@settings(max_examples=10)
@given(model_configs(), molecules(max_atoms=5))
def test_forces_are_minus_finite_difference_gradient(cfg, atoms):
    model = PaiNN(PaiNNConfig(**cfg)).double()
    out = evaluate(model, atoms)
    pos, numbers, nl, _ = system_tensors(atoms, model.cutoff)
    h = 1e-5
    fd = torch.zeros_like(pos)
    for a in range(len(atoms)):
        for c in range(3):
            e = []
            for sgn in (1, -1):
                p = pos.clone()
                p[a, c] += sgn * h
                e.append(model(p, numbers, nl.edge_index, nl.shifts).item())  # same edges
            fd[a, c] = -(e[0] - e[1]) / (2 * h)
    torch.testing.assert_close(out.forces, fd, rtol=1e-6, atol=1e-7)


@settings(max_examples=8)
@given(periodic_cells(mixed_pbc=False, max_atoms=4))
def test_stress_matches_ase_numerical_stress(atoms):
    from painnfx.model.calculator import PaiNNCalculator

    atoms.calc = PaiNNCalculator(_model(), optimize=False)
    analytic = atoms.get_stress()
    numeric = atoms.calc.calculate_numerical_stress(atoms, d=1e-6)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-8)


def test_batched_energy_equals_separate_systems():
    model = _model()
    a = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    b = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    pa, za, nla, _ = system_tensors(a, model.cutoff)
    pb, zb, nlb, _ = system_tensors(b, model.cutoff)
    pos = torch.cat([pa, pb])
    z = torch.cat([za, zb])
    ei = torch.cat([nla.edge_index, nlb.edge_index + len(a)], 1)
    sh = torch.cat([nla.shifts, nlb.shifts])
    batch = torch.tensor([0] * len(a) + [1] * len(b))
    out = compute_properties(model, pos, z, ei, sh, batch=batch, n_systems=2)
    ra, rb = evaluate(model, a), evaluate(model, b)
    torch.testing.assert_close(out.energy, torch.cat([ra.energy, rb.energy]))
    torch.testing.assert_close(out.forces, torch.cat([ra.forces, rb.forces]))


def test_float32_close_to_float64():
    model = _model()
    atoms = Atoms("CH4", positions=[[0, 0, 0], [0.63, 0.63, 0.63], [-0.63, -0.63, 0.63], [-0.63, 0.63, -0.63], [0.63, -0.63, -0.63]])
    r64 = evaluate(model, atoms)
    r32 = evaluate(model.float(), atoms, dtype=torch.float32)
    torch.testing.assert_close(r32.energy.double(), r64.energy, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(r32.forces.double(), r64.forces, rtol=1e-4, atol=1e-5)


def test_isolated_atoms_have_zero_force_and_reference_energy():
    model = _model()
    model.atomref[29] = -3.5
    atoms = Atoms("Cu2", positions=[[0, 0, 0], [50, 0, 0]])
    out = evaluate(model, atoms)
    assert torch.all(out.forces == 0)
    single = evaluate(model, atoms[:1])
    torch.testing.assert_close(out.energy, 2 * single.energy)


def test_seeded_models_are_deterministic_and_leave_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = PaiNN(PaiNNConfig(**SMALL_CONFIG, seed=7))
    after = torch.rand(1)
    b = PaiNN(PaiNNConfig(**SMALL_CONFIG, seed=7))
    assert before == after
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert torch.equal(va, vb), ka


@pytest.mark.parametrize("bad", [dict(radial_basis="cheby"), dict(n_rbf=0), dict(elements=[0])])
def test_bad_config_rejected(bad):
    with pytest.raises(ValueError):
        PaiNNConfig(**dict(SMALL_CONFIG, **bad))


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda p, z, e, s: (p.float(), z, e, s.float()), "dtype torch.float32 but the model's parameters are torch.float64"),
        (lambda p, z, e, s: (p, z.double(), e, s), "numbers must be an integer tensor"),
        (lambda p, z, e, s: (p, z, e.int(), s), "edge_index must be int64"),
        (lambda p, z, e, s: (p, z, e, s[:1]), "shifts must have shape"),
        (lambda p, z, e, s: (p, z, e + 5, s), "outside"),
        (lambda p, z, e, s: (p * float("nan"), z, e, s), "NaN"),
    ],
)
def test_bad_tensors_are_named(change, match):
    from painnfx.model.validation import InputError

    model = _model()
    atoms = Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    pos, z, nl, _ = system_tensors(atoms, model.cutoff)
    with pytest.raises(InputError, match=match):
        compute_properties(model, *change(pos, z, nl.edge_index, nl.shifts))


@pytest.mark.parametrize("bad", ["nan", "inf", "-inf"])
def test_non_finite_positions_are_named(bad):
    from painnfx.model.default import random_model
    from painnfx.ops import InputError

    model = random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4).double()
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.2, 0.0]], dtype=torch.float64)
    pos[1, 2] = float(bad)
    edge_index = torch.tensor([[0, 1, 0, 2], [1, 0, 2, 0]])
    with pytest.raises(InputError, match="positions contain NaN or inf"):
        compute_properties(model, pos, torch.tensor([1, 1, 8]), edge_index, torch.zeros(4, 3, dtype=torch.float64))


def test_huge_finite_positions_are_not_mistaken_for_inf():
    """The finiteness check sums the positions first: a sum that overflows from finite values
    takes the elementwise check, which passes (an isolated far-away atom is valid input)."""
    from painnfx.model.default import random_model

    model = random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4).double()
    pos = torch.tensor([[0.0, 0.0, 0.0], [1e308, 1e308, 1e308]], dtype=torch.float64)
    out = compute_properties(model, pos, torch.tensor([1, 1]), torch.zeros(2, 0, dtype=torch.long),
                             torch.zeros(0, 3, dtype=torch.float64))
    assert torch.isfinite(out.energy).all() and torch.equal(out.forces, torch.zeros_like(pos))


def test_edge_indices_out_of_range_are_named():
    from painnfx.model.default import random_model
    from painnfx.ops import InputError

    model = random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4).double()
    pos = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    for edge_index in (torch.tensor([[0, 2], [1, 0]]), torch.tensor([[0, -1], [1, 0]])):
        with pytest.raises(InputError, match="edge_index refers to atoms outside 0..1"):
            compute_properties(model, pos, torch.tensor([1, 1]), edge_index, torch.zeros(2, 3, dtype=torch.float64))
