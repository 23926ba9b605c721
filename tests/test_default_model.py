"""The shipped default checkpoint: loads weights-only, reproduces its recorded errors, runs
stable NVE through the optimized calculator, and the md command fails clearly on bad files."""

import numpy as np
import pytest
import torch
from ase import units
from ase.build import bulk
from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary
from ase.md.verlet import VelocityVerlet

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.checkpoint import CheckpointError, load_checkpoint
from painnfx.model.default import default_checkpoint_path, default_model, is_trained_default
from painnfx.ops.dispatch import record_calls

from helpers import CPU_KERNELS, assert_kernels

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

#: NVE bound for the default model: |E_tot(t) - E_tot(0)| per atom over 100 fs at 1 fs, float64
#: (measured 5.6e-6 to 7.7e-6 eV/atom for seeds 0-2: about 7x margin)
NVE_BOUND_EV_PER_ATOM = 5e-5


def test_default_checkpoint_is_shipped_and_loads_weights_only():
    path = default_checkpoint_path()
    assert path is not None and is_trained_default()
    payload = torch.load(path, weights_only=True)  # must not need unpickling of code
    assert payload["format"] == "painnfx-painn"
    model = load_checkpoint(path)
    cfg = model.config
    assert (cfg.n_atom_basis, cfg.n_interactions, cfg.n_rbf, cfg.cutoff) == (128, 3, 20, 5.0)
    assert cfg.elements == [29]
    assert model.metadata["teacher"] == "ase.calculators.emt.EMT"
    assert path.stat().st_size < 5 * 2**20


def test_reproduces_recorded_check_set_errors():
    from painnfx.tools.dataset import generate
    from painnfx.tools.distill import errors

    model = default_model()
    recorded = model.metadata["check_set"]
    samples = generate(recorded["n"], recorded["seed"], tuple(recorded["elements"]))
    got = errors(model, samples, model.cutoff, torch.float32)
    for key in ("energy_mae_meV_per_atom", "force_mae_meV_per_A", "stress_mae_meV_per_A3"):
        if recorded[key] is None:
            assert got[key] is None
        else:
            assert got[key] == pytest.approx(recorded[key], rel=1e-3, abs=1e-3), key
    # and the model is the fit the README documents (60 held-out structures: 2.3 meV/atom, 5.0 meV/A,
    # 2.0 meV/A^3), judged on the errors computed now, not on stored numbers: the 6 check structures
    # measured 2.0, 6.3 and 1.6; the bounds leave 1.6-2x for the scatter of 6 structures
    assert got["energy_mae_meV_per_atom"] < 4.0
    assert got["force_mae_meV_per_A"] < 10.0
    assert got["stress_mae_meV_per_A3"] < 4.0


def _cell(seed=0):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(seed))
    Stationary(atoms)
    return atoms


def _run(atoms, calc, steps):
    atoms = atoms.copy()
    atoms.calc = calc
    dyn = VelocityVerlet(atoms, timestep=1.0 * units.fs)
    energies, positions = [atoms.get_total_energy()], [atoms.positions.copy()]
    for _ in range(steps):
        dyn.run(1)
        energies.append(atoms.get_total_energy())
        positions.append(atoms.positions.copy())
    return np.array(energies), np.array(positions)


def test_nve_conserves_energy_with_the_optimized_calculator():
    calc = PaiNNCalculator(optimize=True)  # the fused graph on every step (auto could pick either)
    atoms = _cell()
    with record_calls() as calls:
        energies, _ = _run(atoms, calc, 100)
    assert_kernels(calls, CPU_KERNELS, 3 * 101)  # 3 layers, the initial evaluation and one per step
    assert np.abs(energies - energies[0]).max() / len(atoms) < NVE_BOUND_EV_PER_ATOM


def test_optimized_and_unoptimized_trajectories_agree():
    model = default_model()
    atoms = _cell(seed=1)
    with record_calls() as calls:
        e1, p1 = _run(atoms, PaiNNCalculator(model, optimize=True), 20)
    assert calls[("painn_message", CPU_KERNELS)] >= 3 * 21
    e2, p2 = _run(atoms, PaiNNCalculator(model, optimize=False), 20)
    np.testing.assert_allclose(p1, p2, rtol=0, atol=1e-9)
    np.testing.assert_allclose(e1, e2, rtol=0, atol=1e-9)


def test_md_command_rejects_corrupt_and_wrong_version_checkpoints(tmp_path, capsys):
    from painnfx.tools.cli import main

    bad = tmp_path / "corrupt.pt"
    bad.write_bytes(default_checkpoint_path().read_bytes()[:1000])
    assert main(["md", "--checkpoint", str(bad), "--steps", "1", "--quiet"]) == 2
    assert "is corrupt" in capsys.readouterr().err
    payload = torch.load(default_checkpoint_path(), weights_only=True)
    payload["version"] = 99
    newer = tmp_path / "newer.pt"
    torch.save(payload, newer)
    assert main(["md", "--checkpoint", str(newer), "--steps", "1", "--quiet"]) == 2
    assert "version 99" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="version 99"):  # the library itself raises
        load_checkpoint(newer)
