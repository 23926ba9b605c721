"""Subnormal floats in the C++ kernels: every thread that runs a kernel flushes them for the
duration of the call (FTZ and DAZ), so the fused results equal the flushed reference in float32
and float64, and the floating-point state of the caller and of the OpenMP pool is what it was.
The CUDA kernels in the emulator flush the same way (on a GPU: --ftz=true, float32)."""

import pytest
import torch

from helpers import env_skip
from painnfx.ops import dispatch, prepare_edges
from painnfx.ops.cpu import backend

#: magnitudes whose products are subnormal: (1e-20)^2 < 1.2e-38 (float32), (1e-160)^2 < 2.2e-308 (float64)
TINY = {torch.float32: 1e-20, torch.float64: 1e-160}
SMALLEST_NORMAL = {dt: torch.finfo(dt).tiny for dt in TINY}


@pytest.fixture(scope="module")
def lib():
    library = backend.library()
    if library is None:
        env_skip(f"the C++ kernels are unavailable here ({backend.info().get('error')})")
    return library


def _inputs(dtype):
    """A small graph where odd atoms carry tiny features and gradients and hear only odd atoms,
    and the filter weights are tiny: their products, and so everything odd atoms receive, are
    subnormal; even atoms stay ordinary (tiny x ordinary)."""
    gen = torch.Generator().manual_seed(3)
    n, e, f, k = 6, 30, 8, 5
    r = (torch.randn(e, 3, generator=gen, dtype=torch.float64) * 0.8 + 0.3).to(dtype)
    idx_i = torch.randint(0, n, (e,), generator=gen)
    idx_j = 2 * torch.randint(0, n // 2, (e,), generator=gen) + idx_i % 2  # same parity as the receiver
    scale = torch.tensor([1.0, TINY[dtype]] * (n // 2), dtype=torch.float64)[:, None]
    x = (torch.randn(n, 3 * f, generator=gen, dtype=torch.float64) * scale).to(dtype)
    mu = (torch.randn(n, 3, f, generator=gen, dtype=torch.float64) * scale[:, :, None]).to(dtype)
    weight = (torch.randn(3 * f, k, generator=gen, dtype=torch.float64) * TINY[dtype]).to(dtype)
    bias = (torch.randn(3 * f, generator=gen, dtype=torch.float64) * TINY[dtype]).to(dtype)
    params = torch.stack([torch.linspace(0, 3, k), torch.full((k,), 0.3)]).to(dtype)
    gq = (torch.randn(n, f, generator=gen, dtype=torch.float64) * scale).to(dtype)
    gmu = (torch.randn(n, 3, f, generator=gen, dtype=torch.float64) * scale[:, :, None]).to(dtype)
    return r, idx_i, idx_j, x, mu, weight, bias, params, gq, gmu


def _run(impl, dtype, flush: bool):
    r, idx_i, idx_j, x, mu, weight, bias, params, gq, gmu = _inputs(dtype)
    edges = prepare_edges(r, idx_i, idx_j, x.shape[0])
    consts = ("gaussian", "cosine", [3.0], 0)
    previous = backend.flush_denormal_state()
    torch.set_flush_denormal(flush)
    try:
        with dispatch.use_backend(impl):
            fwd = dispatch.run("painn_message", "cpu", r, idx_i, idx_j, edges, x, mu, weight, bias, params, *consts)
            bwd = dispatch.run("painn_message_backward", "cpu", gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias,
                               params, *consts, False)
    finally:
        torch.set_flush_denormal(previous)
    return list(fwd) + list(bwd[:3])


def _subnormal(t, dtype) -> bool:
    return bool(((t != 0) & (t.abs() < SMALLEST_NORMAL[dtype])).any())


@pytest.fixture(params=["cpp", "emulated"])
def kernels(request, lib):
    """The C++ kernels, and the CUDA kernels in the emulator (which flushes as --ftz=true does)."""
    if request.param == "emulated":
        from painnfx.tools.emulator import backend as emulated

        emulated.register()
        yield "emulated"
        emulated.unregister()
    else:
        yield "cpp"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_results_equal_the_flushed_reference(kernels, dtype):
    plain = _run("reference", dtype, flush=False)
    assert any(_subnormal(t, dtype) for t in plain), "the inputs must produce subnormal results unflushed"
    flushed = _run("reference", dtype, flush=True)
    fused = _run(kernels, dtype, flush=False)  # the caller does not flush: the kernels do it themselves
    rtol = 2e-5 if dtype == torch.float32 else 1e-12
    for name, a, b in zip(("dq", "dmu", "dL/dr", "dL/dx", "dL/dmu"), fused, flushed):
        assert not _subnormal(a, dtype), name  # flushed, where the unflushed reference has subnormals
        torch.testing.assert_close(a, b, rtol=rtol, atol=rtol * float(b.abs().max()), msg=name)
    assert all((b != 0).any() for b in flushed)  # and the ordinary part is there


@pytest.mark.parametrize("user_flush", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_floating_point_state_is_unchanged_on_the_caller_and_the_pool(lib, dtype, user_flush):
    threads = max(2, torch.get_num_threads())
    pool = (lambda: backend.pool_mxcsr(threads))
    previous = backend.flush_denormal_state()
    torch.set_flush_denormal(user_flush)
    try:
        caller, workers = backend.mxcsr(), pool()
        with dispatch.record_calls() as calls:
            _run("cpp", dtype, flush=user_flush)
        assert calls[("painn_message", "cpp")] == 1 and calls[("painn_message_backward", "cpp")] == 1
        assert backend.mxcsr() == caller
        assert pool() == workers
        assert backend.flush_denormal_state() == user_flush  # torch's setting, as the user left it
    finally:
        torch.set_flush_denormal(previous)
    if caller:  # x86: the flags the kernels set are not left behind on the pool's threads
        assert bool(caller & backend.FTZ_DAZ) == user_flush and not any(w & backend.FTZ_DAZ for w in workers[1:])
