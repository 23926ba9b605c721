"""optimize(model) gives the same energy, forces and stress as the model, for random
configurations and systems, for painnfx's PaiNN and schnetpack's NeuralNetworkPotential."""


import pytest
import torch
from hypothesis import given, settings

from helpers import CPU_KERNELS, assert_fused, assert_kernels, evaluate, perturbed_model, system_tensors
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.properties import compute_properties
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from strategies import model_configs, molecules, periodic_cells

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _model(cfg, dtype=torch.float64):
    return perturbed_model(cfg, dtype)


def _close(a, b, rtol):
    scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
    torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * scale)


@settings(max_examples=8)
@given(model_configs(), periodic_cells(max_atoms=6))
def test_painnfx_model_float64(cfg, atoms):
    model = _model(cfg)
    fast = optimize(model)
    assert_fused(fast.report, cfg["n_interactions"])  # one fused message per layer, filter folded in
    stress = all(atoms.pbc)
    with record_calls() as calls:
        a = evaluate(fast, atoms, stress=stress)
    assert_kernels(calls, CPU_KERNELS, cfg["n_interactions"], updates=cfg["n_interactions"])
    b = evaluate(model, atoms, stress=stress)
    _close(a.energy, b.energy, 1e-10)
    _close(a.forces, b.forces, 1e-10)
    if stress:
        _close(a.stress, b.stress, 1e-10)


@settings(max_examples=5)
@given(model_configs(), molecules(max_atoms=8))
def test_painnfx_model_float32(cfg, atoms):
    model = _model(cfg, torch.float32)
    fast = optimize(model)
    assert_fused(fast.report, cfg["n_interactions"])
    with record_calls() as calls:
        a = evaluate(fast, atoms, dtype=torch.float32)
    assert_kernels(calls, CPU_KERNELS, cfg["n_interactions"], updates=cfg["n_interactions"])
    b = evaluate(model, atoms, dtype=torch.float32)
    _close(a.energy, b.energy, 1e-5)
    _close(a.forces, b.forces, 1e-5)


def test_batched_calls_use_the_same_graph():
    cfg = dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=1)
    model = _model(cfg)
    fast = optimize(model)
    from ase.build import molecule

    a, b = molecule("H2O"), molecule("CH4")
    pa, za, nla, _ = system_tensors(a, 3.0)
    pb, zb, nlb, _ = system_tensors(b, 3.0)
    args = (torch.cat([pa, pb]), torch.cat([za, zb]), torch.cat([nla.edge_index, nlb.edge_index + 3], 1),
            torch.cat([nla.shifts, nlb.shifts]))
    batch = torch.tensor([0] * 3 + [1] * 5)
    with record_calls() as calls:
        ra = compute_properties(fast, *args, batch=batch, n_systems=2)
    assert_kernels(calls, CPU_KERNELS, 2)  # one call per layer for both molecules
    rb = compute_properties(model, *args, batch=batch, n_systems=2)
    _close(ra.energy, rb.energy, 1e-12)
    _close(ra.forces, rb.forces, 1e-12)


def test_force_training_gradients_through_optimized_model():
    """Parameters stay live: a force loss (double backward through the fused ops) gives the
    original model's parameter gradients."""
    cfg = dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=2)
    model = _model(cfg)
    fast = optimize(model)
    from ase.build import molecule

    pos, z, nl, _ = system_tensors(molecule("CH3OH"), 3.0)
    grads = []
    for m in (model, fast):
        with record_calls() as calls:
            out = compute_properties(m, pos, z, nl.edge_index, nl.shifts, create_graph=True)
        # create_graph: the forward on the kernels, the differentiable reference backward (not dispatched)
        assert_kernels(calls, CPU_KERNELS, 2 if m is fast else 0, 0)
        loss = out.energy.pow(2).sum() + out.forces.pow(2).sum()
        grads.append(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    for (name, _), ga, gb in zip(model.named_parameters(), *grads):
        if ga is None:
            assert gb is None or not gb.any(), name
        else:
            torch.testing.assert_close(gb, ga, rtol=1e-9, atol=1e-11, msg=name)


def test_weight_updates_are_seen():
    cfg = dict(n_atom_basis=8, n_interactions=1, n_rbf=5, cutoff=3.0, seed=3)
    model = _model(cfg)
    fast = optimize(model)
    from ase.build import molecule

    atoms = molecule("H2O")
    before = evaluate(fast, atoms).energy
    with torch.no_grad():
        model.filter_net.weight.mul_(1.5)
        model.embedding.weight.add_(0.1)
    _close(evaluate(fast, atoms).energy, evaluate(model, atoms).energy, 1e-12)
    assert not torch.allclose(before, evaluate(fast, atoms).energy)


def test_dtype_change_after_optimize_is_a_clear_error():
    model = _model(dict(n_atom_basis=8, n_interactions=1, n_rbf=5, cutoff=3.0, seed=4))
    fast = optimize(model)
    pos = torch.rand(3, 3, dtype=torch.float32)
    ei = torch.tensor([[0, 1], [1, 0]])
    with pytest.raises(ValueError, match="optimize"):
        fast.runner.check(pos)
    with pytest.raises(ValueError, match="built for torch.float64"):
        fast(pos, torch.tensor([1, 1, 1]), ei, torch.zeros(2, 3))


def test_calculator_fused_path_agrees_with_the_plain_model():
    """PaiNNCalculator(optimize=True) runs the fused graph on the C++ kernels for energy, forces
    and stress, and equals the unoptimized calculator (the auto policy: test_cpu_backend.py)."""
    from ase.build import bulk

    model = _model(dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=4.0, seed=5))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.05, seed=1)
    fast_calc = PaiNNCalculator(model, optimize=True)
    plain_calc = PaiNNCalculator(model, optimize=False)
    assert fast_calc.optimized and not plain_calc.optimized and fast_calc.evaluator.path == "fused"
    assert_fused(fast_calc.evaluator.report, 2)
    atoms.calc = fast_calc
    with record_calls() as calls:
        s = atoms.get_stress()  # one evaluation gives energy, forces and stress: 2 layers
        e, f = atoms.get_potential_energy(), atoms.get_forces()
    assert_kernels(calls, CPU_KERNELS, 2)
    atoms.calc = plain_calc
    with record_calls() as calls:
        s0 = atoms.get_stress()
        e0, f0 = atoms.get_potential_energy(), atoms.get_forces()
    assert_kernels(calls, CPU_KERNELS, 0)
    torch.testing.assert_close(torch.tensor(e), torch.tensor(e0), rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(torch.tensor(f), torch.tensor(f0), rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(torch.tensor(s), torch.tensor(s0), rtol=1e-10, atol=1e-12)
