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


@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 2e-5)])
def test_training_loss_gradients_through_the_optimized_model(dtype, tol):
    """What `painnfx distill --optimized` steps on: the energy+force loss's parameter gradients
    (double backward through the fused ops) equal eager training's, compared directly (an
    optimizer such as Adam would hide a wrong gradient scale)."""
    from painnfx.model.painn import PaiNN, PaiNNConfig
    from painnfx.ops.dispatch import record_calls
    from painnfx.rewriter import optimize
    from painnfx.tools.distill import to_tensors, training_loss

    model = PaiNN(PaiNNConfig(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=4.0, elements=[29], seed=3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(dtype))
    fast = optimize(model)
    data = to_tensors(generate(3, seed=5), 4.0, dtype)
    grads = {}
    for name, trainer in (("eager", model), ("optimized", fast)):
        with record_calls() as calls:
            loss = training_loss(trainer, data, force_weight=10.0)
        assert calls[("painn_message", "cpp")] == (2 if name == "optimized" else 0)
        grads[name] = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    for (pname, _), a, b in zip(model.named_parameters(), grads["eager"], grads["optimized"]):
        assert (a is None) == (b is None), pname
        if a is not None:
            scale = float(a.abs().max()) or 1.0
            torch.testing.assert_close(b, a, rtol=tol, atol=tol * scale, msg=pname)
    assert any(g is not None and g.abs().max() > 0 for g in grads["optimized"])


def test_distill_through_optimized_model_runs(tmp_path, capsys):
    rc = main(["distill", "--n-train", "4", "--n-val", "2", "--features", "8", "--interactions", "2", "--rbf", "5",
               "--cutoff", "4.0", "--epochs", "1", "--batch-size", "2", "--quiet", "--optimized",
               "--out", str(tmp_path / "b.pt")])
    assert rc == 0
    assert load_checkpoint(tmp_path / "b.pt").metadata["hyperparameters"]["optimized"] is True
