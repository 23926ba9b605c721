"""painnfx PaiNN as a torch-sim model: static evaluation, batched FIRE with a cell filter and
batched NVE against ASE run one system at a time."""

import numpy as np
import pytest
import torch
from ase.build import bulk

from helpers import CPU_KERNELS, assert_fused, env_import
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.default import default_model, random_model
from painnfx.ops.dispatch import record_calls

ts = env_import("torch_sim")
from painnfx.model.torchsim import PaiNNModel  # noqa: E402  (after the optional import check)

pytestmark = pytest.mark.torchsim


def _cells(n=3, strain=0.02, rattle=0.05):
    cells = []
    for k in range(n):
        a = bulk("Cu", "fcc", a=3.61, cubic=True) * (1 + k % 2, 1, 1)
        a.set_cell(a.cell.array @ (np.eye(3) + strain * np.random.default_rng(k).uniform(-1, 1, (3, 3))),
                   scale_atoms=True)
        a.rattle(rattle, seed=k)
        cells.append(a)
    return cells


@pytest.mark.parametrize("optimize", [False, True])
def test_static_equals_the_ase_calculator_per_system(optimize):
    model = default_model()
    cells = _cells()
    ts_model = PaiNNModel(model, optimize=optimize)
    state = ts.io.atoms_to_state(cells, torch.device("cpu"), torch.float64)
    with record_calls() as calls:
        out = ts_model(state)
    if optimize:  # the fused graph ran, on the C++ kernels
        assert_fused(ts_model.model.report, 3)
        assert calls[("painn_message", CPU_KERNELS)] == 3 and calls[("painn_message_backward", CPU_KERNELS)] == 3
    assert out["energy"].shape == (3,) and out["forces"].shape == (state.n_atoms, 3)
    assert out["stress"].shape == (3, 3, 3)
    calc = PaiNNCalculator(model, optimize=False)
    start = 0
    for k, atoms in enumerate(cells):
        atoms = atoms.copy()
        atoms.calc = calc
        n = len(atoms)
        np.testing.assert_allclose(out["energy"][k].item(), atoms.get_potential_energy(), rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(out["forces"][start:start + n].numpy(), atoms.get_forces(), atol=1e-10)
        np.testing.assert_allclose(out["stress"][k].numpy(), atoms.get_stress(voigt=False), atol=1e-10)
        start += n
    static = ts.static(state, ts_model)  # torch-sim's own runner
    np.testing.assert_allclose([r["potential_energy"].item() for r in static], out["energy"].numpy(), rtol=1e-12)


def test_torch_sims_interface_validation_and_both_spellings_of_the_system_index():
    """torch-sim's validate_model_outputs (Si and Fe cells: a model for those elements), and a
    state dict that names the system index ``batch`` (torch-sim < 0.3) or ``system_idx``."""
    from torch_sim.models.interface import validate_model_outputs

    model = PaiNNModel(random_model(0, n_atom_basis=8, n_interactions=2, n_rbf=6), optimize=False)
    validate_model_outputs(model, torch.device("cpu"), torch.float64)
    state = ts.io.atoms_to_state(_cells(2), torch.device("cpu"), torch.float64)
    fields = dict(positions=state.positions, cell=state.cell, pbc=state.pbc, atomic_numbers=state.atomic_numbers)
    new = model(dict(fields, system_idx=state.system_idx))
    old = model(dict(fields, batch=state.system_idx))
    for key in ("energy", "forces", "stress"):
        torch.testing.assert_close(new[key], old[key], rtol=0, atol=0)
    with pytest.raises(ValueError, match="non-decreasing"):
        model(dict(fields, system_idx=state.system_idx.flip(0)))
    float32 = PaiNNModel(random_model(0, n_atom_basis=8, n_interactions=2, n_rbf=6), dtype=torch.float32,
                         optimize=False)
    out = float32(ts.io.atoms_to_state(_cells(2), torch.device("cpu"), torch.float32))
    assert out["energy"].dtype == out["forces"].dtype == out["stress"].dtype == torch.float32


def test_batched_fire_with_cell_filter_reaches_ases_energies():
    """Several strained, rattled Cu cells relaxed at once (FIRE, Frechet cell filter) reach the
    energies ASE's FIRE + FrechetCellFilter reaches one cell at a time."""
    from ase.filters import FrechetCellFilter
    from ase.optimize import FIRE

    model = default_model()
    cells = _cells(3)
    ts_model = PaiNNModel(model)
    state = ts.io.atoms_to_state(cells, torch.device("cpu"), torch.float64)
    final = ts.optimize(state, ts_model, optimizer=ts.frechet_cell_fire, max_steps=2000,
                        convergence_fn=ts.generate_force_convergence_fn(force_tol=1e-3))
    relaxed = ts_model(final)["energy"].numpy()
    calc = PaiNNCalculator(model)
    for k, atoms in enumerate(cells):
        atoms = atoms.copy()
        atoms.calc = calc
        start = atoms.get_potential_energy()
        assert FIRE(FrechetCellFilter(atoms), logfile=None).run(fmax=1e-3, steps=2000)
        assert abs(relaxed[k] - atoms.get_potential_energy()) / len(atoms) < 1e-6, k
        assert (start - relaxed[k]) / len(atoms) > 1e-3  # the cells did relax


def test_batched_nve_conserves_energy_as_ase_does():
    """Two Cu cells in one batched NVE run (velocity Verlet, 1 fs): the total energy per atom
    follows ASE's VelocityVerlet (what `painnfx md` runs) from the same momenta, step by step."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from torch_sim.quantities import calc_kinetic_energy
    from torch_sim.units import MetalUnits

    model = default_model()
    cells = _cells(2, strain=0.0, rattle=0.02)
    ts_model = PaiNNModel(model)
    state = ts.io.atoms_to_state(cells, torch.device("cpu"), torch.float64)
    dt = torch.tensor(1e-3 * MetalUnits.time, dtype=torch.float64)  # 1 fs (torch-sim's time unit is ps)
    init, update = ts.nve(model=ts_model, dt=dt, kT=torch.tensor(300 * MetalUnits.temperature), seed=0)
    md = init(state)
    momenta = md.momenta.clone()  # torch-sim's metal units: amu A / (A sqrt(amu/eV)), ASE's momentum unit
    totals = []
    for _ in range(30):
        kinetic = calc_kinetic_energy(masses=md.masses, momenta=md.momenta, system_idx=md.system_idx)
        totals.append((md.energy + kinetic).numpy())
        md = update(md, dt=dt)
    totals = np.array(totals)
    start = 0
    calc = PaiNNCalculator(model)
    for k, atoms in enumerate(cells):
        n = len(atoms)
        atoms = atoms.copy()
        atoms.set_momenta(momenta[start:start + n].numpy())
        atoms.calc = calc
        dyn = VelocityVerlet(atoms, timestep=1 * units.fs)
        ase_totals = []
        for _ in range(30):
            ase_totals.append(atoms.get_total_energy())
            dyn.run(1)
        np.testing.assert_allclose(totals[:, k] / n, np.array(ase_totals) / n, atol=1e-9)
        assert np.abs(totals[:, k] - totals[0, k]).max() / n < 5e-5  # velocity Verlet's error at 1 fs
        start += n


def test_batched_nve_on_kept_neighbor_searches_is_bitwise_a_search_per_step():
    """Each system of the state keeps its neighbor search from step to step (torch-sim wraps atoms
    that leave the cell: their pairs' shifts follow): the same trajectory, bit for bit, as a search
    of every system at every step, with far fewer searches."""
    from torch_sim.units import MetalUnits

    cells = _cells(3, strain=0.0, rattle=0.02)
    dt = torch.tensor(2e-3 * MetalUnits.time, dtype=torch.float64)
    runs = []
    for skin in (0.3, 0.0):
        ts_model = PaiNNModel(default_model(), optimize=False, compute_stress=False, neighbor_skin=skin)
        init, update = ts.nve(model=ts_model, dt=dt, kT=torch.tensor(1500 * MetalUnits.temperature), seed=0)
        md = init(ts.io.atoms_to_state(cells, torch.device("cpu"), torch.float64))
        for _ in range(25):
            md = update(md, dt=dt)
        runs.append((md.positions.clone(), md.forces.clone(), ts_model.neighbors))
    (pos, forces, kept), (pos0, forces0, fresh) = runs
    assert torch.equal(pos, pos0) and torch.equal(forces, forces0)
    assert [n.calls for n in kept] == [n.searches for n in fresh] == [26] * 3
    assert sum(n.searches for n in kept) < 26
