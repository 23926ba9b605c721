"""The C++ CPU kernels: build cache (hit, corruption, no compiler), determinism, registration,
and the calculator's auto rule running them."""

import warnings

import pytest
import torch
from ase.build import molecule

from helpers import CPU_KERNELS, assert_kernels, env_skip, evaluate
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.default import random_model
from painnfx.ops import dispatch, prepare_edges, use_backend
from painnfx.ops.cpu import backend, build
from painnfx.ops.unfused import painn_message_unfused
from painnfx.rewriter import optimize


def test_cache_hit_and_corruption_recovery(tmp_path, monkeypatch):
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(tmp_path))
    first_path, first = build.build()
    assert not first["cached"] and first["build_seconds"] > 0
    again_path, again = build.build()
    assert again["cached"] and again_path == first_path
    first_path.write_bytes(b"not a library")
    rebuilt_path, rebuilt = build.build()
    assert not rebuilt["cached"] and rebuilt["sha256"] == first["sha256"]
    build.load(rebuilt_path, rebuilt)


BASELINE_SCRIPT = r"""
import json, torch
from ase.build import bulk
from painnfx.model.default import random_model
from painnfx.model.neighbors import neighbor_list
from painnfx.model.properties import compute_properties
from painnfx.ops import dispatch
from painnfx.ops.cpu import backend
from painnfx.rewriter import optimize
model = random_model(1, n_atom_basis=16, n_interactions=2, n_rbf=8).double()
fast = optimize(model)
atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 1, 1)
atoms.rattle(0.05, seed=2)
nl = neighbor_list(atoms.positions, model.cutoff, atoms.cell.array, atoms.pbc)
args = (torch.tensor(atoms.positions), torch.tensor(atoms.numbers), nl.edge_index, nl.shifts,
        torch.tensor(atoms.cell.array))
with dispatch.record_calls() as calls:
    a = compute_properties(fast, *args, stress=True)
b = compute_properties(model, *args, stress=True)
err = max(float((x - y).abs().max() / y.abs().max()) for x, y in ((a.forces, b.forces), (a.stress, b.stress)))
print(json.dumps({"flags": backend.info()["flags"], "path": str(backend.library().path), "error": err,
                  "calls": calls[("painn_message", "cpp")]}))
"""


def test_a_baseline_isa_build_runs_correct_kernels(tmp_path):
    """PAINNFX_CPU_ARCH=x86-64-v2: a library with no AVX instruction (what an image built on one CPU
    needs on another, or an old laptop) gives the same energies, forces and stress."""
    import json
    import os
    import shutil
    import subprocess
    import sys

    env = dict(os.environ, PAINNFX_CPU_ARCH="x86-64-v2", PAINNFX_CACHE_DIR=str(tmp_path), PAINNFX_STRICT="1")
    proc = subprocess.run([sys.executable, "-c", BASELINE_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "-march=x86-64-v2" in out["flags"] and out["calls"] == 2
    assert out["error"] < 1e-12
    objdump = shutil.which("objdump")
    if objdump is None:  # binutils comes with g++
        env_skip("no objdump to inspect the baseline library")
    text = subprocess.run([objdump, "-d", out["path"]], capture_output=True, text=True, timeout=120).stdout
    assert "xmm" in text and "ymm" not in text and "zmm" not in text  # SSE only: no AVX, AVX2 or AVX-512


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_transpose_weights_as_aten_does(dtype):
    """The C++ library's tiled transpose (the kernels' weight layout) equals ``w.t().contiguous()``
    bitwise, for contiguous, transposed and strided inputs of sizes that are and are not
    multiples of its 16 x 16 tile."""
    gen = torch.Generator().manual_seed(0)
    for rows, cols in ((384, 20), (128, 384), (17, 33), (1, 5), (16, 16)):
        w = torch.randn(rows, cols, generator=gen, dtype=dtype)
        for view in (w, w.t(), torch.randn(rows, 2 * cols, generator=gen, dtype=dtype)[:, ::2]):
            out = backend._transpose(view)
            assert out.is_contiguous() and torch.equal(out, view.t().contiguous())


def test_the_update_weights_are_transposed_from_24_atoms():
    """The ctypes backend asks the library (cpu_common.h, the crossover the native ops use too)
    from how many atoms the update kernels take transposed weights: 24."""
    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")
    w = [torch.randn(4, 3, dtype=torch.float64) for _ in range(3)]
    assert backend._transposed(23, w) == [None, None, None]
    assert all(torch.equal(t, u.t()) for t, u in zip(backend._transposed(24, w), w))


def test_the_basis_loops_call_glibc_vector_exponentials():
    """Where glibc's libmvec is installed (x86-64 glibc), both C++ libraries are linked to it and
    their radial-basis loops call its vector exp (a _ZGV... symbol), not only the scalar one."""
    import shutil
    import subprocess

    from painnfx.ops.cpu import native

    if not build.vector_maths():
        env_skip("no libmvec here (not x86-64 glibc)")
    nm = shutil.which("nm")
    if nm is None:  # binutils comes with g++
        env_skip("no nm to read the libraries' symbols")
    libraries = [build.build()[0]] + ([native.library()] if native.available() else [])
    for path in libraries:
        undefined = subprocess.run([nm, "-D", "--undefined-only", str(path)], capture_output=True, text=True,
                                   timeout=60).stdout
        vector_exp = [ln.split()[-1] for ln in undefined.splitlines() if "_ZGV" in ln and "exp" in ln]
        assert vector_exp, f"{path.name} calls no vector exp"


def test_an_invalid_arch_setting_is_refused(monkeypatch):
    monkeypatch.setenv("PAINNFX_CPU_ARCH", "native; rm -rf /")
    with pytest.raises(build.CpuBuildError, match="is not a -march value"):
        build.flags()


def test_a_failing_compile_is_an_error_with_the_compiler_output(tmp_path, monkeypatch):
    """A compiler that runs but fails (not a missing one): CpuBuildError with its output, nothing cached."""
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "painn_message.cpp"
    broken.write_text(build.SOURCES[0].read_text() + "\nthis is not C++;\n")
    monkeypatch.setattr(build, "SOURCES", (broken, *build.SOURCES[1:]))
    with pytest.raises(build.CpuBuildError, match="failed to build the CPU kernels(.|\n)*this is not C"):
        build.build()
    assert not list((tmp_path / "cpu").glob("*.so")) and not list((tmp_path / "cpu").glob("*.json"))


def _no_compiler(monkeypatch):
    """``$CXX`` names no compiler for painnfx's build. Inductor reads ``$CXX`` once, when its config
    is first imported: imported before, it keeps the real compiler for later tests."""
    import torch._inductor.config  # noqa: F401

    monkeypatch.setenv("CXX", "/nonexistent/c++")


def test_no_compiler_falls_back_to_the_reference_with_one_warning(monkeypatch):
    """The dispatcher asks the backend first: without kernels the reference runs (and is what
    ``record_calls`` reports), after one warning."""
    _no_compiler(monkeypatch)
    monkeypatch.setattr(backend, "_state", {})
    with pytest.raises(build.CpuBuildError, match="no C\\+\\+ compiler"):
        build.build()
    gen = torch.Generator().manual_seed(0)
    n, e, f, k = 4, 12, 3, 5
    r = torch.randn(e, 3, generator=gen, dtype=torch.float64)
    ii, jj = torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    x, w, b = torch.randn(n, 3 * f, dtype=torch.float64), torch.randn(3 * f, k, dtype=torch.float64), torch.randn(3 * f, dtype=torch.float64)
    params = torch.stack([torch.linspace(0, 3, k), torch.ones(k)]).double()
    args = (r, ii, jj, prepare_edges(r, ii, jj, n), x, None, w, b, params, "gaussian", "cosine", [3.0], 0)
    with pytest.warns(UserWarning, match="CPU kernels are unavailable .*no C\\+\\+ compiler"):
        with dispatch.record_calls() as calls:
            dq, _ = dispatch.run("painn_message", "cpu", *args)
    assert calls == {("painn_message", "reference"): 1}
    torch.testing.assert_close(dq, painn_message_unfused(r, ii, jj, x, None, w, b, params, "gaussian", "cosine", [3.0])[0])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # only once
        dispatch.run("painn_message", "cpu", *args)


def test_the_calculator_lets_the_no_compiler_warning_through_once(monkeypatch):
    """PaiNNCalculator silences only "nothing to rewrite"; the slow path's reason reaches the user, once."""
    _no_compiler(monkeypatch)
    monkeypatch.setattr(backend, "_state", {})
    with pytest.warns(UserWarning, match="CPU kernels are unavailable .*no C\\+\\+ compiler"):
        calc = PaiNNCalculator(random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4), setup="now")
    assert calc.optimized
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        PaiNNCalculator(random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4), setup="now")


def test_registered_for_cpu_tensors_and_built_here():
    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")
    assert dispatch.chosen("painn_message", "cpu") == "cpp"
    assert dispatch.chosen("radial_filter_backward", "cpu") == "cpp"
    with use_backend("reference"):
        assert dispatch.chosen("painn_message", "cpu") == "reference"


def test_results_do_not_depend_on_the_thread_count():
    model = random_model(1).double()
    fast = optimize(model)
    atoms = molecule("C6H6")
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = evaluate(fast, atoms)
        torch.set_num_threads(2)
        two = evaluate(fast, atoms)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(one.forces, two.forces) and torch.equal(one.energy, two.energy)


def test_calculator_auto_runs_the_fused_kernels_without_measuring():
    """With the compiled forces graphs off (the suite's setting), the auto rule runs the fused graph
    on the C++ kernels from the first call (setup="now"), at every size, and measures nothing."""
    from ase.build import bulk

    model = random_model(0, n_atom_basis=8, n_interactions=1, n_rbf=4)  # r_c = 5 A
    calc = PaiNNCalculator(model, optimize="auto", setup="now")
    assert calc.evaluator.path == "auto" and not calc.evaluator.joint
    for atoms in (molecule("H2O"), bulk("Cu", "fcc", a=3.61, cubic=True) * (4, 4, 4)):  # 3 and 256 atoms
        atoms.calc = calc
        with dispatch.record_calls() as calls:
            atoms.get_forces()
        assert_kernels(calls, CPU_KERNELS, 1)
    assert [c["path"] for c in calc.evaluator.report.paths] == ["fused graph"]


def test_calculator_optimize_true_always_fuses():
    atoms = molecule("H2O")
    forced = PaiNNCalculator(random_model(0), optimize=True)
    assert forced.evaluator.path == "fused"
    atoms.calc = forced
    with dispatch.record_calls() as calls:
        atoms.get_forces()
    assert_kernels(calls, CPU_KERNELS, 3)
