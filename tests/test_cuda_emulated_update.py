"""The CUDA update kernels (painn_update.cu), unchanged, run on the CPU through the emulator and
the launch-argument code a GPU uses (ops/cuda/update.py), against the reference op, under three
thread schedules; mutated kernels are caught."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.ops.update import update_backward, update_forward
from painnfx.ops.cuda import update as cuda_update
from painnfx.ops.cuda.nvrtc import kernel_source

from helpers import env_import
from strategies import update_inputs

emulator = env_import("painnfx.tools.emulator")
pytestmark = pytest.mark.emulated
SCHEDULES = ["forward", "reverse", "random"]
TOL = {torch.float64: dict(rtol=1e-12, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-5)}
NAMES = ("q'", "mu'", "dL/dq", "dL/dmu", "dL/dU", "dL/dW1", "dL/db1", "dL/dW2", "dL/db2")


@pytest.fixture(scope="module")
def emu():
    return emulator.build(["painn_update.cu"])


def _run(emu, launch, schedule, seed):
    if launch is not None:
        emu.launch(launch.kernel, launch.grid, launch.block, launch.args, schedule=schedule, seed=seed)


def _emulated(emu, args, gq, gmu, weight_grad, schedule, seed=0):
    outputs = cuda_update.run_forward(lambda one: _run(emu, one, schedule, seed), *args)
    grads = cuda_update.run_backward(lambda one: _run(emu, one, schedule, seed), gq, gmu, *args, weight_grad)
    return (*outputs, *grads)


def _reference(args, gq, gmu, weight_grad):
    return (*update_forward(*args), *update_backward(gq, gmu, *args, weight_grad))


def _case(n, f, seed, dtype, scale=1.0):
    args = [a.to(dtype) if torch.is_tensor(a) else a for a in update_inputs(n, f, seed, scale)]
    gen = torch.Generator().manual_seed(seed + 1)
    gq = torch.randn(n, f, generator=gen, dtype=torch.float64).to(dtype)
    gmu = torch.randn(n, 3, f, generator=gen, dtype=torch.float64).to(dtype)
    return args, gq, gmu


def _assert_same(got, want, dtype):
    for name, a, b in zip(NAMES, got, want):
        assert (a is None) == (b is None), name
        if a is not None:
            scale = max(1.0, float(b.abs().max())) if b.numel() else 1.0
            torch.testing.assert_close(a, b, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale, msg=name)


@settings(max_examples=10, deadline=None)
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@given(n=st.integers(0, 5), f=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 1.0]),
       weight_grad=st.booleans())
def test_kernels_match_the_reference(emu, schedule, dtype, n, f, seed, scale, weight_grad):
    """Feature counts below, at and past a warp (the block strides over 2F, 3F and 6F values),
    a zero mu (the first layer: |V| = sqrt(eps)), with and without the weight-gradient factors."""
    args, gq, gmu = _case(n, f, seed, dtype, scale)
    _assert_same(_emulated(emu, args, gq, gmu, weight_grad, schedule, seed), _reference(args, gq, gmu, weight_grad),
                 dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_the_largest_feature_count_the_kernels_take(emu, dtype):
    f = cuda_update.MAX_F[dtype]
    args, gq, gmu = _case(2, f, 5, dtype)
    _assert_same(_emulated(emu, args, gq, gmu, True, "random", 3), _reference(args, gq, gmu, True), dtype)
    assert not cuda_update.usable(torch.zeros(1, f + 1, dtype=dtype))  # past it: the reference runs


@pytest.mark.parametrize("old, new", [
    # a missing barrier: threads read |V| before the whole row is written
    ("        s_ctx[F + f] = sqrt(v0 * v0 + v1 * v1 + v2 * v2 + eps);\n    }\n    __syncthreads();",
     "        s_ctx[F + f] = sqrt(v0 * v0 + v1 * v1 + v2 * v2 + eps);\n    }"),
    # dL/dV without the |V| term
    ("s_gvw[k] = gs * s_vw[c * F2 + F + col] + s_gctx[F + col] / s_ctx[F + col] * s_vw[k];",
     "s_gvw[k] = gs * s_vw[c * F2 + F + col];"),
])
def test_mutated_kernels_are_caught(old, new):
    src = kernel_source("painn_update.cu")
    assert src.count(old) == 1
    emu = emulator.build(["painn_update.cu"], sources={"painn_update.cu": src.replace(old, new)})
    args, gq, gmu = _case(3, 40, 2, torch.float64)
    with pytest.raises(AssertionError):
        _assert_same(_emulated(emu, args, gq, gmu, False, "reverse", 0), _reference(args, gq, gmu, False),
                     torch.float64)
