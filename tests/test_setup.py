"""Set-up that no job waits for: the plain model answers while the C++ kernels build in a process of
their own, each set-up step is taken once the job has run as long as it is expected to take, the
switch is recorded, results equal the plain model's, what a step costs is remembered across
processes (and forgotten for other weights or another torch), a rewrite of the same weights is
reused, and importing painnfx leaves torch's compiler stack alone."""

import importlib
import os
import shutil
import subprocess
import sys
import textwrap
import time
import warnings
from pathlib import Path

import pytest
import torch
from ase.build import bulk, molecule

from helpers import CPU_KERNELS, assert_kernels, env_skip
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.default import random_model
from painnfx.ops import dispatch
from painnfx.ops.build_cache import cache_root
from painnfx.ops.cpu import backend, prebuild
from painnfx.rewriter import costs, optimize
from painnfx.rewriter.optimized_model import PATH_NAMES, PATH_RULE

optimize_mod = importlib.import_module("painnfx.rewriter.optimize")
#: the session's cache, where the kernels are built (tests below point the cache elsewhere)
SESSION_CACHE = cache_root()


def _kernels_here():
    """The C++ library built in the session's cache (which the tests' linked caches share), or a
    skip (a failure under --require-env)."""
    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")


@pytest.fixture(autouse=True)
def fresh_rewrites(monkeypatch):
    """No rewrite kept from other tests in this process (each test says which cache it reads)."""
    from collections import OrderedDict

    monkeypatch.setattr(optimize_mod, "_REWRITES", OrderedDict())


@pytest.fixture
def fresh_builder(monkeypatch):
    """prebuild's per-process state as a new process has it (restored afterwards)."""
    monkeypatch.setattr(prebuild, "_process", None)
    monkeypatch.setattr(prebuild, "_ready", [False])
    monkeypatch.setattr(prebuild, "_last_look", [0.0])
    yield
    if isinstance(prebuild._process, subprocess.Popen) and prebuild._process.poll() is None:
        prebuild._process.kill()
        prebuild._process.wait()


def _linked_cache(tmp_path, monkeypatch, built: bool):
    """A cache folder of its own (cost records start empty); with ``built``, the kernels built
    already (the real cache's library folders, linked)."""
    real = SESSION_CACHE
    folder = tmp_path / "cache"
    folder.mkdir()
    if built:
        for kind in ("cpu", "cpu-obj"):
            if (real / kind).exists():
                (folder / kind).symlink_to(real / kind)
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(folder))
    return folder


def _system(atoms, model):
    """(positions, numbers, edge_index, shifts) of ``atoms`` in float64."""
    from helpers import system_tensors

    pos, numbers, nl, _ = system_tensors(atoms, model.cutoff)
    return pos, numbers, nl.edge_index, nl.shifts


def _forces(calc, atoms):
    atoms = atoms.copy()
    atoms.calc = calc
    return atoms.get_potential_energy(), atoms.get_forces()


def test_the_first_call_does_not_wait_for_the_kernels_build(tmp_path, monkeypatch, fresh_builder):
    """An empty cache: the calculator starts the build in a process of its own and answers at once
    with the plain model (bitwise its results); once the kernels are there and the rewrite is due,
    the next call switches to the fused graph (the C++ kernels ran), recorded in report.paths."""
    from painnfx.rewriter import optimized_model

    _kernels_here()
    _linked_cache(tmp_path, monkeypatch, built=False)
    model = random_model(3, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    calc = PaiNNCalculator(model, optimize="auto")
    fast = calc.evaluator
    assert not fast.ready and not fast.report.setup["kernel_build_started"]  # nothing before the job runs
    monkeypatch.setattr(optimized_model, "BUILD_AFTER_S", 0.0)  # the build starts at the first call
    atoms = molecule("CH4")
    start = time.perf_counter()
    e, f = _forces(calc, atoms)
    assert time.perf_counter() - start < 5.0  # no compile (seconds): the plain model answered
    assert fast.report.setup["kernel_build_started"] and prebuild.building()
    plain = PaiNNCalculator(model, optimize=False)
    e0, f0 = _forces(plain, atoms)
    assert e == e0 and (f == f0).all()  # the plain model answered: bitwise
    assert [p["path"] for p in fast.report.paths] == ["plain model"]
    assert "set-up under way" in fast.report.paths[0]["why"] and "set-up under way" in fast.report.why_not()
    assert prebuild.building()  # the build goes on

    # the build is done (the real cache's libraries appear) and the rewrite is due: the switch
    prebuild._process.kill()
    (tmp_path / "second").mkdir()
    _linked_cache(tmp_path / "second", monkeypatch, built=True)
    prebuild._last_look[0] = 0.0
    monkeypatch.setitem(costs.FIRST_TIME, "rewrite", 0.0)
    atoms.rattle(0.01, seed=1)
    _forces(calc, atoms)  # the rewrite (verified on probe systems), then the fused graph
    assert fast.ready and fast.applied
    atoms.rattle(0.01, seed=2)
    with dispatch.record_calls() as calls:
        e1, f1 = _forces(calc, atoms)
    e0, f0 = _forces(plain, atoms)
    assert_kernels(calls, CPU_KERNELS, model.config.n_interactions)
    assert [p["path"] for p in fast.report.paths] == ["plain model", "fused graph"]
    assert fast.report.paths[1]["call"] == 2
    torch.testing.assert_close(torch.as_tensor(f1), torch.as_tensor(f0), rtol=1e-10, atol=1e-12)
    assert abs(e1 - e0) <= 1e-10 * max(1.0, abs(e0))
    assert "from call 2" in fast.report.to_text() and PATH_RULE.splitlines()[0] in fast.report.to_text()


def test_a_build_in_the_foreground_runs_the_rewrite_alongside(tmp_path, monkeypatch, fresh_builder):
    """prepare() on an empty cache: the rewrite's capture runs while the compilers run (its first
    fused op waits for the kernels), the build's cost is recorded and the rewrite's (which includes
    that wait) is not, and the fused graph then runs the C++ kernels."""
    _kernels_here()
    product, info = backend._state["product"], backend._state["info"]
    _linked_cache(tmp_path, monkeypatch, built=False)
    events = {}

    def slow_build():
        events["build_started"] = time.perf_counter()
        time.sleep(1.0)
        events["build_done"] = time.perf_counter()
        return product, dict(info, cached=False)

    monkeypatch.setattr(backend, "_state", {})
    monkeypatch.setattr(backend, "_build_and_load", slow_build)
    monkeypatch.setattr(prebuild, "start", lambda: False)  # no build in the background here
    model = random_model(5, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    fast = optimize(model, setup="background")
    rewrite = fast._pending

    def timed_rewrite():
        events["rewrite_started"] = time.perf_counter()
        return rewrite()

    fast._pending = timed_rewrite
    fast.prepare()
    assert events["build_started"] <= events["rewrite_started"] < events["build_done"]
    assert fast.ready and fast.applied and fast.report.setup["rewrite_alongside_build"]
    assert fast.report.setup["kernel_build_s"] >= 1.0
    assert costs.known(fast._record_key("build")) and not costs.known(fast._record_key("rewrite"))
    pos, z, ei, sh = _system(molecule("CH4"), model)
    pos.requires_grad_(True)
    with dispatch.record_calls() as calls:
        torch.autograd.grad(fast(pos, z, ei, sh).sum(), pos)
    assert_kernels(calls, CPU_KERNELS, model.config.n_interactions)


def test_a_step_waits_until_the_job_has_run_as_long_as_it_costs(tmp_path, monkeypatch):
    """The kernels are built; the rewrite is expected to take 0.3 s: calls before that run the plain
    model, the first call after it rewrites, and the cost is recorded for the next process."""
    _kernels_here()
    _linked_cache(tmp_path, monkeypatch, built=True)
    monkeypatch.setitem(costs.FIRST_TIME, "rewrite", 0.3)
    model = random_model(4, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    fast = optimize(model, setup="background")
    fast.path = "auto"
    pos, z, ei, sh = _system(molecule("H2O"), model)
    fast(pos, z, ei, sh)
    assert not fast.ready  # 0 s into the job
    time.sleep(0.35)
    fast(pos, z, ei, sh)
    assert fast.ready and fast.applied and [p["path"] for p in fast.report.paths] == ["plain model", "fused graph"]
    key = fast._record_key("rewrite")
    assert costs.known(key) and costs.expected("rewrite", key) == pytest.approx(
        min(fast.report.setup["rewrite_s"], costs.SECOND_TIME["rewrite"]), abs=1e-3)


def test_cost_records_are_read_by_another_process_and_keyed_by_weights_and_torch(tmp_path, monkeypatch):
    """A second process finds what a step took in the first one (the same weights, dtype, device,
    torch and CPU); other weights or another torch version find nothing (the first-time cost)."""
    _kernels_here()
    folder = _linked_cache(tmp_path, monkeypatch, built=True)
    script = textwrap.dedent("""
        from painnfx.model.default import random_model
        from painnfx.rewriter import optimize
        fast = optimize(random_model(5, n_atom_basis=16, n_interactions=2, n_rbf=6).double(), setup="background")
        fast.prepare()
        print(fast._record_key("rewrite"), fast.report.setup["rewrite_s"])
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PAINNFX_CACHE_DIR": str(folder)})
    assert out.returncode == 0, out.stderr
    key, seconds = out.stdout.split()
    model = random_model(5, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    fast = optimize(model, setup="background")
    assert fast._record_key("rewrite") == key  # the same weights here: the same record
    fast._due("rewrite")
    assert fast._expected[("rewrite", "")] == pytest.approx(min(float(seconds), costs.SECOND_TIME["rewrite"]), abs=1e-3)
    other = optimize(random_model(6, n_atom_basis=16, n_interactions=2, n_rbf=6).double(), setup="background")
    assert not costs.known(other._record_key("rewrite"))
    assert costs.expected("rewrite", other._record_key("rewrite")) == costs.FIRST_TIME["rewrite"]
    monkeypatch.setattr(torch, "__version__", "0.0.0-another")
    assert fast._record_key("rewrite") != key and not costs.known(fast._record_key("rewrite"))
    costs.record(key, 5.0)  # a repeated step: the measured time counts from now on
    assert costs.expected("rewrite", key) == 5.0


def test_the_compiled_forces_graph_is_switched_in_checked_and_recorded(tmp_path, monkeypatch):
    """After the rewrite, the compiled forces graph is taken once it is due (here: a record says it
    costs nothing), checked against the fused graph on its first call, and recorded as the path."""
    from painnfx.rewriter.joint import JointGraphs

    _kernels_here()
    _linked_cache(tmp_path, monkeypatch, built=True)
    model = random_model(7, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    calc = PaiNNCalculator(model, optimize="auto")
    fast = calc.evaluator
    fast.joint, fast.joint_graphs = True, JointGraphs(compile=False)  # traced, not compiled: quick
    monkeypatch.setitem(costs.FIRST_TIME, "rewrite", 0.0)
    monkeypatch.setitem(costs.FIRST_TIME, "compile", 1e9)
    atoms = molecule("C6H6")
    _forces(calc, atoms)  # rewritten now; the forces graph is not due
    assert [p["path"] for p in fast.report.paths] == ["fused graph"] and not fast.joint_graphs.graphs
    monkeypatch.setitem(costs.FIRST_TIME, "compile", 0.0)
    fast._expected.clear()
    atoms.rattle(0.01, seed=2)
    e, f = _forces(calc, atoms)
    e0, f0 = _forces(PaiNNCalculator(model, optimize=False), atoms)
    assert [p["path"] for p in fast.report.paths] == ["fused graph", "compiled forces graph"]
    assert set(fast.report.joint["graphs"]) == {"energy+forces"}
    torch.testing.assert_close(torch.as_tensor(f), torch.as_tensor(f0), rtol=1e-9, atol=1e-12)
    assert costs.known(fast._record_key("compile", "energy+forces"))


def test_the_path_rule_is_predictable(monkeypatch):
    """setup="now": energy and forces take the compiled forces graph (checked), energy alone and
    more than JOINT_MAX_EDGES edges the fused graph; nothing is measured."""
    from painnfx.rewriter import optimized_model
    from painnfx.rewriter.joint import JointGraphs

    model = random_model(8, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    fast = optimize(model)
    fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    from painnfx.model.properties import compute_properties

    pos, z, ei, sh = _system(molecule("C6H6"), model)
    fast(pos, z, ei, sh)  # energy alone
    compute_properties(fast, pos, z, ei, sh)
    assert [p["path"] for p in fast.report.paths] == ["fused graph", "compiled forces graph"]
    crystal = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    pos, z, ei, sh = _system(crystal, model)
    monkeypatch.setattr(optimized_model, "JOINT_MAX_EDGES", ei.shape[1] - 1)
    compute_properties(fast, pos, z, ei, sh)
    assert fast.report.paths[-1]["path"] == "fused graph"
    assert set(PATH_NAMES) == {"plain", "fused", "compiled"} and len(PATH_RULE.splitlines()) == 5


def test_optimize_of_the_same_weights_is_reused(tmp_path, monkeypatch):
    """A second optimize() of a model with the same class and weights reuses the rewrite (no
    export), bound to that model's own tensors: changing one model changes only its results."""
    import copy

    _linked_cache(tmp_path, monkeypatch, built=True)
    model = random_model(9, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    first = optimize(model)
    before = dict(optimize_mod.reuse_count)
    twin = copy.deepcopy(model)
    second = optimize(twin)
    assert optimize_mod.reuse_count["reused"] == before["reused"] + 1
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"]
    assert second.report.setup.get("reused") and second.applied
    pos, z, ei, sh = _system(molecule("CH4"), model)
    assert torch.equal(first(pos, z, ei, sh), second(pos, z, ei, sh))
    with torch.no_grad():
        twin.energy_head[1].bias.add_(1.0)
    assert torch.allclose(second(pos, z, ei, sh), twin(pos, z, ei, sh), rtol=1e-12, atol=1e-12)
    assert torch.allclose(first(pos, z, ei, sh), model(pos, z, ei, sh), rtol=1e-12, atol=1e-12)
    assert not torch.allclose(first(pos, z, ei, sh), second(pos, z, ei, sh))
    third = optimize(twin)  # other weights now: rewritten
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"] + 1 and not third.report.setup.get("reused")


def test_no_compiler_keeps_the_plain_model_with_one_warning(monkeypatch, fresh_builder):
    """No C++ compiler: the calculator's default warns once, on the first call, and keeps the plain
    model (the fused graph would run the reference ops, slower)."""
    monkeypatch.setenv("CXX", "/nonexistent/c++")
    monkeypatch.setattr(prebuild, "_ready", [False])
    calc = PaiNNCalculator(random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4))
    assert calc.evaluator.report.setup["kernel_build_started"] is False  # (nothing to start it with, either)
    atoms = molecule("H2O")
    with pytest.warns(RuntimeWarning, match="CPU kernels are unavailable .*no C\\+\\+ compiler"):
        _forces(calc, atoms)
    assert calc.evaluator.ready and not calc.evaluator.applied and not calc.optimized
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        atoms.rattle(0.01, seed=3)
        _forces(calc, atoms)


def test_the_builder_runs_as_many_compilers_as_torch_has_threads(monkeypatch, fresh_builder, tmp_path):
    """The background build is told torch's thread count: it never runs more compilers at once."""
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(tmp_path))
    started = []

    class Builder:
        def poll(self):
            return None

    monkeypatch.setattr(prebuild, "_spawn", lambda cmd, log: started.append(cmd) or Builder())
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert prebuild.start()
        assert not prebuild.start()  # one builder per process
    finally:
        torch.set_num_threads(threads)
    (cmd,) = started
    assert cmd[1:] == ["-c", prebuild.BOOTSTRAP, "1"] and "os.nice(19)" in cmd[2]


def test_import_and_set_up_leave_the_compiler_stack_alone():
    """Importing painnfx and making calculators (default and optimize=False) import neither Dynamo
    nor Inductor: a job that never rewrites never pays for them."""
    script = textwrap.dedent("""
        import sys
        import painnfx.rewriter, painnfx.model.calculator, painnfx.model.batch
        from painnfx.model.calculator import PaiNNCalculator
        PaiNNCalculator(optimize=False)
        PaiNNCalculator()
        print(sorted(m for m in ("torch._dynamo", "torch._inductor") if m in sys.modules))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_rewrite_is_not_reused_for_a_model_that_computes_something_else(tmp_path, monkeypatch):
    """The same class and weights, another function (a setting the structure digest is blind to,
    here forced blind): the probe call catches it and the model is rewritten."""
    from spelled import SpelledPaiNN

    _linked_cache(tmp_path, monkeypatch, built=True)
    monkeypatch.setattr(optimize_mod, "structure_digest", lambda model: "blind")
    base = random_model(10, n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0).double()
    first, other = SpelledPaiNN(base), SpelledPaiNN(base, near_miss="sin_cutoff")
    optimize(first)
    before = dict(optimize_mod.reuse_count)
    fast = optimize(other)
    assert optimize_mod.reuse_count["reused"] == before["reused"]
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"] + 1
    pos, z, ei, sh = _system(molecule("CH4"), other)
    torch.testing.assert_close(fast(pos, z, ei, sh), other(pos, z, ei, sh), rtol=1e-10, atol=1e-10)


def test_a_rewrite_on_disk_serves_a_second_process_and_not_other_weights_or_torch(tmp_path, monkeypatch):
    """A process that rewrote a model leaves the rewrite in the cache; the next process with the
    same model loads it (checked on a probe system, counted, the same results), while other weights
    or another torch version rewrite."""
    _kernels_here()
    folder = _linked_cache(tmp_path, monkeypatch, built=True)
    script = textwrap.dedent("""
        from painnfx.model.default import random_model
        from painnfx.rewriter import optimize
        fast = optimize(random_model(21, n_atom_basis=16, n_interactions=2, n_rbf=6).double())
        assert fast.applied and not fast.report.setup.get("reused")
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PAINNFX_CACHE_DIR": str(folder)})
    assert out.returncode == 0, out.stderr
    assert list((folder / "rewrites").glob("*.pt"))
    model = random_model(21, n_atom_basis=16, n_interactions=2, n_rbf=6).double()
    before = dict(optimize_mod.reuse_count)
    fast = optimize(model)
    assert fast.report.setup["reused"] == "disk cache" and fast.applied
    assert optimize_mod.reuse_count["loaded"] == before["loaded"] + 1
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"]
    pos, z, ei, sh = _system(molecule("C6H6"), model)
    torch.testing.assert_close(fast(pos, z, ei, sh), model(pos, z, ei, sh), rtol=1e-10, atol=1e-10)
    optimize(random_model(22, n_atom_basis=16, n_interactions=2, n_rbf=6).double())  # other weights
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"] + 1
    monkeypatch.setattr(torch, "__version__", "0.0.0-another")
    optimize_mod._REWRITES.clear()  # as a new process has it
    optimize(random_model(21, n_atom_basis=16, n_interactions=2, n_rbf=6).double())
    assert optimize_mod.reuse_count["rewritten"] == before["rewritten"] + 2


def test_a_rewrite_on_disk_is_keyed_by_the_kernels_sources(tmp_path, monkeypatch):
    """The verification runs the kernels: a rewrite verified against other kernels (a changed C++ or
    CUDA source, Python unchanged) is another key, so a fallback recorded with broken kernels never
    outlives them."""
    from painnfx.rewriter import rewrite_cache

    ops = tmp_path / "ops"
    shutil.copytree(Path(rewrite_cache.__file__).parents[1] / "ops", ops, ignore=shutil.ignore_patterns("__pycache__"))
    (tmp_path / "rewriter").mkdir()
    monkeypatch.setattr(rewrite_cache, "HERE", tmp_path / "rewriter")  # digests tmp_path's ops

    def digest():
        rewrite_cache.source_digest.cache_clear()
        try:
            return rewrite_cache.source_digest()
        finally:
            rewrite_cache.source_digest.cache_clear()

    before = digest()
    for name in ("cpu/painn_message.cpp", "cpu/cpu_common.h", "cuda/painn_message.cu", "cuda/edge_tile.cuh"):
        source = ops / name
        text = source.read_text()
        source.write_text(text + "\n// changed\n")
        assert digest() != before, name
        source.write_text(text)
    assert digest() == before
