"""The hand-assembled fused PaiNN equals the eager model: energy, forces, stress, training grads."""

import torch
from hypothesis import given, settings

from helpers import evaluate, perturbed_model, system_tensors
from hand_fused import FusedPaiNN
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.model.properties import compute_properties
from strategies import model_configs, molecules, periodic_cells


def _pair(cfg, dtype=torch.float64):
    model = perturbed_model(cfg, dtype)
    return model, FusedPaiNN(model, chunk_size=7)


def _rel(a, b):
    return dict(rtol=1e-10, atol=1e-10 * max(1.0, float(b.abs().max()) if b.numel() else 1.0))


@given(model_configs(), molecules(max_atoms=10))
def test_molecules_float64(cfg, atoms):
    model, fused = _pair(cfg)
    a, b = evaluate(fused, atoms), evaluate(model, atoms)
    torch.testing.assert_close(a.energy, b.energy, **_rel(a.energy, b.energy))
    torch.testing.assert_close(a.forces, b.forces, **_rel(a.forces, b.forces))


@settings(max_examples=15)
@given(model_configs(), periodic_cells(mixed_pbc=False, max_atoms=6))
def test_periodic_with_stress_float64(cfg, atoms):
    model, fused = _pair(cfg)
    a, b = evaluate(fused, atoms, stress=True), evaluate(model, atoms, stress=True)
    torch.testing.assert_close(a.energy, b.energy, **_rel(a.energy, b.energy))
    torch.testing.assert_close(a.forces, b.forces, **_rel(a.forces, b.forces))
    torch.testing.assert_close(a.stress, b.stress, **_rel(a.stress, b.stress))


@settings(max_examples=10)
@given(model_configs(), periodic_cells(max_atoms=6))
def test_float32_close_to_float64_truth(cfg, atoms):
    model, _ = _pair(cfg)
    fused32 = FusedPaiNN(PaiNN(PaiNNConfig(**cfg)).float())
    fused32.model.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
    a = evaluate(fused32, atoms, dtype=torch.float32)
    b = evaluate(model, atoms)
    scale = max(1.0, float(b.forces.abs().max()) if b.forces.numel() else 1.0)
    torch.testing.assert_close(a.energy.double(), b.energy, rtol=1e-5, atol=1e-5 * max(1.0, float(b.energy.abs().max())))
    torch.testing.assert_close(a.forces.double(), b.forces, rtol=1e-4, atol=1e-5 * scale)


@settings(max_examples=5)
@given(model_configs(), molecules(max_atoms=6))
def test_force_training_gradients_match(cfg, atoms):
    """Loss on forces (double backward) gives the same parameter gradients."""
    model, fused = _pair(cfg)
    pos, numbers, nl, _ = system_tensors(atoms, model.cutoff)
    grads = []
    for m in (model, fused):
        out = compute_properties(m, pos, numbers, nl.edge_index, nl.shifts, create_graph=True)
        loss = out.energy.pow(2).sum() + out.forces.pow(2).sum()
        params = [p for p in model.parameters()]
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    for (name, _), ga, gb in zip(model.named_parameters(), *grads):
        if ga is None or gb is None:
            assert (ga is None or not ga.any()) and (gb is None or not gb.any()), name
            continue
        torch.testing.assert_close(ga, gb, rtol=1e-9, atol=1e-10, msg=name)


def test_isolated_atom_and_single_atom_with_images():
    from ase import Atoms

    cfg = dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=4)
    model, fused = _pair(cfg)
    for atoms in (Atoms("Cu", positions=[[0, 0, 0]]),
                  Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=[2.2, 2.4, 2.6], pbc=True),
                  Atoms("Cu2", positions=[[0, 0, 0], [30, 0, 0]])):
        a, b = evaluate(fused, atoms, stress=all(atoms.pbc)), evaluate(model, atoms, stress=all(atoms.pbc))
        torch.testing.assert_close(a.energy, b.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(a.forces, b.forces, rtol=1e-12, atol=1e-12)
        if all(atoms.pbc):
            torch.testing.assert_close(a.stress, b.stress, rtol=1e-10, atol=1e-12)
