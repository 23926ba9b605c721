"""The ASE calculator: round trips through ASE and clear errors for bad structures."""

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from ase.calculators.calculator import PropertyNotImplementedError

from helpers import CPU_KERNELS, assert_kernels, evaluate
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.checkpoint import save_checkpoint
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.model.validation import InputError
from painnfx.ops.dispatch import record_calls
from strategies import SMALL_CONFIG


def _model(**kw):
    return PaiNN(PaiNNConfig(**dict(SMALL_CONFIG, seed=1, **kw)))


def test_default_calculator_runs_and_knows_its_elements():
    from ase.cluster import Icosahedron

    atoms = Icosahedron("Cu", 2)
    atoms.rattle(0.05, seed=0)
    atoms.calc = PaiNNCalculator()
    e = atoms.get_potential_energy()
    f = atoms.get_forces()
    assert np.isfinite(e) and f.shape == (13, 3)
    assert atoms.get_potential_energy(force_consistent=True) == e
    np.testing.assert_allclose(f.sum(0), 0, atol=1e-10)  # no net force on a free cluster
    water = molecule("H2O")
    water.calc = PaiNNCalculator()
    with pytest.raises(InputError, match=r"unknown element\(s\) \['H', 'O'\]"):
        water.get_potential_energy()


def test_forces_and_stress_through_ase():
    model = _model()
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=2)
    atoms.calc = PaiNNCalculator(model, optimize=False)
    ref = evaluate(model.double(), atoms, stress=True)
    np.testing.assert_allclose(atoms.get_forces(), ref.forces.numpy(), rtol=1e-12, atol=1e-12)
    s = ref.stress.numpy()
    np.testing.assert_allclose(atoms.get_stress(), [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]], rtol=1e-12)


def _strained_energy(atoms, i, j, h):
    """Energy after the symmetric strain eps_ij = eps_ji = h (i != j: h/2 each, so dE/dh = V sigma_ij)."""
    eps = np.zeros((3, 3))
    eps[i, j] += h / 2
    eps[j, i] += h / 2
    strained = atoms.copy()
    strained.calc = atoms.calc
    strained.set_cell(atoms.cell.array @ (np.eye(3) + eps), scale_atoms=True)
    return strained.get_potential_energy()


@pytest.mark.parametrize("optimize", [False, True])
def test_stress_is_the_strain_derivative_of_the_energy(optimize):
    """sigma_ij = (1/V) dE/d(eps_ij) by central differences of the energy, in float64, on a
    triclinic cell: the stress, its sign, units and Voigt order, of the plain and the fused path."""
    atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)  # primitive cells: a triclinic box
    atoms.rattle(0.05, seed=3)
    atoms.calc = PaiNNCalculator(_model(), optimize=optimize)
    with record_calls() as calls:
        stress = atoms.get_stress(voigt=False)
    assert_kernels(calls, CPU_KERNELS, SMALL_CONFIG["n_interactions"] if optimize else 0)
    h, volume = 1e-4, atoms.get_volume()
    for i, j in [(0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1)]:
        d_energy = (_strained_energy(atoms, i, j, h) - _strained_energy(atoms, i, j, -h)) / (2 * h)
        assert d_energy / volume == pytest.approx(stress[i, j], rel=1e-6, abs=1e-9), (i, j)


def test_checkpoint_path_and_float32(tmp_path):
    path = tmp_path / "m.pt"
    save_checkpoint(_model(), path)
    atoms = molecule("CH4")
    atoms.calc = PaiNNCalculator(str(path), dtype=torch.float32, optimize=False)
    e32 = atoms.get_potential_energy()
    atoms.calc = PaiNNCalculator(str(path), optimize=False)
    assert abs(e32 - atoms.get_potential_energy()) < 1e-4


def test_stress_of_a_molecule_is_not_implemented():
    atoms = molecule("H2O")
    atoms.calc = PaiNNCalculator(_model(), optimize=False)
    with pytest.raises(PropertyNotImplementedError, match="periodic"):
        atoms.get_stress()


@pytest.mark.parametrize(
    "atoms, match",
    [
        (Atoms("H2", positions=[[0, 0, 0], [np.nan, 0, 0]]), "NaN"),
        (Atoms("H2", positions=[[0, 0, 0], [0, 0, 1e-8]]), "atom 0 overlaps atom 1"),
        (Atoms("Cu", positions=[[0, 0, 0]], cell=[[1e-7, 0, 0], [0, 3, 0], [0, 0, 3]], pbc=True), "own periodic image"),
        (Atoms("Au", positions=[[0, 0, 0]]), r"unknown element\(s\) \['Au'\]"),
    ],
)
def test_bad_structures_raise_clear_errors(atoms, match):
    atoms.calc = PaiNNCalculator(_model(elements=[1, 6, 29]), optimize=False)
    with pytest.raises(InputError, match=match):
        atoms.get_potential_energy()


def test_empty_system():
    atoms = Atoms()
    atoms.calc = PaiNNCalculator(_model(), optimize=False)
    assert atoms.get_potential_energy() == 0.0
    assert atoms.get_forces().shape == (0, 3)


def test_model_argument_type_checked():
    with pytest.raises(TypeError, match="model must be"):
        PaiNNCalculator(model=42)


@pytest.mark.parametrize("optimize", [False, True])
def test_md_on_the_skin_list_is_bitwise_a_new_search_each_step(optimize):
    """NVE of hot Cu (32 atoms) with the default model: the calculator's skin list (one search
    serves many steps) gives the trajectory of a calculator that searches every step, bit for bit."""
    from ase import units
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet

    start = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    MaxwellBoltzmannDistribution(start, temperature_K=1200, rng=np.random.default_rng(3))
    runs = []
    for skin in (0.2, 0.0):  # a skin of 0.2 A: atoms move ~0.2 A, so some steps search again
        atoms = start.copy()
        atoms.calc = calc = PaiNNCalculator(optimize=optimize, setup="now", neighbor_skin=skin)
        VelocityVerlet(atoms, timestep=2 * units.fs).run(40)
        runs.append((atoms.positions.copy(), atoms.get_forces(), atoms.get_potential_energy(), calc.neighbors))
    (pos, forces, e, skinned), (pos0, forces0, e0, fresh) = runs
    assert np.array_equal(pos, pos0) and np.array_equal(forces, forces0) and e == e0
    assert fresh.searches == fresh.calls == 41
    assert 1 < skinned.searches < 10 and skinned.calls == 41
