"""Energy and forces as one graph traced ahead of time: the joint forward and backward of an
optimized model, run without the autograd engine.

``joint_forces(fast, example)`` traces ``energy, -dE/dR`` of ``fast``'s fused graph with
``make_fx`` (symbolic atom and edge counts): autograd runs once, at trace time, and what it
would do on every call is recorded as graph nodes, the fused ops' analytical backwards
(``painnfx::painn_message_backward``) among them. The result runs under ``torch.inference_mode``:
no tape is recorded and no engine walks one. It can be handed to ``torch.compile`` (Inductor) as a
whole. Parameters are read from the model's live tensors at trace time (trace again after
``.to()``). Training (``create_graph=True``) keeps the autograd path.

Measured (H2O, float32, 2 threads, AMD EPYC; docs/rewriter.md): the traced graph alone is no
faster than the autograd path (per-op dispatch, not the engine, dominates at 3 atoms); under
Inductor it is 1.7x eager, and then the Python layer of the fused ops' calls is 40% of the time.
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from .runner import OptimizedModel


def _energy_and_forces(fast: OptimizedModel):
    def fn(positions, numbers, edge_index, shifts):
        positions = positions.detach().requires_grad_(True)
        with torch.enable_grad():
            energy = fast._fused(positions, numbers, edge_index, shifts, None, 1)
            (grad,) = torch.autograd.grad(energy.sum(), positions)
        return energy.detach(), -grad

    return fn


def joint_forces(fast: OptimizedModel, positions, numbers, edge_index, shifts) -> fx.GraphModule:
    """The traced graph of (energy (1,), forces (N, 3)) of ``fast``'s fused path, for any N and E
    (traced on the example given, with symbolic sizes)."""
    if not isinstance(fast, OptimizedModel) or not fast.applied:
        raise ValueError("joint_forces needs optimize() of a model that was rewritten (report.applied)")
    if fast.per_atom is False:
        raise ValueError("joint_forces needs a per-atom model (atomic_energies and aggregate)")
    return make_fx(_energy_and_forces(fast), tracing_mode="symbolic", _allow_non_fake_inputs=True)(
        positions, numbers, edge_index, shifts)


def run_joint(gm: fx.GraphModule, positions, numbers, edge_index, shifts):
    """(energy, forces) from a joint graph, in inference mode (no autograd tape, no engine)."""
    with torch.inference_mode():
        return gm(positions, numbers, edge_index, shifts)
