"""optimize(model) end to end on the CUDA kernels, without a GPU: the emulated kernels are a
dispatcher backend on CPU tensors (painnfx.tools.emulator.backend), so energy, forces and
stress of a periodic system run through the same .cu sources and launch-argument code a GPU
runs; so does the CUDA-graph MD step, with a capture stub that replays into the captured
output tensors as a CUDA graph does."""

import pytest
import torch
from ase.build import bulk

from helpers import env_import, perturbed_model, system_tensors
from painnfx.model.cuda_graphs import GraphedEvaluator
from painnfx.model.properties import compute_properties
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from painnfx.rewriter.verify import VerificationError

emulator = env_import("painnfx.tools.emulator")
from painnfx.tools.emulator import backend as emulated  # noqa: E402

pytestmark = pytest.mark.emulated
CONFIG = dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=11)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.fixture
def on_emulator():
    emulated.register(schedule="random", seed=3)
    yield
    emulated.unregister()


def cu_cell():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    atoms.rattle(0.1, seed=4)
    return atoms


def _kernel_calls(calls) -> dict:
    return {op: calls[(op, "emulated")] for op in ("painn_message", "painn_message_backward", "painn_update",
                                                   "painn_update_backward")}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_optimized_model_runs_end_to_end_on_the_emulated_kernels(on_emulator, dtype):
    model = perturbed_model(CONFIG, dtype)
    fast = optimize(model, backend="emulated")
    assert fast.applied and fast.report.fused_nodes == 4, fast.report.to_text()
    pos, numbers, nl, cell = system_tensors(cu_cell(), model.cutoff, dtype)
    with record_calls() as calls:
        got = compute_properties(fast, pos, numbers, nl.edge_index, nl.shifts, cell, stress=True)
    assert _kernel_calls(calls) == {"painn_message": 2, "painn_message_backward": 2, "painn_update": 2,
                                    "painn_update_backward": 2}  # both layers, both ways
    assert calls[("painn_message", "cpp")] == calls[("painn_message", "reference")] == 0
    want = compute_properties(model, pos, numbers, nl.edge_index, nl.shifts, cell, stress=True)
    for name in ("energy", "forces", "stress"):
        torch.testing.assert_close(getattr(got, name), getattr(want, name), **TOL[dtype], msg=name)


def _first_accumulation_flipped(name: str) -> str:
    """The first accumulation into an output (+= -> -=) of a .cu file: the mutant the issue names."""
    src = (emulator.CUDA_DIR / name).read_text()  # as written (its #includes unexpanded)
    lines = src.split("\n")
    k = next(k for k, line in enumerate(lines) if "+=" in line and "for (" not in line and "//" not in line)
    lines[k] = lines[k].replace("+=", "-=", 1)
    return "\n".join(lines)


@pytest.mark.parametrize("source", ["painn_message.cu", "painn_message_backward.cu"])
def test_a_flipped_accumulation_in_either_kernel_fails_end_to_end(source):
    """The same end-to-end path with a mutated kernel: strict mode (the suite's) raises."""
    emulated.register(sources={source: _first_accumulation_flipped(source)})
    try:
        model = perturbed_model(CONFIG, torch.float64)
        with pytest.raises(VerificationError, match="fused_painn_message"):
            optimize(model, backend="emulated")
    finally:
        emulated.unregister()


class StubGraph:
    """Stands in for torch.cuda.graph on the CPU: the step runs once at capture, into output
    tensors that a replay then overwrites in place (what replaying a CUDA graph does), so the
    evaluator must read its inputs from, and return, the captured static buffers."""

    def __init__(self):
        self.captures = self.replays = 0

    def __call__(self, step):
        self.captures += 1
        captured = step()

        def replay():
            self.replays += 1
            fresh = step()
            for name in ("energy", "forces", "stress"):
                if getattr(captured, name) is not None:
                    getattr(captured, name).copy_(getattr(fresh, name))
            return captured

        return replay


def test_cuda_graph_step_on_the_emulated_kernels(on_emulator):
    """Capacity, padding edges at |r| >= r_c, overflow and re-capture, and results equal to the
    uncaptured path, with the fused ops on the emulated CUDA kernels."""
    model = perturbed_model(CONFIG, torch.float64)
    for p in model.parameters():
        p.requires_grad_(False)
    fast = optimize(model, backend="emulated")
    assert fast.applied
    atoms = cu_cell()
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
    stub = StubGraph()
    graphed = GraphedEvaluator(fast, numbers, stress=True, capacity=nl.edge_index.shape[1] - 4, recorder=stub)
    capacities = []
    for step in range(4):
        if step == 2:  # compress the cell: more neighbors than the capacity -> overflow, re-capture
            atoms.set_cell(atoms.cell * 0.82, scale_atoms=True)  # second shell inside r_c
        atoms.rattle(0.02, seed=20 + step)
        pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
        n_edges = nl.edge_index.shape[1]
        runs = stub.captures + stub.replays
        with record_calls() as calls:
            got = graphed(pos, nl.edge_index, nl.shifts, cell)
        runs = stub.captures + stub.replays - runs  # a capture runs the step once, and so does each replay
        assert _kernel_calls(calls) == {op: 2 * runs for op in ("painn_message", "painn_message_backward",
                                                                 "painn_update", "painn_update_backward")}
        capacities.append(graphed.capacity)
        assert graphed.capacity > n_edges  # padding edges were part of the step
        pad = graphed.positions[graphed.edge_index[1, n_edges:]] - graphed.positions[graphed.edge_index[0, n_edges:]]
        assert bool(((pad + graphed.shifts[n_edges:]).norm(dim=1) >= model.cutoff).all())
        want = compute_properties(model, pos, numbers, nl.edge_index, nl.shifts, cell, stress=True)
        for name in ("energy", "forces", "stress"):
            torch.testing.assert_close(getattr(got, name), getattr(want, name), rtol=1e-10, atol=1e-10, msg=name)
    # capacity E-4: the first step overflows (capture 1), step 2 compresses the cell (capture 2)
    assert graphed.captures == stub.captures == 2 and stub.replays == 4
    assert capacities[0] == capacities[1] < capacities[2] == capacities[3]
