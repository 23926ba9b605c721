"""The joint forward+backward graph of an optimized model (rewriter/joint.py): traced once, it
contains the fused ops' analytical backwards, runs without autograd, and gives the forces of the
autograd path for systems of other sizes than the one it was traced on."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from helpers import JointKernels, evaluate, fused_target, system_tensors
from painnfx.model.default import random_model
from painnfx.model.properties import compute_properties, voigt
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from painnfx.rewriter.joint import JointGraphs, trace

SMALL = dict(n_atom_basis=8, n_interactions=2, n_rbf=6, cutoff=3.0)


def joint_forces(fast, positions, numbers, edge_index, shifts):
    """The traced graph of (energy (1,), forces (N, 3)) of ``fast``'s fused graph, for any N and E
    (traced on the example given, with symbolic sizes; not compiled)."""

    def energy_and_forces(positions, numbers, edge_index, shifts):
        positions = positions.detach().requires_grad_(True)
        with torch.enable_grad():
            energy = fast._fused(positions, numbers, edge_index, shifts, None, 1)
            (grad,) = torch.autograd.grad(energy.sum(), positions)
        return energy.detach(), -grad

    return trace(energy_and_forces, positions, numbers, edge_index, shifts, backend=fast.runner.backend)


def run_joint(gm, positions, numbers, edge_index, shifts):
    """(energy, forces) from a joint graph, in inference mode (no autograd tape, no engine)."""
    with torch.inference_mode():
        return gm(positions, numbers, edge_index, shifts)


def _targets(gm):
    return {str(n.target) for n in gm.graph.nodes if n.op == "call_function"}


def test_joint_graph_has_the_fused_backward_and_matches_autograd_on_other_sizes():
    model = random_model(4, **SMALL).double()
    fast = optimize(model)
    pos, numbers, nl, _ = system_tensors(molecule("CH4"), model.cutoff)
    gm = joint_forces(fast, pos, numbers, nl.edge_index, nl.shifts)
    targets = _targets(gm)
    assert fused_target("painn_message") in targets and fused_target("painn_message_backward") in targets
    assert not any("autograd" in t or "Backward" in t for t in targets)
    for atoms in (molecule("H2O"), molecule("C6H6"), bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)):
        atoms.rattle(0.05, seed=1)
        pos, numbers, nl, _ = system_tensors(atoms, model.cutoff)
        with JointKernels() as ran:
            energy, forces = run_joint(gm, pos, numbers, nl.edge_index, nl.shifts)
        ran.assert_message_kernels(2)  # each layer's fused forward and backward ran on the kernels
        assert not energy.requires_grad and not forces.requires_grad and energy.is_inference()
        ref = evaluate(model, atoms)
        torch.testing.assert_close(energy, ref.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(forces, ref.forces, rtol=1e-10, atol=1e-10)


def _joint_model(path: str, dtype=torch.float64, compiled: bool = False):
    """A small PaiNN and optimize() of it with the joint graphs on under ``path``; traced only
    (``JointGraphs(compile=False)``) unless ``compiled`` (Inductor)."""
    model = random_model(4, **SMALL).to(dtype)
    fast = optimize(model)
    fast.path, fast.joint = path, True
    if not compiled:
        fast.joint_graphs = JointGraphs(compile=False)
    return model, fast


def _cu_cell():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    atoms.rattle(0.05, seed=4)
    return atoms


def test_calculator_takes_the_compiled_forces_graph(monkeypatch):
    """The calculator's auto path rule with the compiled forces graph on (traced, not compiled here:
    the Inductor test below compiles it), set up at once: checked against the fused path on the
    first call of each size class, then every energy+forces (and stress) call runs it, in inference
    mode, on the kernels; nothing is measured."""
    from painnfx.model.calculator import PaiNNCalculator
    model = random_model(4, **SMALL).double()
    calc = PaiNNCalculator(model, optimize="auto", setup="now", dtype=torch.float64)
    fast = calc.evaluator
    fast.joint, fast.joint_graphs = True, JointGraphs(compile=False)
    for atoms, stress in ((molecule("H2O"), False), (molecule("C6H6"), False), (_cu_cell(), True)):
        atoms.rattle(0.02, seed=2)
        pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
        compute_properties(fast, pos, numbers, nl.edge_index, nl.shifts, cell, stress=stress)  # checks
        with JointKernels() as ran:
            out = compute_properties(fast, pos, numbers, nl.edge_index, nl.shifts, cell, stress=stress)
        ran.assert_message_kernels(2)
        assert out.forces.is_inference() and out.energy.is_inference()  # no autograd tape was recorded
        ref = evaluate(model, atoms, stress=stress)
        torch.testing.assert_close(out.energy, ref.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.forces, ref.forces, rtol=1e-10, atol=1e-10)
        if stress:
            torch.testing.assert_close(out.stress, ref.stress, rtol=1e-10, atol=1e-12)
            atoms.calc = calc
            np.testing.assert_allclose(atoms.get_stress(), voigt(ref.stress), rtol=1e-9, atol=1e-12)
    assert [c["path"] for c in fast.report.paths] == ["compiled forces graph"]
    graphs = fast.report.joint["graphs"]
    assert set(graphs) == {"energy+forces", "energy+forces+stress"}
    # the update blocks are traced as torch ops (Inductor's code beat the opaque op there): no painn_update node
    assert graphs["energy+forces"]["fused"] == {
        fused_target("prepare_edges"): 1, fused_target("painn_message"): 2, fused_target("painn_message_backward"): 2}
    assert "joint graph (energy+forces)" in fast.report.to_text()


def test_large_systems_take_the_fused_graph_and_trace_nothing(monkeypatch):
    """Above JOINT_MAX_EDGES edges no forces graph is traced: the fused ops run through autograd."""
    from painnfx.rewriter import optimized_model

    monkeypatch.setattr(optimized_model, "JOINT_MAX_EDGES", 40)
    model, fast = _joint_model("auto")
    benzene = molecule("C6H6")
    assert system_tensors(benzene, model.cutoff)[2].n_edges > 40
    with record_calls() as calls:
        out = evaluate(fast, benzene)
    assert not fast.joint_graphs.graphs and "graphs" not in fast.report.joint  # nothing traced
    assert [c["path"] for c in fast.report.paths] == ["fused graph"]
    assert calls and not out.forces.is_inference()  # the fused ops, through autograd
    torch.testing.assert_close(out.forces, evaluate(model, benzene).forces, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("wrong", [1, 2], ids=["forces", "stress"])
def test_a_joint_graph_that_disagrees_is_never_used(monkeypatch, wrong):
    """A joint graph one of whose outputs differs from the fused path's (here: forces or stress
    shifted on purpose) is rejected on its first call, with a warning; that call and all later
    ones take autograd."""
    model, fast = _joint_model("auto")
    graphs = fast.joint_graphs
    run = graphs.run

    def shifted(key, fn, *t, **kw):
        out = list(run(key, fn, *t, **kw))
        out[wrong] = out[wrong] + 1e-6
        return tuple(out)

    monkeypatch.setattr(graphs, "run", shifted)
    atoms = _cu_cell()
    with pytest.warns(RuntimeWarning, match=rf"graph disagrees with the fused graph: output {wrong} off by 1.00e-06"):
        out = evaluate(fast, atoms, stress=True)
    ref = evaluate(model, atoms, stress=True)
    torch.testing.assert_close(out.forces, ref.forces, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.stress, ref.stress, rtol=1e-10, atol=1e-12)
    assert "disagrees" in fast.report.joint["rejected"]["energy+forces+stress"]
    assert not evaluate(fast, atoms, stress=True).forces.is_inference()  # never used again


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_joint_graph_equals_eager_on_every_size_without_recompiling(dtype):
    """Inductor-compiled joint graph (what the calculator's path rule runs for energy and forces),
    traced and compiled once on its own example sizes, then run on a 3-atom molecule (N = 3
    coincides with the spatial dimension), a 12-atom one and a periodic cell."""
    model, fast = _joint_model("auto", dtype, compiled=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    for atoms in (molecule("H2O"), molecule("C6H6"), _cu_cell()):
        atoms.rattle(0.02, seed=3)
        evaluate(fast, atoms, dtype=dtype)  # the first call of a size class checks the graph against autograd
        with JointKernels() as ran:
            out = evaluate(fast, atoms, dtype=dtype)
        ran.assert_message_kernels(2)
        assert out.forces.is_inference()
        ref = evaluate(model, atoms, dtype=dtype)
        torch.testing.assert_close(out.forces, ref.forces, rtol=tol, atol=tol)
        torch.testing.assert_close(out.energy, ref.energy, rtol=tol, atol=tol)
    # compiled once by Inductor alone, and every call met its shape assumptions: Dynamo never ran
    calls = fast.joint_graphs.calls("energy+forces")
    assert calls["dynamo"] == 0 and calls["direct"] >= 6
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0
    assert fast.report.joint["graphs"]["energy+forces"]["dynamo"] is False
    assert "called without Dynamo where its shapes allow" in fast.report.to_text()
    assert fast.report.joint["graphs"]["energy+forces"]["compile_seconds"] < 60
    with torch.no_grad():  # in-place weight updates (load_state_dict, an optimizer step) are seen
        for p in model.parameters():
            p.mul_(1.25)
    atoms = _cu_cell()
    out, ref = evaluate(fast, atoms, dtype=dtype), evaluate(model, atoms, dtype=dtype)
    assert out.forces.is_inference()
    torch.testing.assert_close(out.forces, ref.forces, rtol=tol, atol=tol)


def test_the_joint_graph_computes_no_weight_gradients_for_trainable_weights():
    """Forces need no dL/dW: the joint graph's backward ops are traced with weight_grad=False even
    when the model's weights require grad (the autograd path cannot know, and computes them)."""
    model, fast = _joint_model("auto")
    assert all(p.requires_grad for p in model.parameters())
    atoms = molecule("CH4")
    out = evaluate(fast, atoms)
    torch.testing.assert_close(out.forces, evaluate(model, atoms).forces, rtol=1e-10, atol=1e-10)
    backward = [n for n in fast.joint_graphs.graphs["energy+forces"].graph.nodes
                if str(n.target) == fused_target("painn_message_backward")]
    assert len(backward) == 2 and all(n.args[-1] is False for n in backward)
    assert all(p.requires_grad for p in model.parameters())  # the user's weights are untouched


def test_a_joint_graph_refuses_a_model_converted_after_optimize():
    from painnfx.ops import ModelChangedError

    model, fast = _joint_model("auto")
    atoms = molecule("CH4")
    assert evaluate(fast, atoms).forces.is_inference()
    model.float()
    with pytest.raises(ModelChangedError, match="is torch.float32 on cpu now; the optimized graph was built for "
                                               "torch.float64"):
        evaluate(fast, atoms, dtype=torch.float32)


def test_the_compiled_joint_graph_on_edge_cases():
    """No edges (isolated atoms), one atom, a pair at exactly the cutoff, an atom with only its own
    periodic images (with stress), a pair: systems below 2 atoms or 2 edges run the fused graph with
    autograd (no compile for them), a pair inside the cutoff runs the Inductor-compiled joint graph
    directly; each equals eager (fp64)."""
    from ase import Atoms

    model, fast = _joint_model("auto", compiled=True)
    cases = [Atoms("HH", positions=[[0, 0, 0], [10, 0, 0]]), Atoms("H", positions=[[0, 0, 0]]),
             Atoms("HH", positions=[[0, 0, 0], [3.0, 0, 0]]),
             Atoms("H", positions=[[0, 0, 0]], cell=[2.5, 2.5, 2.5], pbc=True),
             Atoms("HH", positions=[[0, 0, 0], [2.0, 0, 0]])]

    def ways():
        total = {"direct": 0, "dynamo": 0}
        for key in fast.joint_graphs.graphs:
            for way, n in fast.joint_graphs.calls(key).items():
                total[way] += n
        return total

    # no edges (the pair at exactly the cutoff has none) and one atom would break the compiled graph's
    # assumptions (at least 2 atoms and 2 edges): autograd runs them (optimized_model.JOINT_MIN_SIZE); a pair
    # inside the cutoff (2 atoms, 2 edges, the least it takes) runs the compiled graph directly
    expected_way = [None, None, None, None, "direct"]
    for atoms, way in zip(cases, expected_way):
        stress = bool(atoms.pbc.any())
        before = ways()
        out, ref = evaluate(fast, atoms, stress=stress), evaluate(model, atoms, stress=stress)
        after = ways()
        if way is None:
            assert after == before and not out.forces.is_inference(), atoms
        else:
            assert after[way] > before[way] and after["dynamo"] == before["dynamo"], atoms
            assert out.forces.is_inference()
        torch.testing.assert_close(out.energy, ref.energy, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out.forces, ref.forces, rtol=1e-10, atol=1e-10)
        if stress:
            torch.testing.assert_close(out.stress, ref.stress, rtol=1e-10, atol=1e-12)
    assert "rejected" not in fast.report.joint


def test_a_joint_graph_that_fails_to_compile_leaves_the_call_to_autograd(monkeypatch):
    """Inductor can fail on a shape (an assertion in its code generation was seen for some molecule
    sizes): the call still returns the right numbers, through autograd, with one warning, and the
    failed joint path is not tried again."""
    model, fast = _joint_model("auto")
    graphs = fast.joint_graphs
    run = graphs.run

    def failing(key, fn, *t, **kw):
        if key == "energy+forces":
            raise RuntimeError("InductorError: AssertionError (simulated)")
        return run(key, fn, *t, **kw)

    monkeypatch.setattr(graphs, "run", failing)
    atoms = molecule("CH4")
    with pytest.warns(RuntimeWarning, match="compiled energy\\+forces graph failed: RuntimeError: InductorError"):
        out = evaluate(fast, atoms)
    torch.testing.assert_close(out.forces, evaluate(model, atoms).forces, rtol=1e-10, atol=1e-10)
    assert set(fast.report.joint["rejected"]) == {"energy+forces"}
    assert [c["path"] for c in fast.report.paths] == ["fused graph"]
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        evaluate(fast, molecule("H2O"))
    assert not [w for w in seen if issubclass(w.category, RuntimeWarning)]  # not tried again


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_the_compiled_forces_graph_runs_native_ops_under_the_cpp_wrapper(dtype):
    """The compiled forces graph calls its matrix products as ``painnfx::dense`` and its fused ops'
    CPU kernels from Inductor's C++ wrapper (no Python between kernels; the library counts each
    call in C++), and equals eager on a 3-atom and a 12-atom molecule and a periodic cell, compiled
    once."""
    from helpers import JointKernels, native_ops_expected

    if not native_ops_expected():
        pytest.skip("no C++ compiler for the library")
    model, fast = _joint_model("auto", dtype, compiled=True)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    tol = {torch.float64: 1e-10, torch.float32: 1e-5}[dtype]
    for atoms in (molecule("H2O"), molecule("C6H6"), _cu_cell()):
        atoms.rattle(0.02, seed=3)
        evaluate(fast, atoms, dtype=dtype)  # the first call of a size class checks (and compiles)
        with JointKernels() as ran:
            out = evaluate(fast, atoms, dtype=dtype)
        ref = evaluate(model, atoms, dtype=dtype)
        torch.testing.assert_close(out.forces, ref.forces, rtol=tol, atol=tol)
        torch.testing.assert_close(out.energy, ref.energy, rtol=tol, atol=tol)
        assert out.forces.is_inference()
        graph = fast.report.joint["graphs"]["energy+forces"]
        assert graph["wrapper"] == "C++" and ran.native["dense"] == graph["native"]["painnfx.dense.default"] > 10
        ran.assert_message_kernels(2)
    assert set(graph["fused"]) <= set(graph["native"])  # its fused ops run their C++ kernels too
    assert [c["path"] for c in fast.report.paths] == ["compiled forces graph"]
    assert fast.joint_graphs.calls("energy+forces")["dynamo"] == 0  # compiled once, no Dynamo
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 0


def test_a_cpp_wrapper_that_fails_leaves_the_python_wrapper(monkeypatch):
    """Inductor's C++ wrapper needs more of the machine than its Python one (it builds a C++
    extension around the graph): if it fails, the graph is compiled with the Python wrapper, with
    one warning, and still runs the native products."""
    import painnfx.rewriter.joint as joint

    monkeypatch.setattr(joint, "wrapper_options", lambda gm, backend=None: {"cpp_wrapper": True, "no_such_inductor_option": 1})
    model, fast = _joint_model("auto", compiled=True)
    atoms = molecule("CH4")
    with pytest.warns(RuntimeWarning, match="C\\+\\+ wrapper failed for the energy\\+forces graph"):
        out = evaluate(fast, atoms)
    torch.testing.assert_close(out.forces, evaluate(model, atoms).forces, rtol=1e-10, atol=1e-10)
    assert out.forces.is_inference() and "rejected" not in fast.report.joint
    assert fast.report.joint["graphs"]["energy+forces"]["wrapper"] == "Python"


def test_without_the_native_products_the_joint_graph_keeps_atens_and_the_python_wrapper(monkeypatch):
    """``PAINNFX_NATIVE=0``: the joint graph keeps ATen's products and Inductor's Python wrapper; its
    ``painnfx::`` ops still run their C++ kernels (the dispatcher's), and it equals eager."""
    from helpers import CPU_KERNELS, assert_kernels
    from painnfx.rewriter.cpp_ops import wrapper_options

    monkeypatch.setenv("PAINNFX_NATIVE", "0")
    model, fast = _joint_model("auto")
    atoms = molecule("CH4")
    evaluate(fast, atoms)
    with record_calls() as calls:
        out = evaluate(fast, atoms)
    assert_kernels(calls, CPU_KERNELS, 2, updates=0)
    torch.testing.assert_close(out.forces, evaluate(model, atoms).forces, rtol=1e-10, atol=1e-10)
    gm = fast.joint_graphs.graphs["energy+forces"]
    assert "painnfx.painn_message.default" in _targets(gm) and not fast.report.joint["graphs"][
        "energy+forces"]["native"]
    assert "aten.mm.default" in _targets(gm) and wrapper_options(gm) == {}


def test_a_library_that_cannot_be_built_leaves_the_python_path(monkeypatch):
    """A failed build of the C++ library: one warning saying why, ``enabled()`` false, and the
    joint graphs are traced as before (the ``painnfx::`` ops, their reference implementation)."""
    from painnfx.ops.cpu import backend
    from painnfx.ops.cpu.build import CpuBuildError
    from painnfx.rewriter.cpp_ops import enabled

    def broken(use_cache=True):
        raise CpuBuildError("g++ failed to build the CPU kernels:\nsimulated")

    monkeypatch.setattr(backend, "_state", {})
    monkeypatch.setattr(backend, "build", broken)
    with pytest.warns(UserWarning, match="the CPU kernels are unavailable .g\\+\\+ failed to build the CPU kernels"):
        assert backend.library() is None
    assert not enabled() and "simulated" in backend.info()["error"] and backend.call_counts() == {}
    model, fast = _joint_model("auto")
    atoms = molecule("H2O")
    out = evaluate(fast, atoms)
    assert "painnfx.painn_message.default" in _targets(fast.joint_graphs.graphs["energy+forces"])
    torch.testing.assert_close(out.forces, evaluate(model, atoms).forces, rtol=1e-10, atol=1e-10)
