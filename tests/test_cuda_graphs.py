"""CUDA-graph mode logic on the CPU: padding edges contribute nothing, overflow re-captures with
a larger capacity and never drops neighbors (the capture itself needs a GPU: test_cuda_device.py)."""

import pytest
import torch
from ase.build import bulk

from helpers import system_tensors
from painnfx.model.cuda_graphs import GraphedEvaluator
from painnfx.model.default import random_model
from painnfx.model.properties import compute_properties
from painnfx.rewriter import optimize


@pytest.fixture(scope="module")
def model():
    m = random_model(3).double()
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@pytest.mark.parametrize("optimized", [False, True])
def test_padded_static_step_equals_the_plain_step_and_overflow_recaptures(model, optimized):
    evaluator = optimize(model) if optimized else model
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    atoms.rattle(0.05, seed=1)
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
    graphed = GraphedEvaluator(evaluator, numbers, stress=True, capacity=nl.edge_index.shape[1] // 2, capture=False)
    for step in range(3):
        atoms.rattle(0.02, seed=10 + step)
        pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
        got = graphed(pos, nl.edge_index, nl.shifts, cell)
        want = compute_properties(evaluator, pos, numbers, nl.edge_index, nl.shifts, cell, stress=True)
        assert graphed.capacity >= nl.edge_index.shape[1] > 0
        torch.testing.assert_close(got.energy, want.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got.forces, want.forces, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(got.stress, want.stress, rtol=1e-10, atol=1e-12)
    assert graphed.captures == 1  # one overflow (capacity E/2) -> one capture with headroom, then replays
    assert graphed.capacity > nl.edge_index.shape[1]  # padding edges really were part of the step


def test_capture_needs_a_cuda_device(model):
    with pytest.raises(ValueError, match="needs the model on a CUDA device"):
        GraphedEvaluator(model, torch.tensor([29]), capture=True)
