"""``painnfx eval IN OUT``: every good frame written with the calculator's results, in order;
every bad frame named with its reason; non-zero exit status when any frame failed."""

import numpy as np
from ase import Atoms
from ase.build import bulk
from ase.io import read, write

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.checkpoint import save_checkpoint
from painnfx.model.default import random_model
from painnfx.tools.cli import main


def _frames():
    frames = []
    for k in range(5):
        a = bulk("Cu", "fcc", a=3.61, cubic=True) * (1, 1, 2)
        a.rattle(0.05, seed=k)
        frames.append(a)
    frames.append(Atoms("Cu2", positions=[[0, 0, 0], [0, 0, 2.4]]))  # a molecule: no stress
    return frames


def test_frames_in_order_with_the_calculators_results(tmp_path, capsys):
    model = random_model(2, n_atom_basis=8, n_interactions=2, n_rbf=6, elements=[29])
    ckpt = tmp_path / "m.pt"
    save_checkpoint(model, ckpt)
    frames = _frames()
    bad = frames[0].copy()
    bad.positions[3] = bad.positions[1]  # overlapping atoms
    nan = frames[1].copy()
    nan.positions[0, 1] = np.nan
    gold = Atoms("Au", positions=[[0, 0, 0]])  # unknown to the model
    degenerate = Atoms("Cu", cell=[[2.5, 0, 0], [5, 0, 0], [0, 0, 2.5]], pbc=True)
    frames[2:2] = [bad, nan]
    frames += [gold, degenerate]
    write(tmp_path / "in.extxyz", frames)
    code = main(["eval", str(tmp_path / "in.extxyz"), str(tmp_path / "out" / "res.extxyz"), "--model", str(ckpt),
                 "--max-atoms", "9", "--quiet"])
    captured = capsys.readouterr()
    assert code == 1
    for index, reason in ((2, "overlaps"), (3, "NaN"), (8, "unknown element(s) ['Au']"), (9, "degenerate cell")):
        assert f"painnfx eval: frame {index}: " in captured.err and reason in captured.err
    assert "4 of 10 frames failed (not written): frames 2, 3, 8, 9" in captured.err
    assert "structures/s" in captured.out and "atoms/s" in captured.out
    out = read(tmp_path / "out" / "res.extxyz", ":")
    frames = read(tmp_path / "in.extxyz", ":")  # what eval saw: positions as the file holds them
    good = [f for k, f in enumerate(frames) if k not in (2, 3, 8, 9)]
    assert len(out) == len(good) == 6
    calc = PaiNNCalculator(model, optimize=False)
    for got, atoms in zip(out, good):  # the file keeps 8 decimals (ASE's extxyz format)
        np.testing.assert_allclose(got.positions, atoms.positions, atol=1e-8)
        atoms = atoms.copy()
        atoms.calc = calc
        np.testing.assert_allclose(got.get_potential_energy(), atoms.get_potential_energy(), rtol=1e-9)
        np.testing.assert_allclose(got.get_forces(), atoms.get_forces(), atol=1e-8)
        if atoms.pbc.all():  # ASE's Voigt order and sign, eV/A^3
            np.testing.assert_allclose(got.get_stress(), atoms.get_stress(), atol=1e-8)
        else:
            assert "stress" not in got.calc.results


def test_all_good_frames_exit_zero_and_a_corrupt_tail_is_reported(tmp_path, capsys):
    frames = _frames()[:3]
    write(tmp_path / "in.xyz", frames)
    assert main(["eval", str(tmp_path / "in.xyz"), str(tmp_path / "out.xyz"), "--quiet", "--dtype", "float32"]) == 0
    assert len(read(tmp_path / "out.xyz", ":")) == 3
    capsys.readouterr()
    text = (tmp_path / "in.xyz").read_text()
    (tmp_path / "cut.xyz").write_text(text + "5\n\nCu 0 0 0\nCu 1 1\n")  # a fourth frame ASE cannot parse
    assert main(["eval", str(tmp_path / "cut.xyz"), str(tmp_path / "out2.xyz"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "ASE stopped reading IN at frame 3" in err
    assert len(read(tmp_path / "out2.xyz", ":")) == 3  # what was read is still written
