"""On a real GPU (marked `cuda`, skipped without one): every kernel against the reference on the
device, the dispatcher choosing the CUDA backend, launches on a non-default stream, and a whole
MD step captured in a CUDA graph, replayed on new positions, with overflow and re-capture."""

import pytest
import torch
from ase.build import bulk
from hypothesis import given, settings

from helpers import system_tensors
from painnfx.ops import dispatch, painn_message, prepare_edges, use_backend
from strategies import message_inputs

pytestmark = pytest.mark.cuda
DIFF = ("r", "x", "mu", "weight", "bias")


def _run(inp, backend, weight_grad):
    leaves = {k: (v.detach().clone().requires_grad_(k in DIFF and (weight_grad or k not in ("weight", "bias")))
                  if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    with use_backend(backend):
        edges = prepare_edges(leaves["r"], leaves["idx_i"], leaves["idx_j"], leaves["x"].shape[0])
        dq, dmu = painn_message(leaves["r"], leaves["idx_i"], leaves["idx_j"], edges, leaves["x"], leaves["mu"],
                                leaves["weight"], leaves["bias"], leaves["basis_params"], leaves["basis"],
                                leaves["cutoff"], leaves["cutoff_params"])
    gen = torch.Generator(device="cpu").manual_seed(0)
    loss = (dq * torch.randn(dq.shape, generator=gen).to(dq)).sum() + (dmu * torch.randn(dmu.shape, generator=gen).to(dmu)).sum()
    wrt = [leaves[k] for k in DIFF if torch.is_tensor(leaves[k]) and leaves[k].requires_grad]
    grads = torch.autograd.grad(loss, wrt, allow_unused=True) if loss.requires_grad else [None] * len(wrt)
    return [dq, dmu] + [g if g is not None else torch.zeros_like(w) for g, w in zip(grads, wrt)]


@settings(max_examples=30, deadline=None)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@given(inp=message_inputs(max_atoms=12, max_edges=200))
def test_kernels_match_the_reference_on_the_device(dtype, inp):
    inp = {k: (v.to("cuda", dtype) if torch.is_tensor(v) and v.is_floating_point() else
               v.to("cuda") if torch.is_tensor(v) else v) for k, v in inp.items()}
    tol = dict(rtol=1e-10, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-5)
    for weight_grad in (False, True):
        for a, b in zip(_run(inp, "cuda", weight_grad), _run(inp, "reference", weight_grad)):
            torch.testing.assert_close(a, b, **tol)


def test_dispatcher_selects_the_cuda_backend():
    assert dispatch.chosen("painn_message", "cuda") == "cuda"
    assert dispatch.chosen("painn_message_backward", "cuda") == "cuda"


def test_launch_on_a_non_default_stream():
    gen = torch.Generator().manual_seed(1)
    n, e, f, k = 50, 900, 128, 20
    inp = dict(r=torch.randn(e, 3, generator=gen) * 2, idx_i=torch.randint(0, n, (e,), generator=gen),
               idx_j=torch.randint(0, n, (e,), generator=gen), x=torch.randn(n, 3 * f, generator=gen),
               mu=torch.randn(n, 3, f, generator=gen), weight=torch.randn(3 * f, k, generator=gen) / 5,
               bias=torch.randn(3 * f, generator=gen), basis_params=torch.stack([torch.linspace(0, 5, k), torch.full((k,), 0.26)]),
               basis="gaussian", cutoff="cosine", cutoff_params=[5.0])
    inp = {key: v.cuda() if torch.is_tensor(v) else v for key, v in inp.items()}
    want = _run(inp, "reference", True)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):
        got = _run(inp, "cuda", True)
    stream.synchronize()
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_cuda_graph_md_step_replays_on_new_positions_and_recaptures_on_overflow():
    from painnfx.model.cuda_graphs import GraphedEvaluator
    from painnfx.model.default import random_model
    from painnfx.model.properties import compute_properties
    from painnfx.rewriter import optimize

    model = random_model(0).double().cuda()
    for p in model.parameters():
        p.requires_grad_(False)
    fast = optimize(model)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    graphed = None
    for step in range(4):
        atoms.rattle(0.03, seed=step)
        if step == 2:
            atoms.set_cell(atoms.cell * 0.97, scale_atoms=True)  # denser: more edges than the capacity
        pos, numbers, nl, cell = system_tensors(atoms, model.cutoff)
        pos, cell = pos.cuda(), cell.cuda()
        ei, sh = nl.edge_index.cuda(), nl.shifts.cuda()
        if graphed is None:
            graphed = GraphedEvaluator(fast, numbers.cuda(), stress=True, headroom=1.02)
        got = graphed(pos, ei, sh, cell)
        want = compute_properties(fast, pos, numbers.cuda(), ei, sh, cell, stress=True)
        torch.testing.assert_close(got.forces, want.forces, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(got.stress, want.stress, rtol=1e-9, atol=1e-10)
    assert graphed.captures == 2  # the first capture and one after the overflow
