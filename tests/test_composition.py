"""An optimized model composes with torch.compile, torch.func and torch.export.

Each case asserts the fused ops ran (kernels counted) and, where torch builds a graph, that each
fused op is one node of it; values equal the eager model's in fp64 (1e-10) and fp32 (1e-5).
"""

import warnings

import pytest
import torch
from ase.build import bulk, molecule

from helpers import CPU_KERNELS, assert_kernels, env_import, system_tensors
from painnfx.model.default import random_model
from painnfx.model.neighbors import neighbor_list
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize

TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
#: Inductor in fp64; in fp32 Dynamo and AOTAutograd only (what composition needs of our ops; Inductor's
#: code generation is exercised once, and saves the suite half a minute per case)
BACKEND = {torch.float64: "inductor", torch.float32: "aot_eager"}
FUSED = {"painnfx.prepare_edges.default", "painnfx.painn_message.default", "painnfx.painn_message_backward.default"}


def _model(dtype):
    torch.manual_seed(0)
    return random_model(4, n_atom_basis=8, n_interactions=2, n_rbf=6, cutoff=3.0).to(dtype)


def _inputs(atoms, cutoff, dtype):
    pos, numbers, nl, _ = system_tensors(atoms, cutoff, dtype)
    return pos, numbers, nl.edge_index, nl.shifts


def _systems():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    out = [molecule("CH4"), molecule("H2O"), molecule("C6H6"), cu]
    for k, atoms in enumerate(out):
        atoms.rattle(0.05, seed=k)
    return out


def _energy_forces(model, args):
    p = args[0].detach().clone().requires_grad_(True)
    energy = model(p, *args[1:]).sum()
    (grad,) = torch.autograd.grad(energy, p)
    return energy.detach(), -grad


def _close(a, b, dtype, what):
    torch.testing.assert_close(a.detach(), b, rtol=TOL[dtype], atol=TOL[dtype], msg=what)


def _assert_eager_results(model, evaluator, dtype, label: str) -> None:
    """``evaluator``'s energy and forces on every system equal eager's, the fused kernels ran."""
    for atoms in _systems():
        args = _inputs(atoms, model.cutoff, dtype)
        with record_calls() as calls:
            energy, forces = _energy_forces(evaluator, args)
        assert_kernels(calls, CPU_KERNELS, 2)
        ref_e, ref_f = _energy_forces(model, args)
        _close(energy, ref_e, dtype, f"energy ({label})")
        _close(forces, ref_f, dtype, f"forces ({label})")


class GraphCounter:
    """A torch.compile backend that keeps each graph Dynamo compiles, then runs ``inner``.

    Graphs are keyed by Dynamo's compile id (frame, compile of that frame): when Dynamo restarts
    an analysis (it does when a Python float it traced symbolically must be specialized, which
    happens on a cold Inductor cache) the discarded attempt reaches the backend too, under the
    same id, and is replaced rather than counted."""

    def __init__(self, inner="inductor"):
        self._graphs, self.inner = {}, inner

    @property
    def graphs(self) -> list:
        return list(self._graphs.values())

    def __call__(self, gm, example_inputs):
        if any(n.op == "call_function" for n in gm.graph.nodes):  # Dynamo also hands over empty graphs
            cid = torch._guards.CompileContext.current_compile_id()
            key = (cid.frame_id, cid.frame_compile_id) if cid is not None else len(self._graphs)
            self._graphs[key] = gm
        if self.inner == "inductor":
            from torch._inductor.compile_fx import compile_fx

            return compile_fx(gm, example_inputs)
        return torch._dynamo.backends.registry.lookup_backend(self.inner)(gm, example_inputs)

    def fused_nodes(self) -> dict:
        out: dict = {}
        for gm in self.graphs:
            for node in (n for sub in gm.modules() if isinstance(sub, torch.fx.GraphModule) for n in sub.graph.nodes):
                if node.op == "call_function" and str(node.target).replace("painnfx::", "painnfx.") in FUSED:
                    out[str(node.target)] = out.get(str(node.target), 0) + 1
        return out


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compile_fullgraph_of_the_optimized_model(dtype):
    model = _model(dtype)
    fast = optimize(model)
    counter = GraphCounter(BACKEND[dtype])
    _assert_eager_results(model, torch.compile(fast, fullgraph=True, backend=counter), dtype, "compiled")
    assert len(counter.graphs) <= 2  # static first, then one dynamic graph for every later size
    assert counter.fused_nodes()["painnfx.painn_message.default"] == 2 * len(counter.graphs)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_grad_and_value_and_its_compilation(dtype):
    model = _model(dtype)
    fast = optimize(model)

    def energy(positions, numbers, edge_index, shifts):
        return fast(positions, numbers, edge_index, shifts).sum()

    eager_gv = torch.func.grad_and_value(energy)
    counter = GraphCounter(BACKEND[dtype])
    compiled_gv = torch.compile(torch.func.grad_and_value(energy), fullgraph=True, backend=counter)
    for atoms in _systems():
        args = _inputs(atoms, model.cutoff, dtype)
        ref_e, ref_f = _energy_forces(model, args)
        with record_calls() as calls:
            grad, value = eager_gv(*args)
        # the forward on the kernels; under a transform the backward is the differentiable
        # reference formula (so transforms nest), which dispatch does not count
        assert calls[("painn_message", CPU_KERNELS)] == 2
        _close(value, ref_e, dtype, "energy (grad_and_value)")
        _close(-grad, ref_f, dtype, "forces (grad_and_value)")
        with record_calls() as calls:
            grad, value = compiled_gv(*args)
        assert_kernels(calls, CPU_KERNELS, 2)  # compiled: the analytical backward op, on the kernels
        _close(value, ref_e, dtype, "energy (compiled grad_and_value)")
        _close(-grad, ref_f, dtype, "forces (compiled grad_and_value)")
    # Under a transform Dynamo specializes the atom count (functorch's aten.linear on the (N, 1, F)
    # scalar features; the plain model recompiles the same way): one graph per atom count here, and
    # only one recompile when the atoms stay and the edges change (the MD test below).
    nodes = counter.fused_nodes()
    assert nodes["painnfx.painn_message.default"] == nodes["painnfx.painn_message_backward.default"] == 2 * len(
        counter.graphs)


def test_export_with_dynamic_sizes_round_trips_through_save_and_load(tmp_path):
    dtype = torch.float64
    model = _model(dtype)
    fast = optimize(model)
    cu = _systems()[-1]
    args = _inputs(cu, model.cutoff, dtype)
    atoms_dim, edges_dim = torch.export.Dim("atoms", min=1), torch.export.Dim("edges", min=0)
    program = torch.export.export(fast, args, dynamic_shapes=({0: atoms_dim}, {0: atoms_dim}, {1: edges_dim},
                                                              {0: edges_dim}))
    targets = [str(n.target) for n in program.graph.nodes if n.op == "call_function"]
    assert targets.count("painnfx.prepare_edges.default") == 1 and targets.count("painnfx.painn_message.default") == 2
    torch.export.save(program, tmp_path / "fast.pt2")
    loaded = torch.export.load(tmp_path / "fast.pt2").module()
    _assert_eager_results(model, loaded, dtype, "exported")  # other atom and edge counts than exported with


def test_md_with_a_changing_neighbor_list_recompiles_at_most_once():
    """100 steps of noisy gradient descent on a periodic cell, the neighbor list rebuilt every
    step (its edge count changes), through the compiled grad_and_value of the optimized model."""
    dtype = torch.float64
    model = _model(dtype)
    fast = optimize(model)

    def energy(positions, numbers, edge_index, shifts):
        return fast(positions, numbers, edge_index, shifts).sum()

    counter = GraphCounter("aot_eager")  # recompiles are Dynamo's decision: the cheapest backend counts them
    step = torch.compile(torch.func.grad_and_value(energy), fullgraph=True, backend=counter)
    atoms = _systems()[-1]
    numbers = torch.tensor(atoms.numbers)
    pos = torch.tensor(atoms.positions, dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    edge_counts = set()
    for _ in range(100):
        nl = neighbor_list(pos.numpy(), model.cutoff, atoms.cell.array, atoms.pbc, dtype=dtype)
        edge_counts.add(nl.edge_index.shape[1])
        grad, _ = step(pos, numbers, nl.edge_index, nl.shifts)
        pos = pos - 0.01 * grad + 0.08 * torch.randn(pos.shape, generator=gen, dtype=dtype)
    assert len(edge_counts) > 10
    assert len(counter.graphs) <= 2  # at most one recompile
    ref_e, ref_f = _energy_forces(model, (pos, numbers, nl.edge_index, nl.shifts))
    grad, value = step(pos, numbers, nl.edge_index, nl.shifts)
    _close(value, ref_e, dtype, "energy after 100 steps")
    _close(-grad, ref_f, dtype, "forces after 100 steps")


@pytest.mark.schnetpack
def test_schnetpack_potential_composes():
    """The optimized representation of a schnetpack potential compiles whole, and the energy of
    (input modules, representation, atomwise network) goes through grad_and_value and its
    compilation. The potential's own forward cannot be compiled whole, optimized or not: its
    Forces module calls requires_grad_ and autograd.grad inside forward (a Dynamo limit)."""
    spk_interop = env_import("painnfx.model.schnetpack_interop")
    spk = spk_interop.import_schnetpack()
    dtype = torch.float64
    model = _model(dtype)
    nnpot = spk_interop.to_schnetpack(model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = optimize(nnpot)
    atoms = _systems()[0]
    pos, numbers, nl, cell = system_tensors(atoms, model.cutoff, dtype)
    base = spk_interop.schnetpack_inputs(pos, numbers, nl.edge_index, nl.cell_shifts, cell, atoms.pbc)
    ref = nnpot(dict(base))
    distances, atomwise = fast.input_modules[0], fast.output_modules[0]

    counter = GraphCounter()
    representation = torch.compile(fast.representation, fullgraph=True, backend=counter)
    with record_calls() as calls:
        out = representation(distances(dict(base)))
    assert calls[("painn_message", CPU_KERNELS)] == 2
    assert counter.fused_nodes()["painnfx.painn_message.default"] == 2

    def energy(positions):
        inputs = dict(base)
        inputs[spk.properties.R] = positions
        inputs = fast.representation(distances(inputs))
        return atomwise.outnet(inputs["scalar_representation"]).sum()

    torch.testing.assert_close(atomwise.outnet(out["scalar_representation"]).sum(), ref["energy"].sum(), rtol=1e-10,
                               atol=1e-10)
    for gv in (torch.func.grad_and_value(energy), torch.compile(torch.func.grad_and_value(energy), fullgraph=True)):
        with record_calls() as calls:
            grad, value = gv(pos)
        assert calls[("painn_message", CPU_KERNELS)] == 2
        _close(value, ref["energy"].sum(), dtype, "schnetpack energy")
        _close(-grad, ref["forces"], dtype, "schnetpack forces")
