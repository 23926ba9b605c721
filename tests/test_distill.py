"""The EMT teacher data and the distillation loop, on tiny settings."""

import json

import numpy as np
import pytest
import torch

from painnfx.model.checkpoint import load_checkpoint
from painnfx.tools.cli import main
from painnfx.tools.dataset import KINDS, generate


def test_generate_is_deterministic_and_covers_every_kind():
    a = generate(24, seed=3)
    b = generate(24, seed=3)
    assert [s.kind for s in a] == [s.kind for s in b]
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x.atoms.positions, y.atoms.positions)
        assert x.energy == y.energy
    kinds = {s.kind for s in generate(60, seed=0)}
    assert kinds == set(KINDS)
    for s in a:
        assert s.forces.shape == (len(s.atoms), 3)
        assert (s.stress is not None) == bool(s.atoms.pbc.all())


def test_generate_rejects_elements_emt_lacks():
    with pytest.raises(ValueError, match="EMT has no parameters"):
        generate(2, 0, ("Fe",))


def test_distill_tiny_run_writes_a_checkpoint_with_its_errors(tmp_path, capsys):
    out = tmp_path / "student.pt"
    rc = main(["distill", "--n-train", "6", "--n-val", "3", "--features", "8", "--interactions", "1", "--rbf", "6",
               "--cutoff", "4.0", "--epochs", "2", "--batch-size", "3", "--out", str(out), "--quiet"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out)
    model = load_checkpoint(out)
    meta = model.metadata
    assert meta["teacher"] == "ase.calculators.emt.EMT" and meta["seed"] == 0
    assert meta["validation"]["energy_mae_meV_per_atom"] == summary["validation"]["energy_mae_meV_per_atom"]
    assert len(meta["history"]) == 2
    assert model.config.elements == [29]


def test_distill_through_optimized_model_matches_eager_training(tmp_path, capsys):
    """Training through optimize() (double backward through the fused ops) takes the same steps."""
    args = ["distill", "--n-train", "4", "--n-val", "2", "--features", "8", "--interactions", "2", "--rbf", "5",
            "--cutoff", "4.0", "--epochs", "1", "--batch-size", "2", "--quiet"]
    main(args + ["--out", str(tmp_path / "a.pt")])
    main(args + ["--out", str(tmp_path / "b.pt"), "--optimized"])
    capsys.readouterr()
    a, b = load_checkpoint(tmp_path / "a.pt"), load_checkpoint(tmp_path / "b.pt")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-6, msg=k)
