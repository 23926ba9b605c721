"""painnfx models as OpenMM forces (PythonForce): energies and forces equal the ASE calculator's."""

from __future__ import annotations

import numpy as np
import pytest
from ase.build import bulk
from ase.cluster import Icosahedron

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.openmm_force import EV_TO_KJ_PER_MOL, NM, painn_force
from painnfx.model.validation import InputError
from painnfx.ops.dispatch import record_calls

from helpers import CPU_KERNELS, assert_kernels, env_import, perturbed_model

openmm = env_import("openmm")
from openmm import unit  # noqa: E402

pytestmark = pytest.mark.openmm


def periodic_cu():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    atoms.rattle(0.1, seed=7)
    return atoms


def cuni_cluster():
    atoms = Icosahedron("Cu", 3)
    atoms.numbers[::3] = 28
    atoms.rattle(0.05, seed=11)
    return atoms


@pytest.fixture(scope="module")
def cuni_model():
    return perturbed_model(dict(n_atom_basis=16, n_interactions=2, n_rbf=8, cutoff=4.0, elements=[28, 29], seed=3),
                           scale=0.05)


def openmm_system(atoms, force):
    system = openmm.System()
    for m in atoms.get_masses():
        system.addParticle(m)
    if atoms.pbc.all():
        system.setDefaultPeriodicBoxVectors(*(openmm.Vec3(*v) for v in atoms.cell.array / NM))
    system.addForce(force)
    return system


def energy_forces(system, positions_angstrom):
    context = openmm.Context(system, openmm.VerletIntegrator(0.001), openmm.Platform.getPlatformByName("Reference"))
    context.setPositions(positions_angstrom / NM)
    state = context.getState(getEnergy=True, getForces=True)
    e = state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole) / EV_TO_KJ_PER_MOL
    f = np.asarray(state.getForces(asNumpy=True).value_in_unit(unit.kilojoule_per_mole / unit.nanometer))
    return e, f / (EV_TO_KJ_PER_MOL * NM), context


def reference(atoms, model=None):
    atoms = atoms.copy()
    atoms.calc = PaiNNCalculator(model, optimize=False)
    return atoms.get_potential_energy(), atoms.get_forces()


@pytest.mark.parametrize("optimize, layers", [(True, 3), (False, 0)])
def test_periodic_cu_matches_ase(optimize, layers):
    """optimize=True: every OpenMM evaluation ran the fused graph on the C++ kernels."""
    atoms = periodic_cu()
    system = openmm_system(atoms, painn_force(atoms.numbers, periodic=True, optimize=optimize))
    energy_forces(system, atoms.positions + 0.01)  # the model is set up (optimized, verified) on first use
    with record_calls() as calls:
        e, f, _ = energy_forces(system, atoms.positions)
    assert_kernels(calls, CPU_KERNELS, layers)  # one evaluation (energy and forces), 3 layers
    e_ref, f_ref = reference(atoms)
    assert abs(e - e_ref) <= 1e-10 * abs(e_ref)
    assert np.abs(f - f_ref).max() <= 1e-10 * np.abs(f_ref).max()


def test_cluster_subset_of_particles_matches_ase(cuni_model):
    """The force on a subset of a System's particles: the others are invisible to the model."""
    atoms = cuni_cluster()
    particles = list(range(3, 3 + len(atoms)))  # 3 particles without this force come first
    pos = np.concatenate([np.full((3, 3), 40.0) + np.arange(3)[:, None] * 5, atoms.positions])
    system2 = openmm.System()
    masses = [1.0] * 3 + list(atoms.get_masses())
    for m in masses:
        system2.addParticle(m)
    system2.addForce(painn_force(atoms.numbers, cuni_model, particles=particles, optimize=True))
    energy_forces(system2, pos + 0.01)
    with record_calls() as calls:
        e, f, _ = energy_forces(system2, pos)
    assert_kernels(calls, CPU_KERNELS, 2)
    e_ref, f_ref = reference(atoms, cuni_model)
    assert abs(e - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert np.abs(f[3:] - f_ref).max() <= 1e-10 * np.abs(f_ref).max()
    assert np.abs(f[:3]).max() == 0.0


def test_md_steps_and_xml_round_trip():
    atoms = periodic_cu()
    system = openmm_system(atoms, painn_force(atoms.numbers, periodic=True, optimize=False))
    e0, _, context = energy_forces(system, atoms.positions)
    context.setVelocitiesToTemperature(300 * unit.kelvin, 1)
    integrator = context.getIntegrator()
    integrator.step(10)
    state = context.getState(getEnergy=True, getPositions=True)
    assert np.isfinite(state.getPotentialEnergy().value_in_unit(unit.kilojoule_per_mole))
    # a serialized System (the force's computation is pickled) gives the same numbers
    copy = openmm.XmlSerializer.deserialize(openmm.XmlSerializer.serialize(system))
    e1, _, _ = energy_forces(copy, atoms.positions)
    assert abs(e1 - e0) <= 1e-12 * abs(e0)


def test_unknown_element_is_refused():
    atoms = periodic_cu()
    numbers = atoms.numbers.copy()
    numbers[0] = 79  # Au: the default model knows Cu only
    system = openmm_system(atoms, painn_force(numbers, periodic=True, optimize=False))
    with pytest.raises(Exception, match="unknown element"):
        energy_forces(system, atoms.positions)


def test_wrong_particle_count_is_refused():
    with pytest.raises(ValueError, match="particles but"):
        painn_force([29, 29], particles=[0])


def test_input_error_type():
    assert issubclass(InputError, ValueError)
