"""The C++ CPU kernels: build cache (hit, corruption, no compiler), determinism, registration,
and the calculator's auto rule running them."""

import re
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
    assert rebuilt_path.read_bytes()[:4] == b"\x7fELF"  # the library again, not the corrupt file


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
print(json.dumps({"flags": backend.info()["flags"], "path": str(backend.library()), "error": err,
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
    registers = set(re.findall(r"%([xyz]mm)\d", text))  # (a symbol such as c10::...symmetric is no register)
    assert registers == {"xmm"}, registers  # SSE only: no AVX, AVX2 or AVX-512


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_kernels_take_weights_in_any_layout(dtype):
    """The C++ kernels transpose the weights into their own layout (a tiled loop, operators.cpp):
    the same results, bitwise, for a contiguous, a transposed and a strided filter weight, at sizes
    that are and are not multiples of the 16 x 16 tile."""
    from painnfx.ops import radial_filter

    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")
    gen = torch.Generator().manual_seed(0)
    d = torch.rand(11, generator=gen, dtype=dtype) * 2 + 0.5
    for rows, k in ((384, 20), (17, 33), (2, 5), (16, 16)):
        params = torch.stack([torch.linspace(0, 3, k), torch.ones(k)]).to(dtype)
        w = torch.randn(rows, k, generator=gen, dtype=dtype)
        b = torch.randn(rows, generator=gen, dtype=dtype)
        want = radial_filter(d, w, b, params, "gaussian", "cosine", [3.0])
        strided = torch.zeros(rows, 2 * k, dtype=dtype)
        strided[:, ::2] = w
        for view in (w.t().contiguous().t(), strided[:, ::2]):
            assert not view.is_contiguous()
            assert torch.equal(radial_filter(d, view, b, params, "gaussian", "cosine", [3.0]), want)


@pytest.mark.parametrize("n", [23, 24, 25])
def test_the_update_kernels_agree_on_both_sides_of_the_transposed_weights(n):
    """From 24 atoms on the update kernels take their weights transposed (cpu_common.h): both forms
    equal the reference, forward and backward."""
    from painnfx.ops.update import update_backward, update_forward
    from strategies import update_inputs

    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")
    args = update_inputs(n, 12, seed=n)
    gq, gmu = torch.randn(n, 12, dtype=torch.float64), torch.randn(n, 3, 12, dtype=torch.float64)
    for got, want in ((torch.ops.painnfx.painn_update(*args), update_forward(*args)),
                      (torch.ops.painnfx.painn_update_backward(gq, gmu, *args, True),
                       update_backward(gq, gmu, *args, True))):
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-12, atol=1e-12)


def test_the_basis_loops_call_glibc_vector_exponentials():
    """Where glibc's libmvec is installed (x86-64 glibc), the C++ library is linked to it and its
    radial-basis loops call its vector exp (a _ZGV... symbol), not only the scalar one."""
    import shutil
    import subprocess

    if not build.vector_maths():
        env_skip("no libmvec here (not x86-64 glibc)")
    nm = shutil.which("nm")
    if nm is None:  # binutils comes with g++
        env_skip("no nm to read the libraries' symbols")
    for path in [build.build()[0]]:
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
    """A molecule (fewer edges than one thread's range) gives bitwise the same results on 1 and 2
    threads; a 108-atom cell (4536 edges: one range per thread, so the pairs computed once differ)
    the same to 1e-12, and bitwise the same again at the same thread count."""
    from ase.build import bulk

    model = random_model(1).double()
    fast = optimize(model)
    cell = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    cell.rattle(0.05, seed=3)
    threads = torch.get_num_threads()
    out = {}
    try:
        for n in (1, 2, 3, 2):
            torch.set_num_threads(n)
            out.setdefault(n, []).append((evaluate(fast, molecule("C6H6")), evaluate(fast, cell)))
    finally:
        torch.set_num_threads(threads)
    (mol1, cell1), = out[1]
    (mol2, cell2), (mol2b, cell2b) = out[2]
    assert torch.equal(mol1.forces, mol2.forces) and torch.equal(mol1.energy, mol2.energy)
    assert torch.equal(cell2.forces, cell2b.forces) and torch.equal(cell2.energy, cell2b.energy)
    for other in (cell2, out[3][0][1]):
        scale = float(cell1.forces.abs().max())
        assert float((other.forces - cell1.forces).abs().max()) <= 1e-12 * scale
        assert float((other.energy - cell1.energy).abs().max()) <= 1e-12 * float(cell1.energy.abs().max())


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


def test_the_cpp_kernels_take_every_radial_spec_with_a_kernel_case():
    """operators.cpp names radial.cuh's cases (the specs' names and kernel ids of ops/radial): every
    basis and cutoff with a kernel case runs on the C++ kernels and equals the reference."""
    from painnfx.ops import radial_filter, reference
    from painnfx.ops.radial import BASES, CUTOFFS, kernel_cases

    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")
    cases = kernel_cases()
    d = torch.linspace(0.3, 2.9, 9, dtype=torch.float64)
    for basis in BASES.values():
        for cutoff in CUTOFFS.values():
            assert cases["basis"][basis.kernel_id] == basis.name and cases["cutoff"][cutoff.kernel_id] == cutoff.name
            k = 4
            params = torch.stack([torch.linspace(0.5, 3.0, k)] + [torch.full((k,), 0.4)] * (len(basis.param_rows) - 1))
            cparams = [3.0] + [0.2] * (len(cutoff.param_names) - 1)
            w, b = torch.randn(5, k, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
            with dispatch.record_calls() as calls:
                got = radial_filter(d, w, b, params.double(), basis.name, cutoff.name, cparams)
            assert calls[("radial_filter", "cpp")] == 1
            want = reference.radial_filter_forward(d, w, b, params.double(), basis.name, cutoff.name, cparams)
            torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
