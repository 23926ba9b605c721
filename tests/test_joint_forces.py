"""The joint forward+backward graph of an optimized model (rewriter/joint.py): traced once, it
contains the fused ops' analytical backwards, runs without autograd, and gives the forces of the
autograd path for systems of other sizes than the one it was traced on."""

import torch
from ase.build import bulk, molecule

from helpers import CPU_KERNELS, assert_kernels, evaluate, system_tensors
from painnfx.model.default import random_model
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from painnfx.rewriter.joint import joint_forces, run_joint


def _targets(gm):
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def test_joint_graph_has_the_fused_backward_and_matches_autograd_on_other_sizes():
    model = random_model(4, n_atom_basis=8, n_interactions=2, n_rbf=6, cutoff=3.0).double()
    fast = optimize(model)
    pos, numbers, nl, _ = system_tensors(molecule("CH4"), model.cutoff)
    gm = joint_forces(fast, pos, numbers, nl.edge_index, nl.shifts)
    targets = _targets(gm)
    assert "painnfx.painn_message.default" in targets and "painnfx.painn_message_backward.default" in targets
    assert not any("autograd" in t or "Backward" in t for t in targets)
    for atoms in (molecule("H2O"), molecule("C6H6"), bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)):
        atoms.rattle(0.05, seed=1)
        pos, numbers, nl, _ = system_tensors(atoms, model.cutoff)
        with record_calls() as calls:
            energy, forces = run_joint(gm, pos, numbers, nl.edge_index, nl.shifts)
        assert_kernels(calls, CPU_KERNELS, 2)  # each layer's fused forward and backward ran on the kernels
        assert not energy.requires_grad and not forces.requires_grad and energy.is_inference()
        ref = evaluate(model, atoms)
        torch.testing.assert_close(energy, ref.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(forces, ref.forces, rtol=1e-10, atol=1e-10)
