"""painnfx PaiNN == schnetpack PaiNN on the same weights, converted either way."""

import pytest
import torch
from hypothesis import given, settings

from helpers import env_import, env_skip, perturbed_model, system_tensors
from painnfx.model.painn import PaiNN
from painnfx.model.properties import compute_properties
from strategies import model_configs, molecules, periodic_cells

spk_interop = env_import("painnfx.model.schnetpack_interop")
try:
    spk_interop.import_schnetpack()
except ImportError as exc:  # pragma: no cover - environment without schnetpack
    env_skip(f"schnetpack cannot be imported ({exc})", module=True)

pytestmark = pytest.mark.schnetpack


def _spk_eval(nnpot, atoms, stress):
    pos, numbers, nl, cell = system_tensors(atoms, float(nnpot.representation.cutoff))
    inputs = spk_interop.schnetpack_inputs(pos, numbers, nl.edge_index, nl.cell_shifts, cell, atoms.pbc, stress=stress)
    return nnpot(inputs)


def _assert_same(model, nnpot, atoms, stress):
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
    ours = compute_properties(model, pos, numbers, nl.edge_index, nl.shifts, cell, stress=stress)
    theirs = _spk_eval(nnpot, atoms, stress)
    torch.testing.assert_close(ours.energy, theirs["energy"].detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(ours.forces, theirs["forces"].detach(), rtol=1e-10, atol=1e-12)
    if stress:
        torch.testing.assert_close(ours.stress, theirs["stress"][0].detach(), rtol=1e-10, atol=1e-12)


def _perturbed(cfg):
    return perturbed_model(cfg)  # non-zero biases, so every parameter matters


@settings(max_examples=15)
@given(model_configs(), molecules(max_atoms=8))
def test_to_schnetpack_molecules(cfg, atoms):
    model = _perturbed(cfg)
    _assert_same(model, spk_interop.to_schnetpack(model), atoms, stress=False)


@settings(max_examples=10)
@given(model_configs(), periodic_cells(mixed_pbc=False, max_atoms=5))
def test_to_schnetpack_periodic_with_stress(cfg, atoms):
    model = _perturbed(cfg)
    _assert_same(model, spk_interop.to_schnetpack(model, stress=True), atoms, stress=True)


@settings(max_examples=10)
@given(model_configs(), molecules(max_atoms=6))
def test_from_schnetpack_round_trip(cfg, atoms):
    spk = spk_interop.import_schnetpack()
    torch.manual_seed(cfg["seed"])
    rbf = (spk.nn.GaussianRBF if cfg["radial_basis"] == "gaussian" else spk.nn.BesselRBF)(n_rbf=cfg["n_rbf"], cutoff=cfg["cutoff"])
    rep = spk.representation.PaiNN(
        n_atom_basis=cfg["n_atom_basis"],
        n_interactions=cfg["n_interactions"],
        radial_basis=rbf,
        cutoff_fn=spk.nn.CosineCutoff(cfg["cutoff"]),
        shared_interactions=cfg["shared_interactions"],
        shared_filters=cfg["shared_filters"],
    )
    nnpot = spk.model.NeuralNetworkPotential(
        representation=rep,
        input_modules=[spk.atomistic.PairwiseDistances()],
        output_modules=[spk.atomistic.Atomwise(n_in=cfg["n_atom_basis"], output_key="energy"), spk.atomistic.Forces()],
    ).double()
    with torch.no_grad():
        for p in nnpot.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model = spk_interop.from_schnetpack(nnpot)
    assert model.config.shared_filters == cfg["shared_filters"]
    assert model.config.shared_interactions == (cfg["shared_interactions"] and cfg["n_interactions"] > 1)
    _assert_same(model, nnpot, atoms, stress=False)


def test_unsupported_schnetpack_model_is_refused():
    spk = spk_interop.import_schnetpack()
    rep = spk.representation.SchNet(n_atom_basis=8, n_interactions=1, radial_basis=spk.nn.GaussianRBF(5, 3.0), cutoff_fn=spk.nn.CosineCutoff(3.0))
    nnpot = spk.model.NeuralNetworkPotential(representation=rep, output_modules=[spk.atomistic.Atomwise(n_in=8)])
    with pytest.raises(TypeError, match="expected schnetpack PaiNN"):
        spk_interop.from_schnetpack(nnpot)


def test_model_with_atomref_cannot_go_to_schnetpack_silently():
    model = PaiNN(n_atom_basis=4, n_interactions=1, n_rbf=3, cutoff=3.0)
    model.atomref[1] = 1.0
    with pytest.raises(ValueError, match="atomref"):
        spk_interop.to_schnetpack(model)
