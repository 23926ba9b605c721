"""Every ``painnfx::`` op passes ``torch.library.opcheck`` (schema, fake tensor, autograd
registration, AOT dispatch with static and dynamic shapes) on hypothesis-drawn inputs: edge
cases included (no edges, isolated atoms, one atom, edges at exactly the cutoff, mu = None,
every basis and cutoff), on each CPU backend and on the emulated CUDA kernels."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.ops import dispatch, prepare_edges
from strategies import message_inputs, update_inputs

OPS = ("prepare_edges", "painn_message", "painn_message_backward", "radial_filter", "radial_filter_backward",
       "painn_update", "painn_update_backward")


def _opcheck(name, args, kwargs=None):
    result = torch.library.opcheck(getattr(torch.ops.painnfx, name).default, args, kwargs or {}, raise_exception=False)
    failed = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
    assert not failed, f"{name}: {failed}"


def _all_ops(inp, weight_grad: bool):
    n = inp["x"].shape[0]
    radial = (inp["basis"], inp["cutoff"], inp["cutoff_params"])
    r = inp["r"].detach().clone().requires_grad_(True)
    x = inp["x"].detach().clone().requires_grad_(True)
    weight = inp["weight"].detach().clone().requires_grad_(True)
    _opcheck("prepare_edges", (inp["r"], inp["idx_i"], inp["idx_j"], n))
    edges = list(prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n))
    message = (r, inp["idx_i"], inp["idx_j"], edges, x, inp["mu"], weight, inp["bias"], inp["basis_params"], *radial)
    _opcheck("painn_message", message)
    f = x.shape[1] // 3
    gen = torch.Generator().manual_seed(n)
    gq = torch.randn(n, f, generator=gen, dtype=torch.float64).to(x.dtype)
    gmu = torch.randn(n, 3, f, generator=gen, dtype=torch.float64).to(x.dtype)
    plain = [a.detach() if torch.is_tensor(a) else a for a in message]
    _opcheck("painn_message_backward", (gq, gmu, *plain, 0, weight_grad))
    d = torch.linalg.vector_norm(inp["r"], dim=1).detach().requires_grad_(True)
    filt = (d, weight, inp["bias"], inp["basis_params"], *radial)
    _opcheck("radial_filter", filt)
    grad = torch.randn(d.shape[0], weight.shape[0], generator=gen, dtype=torch.float64).to(d.dtype)
    _opcheck("radial_filter_backward", (grad, *[a.detach() if torch.is_tensor(a) else a for a in filt]))
    _update_ops(n, f, x.dtype, weight_grad, gen)


def _update_ops(n, f, dtype, weight_grad: bool, gen):
    args = [a.to(dtype) if torch.is_tensor(a) else a for a in update_inputs(n, f, int(gen.initial_seed()))]
    update = [a.requires_grad_(k < 2 or weight_grad) if torch.is_tensor(a) else a for k, a in enumerate(args)]
    _opcheck("painn_update", update)
    gq = torch.randn(n, f, generator=gen, dtype=torch.float64).to(dtype)
    gmu = torch.randn(n, 3, f, generator=gen, dtype=torch.float64).to(dtype)
    _opcheck("painn_update_backward", (gq, gmu, *[a.detach() if torch.is_tensor(a) else a for a in update],
                                       weight_grad))


def test_the_list_covers_every_registered_op():
    assert set(OPS) == {name for name in dispatch.operator_names()}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=6, deadline=None)
@given(inp=message_inputs(max_atoms=5, max_edges=12), weight_grad=st.booleans())
def test_opcheck_every_op_on_drawn_inputs(each_backend, dtype, inp, weight_grad):
    inp = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() and k != "basis_params" else v)
           for k, v in inp.items()}
    _all_ops(inp, weight_grad)


@pytest.mark.emulated
@settings(max_examples=3, deadline=None)
@given(inp=message_inputs(max_atoms=4, max_edges=8))
def test_opcheck_on_the_emulated_cuda_kernels(inp):
    from helpers import env_skip
    from painnfx.ops import use_backend
    from painnfx.tools.emulator import backend

    try:
        backend.register()
    except Exception as exc:  # noqa: BLE001  (no compiler for the emulator: reported, not hidden)
        env_skip(f"the CUDA emulator is unavailable: {exc}")
    try:
        with use_backend("emulated"):
            _all_ops(inp, weight_grad=True)
    finally:
        backend.unregister()
