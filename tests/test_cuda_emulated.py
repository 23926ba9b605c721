"""The CUDA kernels, unchanged, run on the CPU through the emulator (painnfx.tools.emulator)
and the project's own launch-argument code, against the reference op, under three thread
schedules; and the harness can fail (mutated kernels, wrongly typed arguments)."""

import os

import numpy as np
import pytest
import torch
from ase.build import bulk
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.ops import prepare_edges, reference
from painnfx.ops.cuda import message as cuda_message
from painnfx.ops.cuda.nvrtc import kernel_source
from strategies import message_inputs, molecules, periodic_cells
from test_paired_edges import _structure_inputs

from helpers import env_import, env_skip  # noqa: E402

emulator = env_import("painnfx.tools.emulator")
pytestmark = pytest.mark.emulated
SCHEDULES = ["forward", "reverse", "random"]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}


@pytest.fixture(scope="module")
def emu():
    return emulator.build(["painn_message.cu"])


def _cast(inp, dtype):
    return {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}


def _forward(emu, inp, schedule, seed=0):
    edges = prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], inp["x"].shape[0])
    launch, dq, dmu = cuda_message.forward_launch(
        inp["r"], inp["idx_i"], inp["idx_j"], edges, inp["x"], inp["mu"], inp["weight"], inp["bias"],
        inp["basis_params"], inp["basis"], inp["cutoff"], inp["cutoff_params"])
    if launch is not None:
        emu.launch(launch.kernel, launch.grid, launch.block, launch.args, schedule=schedule, seed=seed)
    return dq, dmu


def _reference(inp):
    return reference.message_forward(inp["r"], inp["idx_i"], inp["idx_j"], None, inp["x"], inp["mu"], inp["weight"],
                                     inp["bias"], inp["basis_params"], inp["basis"], inp["cutoff"],
                                     inp["cutoff_params"])


@settings(max_examples=15)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(inp=message_inputs(max_atoms=6, max_edges=70))
def test_forward_kernel_matches_the_reference(emu, schedule, dtype, inp):
    inp = _cast(inp, dtype)
    got = _forward(emu, inp, schedule, seed=3)
    for a, b in zip(got, _reference(inp)):
        torch.testing.assert_close(a, b, **TOL[dtype])


def _big_inputs(f=40, n=5, e=90, dtype=torch.float64):
    """F above one warp and more edges per atom than one tile (TILE = 32)."""
    gen = torch.Generator().manual_seed(7)
    r = torch.randn(e, 3, generator=gen, dtype=dtype)
    return dict(r=r, idx_i=torch.randint(0, n, (e,), generator=gen), idx_j=torch.randint(0, n, (e,), generator=gen),
                x=torch.randn(n, 3 * f, generator=gen, dtype=dtype), mu=torch.randn(n, 3, f, generator=gen, dtype=dtype),
                weight=torch.randn(3 * f, 6, generator=gen, dtype=dtype), bias=torch.randn(3 * f, generator=gen, dtype=dtype),
                basis_params=torch.stack([torch.linspace(0, 3, 6), torch.full((6,), 0.6)]).to(dtype), basis="gaussian",
                cutoff="mollifier", cutoff_params=[3.0, 1e-7])


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_forward_kernel_several_tiles_and_warps(emu, schedule):
    inp = _big_inputs()
    for a, b in zip(_forward(emu, inp, schedule, seed=1), _reference(inp)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])


def test_k_above_the_kernel_maximum_is_refused():
    inp = _big_inputs()
    inp["weight"] = torch.randn(120, 65, dtype=torch.float64)
    inp["basis_params"] = torch.stack([torch.linspace(0, 3, 65), torch.ones(65)]).double()
    with pytest.raises(ValueError, match="K = 65 radial functions exceed the kernel's maximum 64"):
        cuda_message.forward_launch(inp["r"], inp["idx_i"], inp["idx_j"], None, inp["x"], inp["mu"], inp["weight"],
                                    inp["bias"], inp["basis_params"], "gaussian", "cosine", [3.0])


def _mutant(old, new, count=1):
    src = kernel_source("painn_message.cu")
    assert src.count(old) >= count, old
    return src.replace(old, new, count)


def test_a_removed_barrier_is_caught_in_some_schedule():
    """Drop the barrier that separates a tile's cooperative geometry/basis from its use: the
    forward order may still pass, reverse or random must not."""
    mutated = _mutant("        __syncthreads();\n        if (f >= F) continue;", "        if (f >= F) continue;")
    emu = emulator.build(["painn_message.cu"], sources={"painn_message.cu": mutated})
    inp = _big_inputs()
    want = _reference(inp)
    failures = 0
    for schedule in SCHEDULES:
        got = _forward(emu, inp, schedule, seed=5)
        failures += not all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(got, want))
    assert failures >= 1


def test_an_early_return_before_a_barrier_is_an_error_naming_the_line():
    mutated = _mutant("    for_each_filtered_edge<scalar_t>(", "    if (f >= F) return;\n    for_each_filtered_edge<scalar_t>(")
    emu = emulator.build(["painn_message.cu"], sources={"painn_message.cu": mutated})
    with pytest.raises(emulator.EmulatorError, match=r"__syncthreads at .*painn_message.cu:\d+.*has exited"):
        _forward(emu, _big_inputs(f=20), "forward")


def test_emulator_cache_hit_corruption_and_failing_compile(tmp_path, monkeypatch):
    """The emulator's build cache verifies its entries like the CPU and CUBIN caches (one
    implementation, ops/build_cache.py); a kernel that does not compile is an EmulatorError."""
    monkeypatch.setenv("PAINNFX_CACHE_DIR", str(tmp_path))
    first = emulator.build(["painn_message.cu"])
    (lib,) = (tmp_path / "emulator").glob("*.so")
    assert emulator.CACHE.lookup(lib.name) is not None
    stamp = lib.stat().st_mtime_ns
    emulator.build(["painn_message.cu"])
    assert lib.stat().st_mtime_ns == stamp  # a hit: not rebuilt
    bad = lib.with_suffix(".bad")  # a new file renamed over it: the loaded library stays mapped intact
    bad.write_bytes(b"half-written library")
    os.replace(bad, lib)
    assert emulator.CACHE.lookup(lib.name) is None
    again = emulator.build(["painn_message.cu"])  # corrupt: rebuilt, and it loads and runs
    inp = _big_inputs()
    for a, b in zip(_forward(again, inp, "forward"), _forward(first, inp, "forward")):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    broken = kernel_source("painn_message.cu").replace("acc_q += fc * ws * xj[f];", "acc_q += undeclared_thing;")
    with pytest.raises(emulator.EmulatorError, match="compiling the emulator failed(.|\n)*undeclared_thing"):
        emulator.build(["painn_message.cu"], sources={"painn_message.cu": broken})


def test_a_flipped_index_is_caught():
    mutated = _mutant("acc_q += fc * ws * xj[f];", "acc_q += fc * ws * xj[F + f];")
    emu = emulator.build(["painn_message.cu"], sources={"painn_message.cu": mutated})
    inp = _big_inputs()
    dq, _ = _forward(emu, inp, "forward")
    assert not torch.allclose(dq, _reference(inp)[0])


def test_argument_packing_is_checked_against_the_kernel_signature(emu):
    inp = _big_inputs()
    edges = prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], 5)
    launch, _, _ = cuda_message.forward_launch(inp["r"], inp["idx_i"], inp["idx_j"], edges, inp["x"], inp["mu"],
                                               inp["weight"], inp["bias"], inp["basis_params"], "gaussian", "cosine",
                                               [3.0])
    args = list(launch.args)
    args[12] = np.float32(3.0)  # a float where the f64 kernel takes a double
    with pytest.raises(emulator.EmulatorError, match=r"argument 12 \(double\) is 8 bytes, the launcher packed 4"):
        emu.launch(launch.kernel, launch.grid, launch.block, args)
    args[12] = 3.0  # a Python float: refused before any packing
    with pytest.raises(TypeError, match="Python float"):
        emu.launch(launch.kernel, launch.grid, launch.block, args)
    with pytest.raises(emulator.EmulatorError, match="takes 18 arguments"):
        emu.launch(launch.kernel, launch.grid, launch.block, launch.args[:-1])


@pytest.fixture(scope="module")
def emu_all():
    return emulator.build(["painn_message.cu", "painn_message_backward.cu"])


def _backward(emu, inp, gq, gmu, schedule, weight_grad, seed=0):
    edges = prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], inp["x"].shape[0])
    launches, outputs = cuda_message.backward_launches(
        gq, gmu, inp["r"], inp["idx_i"], inp["idx_j"], edges, inp["x"], inp["mu"], inp["weight"], inp["bias"],
        inp["basis_params"], inp["basis"], inp["cutoff"], inp["cutoff_params"], weight_grad)
    for launch in launches:
        emu.launch(launch.kernel, launch.grid, launch.block, launch.args, schedule=schedule, seed=seed)
    return outputs


def _cotangents(inp, seed=0):
    gen = torch.Generator().manual_seed(seed)
    n, f = inp["x"].shape[0], inp["x"].shape[1] // 3
    dtype = inp["x"].dtype
    return (torch.randn(n, f, generator=gen, dtype=torch.float64).to(dtype),
            torch.randn(n, 3, f, generator=gen, dtype=torch.float64).to(dtype))


def _reference_backward(inp, gq, gmu, weight_grad):
    return reference.message_backward(gq, gmu, inp["r"], inp["idx_i"], inp["idx_j"], None, inp["x"], inp["mu"],
                                      inp["weight"], inp["bias"], inp["basis_params"], inp["basis"], inp["cutoff"],
                                      inp["cutoff_params"], 0, weight_grad)


def _assert_backward(got, want, dtype):
    for name, a, b in zip(("dL/dr", "dL/dx", "dL/dmu", "dL/dweight", "dL/dbias"), got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            torch.testing.assert_close(a, b, **TOL[dtype], msg=name)


@settings(max_examples=12)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(inp=message_inputs(max_atoms=6, max_edges=60))
def test_backward_kernels_match_the_reference(emu_all, schedule, dtype, inp):
    inp = _cast(inp, dtype)
    gq, gmu = _cotangents(inp)
    weight_grad = inp["r"].shape[0] % 2 == 0  # both paths, training and MD
    got = _backward(emu_all, inp, gq, gmu, schedule, weight_grad, seed=2)
    _assert_backward(got, _reference_backward(inp, gq, gmu, weight_grad), dtype)


@pytest.mark.parametrize("schedule", SCHEDULES)
def test_backward_kernels_several_tiles_warps_and_weight_parts(emu_all, schedule):
    inp = _big_inputs(e=150)
    gq, gmu = _cotangents(inp, 4)
    got = _backward(emu_all, inp, gq, gmu, schedule, True, seed=9)
    _assert_backward(got, _reference_backward(inp, gq, gmu, True), torch.float64)


def test_a_wrong_warp_reduction_is_caught():
    src = kernel_source("painn_message_backward.cu")
    mutated = src.replace("for (int o = 16; o > 0; o >>= 1)", "for (int o = 8; o > 0; o >>= 1)")
    assert mutated != src
    emu = emulator.build(["painn_message_backward.cu"], sources={"painn_message_backward.cu": mutated})
    inp = _big_inputs()
    gq, gmu = _cotangents(inp)
    gr = _backward(emu, inp, gq, gmu, "forward", False)[0]
    assert not torch.allclose(gr, _reference_backward(inp, gq, gmu, False)[0])


@pytest.mark.parametrize("k", [1, cuda_message.MAX_K])
@pytest.mark.parametrize("schedule", ["reverse", "random"])
def test_one_and_the_maximum_number_of_radial_functions(emu_all, k, schedule):
    inp = _big_inputs(f=33, e=70)
    gen = torch.Generator().manual_seed(k)
    inp["weight"] = torch.randn(99, k, generator=gen, dtype=torch.float64) / k**0.5
    inp["basis_params"] = (torch.arange(1, k + 1, dtype=torch.float64) * torch.pi / 3.0)[None]
    inp["basis"] = "bessel"
    for a, b in zip(_forward(emu_all, inp, schedule, seed=k), _reference(inp)):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    gq, gmu = _cotangents(inp, k)
    _assert_backward(_backward(emu_all, inp, gq, gmu, schedule, True, seed=k), _reference_backward(inp, gq, gmu, True),
                     torch.float64)


# Each pair's dL/dr once: the edge kernel's warp for a pair computes the rows a, b once and both edges'
# dL/dr. The inputs are neighbor lists (every edge paired, atoms that see their own images), half lists
# (no pair) and the same lists with `reverse` all -1 (every edge alone).

def _paired_inputs(atoms, dtype, half=False, seed=0, cutoff=3.0, f=5, k=4):
    s = _structure_inputs(atoms, cutoff, dtype, f=f, k=k, mu=True, half=half, seed=seed)
    return dict(r=s["r"], idx_i=s["ii"], idx_j=s["jj"], x=s["x"], mu=s["mu"], weight=s["w"], bias=s["b"],
                basis_params=s["params"], basis="gaussian", cutoff="cosine", cutoff_params=[s["cutoff"]])


def _backward_with(emu, inp, gq, gmu, reverse=None, schedule="forward", seed=0):
    """The backward launches on the plan of ``inp``, its ``reverse`` replaced where given."""
    edges = list(prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], inp["x"].shape[0]))
    if reverse is not None:
        edges[4] = reverse
    launches, outputs = cuda_message.backward_launches(
        gq, gmu, inp["r"], inp["idx_i"], inp["idx_j"], edges, inp["x"], inp["mu"], inp["weight"], inp["bias"],
        inp["basis_params"], inp["basis"], inp["cutoff"], inp["cutoff_params"], False)
    for launch in launches:
        emu.launch(launch.kernel, launch.grid, launch.block, launch.args, schedule=schedule, seed=seed)
    return outputs, edges[4]


@settings(max_examples=10, deadline=None)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(atoms=st.one_of(periodic_cells(max_atoms=4), molecules(max_atoms=6)), half=st.booleans(),
       schedule=st.sampled_from(SCHEDULES))
def test_paired_edge_kernel_equals_per_edge_and_the_reference(emu_all, dtype, atoms, half, schedule):
    """Drawn cells and molecules, full and half lists: dL/dr of the pairs' warps is bitwise the
    per-edge kernel's (the partner's direction is exactly -u, its length the same), and equals the
    reference; a full list pairs every edge."""
    inp = _paired_inputs(atoms, dtype, half=half)
    gq, gmu = _cotangents(inp, 1)
    (paired, *rest), rev = _backward_with(emu_all, inp, gq, gmu, schedule=schedule, seed=4)
    assert bool((rev < 0).all()) if half else bool((rev >= 0).all())
    (alone, *_), _ = _backward_with(emu_all, inp, gq, gmu, reverse=torch.full_like(rev, -1), schedule=schedule)
    assert torch.equal(paired, alone)
    _assert_backward((paired, *rest), _reference_backward(inp, gq, gmu, False), dtype)


def test_a_cu_cell_and_its_self_images_pair_in_the_edge_kernel(emu_all):
    """One fcc Cu atom (every edge to its own image, paired with the opposite image) and a rattled
    32-atom cell, fp64, with a cutoff of 5 A: against the reference."""
    for atoms in (bulk("Cu", "fcc", a=3.61), bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)):
        atoms.rattle(0.02, seed=len(atoms))
        inp = _paired_inputs(atoms, torch.float64, cutoff=5.0, f=6, k=5)
        gq, gmu = _cotangents(inp, 2)
        got, rev = _backward_with(emu_all, inp, gq, gmu, schedule="random", seed=1)
        assert bool((rev >= 0).all())
        _assert_backward(got, _reference_backward(inp, gq, gmu, False), torch.float64)


def test_the_partner_edge_with_the_leaders_direction_is_caught():
    """The mutant the pairing invites: the partner edge takes the leader's direction u, not -u."""
    src = kernel_source("painn_message_backward.cu")
    flipped = "const T back[3] = {-u[0], -u[1], -u[2]};"
    assert src.count(flipped) == 1
    mutated = src.replace(flipped, "const T back[3] = {u[0], u[1], u[2]};")
    emu = emulator.build(["painn_message_backward.cu"], sources={"painn_message_backward.cu": mutated})
    inp = _paired_inputs(bulk("Cu", "fcc", a=3.61, cubic=True), torch.float64)
    gq, gmu = _cotangents(inp, 3)
    gr = _backward_with(emu, inp, gq, gmu)[0][0]
    assert not torch.allclose(gr, _reference_backward(inp, gq, gmu, False)[0], rtol=1e-6, atol=1e-9)


ASAN_SCRIPT = r"""
import sys, torch
sys.path.insert(0, sys.argv[1])
from painnfx.tools import emulator
from painnfx.ops.cuda.nvrtc import kernel_source
import test_cuda_emulated as t
src = kernel_source("painn_message.cu").replace("const scalar_t* xj = x + j * F3;", "const scalar_t* xj = x + (j + 1) * F3;")
emu = emulator.build(["painn_message.cu"], sanitize=True, sources={"painn_message.cu": src})
inp = t._big_inputs(n=3, e=40)
t._forward(emu, inp, "forward")
"""


def test_sanitizer_build_reports_an_out_of_bounds_read_with_the_cu_line(tmp_path):
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    cxx = shutil.which("g++")
    if cxx is None:  # pragma: no cover - CI has g++
        env_skip("no g++")
    asan = subprocess.run([cxx, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    if not os.path.isabs(asan):  # pragma: no cover
        env_skip("g++ has no AddressSanitizer runtime (libasan)")
    script = tmp_path / "oob.py"
    script.write_text(ASAN_SCRIPT)
    env = dict(os.environ, LD_PRELOAD=asan, ASAN_OPTIONS="detect_leaks=0:halt_on_error=1")
    out = subprocess.run([sys.executable, str(script), str(Path(__file__).parent)], capture_output=True, text=True,
                         env=env, timeout=600)
    assert out.returncode != 0
    assert "heap-buffer-overflow" in out.stderr or "AddressSanitizer" in out.stderr, out.stderr[-3000:]
    assert "painn_message.cu:" in out.stderr, out.stderr[-3000:]
