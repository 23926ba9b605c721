"""painnfx models inside LAMMPS (pair_style mliap unified) on 1 and 2 MPI ranks vs the ASE
calculator, and bad LAMMPS settings turned into clear errors.

Needs a LAMMPS with ML-IAP + PYTHON + MPI (tools/lammps_build.sh, run by the README's test
command); without one these tests skip, unless ``--require-env`` (CI) makes that a failure.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk
from ase.cluster import Icosahedron
from ase.io import write

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.checkpoint import save_checkpoint
from painnfx.ops.dispatch import record_calls
from painnfx.tools.lammps_cmd import LammpsNotFound, export, find_lmp, run_lammps

from helpers import env_import, env_skip, perturbed_model

pytestmark = pytest.mark.lammps

INPUTS = Path(__file__).parent / "lammps"
NKTV2P = 1.6021765e6  # LAMMPS `units metal`: bar per eV/A^3 (update.cpp)


@pytest.fixture(scope="module")
def lmp():
    try:
        return find_lmp()
    except LammpsNotFound as exc:
        env_skip(str(exc))


@pytest.fixture(scope="module")
def cuni_checkpoint(tmp_path_factory):
    """A two-element PaiNN (Ni, Cu), random but non-trivial weights, 2 layers, r_c = 4 A."""
    model = perturbed_model(dict(n_atom_basis=16, n_interactions=2, n_rbf=8, cutoff=4.0, elements=[28, 29],
                                 seed=3), scale=0.05)
    path = tmp_path_factory.mktemp("cuni") / "cuni.pt"
    save_checkpoint(model, path)
    return str(path)


def periodic_cu() -> Atoms:
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    atoms.rattle(0.1, seed=7)
    atoms.wrap()
    return atoms


def triclinic_cu() -> Atoms:
    """fcc primitive cells (rhombohedral box), rotated into LAMMPS's lower-triangular frame."""
    atoms = bulk("Cu", "fcc", a=3.61) * (4, 4, 4)
    atoms.rattle(0.1, seed=9)
    cell, _ = atoms.cell.standard_form()
    atoms.set_cell(cell, scale_atoms=True)
    atoms.wrap()
    return atoms


def cuni_cluster() -> Atoms:
    atoms = Icosahedron("Cu", 3)  # 55 atoms
    atoms.numbers[::3] = 28
    atoms.rattle(0.05, seed=11)
    atoms.center(vacuum=6.0)
    atoms.pbc = False
    return atoms


def run(tmp_path, lmp, input_name, model_lines, nprocs, threads=1, **variables):
    proc = run_lammps(INPUTS / input_name, {"model_lines": model_lines, **variables}, nprocs, cwd=str(tmp_path),
                      threads=threads, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr


def thermo_rows(output: str, first: str = "Step") -> list:
    lines = output.splitlines()
    start = next(k for k, ln in enumerate(lines) if ln.split()[:1] == [first])
    rows = []
    for ln in lines[start + 1:]:
        if ln.startswith("Loop time"):
            break
        rows.append([float(v) for v in ln.split()])
    return rows


def read_dump(path) -> list:
    """Per frame: array of the per-atom columns after ``id`` (sorted by id)."""
    frames = []
    for block in Path(path).read_text().split("ITEM: TIMESTEP")[1:]:
        rows = block.split("ITEM: ATOMS")[1].strip().splitlines()[1:]
        frames.append(np.array([[float(v) for v in r.split()[1:]] for r in rows]))
    return frames


def assert_ran(out: str, nprocs: int, optimize: str, layers: int, dtype="torch.float64") -> None:
    """Every rank printed what its first evaluation ran: the fused graph on the C++ kernels (one
    message forward and backward per layer), or no fused op at all for the plain model."""
    lines = [ln for ln in out.splitlines() if ln.startswith("painnfx: torch.")]
    assert len(lines) == nprocs, out[-3000:]
    for line in lines:
        assert line.startswith(f"painnfx: {dtype} on cpu, "), line
        if optimize == "fused":
            assert f"fused graph ({2 * layers} fused nodes, path fused)" in line, line
            assert f"painn_message cpp x{layers}; painn_message_backward cpp x{layers}" in line, line
        else:
            assert "plain model" in line and "no fused op" in line, line


def lammps_static(tmp_path, lmp, atoms, types, nprocs, checkpoint=None, optimize="fused", dtype=torch.float64,
                  layers=3):
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=types, masses=True, units="metal")
    _, lines, _ = export(str(tmp_path / "model.pkl"), checkpoint, types, dtype=dtype, optimize=optimize)
    bnd = "p" if atoms.pbc.all() else "f"
    code, out = run(tmp_path, lmp, "in.static.lammps", lines, nprocs, data=data, bnd=bnd)
    assert code == 0, out[-3000:]
    assert_ran(out, nprocs, optimize, layers, str(dtype))
    step, pe, *press = thermo_rows(out)[0]
    forces = read_dump(tmp_path / "forces.dump")[0]
    return pe, forces, np.array(press)


def ase_reference(atoms, checkpoint=None, dtype=torch.float64):
    atoms = atoms.copy()
    atoms.calc = PaiNNCalculator(checkpoint, optimize=False, dtype=dtype)
    stress = atoms.get_stress(voigt=True) if atoms.pbc.all() else None
    return atoms.get_potential_energy(), atoms.get_forces(), stress


def rel(a, b) -> float:
    return float(np.abs(np.asarray(a) - np.asarray(b)).max() / max(np.abs(b).max(), 1e-12))


@pytest.mark.parametrize("nprocs,optimize", [(1, "fused"), (2, "fused"), (2, "off")])
def test_periodic_cu_matches_ase(tmp_path, lmp, nprocs, optimize):
    atoms = periodic_cu()
    pe, forces, press = lammps_static(tmp_path, lmp, atoms, ["Cu"], nprocs, optimize=optimize)
    e_ref, f_ref, s_ref = ase_reference(atoms)
    assert abs(pe - e_ref) <= 1e-10 * abs(e_ref)
    assert rel(forces, f_ref) <= 1e-10
    # LAMMPS pressure (bar, pxx pyy pzz pyz pxz pxy) = -stress; no kinetic part at rest
    assert rel(-press / NKTV2P, s_ref) <= 1e-10


@pytest.mark.parametrize("nprocs", [1, 2])
def test_float32_fused_matches_ase_float32(tmp_path, lmp, nprocs):
    """float32 in LAMMPS, fused: energy, forces and pressure against the ASE calculator in float32.
    The two differ only by float32 rounding of sums taken in another order (measured on 1 and 2
    ranks: energy 1.6e-7 and 5.1e-7 relative, forces 2.4e-6, pressure 3.2e-6); bounds ~6x that."""
    atoms = periodic_cu()
    pe, forces, press = lammps_static(tmp_path, lmp, atoms, ["Cu"], nprocs, dtype=torch.float32)
    e_ref, f_ref, s_ref = ase_reference(atoms, dtype=torch.float32)
    assert abs(pe - e_ref) <= 3e-6 * abs(e_ref)
    assert rel(forces, f_ref) <= 1.5e-5
    assert rel(-press / NKTV2P, s_ref) <= 2e-5


def test_triclinic_cell_on_2_ranks(tmp_path, lmp):
    atoms = triclinic_cu()
    pe, forces, press = lammps_static(tmp_path, lmp, atoms, ["Cu"], 2)
    e_ref, f_ref, s_ref = ase_reference(atoms)
    assert abs(pe - e_ref) <= 1e-10 * abs(e_ref)
    assert rel(forces, f_ref) <= 1e-10
    assert rel(-press / NKTV2P, s_ref) <= 1e-10


@pytest.mark.parametrize("nprocs,optimize", [(1, "fused"), (2, "fused"), (1, "off")])
def test_cuni_cluster_matches_ase(tmp_path, lmp, cuni_checkpoint, nprocs, optimize):
    atoms = cuni_cluster()
    pe, forces, _ = lammps_static(tmp_path, lmp, atoms, ["Ni", "Cu"], nprocs, cuni_checkpoint, optimize, layers=2)
    e_ref, f_ref, _ = ase_reference(atoms, cuni_checkpoint)
    assert abs(pe - e_ref) <= 1e-10 * max(abs(e_ref), 1.0)
    assert rel(forces, f_ref) <= 1e-10


def hot_cu_md(tmp_path, ranks, steps, pair_style="mliap", check=None) -> tuple:
    """(atoms, {ranks: unwrapped positions per step}, {ranks: pe ke etotal per step}) of NVE from
    the same hot Cu cell on each rank count; ``check(output, nprocs)`` looks at each run's output."""
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = periodic_cu()
    MaxwellBoltzmannDistribution(atoms, temperature_K=2000, rng=np.random.default_rng(5))
    data = tmp_path / "hot.data"
    write(data, atoms, format="lammps-data", specorder=["Cu"], masses=True, velocities=True, units="metal")
    trajs, energies = {}, {}
    for nprocs in ranks:
        work = tmp_path / f"np{nprocs}"
        work.mkdir()
        _, lines, _ = export(str(work / "model.file"), None, ["Cu"], optimize="fused", pair_style=pair_style)
        code, out = run(work, None, "in.nve.lammps", lines, nprocs, data=data, steps=steps)
        assert code == 0, out[-3000:]
        if check:
            check(out, nprocs)
        frames = read_dump(work / "traj.dump")
        trajs[nprocs] = np.array([f[:, :3] + f[:, 3:6] @ atoms.cell.array for f in frames])  # unwrapped
        energies[nprocs] = np.array(thermo_rows(out))[:, 1:4]  # pe ke etotal
    return atoms, trajs, energies


def test_nve_same_trajectory_on_1_and_2_ranks(tmp_path, lmp):
    atoms, trajs, energies = hot_cu_md(tmp_path, (1, 2), 20, check=lambda out, n: assert_ran(out, n, "fused", 3))
    assert len(trajs[1]) == 21
    assert np.abs(trajs[1] - trajs[2]).max() <= 1e-8
    assert np.abs(energies[1] - energies[2]).max() <= 1e-8
    # LAMMPS splits the cubic cell in x at L/2 on 2 ranks: atoms must have changed subdomain
    half = atoms.cell.array[0, 0] / 2
    side = (trajs[2][..., 0] % atoms.cell.array[0, 0]) < half
    assert (side[1:] != side[:-1]).any(), "no atom crossed between the two subdomains"
    # and the step-0 energy is ASE's
    e_ref, _, _ = ase_reference(atoms)
    assert abs(energies[2][0, 0] - e_ref) <= 1e-10 * abs(e_ref)


def lines_text(tmp_path, checkpoint=None, types=("Cu",), name="model.pkl"):
    _, lines, _ = export(str(tmp_path / name), checkpoint, list(types))
    return Path(lines).read_text()


def failing_run(tmp_path, lmp, text, nprocs=1, units="metal"):
    bad = tmp_path / "bad.lammps"
    bad.write_text(text)
    data = tmp_path / "system.data"
    write(data, periodic_cu(), format="lammps-data", specorder=["Cu"], masses=True, units="metal")
    code, out = run(tmp_path, lmp, "in.static.lammps", bad, nprocs, data=data, bnd="p", units=units)
    assert code != 0, "LAMMPS ran with bad settings"
    return out


def test_element_the_model_lacks_is_named(tmp_path, lmp):
    text = lines_text(tmp_path).replace("pair_coeff * * Cu", "pair_coeff * * Ni")
    out = failing_run(tmp_path, lmp, text)
    assert "pair_coeff: unknown element(s) ['Ni'] (Z=[28]): this model knows only ['Cu']" in out


def test_ghost_shell_too_short_for_the_model_file(tmp_path, lmp, cuni_checkpoint):
    # lines written for the small CuNi model (2 layers x 4 A), model file of the default (3 x 5 A)
    small = lines_text(tmp_path, cuni_checkpoint, ["Cu"], name="small.pkl")
    export(str(tmp_path / "default.pkl"), None, ["Cu"])
    text = re.sub(r"pair_style mliap unified \S+ ", f"pair_style mliap unified {tmp_path / 'default.pkl'} ", small)
    out = failing_run(tmp_path, lmp, text)
    assert "communication cutoff 10 A is too short for this model" in out


def test_newton_off_is_refused(tmp_path, lmp):
    out = failing_run(tmp_path, lmp, lines_text(tmp_path) + "newton off on\n")  # pair off, bond on
    assert "requires newton pair on" in out


def test_units_other_than_metal_are_refused(tmp_path, lmp):
    out = failing_run(tmp_path, lmp, lines_text(tmp_path), units="real")
    assert "set `units metal`" in out


def test_missing_ghost_neighbor_lists_are_refused(tmp_path, lmp):
    text = re.sub(r"(pair_style mliap unified \S+) \S+", r"\1 0", lines_text(tmp_path))
    out = failing_run(tmp_path, lmp, text, nprocs=2)
    assert "needs neighbor lists of ghost atoms" in out


def test_lammps_run_command_default_model_float32(tmp_path, lmp):
    """The documented command (`painnfx lammps run -np 2`) on a small cell, in float32: it runs,
    and its step-0 energy is the ASE calculator's (float64) to float32 precision."""
    from painnfx.tools.cli import main

    assert main(["lammps", "run", "-np", "2", "--dtype", "float32", "--var", "nx", "3", "--var", "steps", "10",
                 "--workdir", str(tmp_path), "--json"]) == 0
    log = (tmp_path / "lammps.out").read_text()
    assert "2 procs for 10 steps with 108 atoms" in log
    pe0 = thermo_rows(log)[0][3]  # Step Time Temp PotEng ...
    e_ref, _, _ = ase_reference(bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3))
    # float32 precision of a 108-atom sum: the per-atom energies are read out of O(1) features in
    # float32 (~1e-7 relative each); seen 0.4e-6 (ASE, fused) to 1.5e-5 eV (LAMMPS, 2 ranks, with
    # libmvec's vector expf; 9.6e-6 with the scalar one) against float64: 5e-7 eV per atom allowed
    assert abs(pe0 - e_ref) <= 5e-7 * len(bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3))


def test_attach_in_a_python_driver(tmp_path, lmp):
    """`attach` on a `lammps.lammps()` instance in this process (one rank), no model file."""
    lammps = env_import("lammps")
    from painnfx.model.lammps_mliap import attach

    atoms = triclinic_cu()
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=["Cu"], masses=True, units="metal")
    lmp_py = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    try:
        lmp_py.commands_list(["units metal", "atom_style atomic", "atom_modify map yes", "boundary p p p",
                              f"read_data {data}"])
        attach(lmp_py, None, ["Cu"], optimize=True)
        with record_calls() as calls:
            lmp_py.commands_list(["thermo_style custom step pe", "run 0"])
        pe = lmp_py.get_thermo("pe")
        nlocal = lmp_py.extract_global("nlocal")
        ids = lmp_py.numpy.extract_atom("id")[:nlocal]
        forces = np.array(lmp_py.numpy.extract_atom("f")[:nlocal])[np.argsort(ids)]
    finally:
        lmp_py.close()
    assert calls[("painn_message", "cpp")] >= 3 and calls[("painn_message_backward", "cpp")] >= 3
    e_ref, f_ref, _ = ase_reference(atoms)
    assert abs(pe - e_ref) <= 1e-10 * abs(e_ref)
    assert rel(forces, f_ref) <= 1e-10
