"""The radial-spec registry: every basis and cutoff is defined once, and each definition's
formula, derivative, kernel maths (ops/cuda/radial.cuh) and module recognition agree."""

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import torch
from hypothesis import given
from hypothesis import strategies as st

from helpers import env_skip

from painnfx.model.cutoff import CosineCutoff
from painnfx.model.radial import BesselRBF, GaussianRBF
from painnfx.ops import InputError
from painnfx.ops.radial import (BASES, CUTOFFS, MAX_KERNEL_K, basis_of_module, check_cutoff, cutoff_of_module,
                                kernel_cases)

CUDA_DIR = Path(__import__("painnfx.ops.cuda", fromlist=["x"]).__file__).parent
RC = 3.0


def basis_params(name, k=6, rc=RC):
    if name == "gaussian":
        offsets = torch.linspace(0, rc, k, dtype=torch.float64)
        return torch.stack([offsets, torch.full((k,), float(offsets[1] - offsets[0]), dtype=torch.float64)])
    return (torch.arange(1, k + 1, dtype=torch.float64) * np.pi / rc)[None]


CUTOFF_PARAMS = {"cosine": (RC,), "mollifier": (RC, 1e-7)}
assert set(CUTOFF_PARAMS) == set(CUTOFFS), "every cutoff spec needs test parameters here"

distances = st.lists(st.one_of(st.floats(1e-3, 1.3 * RC), st.sampled_from([RC, RC - 1e-7, 1e-3, 0.5, 2.999])),
                     min_size=1, max_size=12)


def _autograd(fn, d):
    d = d.clone().requires_grad_(True)
    out = fn(d)
    cols = out.reshape(len(d), -1)
    grads = [torch.autograd.grad(cols[:, k].sum(), d, retain_graph=True)[0] for k in range(cols.shape[1])]
    return cols.detach(), torch.stack(grads, 1)


@pytest.mark.parametrize("name", sorted(BASES))
@given(d=distances)
def test_basis_values_and_derivative_match_autograd_of_the_model_spelling(name, d):
    spec, p = BASES[name], basis_params(name)
    d = torch.tensor(d, dtype=torch.float64)
    phi, dphi = spec.values(d, p, True)
    ref, dref = _autograd(lambda t: spec.unfused(t, p), d)
    torch.testing.assert_close(phi, ref, rtol=1e-12, atol=1e-12)
    # the Bessel derivative's series is more accurate than autograd at small d (see bessel.py)
    torch.testing.assert_close(dphi, dref, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("name", sorted(CUTOFFS))
@given(d=distances)
def test_cutoff_values_and_derivative_match_autograd_of_the_model_spelling(name, d):
    spec, p = CUTOFFS[name], CUTOFF_PARAMS[name]
    d = torch.tensor(d, dtype=torch.float64)
    fc, dfc = spec.values(d, p, True)
    ref, dref = _autograd(lambda t: spec.unfused(t, p), d)
    torch.testing.assert_close(fc, ref[:, 0], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dfc, dref[:, 0], rtol=1e-9, atol=1e-9)
    assert float(fc[d >= RC].abs().sum()) == 0.0  # nothing beyond the radius


def test_kernel_ids_in_radial_cuh_match_the_registry():
    text = (CUDA_DIR / "radial.cuh").read_text()
    found = {(kind, name): kernel_id for kind, cases in kernel_cases().items() for kernel_id, name in cases.items()}
    want = {("basis", s.name): s.kernel_id for s in BASES.values()}
    want.update({("cutoff", s.name): s.kernel_id for s in CUTOFFS.values()})
    assert found == want
    assert f"#define MAX_K {MAX_KERNEL_K}" in text


SHIM = r'''
#include "radial.cuh"
extern "C" double basis(int id, double d, double p0, double p1, double* dphi) {
    return radial_basis<double>(id, d, p0, p1, dphi); }
extern "C" double cutoff(int id, double d, double c0, double c1, double* dfc) {
    return cutoff_fn<double>(id, d, c0, c1, dfc); }
extern "C" float basis_f(int id, float d, float p0, float p1, float* dphi) {
    return radial_basis<float>(id, d, p0, p1, dphi); }
'''


@pytest.fixture(scope="module")
def kernel_maths(tmp_path_factory):
    """radial.cuh compiled for the host (the same source NVRTC compiles)."""
    cxx = shutil.which("g++") or shutil.which("c++")
    if cxx is None:  # pragma: no cover - CI has g++
        env_skip("no host C++ compiler")
    tmp = tmp_path_factory.mktemp("radial")
    (tmp / "shim.cpp").write_text(SHIM)
    lib = tmp / "libradial.so"
    subprocess.run([cxx, "-O2", "-shared", "-fPIC", "-std=c++17", f"-I{CUDA_DIR}", str(tmp / "shim.cpp"), "-o",
                    str(lib)], check=True, capture_output=True, timeout=120)
    so = ctypes.CDLL(str(lib))
    so.basis.restype = so.cutoff.restype = ctypes.c_double
    so.basis.argtypes = so.cutoff.argtypes = [ctypes.c_int, ctypes.c_double, ctypes.c_double, ctypes.c_double,
                                              ctypes.POINTER(ctypes.c_double)]
    return so


D = [1e-3, 0.01, 0.3, 1.0, 2.2, RC - 1e-3, RC - 1e-7, RC, RC + 0.5]


@pytest.mark.parametrize("name", sorted(BASES))
def test_kernel_basis_maths_matches_the_spec(kernel_maths, name):
    spec, p = BASES[name], basis_params(name)
    d = torch.tensor(D, dtype=torch.float64)
    phi, dphi = spec.values(d, p, True)
    for e, dist in enumerate(D):
        for k in range(p.shape[1]):
            out = ctypes.c_double()
            p1 = float(p[1, k]) if p.shape[0] > 1 else 0.0
            val = kernel_maths.basis(spec.kernel_id, dist, float(p[0, k]), p1, ctypes.byref(out))
            assert val == pytest.approx(float(phi[e, k]), rel=1e-12, abs=1e-14)
            assert out.value == pytest.approx(float(dphi[e, k]), rel=1e-10, abs=1e-12)


@pytest.mark.parametrize("name", sorted(CUTOFFS))
def test_kernel_cutoff_maths_matches_the_spec(kernel_maths, name):
    spec, p = CUTOFFS[name], CUTOFF_PARAMS[name]
    d = torch.tensor(D, dtype=torch.float64)
    fc, dfc = spec.values(d, p, True)
    for e, dist in enumerate(D):
        out = ctypes.c_double()
        c1 = p[1] if len(p) > 1 else 0.0
        val = kernel_maths.cutoff(spec.kernel_id, dist, p[0], c1, ctypes.byref(out))
        assert val == pytest.approx(float(fc[e]), rel=1e-12, abs=1e-14)
        assert out.value == pytest.approx(float(dfc[e]), rel=1e-10, abs=1e-12)


def test_an_unknown_kernel_id_is_an_error_not_another_function(kernel_maths, monkeypatch):
    """radial.cuh returns NaN for an id it has no case for (the last case used to run instead),
    and the host refuses such a spec before any kernel runs."""
    import dataclasses
    import math

    import painnfx.ops.radial as radial

    out = ctypes.c_double()
    assert math.isnan(kernel_maths.basis(7, 1.0, 0.5, 0.3, ctypes.byref(out))) and math.isnan(out.value)
    assert math.isnan(kernel_maths.cutoff(7, 1.0, RC, 0.0, ctypes.byref(out))) and math.isnan(out.value)
    stray = dataclasses.replace(BASES["gaussian"], name="stray", kernel_id=7)
    monkeypatch.setitem(radial.BASES, "stray", stray)
    with pytest.raises(ValueError, match=r"the basis 'stray' has kernel id 7, but radial.cuh has cases for "
                                         r"\{0: 'gaussian', 1: 'bessel'\}"):
        radial.kernel_radial("op", torch.float64, "stray", basis_params("gaussian"), "cosine", [RC])


def test_specs_read_the_model_modules():
    name, p = basis_of_module(GaussianRBF(5, 4.0))
    assert name == "gaussian" and p.shape == (2, 5)
    name, p = basis_of_module(BesselRBF(5, 4.0))
    assert name == "bessel" and p.shape == (1, 5)
    assert cutoff_of_module(CosineCutoff(4.0)) == ("cosine", (4.0,))
    with pytest.raises(TypeError, match="no radial spec for cutoff module Identity"):
        cutoff_of_module(torch.nn.Identity())
    with pytest.raises(InputError, match="takes 2 parameters"):
        check_cutoff("mollifier", [4.0])
