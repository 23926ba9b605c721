"""LAMMPS's C++ pair style ``painnfx`` (per-layer ghost exchange, no Python in the MD process)
against the ASE calculator on 1-4 MPI ranks, with ML-IAP run the same way beside it; its model
file and its clear errors.

Needs the LAMMPS ``tools/lammps_build.sh`` builds (PLUGIN, its headers kept); without one these
tests skip, unless ``--require-env`` (CI) makes that a failure. Ranks are oversubscribed on the
2-core CI machine (one thread each).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk
from ase.io import write
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from painnfx.model.default import default_model
from painnfx.model.lammps_pair import FORMAT_VERSION, export_model, model_file_payload, read_model_file
from painnfx.model.neighbors import neighbor_list
from painnfx.model.validation import InputError
from painnfx.tools.lammps_cmd import export, model_file, rank_counts, run_lammps

from test_lammps import (INPUTS, NKTV2P, ase_reference, assert_ran, cuni_checkpoint, cuni_cluster, failing_run, hot_cu_md, lmp, periodic_cu,  # noqa: F401
                         read_dump, rel, run, thermo_rows, triclinic_cu)

pytestmark = pytest.mark.lammps

def rank_lines(out: str) -> list:
    """Per rank: (rank, ranks, owned, ghost rows received, ghosts in LAMMPS's shell, edges, exchanges, shell)."""
    return [(c["rank"], c["ranks"], c["owned"], c["ghosts"], c["shell"], c["edges"], c["exchanges"], c["shell_A"])
            for c in rank_counts(out, "painnfx")]


def static(tmp_path, atoms, types, nprocs, pair_style="painnfx", checkpoint=None, dtype=torch.float64, grid=None,
           peratom=False, threads=1):
    """Energy, forces (sorted by ID), pressure (6) and the output of one `run 0`."""
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=types, masses=True, units="metal")
    _, lines, _ = export(model_file(tmp_path, pair_style), checkpoint, types, dtype=dtype, optimize="fused",
                         pair_style=pair_style)
    grid = dict(zip(("px", "py", "pz"), map(str, grid))) if grid else {}
    bnd = "p" if atoms.pbc.all() else "f"
    return run_static(tmp_path, lines, nprocs, threads, data=data, bnd=bnd, peratom=int(peratom), **grid)


def run_static(tmp_path, lines, nprocs, threads=1, **variables):
    """Energy, forces (sorted by ID), pressure (6) and the output of `in.static.lammps` with the model
    lines ``lines``."""
    code, out = run(tmp_path, None, "in.static.lammps", lines, nprocs, threads, **variables)
    assert code == 0, out[-4000:]
    step, pe, *press = thermo_rows(out)[0]
    return pe, read_dump(tmp_path / "forces.dump")[0], np.array(press), out


def assert_one_cutoff_and_owned_only(out: str, nprocs: int, n_atoms: int, shell: float = 7.0) -> list:
    """Every rank reported; the owned atoms of all ranks are the system (each atom's features
    computed once per layer, by its owner); the ghost shell is r_c + skin."""
    ranks = rank_lines(out)
    assert [r[0] for r in ranks] == list(range(nprocs)) and all(r[1] == nprocs for r in ranks), out[-3000:]
    assert sum(r[2] for r in ranks) == n_atoms
    assert all(r[7] == pytest.approx(shell) for r in ranks)
    return ranks


def assert_matches(pe, forces, press, ref, tol=1e-10):
    e_ref, f_ref, s_ref = ref
    assert abs(pe - e_ref) <= tol * max(abs(e_ref), 1.0)
    assert rel(forces, f_ref) <= tol
    if s_ref is not None:
        assert rel(-press / NKTV2P, s_ref) <= tol


@pytest.mark.parametrize("nprocs", [1, 2, 3, 4])
def test_periodic_cu_matches_ase_on_1_to_4_ranks(tmp_path, lmp, nprocs):
    atoms = periodic_cu()
    pe, forces, press, out = static(tmp_path, atoms, ["Cu"], nprocs)
    assert_matches(pe, forces, press, ase_reference(atoms))
    ranks = assert_one_cutoff_and_owned_only(out, nprocs, len(atoms))
    # every pair once over all ranks, both directions: the full periodic graph's edge count
    n_edges = neighbor_list(torch.tensor(atoms.positions), 5.0, torch.tensor(atoms.cell.array), True).edge_index.shape[1]
    assert sum(r[5] for r in ranks) == n_edges
    assert all(r[6] == 2 * 3 - 1 for r in ranks)  # exchanges each way per evaluation: 2L - 1
    if nprocs == 1:  # one rank: every ghost is an image of an owned atom, nothing is exchanged
        assert ranks[0][3] == 0


@pytest.mark.parametrize("nprocs,threads", [(1, 2), (2, 2)])
def test_threads_per_rank_match_ase(tmp_path, lmp, nprocs, threads):
    """OpenMP threads in each rank (OMP_NUM_THREADS, as `painnfx lammps` sets cores / ranks): the
    kernels split a rank's atoms into one range per thread (pairs across ranges computed per
    edge), so the sums' order changes and the results agree with ASE's to rounding."""
    atoms = triclinic_cu()
    pe, forces, press, out = static(tmp_path, atoms, ["Cu"], nprocs, threads=threads)
    assert_matches(pe, forces, press, ase_reference(atoms))
    counts = rank_counts(out, "painnfx")
    assert [c["threads"] for c in counts] == [threads] * nprocs, out[-3000:]
    assert sum(c["owned"] for c in counts) == len(atoms)


ZBL = "zbl 2.5 3.5"  # ZBL switched off between 2.5 and 3.5 A: it reaches the nearest neighbours (2.55 A)


def static_lines(tmp_path, data, text: str, nprocs: int, name: str):
    """``run_static`` of a periodic data file with the model lines ``text`` (written to ``name``)."""
    lines = tmp_path / name
    lines.write_text(text)
    return run_static(tmp_path, lines, nprocs, data=data, bnd="p")


def cu_with_ni(tmp_path):
    """(atoms, symbols, data file): the periodic Cu cell with every fifth atom Ni (type 2)."""
    atoms = periodic_cu()
    symbols = ["Ni" if k % 5 == 0 else "Cu" for k in range(len(atoms))]
    atoms.set_chemical_symbols(symbols)
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=["Cu", "Ni"], masses=True, units="metal")
    return atoms, symbols, data


@pytest.mark.parametrize("nprocs", [1, 3])
def test_hybrid_with_a_null_type_matches_ase(tmp_path, lmp, nprocs):
    """`pair_style hybrid painnfx FILE zbl ...` with `pair_coeff * * painnfx Cu NULL`: the Ni atoms
    (type 2, every fifth atom) are left to ZBL. What painnfx adds (the run minus the same run with
    `zero` in its place) is the model on the Cu atoms alone: energy, forces (zero on Ni) and virial
    equal ASE's for the Cu sublattice."""
    atoms, symbols, data = cu_with_ni(tmp_path)
    text = lines_text(tmp_path)
    others = "pair_coeff 1 2 zbl 29 28\npair_coeff 2 2 zbl 28 28\n"
    hybrid = text.replace("pair_style painnfx ", "pair_style hybrid painnfx ").replace(
        ".pfx\n", f".pfx {ZBL}\n").replace("pair_coeff * * Cu", "pair_coeff * * painnfx Cu NULL\n" + others)
    assert f"pair_style hybrid painnfx {tmp_path / 'model.pfx'} {ZBL}" in hybrid
    zero = f"newton on\npair_style hybrid {ZBL} zero 5.0\npair_coeff 1 1 zero\n" + others
    pe, forces, press, out = static_lines(tmp_path, data, hybrid, nprocs, "hybrid.lammps")
    pe0, forces0, press0, _ = static_lines(tmp_path, data, zero, nprocs, "zero.lammps")
    cu = np.array([s == "Cu" for s in symbols])
    e_ref, f_ref, s_ref = ase_reference(atoms[cu])
    assert abs(pe - pe0) > 1.0 and np.abs(forces0).max() > 0.1  # the ZBL part is there
    assert abs((pe - pe0) - e_ref) <= 1e-10 * abs(e_ref)
    assert rel((forces - forces0)[cu], f_ref) <= 1e-10 and np.abs((forces - forces0)[~cu]).max() <= 1e-12
    assert rel(-(press - press0) / NKTV2P, s_ref) <= 1e-10  # the same cell: the same volume
    counts = rank_counts(out, "painnfx")
    assert len(counts) == nprocs and sum(c["owned"] for c in counts) == len(atoms)


def test_hybrid_overlay_adds_zbl(tmp_path, lmp):
    """`pair_style hybrid/overlay painnfx FILE zbl ...` (a short-range repulsion on top of the
    model): energy and forces are the two styles' sums, on 2 ranks."""
    atoms = periodic_cu()
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=["Cu"], masses=True, units="metal")
    text = lines_text(tmp_path)
    overlay = text.replace("pair_style painnfx ", "pair_style hybrid/overlay painnfx ").replace(
        ".pfx\n", f".pfx {ZBL}\n").replace("pair_coeff * * Cu", "pair_coeff * * painnfx Cu\npair_coeff * * zbl 29 29")
    pe, forces, press, _ = static_lines(tmp_path, data, overlay, 2, "overlay.lammps")
    pe_m, forces_m, press_m, _ = static_lines(tmp_path, data, text, 2, "model.lammps")
    pe_z, forces_z, press_z, _ = static_lines(tmp_path, data, f"newton on\npair_style {ZBL}\npair_coeff * * 29 29\n",
                                              2, "zbl.lammps")
    assert abs(pe_z) > 1.0
    assert abs(pe - pe_m - pe_z) <= 1e-10 * abs(pe)
    assert rel(forces, forces_m + forces_z) <= 1e-12 and rel(press, press_m + press_z) <= 1e-12


def test_a_null_type_outside_hybrid_is_reported(tmp_path, lmp):
    """Without hybrid, a NULL type's pairs have no style: LAMMPS says so before running."""
    _, _, data = cu_with_ni(tmp_path)
    bad = tmp_path / "bad.lammps"
    bad.write_text(lines_text(tmp_path).replace("pair_coeff * * Cu", "pair_coeff * * Cu NULL"))
    code, out = run(tmp_path, None, "in.static.lammps", bad, 1, data=data, bnd="p")
    assert code != 0 and "All pair coeffs are not set" in out, out[-2000:]


@pytest.mark.parametrize("nprocs", [2, 4])
def test_point_to_point_exchange_matches_ase(tmp_path, lmp, monkeypatch, nprocs):
    """Ranks on several nodes exchange point to point (MPI) instead of through the node-shared
    window; PAINNFX_LAMMPS_P2P=1 takes that path on one node."""
    monkeypatch.setenv("PAINNFX_LAMMPS_P2P", "1")
    atoms = triclinic_cu()
    pe, forces, press, out = static(tmp_path, atoms, ["Cu"], nprocs)
    assert_matches(pe, forces, press, ase_reference(atoms))
    assert sum(r[3] for r in assert_one_cutoff_and_owned_only(out, nprocs, len(atoms))) > 0


def test_the_shared_window_grows_with_the_plan(tmp_path, lmp):
    """Two ranks evaluate the cell stretched 3x first (no edge, a row or two to exchange: a small
    shared window), then the cell itself (tens of rows per rank: the window is allocated again, its
    exchange counters carried over): that evaluation equals ASE's."""
    atoms = periodic_cu()
    data = tmp_path / "system.data"
    write(data, atoms, format="lammps-data", specorder=["Cu"], masses=True, units="metal")
    _, lines, _ = export(model_file(tmp_path, "painnfx"), None, ["Cu"], dtype=torch.float64, pair_style="painnfx")
    side = float(atoms.cell.array[0, 0])
    steps = (INPUTS / "in.static.lammps").read_text().replace(
        "run 0", f"change_box all x scale 3 y scale 3 z scale 3 remap\nrun 0\n"
                 f"change_box all x final 0 {side!r} y final 0 {side!r} z final 0 {side!r} remap\n"
                 "undump f\ndump g all custom 1 regrown.dump id fx fy fz\n"  # a dump writes a timestep once
                 "dump_modify g sort id format float %.17g\nrun 0")
    (tmp_path / "in.regrow.lammps").write_text(steps)
    proc = run_lammps(tmp_path / "in.regrow.lammps", {"model_lines": lines, "data": data, "bnd": "p"}, 2,
                      cwd=str(tmp_path), timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert rank_lines(out)[0][5] == 0  # the first evaluation: no edge on either rank
    step, pe, *press = thermo_rows(out.split("Loop time")[-2])[0]
    forces = read_dump(tmp_path / "regrown.dump")[0]
    assert_matches(pe, forces, np.array(press), ase_reference(atoms), tol=1e-9)


@pytest.mark.parametrize("nprocs", [3, 4])
def test_mliap_matches_ase_on_3_and_4_ranks(tmp_path, lmp, nprocs):
    """The same comparison for the ML-IAP path (1 and 2 ranks: test_lammps.py)."""
    atoms = periodic_cu()
    pe, forces, press, _ = static(tmp_path, atoms, ["Cu"], nprocs, pair_style="mliap")
    assert_matches(pe, forces, press, ase_reference(atoms))


@pytest.mark.parametrize("grid", [(1, 1, 3), (1, 3, 1)])
def test_triclinic_cell_on_3_ranks(tmp_path, lmp, grid):
    atoms = triclinic_cu()
    pe, forces, press, out = static(tmp_path, atoms, ["Cu"], 3, grid=grid)
    assert_matches(pe, forces, press, ase_reference(atoms))
    assert_one_cutoff_and_owned_only(out, 3, len(atoms))


def test_subdomains_thinner_than_the_cutoff(tmp_path, lmp):
    """4 ranks along x of a 10.8 A cell: slabs 2.7 A thick (r_c = 5 A), so a rank's ghosts hold
    several images of the other ranks' atoms and of its own."""
    atoms = periodic_cu()
    pe, forces, press, out = static(tmp_path, atoms, ["Cu"], 4, grid=(4, 1, 1))
    assert_matches(pe, forces, press, ase_reference(atoms))
    ranks = assert_one_cutoff_and_owned_only(out, 4, len(atoms))
    assert all(r[4] > 4 * r[2] for r in ranks)  # the shell holds many more atoms than the slab


def test_two_elements_cluster_with_empty_ranks(tmp_path, lmp, cuni_checkpoint):
    """A 55-atom CuNi cluster in vacuum on 4 ranks along x: the outer slabs own no atom, yet they
    take part in every exchange."""
    atoms = cuni_cluster()
    pe, forces, _, out = static(tmp_path, atoms, ["Ni", "Cu"], 4, checkpoint=cuni_checkpoint, grid=(4, 1, 1))
    assert_matches(pe, forces, None, ase_reference(atoms, cuni_checkpoint))
    ranks = assert_one_cutoff_and_owned_only(out, 4, len(atoms), shell=6.0)
    assert any(r[2] == 0 for r in ranks), ranks


@pytest.mark.parametrize("nprocs", [1, 2])
def test_float32_matches_ase_float32(tmp_path, lmp, nprocs):
    """float32: against the ASE calculator in float32; they differ by float32 rounding of sums
    taken in another order (bounds as for ML-IAP, test_lammps.py)."""
    atoms = periodic_cu()
    pe, forces, press, _ = static(tmp_path, atoms, ["Cu"], nprocs, dtype=torch.float32)
    e_ref, f_ref, s_ref = ase_reference(atoms, dtype=torch.float32)
    assert abs(pe - e_ref) <= 3e-6 * abs(e_ref)
    assert rel(forces, f_ref) <= 1.5e-5
    assert rel(-press / NKTV2P, s_ref) <= 2e-5


def test_per_atom_energy_and_virial(tmp_path, lmp):
    """`compute pe/atom` gives the model's per-atom energies; `compute stress/atom` sums to the
    virial (3 ranks)."""
    atoms = periodic_cu()
    pe, _, press, _ = static(tmp_path, atoms, ["Cu"], 3, peratom=True)
    per_atom = read_dump(tmp_path / "peratom.dump")[0]
    model = default_model().double()
    nl = neighbor_list(torch.tensor(atoms.positions), model.cutoff, torch.tensor(atoms.cell.array), True)
    with torch.no_grad():
        e_ref = model.atomic_energies(torch.tensor(atoms.positions), torch.tensor(atoms.numbers), nl.edge_index,
                                      nl.shifts).numpy()
    assert rel(per_atom[:, 0], e_ref) <= 1e-10
    assert per_atom[:, 0].sum() == pytest.approx(pe, rel=1e-12)
    # stress/atom: xx yy zz xy xz yz (bar A^3); the thermo row: pxx pyy pzz pyz pxz pxy; at rest, no kinetic part
    virial = -per_atom[:, [1, 2, 3, 6, 5, 4]].sum(0) / atoms.get_volume()
    assert rel(virial, press) <= 1e-10


@pytest.mark.parametrize("pair_style", ["painnfx", "mliap"])
def test_nve_identical_on_1_and_4_ranks(tmp_path, lmp, pair_style):
    """NVE of hot Cu: the same trajectory on 1 and 4 ranks (<= 1e-9 A), for both pair styles
    (painnfx 100 steps, ML-IAP 50: its 4 ranks each recompute a 17 A shell), while the atoms move."""
    def check(out, nprocs):
        if pair_style == "painnfx":
            assert len(rank_lines(out)) == nprocs
        else:
            assert_ran(out, nprocs, "fused", 3)

    steps = 100 if pair_style == "painnfx" else 50
    _, trajs, _ = hot_cu_md(tmp_path, (1, 4), steps, pair_style=pair_style, check=check)
    assert len(trajs[1]) == steps + 1
    assert np.abs(trajs[1] - trajs[4]).max() <= 1e-9
    assert np.abs(trajs[1][-1] - trajs[1][0]).max() > 0.2


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(grid=st.sampled_from([(2, 1, 1), (1, 2, 1), (1, 1, 2), (3, 1, 1), (1, 1, 3), (2, 2, 1), (1, 2, 2), (4, 1, 1)]),
       reps=st.tuples(st.integers(2, 3), st.integers(2, 3), st.integers(2, 3)), seed=st.integers(0, 2**16),
       triclinic=st.booleans())
def test_drawn_decompositions_match_ase(tmp_path_factory, lmp, grid, reps, seed, triclinic):
    """Hypothesis draws the processor grid, the cell and the structure: exact on every one."""
    if triclinic:
        atoms = bulk("Cu", "fcc", a=3.61) * tuple(r + 1 for r in reps)
        cell, _ = atoms.cell.standard_form()
        atoms.set_cell(cell, scale_atoms=True)
    else:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * reps
    atoms.rattle(0.1, seed=seed)
    atoms.wrap()
    nprocs = grid[0] * grid[1] * grid[2]
    tmp = tmp_path_factory.mktemp("drawn")
    pe, forces, press, out = static(tmp, atoms, ["Cu"], nprocs, grid=grid)
    assert_matches(pe, forces, press, ase_reference(atoms))
    assert_one_cutoff_and_owned_only(out, nprocs, len(atoms))


# --- errors -------------------------------------------------------------------------------------


def failing(tmp_path, text, units="metal") -> str:
    return failing_run(tmp_path, None, text, units=units)


def lines_text(tmp_path) -> str:
    _, lines, _ = export(str(tmp_path / "model.pfx"), None, ["Cu"], pair_style="painnfx")
    return Path(lines).read_text()


def test_unknown_element_is_named(tmp_path, lmp):
    out = failing(tmp_path, lines_text(tmp_path).replace("pair_coeff * * Cu", "pair_coeff * * Ni"))
    assert "element Ni (atom type 1) is not in the model; it knows: Cu" in out


def test_newton_off_is_refused(tmp_path, lmp):
    out = failing(tmp_path, lines_text(tmp_path) + "newton off on\n")
    assert "pair_style painnfx requires `newton on`" in out


def test_units_other_than_metal_are_refused(tmp_path, lmp):
    out = failing(tmp_path, lines_text(tmp_path), units="real")
    assert "pair_style painnfx requires `units metal`" in out


def test_missing_and_corrupt_model_files_are_named(tmp_path, lmp):
    text = lines_text(tmp_path)
    out = failing(tmp_path, text.replace(str(tmp_path / "model.pfx"), str(tmp_path / "nothere.pfx")))
    assert f"painnfx model file {tmp_path / 'nothere.pfx'}: cannot be opened" in out
    (tmp_path / "model.pfx").write_bytes(b"\x00 not a zip at all" * 50)
    out = failing(tmp_path, text)
    assert "not a painnfx model file (unreadable" in out


@pytest.mark.parametrize("field,value,message", [
    ("format_version", FORMAT_VERSION + 1, f"format version {FORMAT_VERSION + 1}, this pair style reads {FORMAT_VERSION}"),
    ("torch_version", "1.13.0", "written with torch 1.13.0, this pair style is built against torch"),
    ("cpu_library_bytes", 1, "is not the one this file was exported with"),
    ("format", "something else", "not a painnfx model file for the pair style"),
])
def test_mismatched_model_file_is_refused(tmp_path, lmp, field, value, message):
    text = lines_text(tmp_path)
    payload = torch.load(tmp_path / "model.pfx", weights_only=True)
    payload[field] = value
    torch.save(payload, tmp_path / "model.pfx")
    assert message in failing(tmp_path, text)


# --- the model file (no LAMMPS) -----------------------------------------------------------------


def test_model_file_reads_back_with_weights_only(tmp_path):
    meta = export_model(tmp_path / "m.pfx", None, torch.float32)
    payload = read_model_file(tmp_path / "m.pfx")
    assert payload["dtype"] == meta["dtype"] == "float32" and payload["n_layers"] == 3 and payload["symbols"] == ["Cu"]
    assert all(t.dtype == torch.float32 for t in payload["weights"].values())
    assert set(payload["schemas"][0].split("(")[:1]) == {"prepare_edges"}
    assert Path(payload["cpu_library"]).stat().st_size == payload["cpu_library_bytes"]
    with pytest.raises(Exception, match="not a painnfx model file"):
        read_model_file(__file__)


def test_export_keeps_the_old_file_until_the_new_one_is_complete(tmp_path, monkeypatch):
    out = tmp_path / "m.pfx"
    out.write_bytes(b"previous")

    def broken(*args, **kwargs):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(torch, "save", broken)
    with pytest.raises(RuntimeError, match="interrupted"):
        export_model(out, None)
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.pfx"]


def test_export_with_plugin_checks_the_types_before_building(tmp_path, monkeypatch):
    """An element the model lacks is named at once: neither the plugin nor the model file is built."""
    from painnfx.model import lammps_pair

    def built(*args, **kwargs):
        raise AssertionError("built before the types were checked")

    monkeypatch.setattr(lammps_pair, "build_plugin", built)
    monkeypatch.setattr(lammps_pair, "export_model", built)
    with pytest.raises(InputError, match="element Ni \\(atom type 2\\) is not in the model; it knows: Cu"):
        lammps_pair.export_with_plugin(tmp_path / "m.pfx", None, types=["Cu", "Ni"])
    assert not any(tmp_path.iterdir())


def test_per_layer_weights_are_the_models(tmp_path):
    """The file splits the filter network per layer and folds shift + atomref per element."""
    model = default_model()
    payload = model_file_payload(model)
    f = model.n_atom_basis
    w = payload["weights"]
    assert torch.equal(w["layer1.filter.w"], model.filter_net.weight[3 * f:6 * f].double())
    assert torch.equal(w["atom_shift"], (model.atomref[[29]] + model.energy_shift).double())


def test_compute_pair_reads_the_counters(tmp_path, lmp):
    """`compute pair painnfx`: owned atoms (sum: the system), ghost rows received, edges (sum: the
    periodic graph's) and exchanges, summed over ranks, as each rank printed them."""
    atoms = periodic_cu()
    write(tmp_path / "system.data", atoms, format="lammps-data", specorder=["Cu"], masses=True, units="metal")
    _, lines, _ = export(str(tmp_path / "model.pfx"), None, ["Cu"], pair_style="painnfx")
    (tmp_path / "in.counters").write_text(
        "units metal\natom_style atomic\natom_modify map yes\nboundary p p p\nread_data system.data\n"
        f"include {lines}\ncompute pp all pair painnfx\n"
        "thermo_style custom step pe c_pp[1] c_pp[2] c_pp[3] c_pp[4]\nrun 0\n")
    code, out = run(tmp_path, None, tmp_path / "in.counters", lines, 2)
    assert code == 0, out[-3000:]
    _, _, owned, ghosts, edges, exchanges = thermo_rows(out)[0]
    ranks = rank_lines(out)
    n_edges = neighbor_list(torch.tensor(atoms.positions), 5.0, torch.tensor(atoms.cell.array), True).edge_index.shape[1]
    assert (owned, edges, exchanges) == (len(atoms), n_edges, 2 * 5)
    assert ghosts == sum(r[3] for r in ranks) > 0
