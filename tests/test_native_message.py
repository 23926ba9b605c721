"""The native twins of the fused message ops (``painnfx_native::prepare_edges``, ``painn_message``,
``painn_message_backward``: ops/cpu/native_ops.cpp, the joint graphs' CPU path) against the
reference ops, on hypothesis-drawn edge lists (no edges, isolated atoms, one atom, edges at
exactly the cutoff, tiny edges, mu = None, every basis and cutoff), float64 tight and float32
against float64; with and without weight gradients; bad values named; opcheck; gradcheck."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import env_skip
from painnfx.ops import dispatch, prepare_edges
from painnfx.ops.cpu import native
from painnfx.ops.radial import kernel_radial
from strategies import message_inputs

TOL = {torch.float64: 1e-10, torch.float32: 2e-4}
NS = torch.ops.painnfx_native if hasattr(torch.ops, "painnfx_native") else None


@pytest.fixture(autouse=True)
def _library():
    if not native.available():
        env_skip(f"the native ops cannot be built here: {native.info().get('error')}")


def _radial(inp, dtype):
    _, basis, cutoff, c0, c1 = kernel_radial("test", dtype, inp["basis"], inp["basis_params"], inp["cutoff"],
                                             inp["cutoff_params"])
    return basis, cutoff, c0, c1


def _reference(inp, gq, gmu, weight_grad):
    """Forward and backward of the reference op in float64."""
    c = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    n = c["x"].shape[0]
    edges = list(prepare_edges(c["r"], c["idx_i"], c["idx_j"], n))
    args = (c["r"], c["idx_i"], c["idx_j"], edges, c["x"], c["mu"], c["weight"], c["bias"], c["basis_params"],
            c["basis"], c["cutoff"], c["cutoff_params"])
    with dispatch.use_backend("reference"):
        out = torch.ops.painnfx.painn_message(*args)
        grads = torch.ops.painnfx.painn_message_backward(gq.double(), gmu.double(), *args, 0, weight_grad)
    return out, grads


def _close(got, want, dtype, what):
    if want.numel() == 0:
        assert got.numel() == 0, what
        return
    scale = max(1.0, float(want.abs().max()))
    err = float((got.double() - want).abs().max())
    assert err <= TOL[dtype] * scale, f"{what}: off by {err:.2e} (scale {scale:.2e})"


@settings(max_examples=40)
@given(inp=message_inputs(max_atoms=9, max_edges=60), dtype=st.sampled_from([torch.float64, torch.float32]),
       weight_grad=st.booleans())
def test_native_message_ops_equal_the_reference(inp, dtype, weight_grad):
    inp = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    n, f = inp["x"].shape[0], inp["x"].shape[1] // 3
    gen = torch.Generator().manual_seed(n * 31 + inp["r"].shape[0])
    gq = torch.randn(n, f, generator=gen, dtype=torch.float64).to(dtype)
    gmu = torch.randn(n, 3, f, generator=gen, dtype=torch.float64).to(dtype)
    (dq_ref, dmu_ref), grads_ref = _reference(inp, gq, gmu, weight_grad)

    edges = NS.prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n)
    for got, want in zip(edges, prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n)):
        assert torch.equal(got, want)  # the same stable orders
    radial = _radial(inp, dtype)
    tensors = (inp["r"], inp["idx_i"], inp["idx_j"], *edges, inp["x"], inp["mu"], inp["weight"], inp["bias"],
               inp["basis_params"])
    dq, dmu = NS.painn_message(*tensors, *radial)
    _close(dq, dq_ref, dtype, "dq")
    _close(dmu, dmu_ref, dtype, "dmu")
    grads = NS.painn_message_backward(gq, gmu, *tensors, *radial, weight_grad)
    for name, got, want in zip(("dL/dr", "dL/dx", "dL/dmu", "dL/dweight", "dL/dbias"), grads, grads_ref):
        if want is None or want.numel() == 0:  # not computed: an empty tensor
            assert got.numel() == 0, name
        else:
            _close(got, want, dtype, name)


@pytest.mark.parametrize("bad, message", [
    ("nan", "edge vectors r contain NaN or inf"),
    ("zero", "an edge has zero length"),
    ("index", "edge indices outside 0..2"),
])
def test_native_prepare_edges_names_bad_values(bad, message):
    r = torch.randn(4, 3, dtype=torch.float64)
    idx_i, idx_j = torch.tensor([0, 1, 2, 0]), torch.tensor([1, 2, 0, 2])
    if bad == "nan":
        r[2, 1] = float("nan")
    elif bad == "zero":
        r[1] = 0.0
    else:
        idx_j[3] = 3
    with pytest.raises(ValueError, match=message):
        NS.prepare_edges(r, idx_i, idx_j, 3)


def test_native_prepare_edges_refuses_a_negative_atom_count():
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="prepare_edges: n_atoms must be >= 0, got -1"):
        NS.prepare_edges(torch.zeros(0, 3), empty, empty, -1)


@settings(max_examples=3)
@given(inp=message_inputs(max_atoms=3, max_edges=4))
def test_native_message_refuses_mixed_dtypes(inp):
    n = inp["x"].shape[0]
    edges = NS.prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n)
    with pytest.raises(ValueError, match="painn_message: all tensors must be"):
        NS.painn_message(inp["r"], inp["idx_i"], inp["idx_j"], *edges, inp["x"], inp["mu"], inp["weight"].float(),
                         inp["bias"], inp["basis_params"], *_radial(inp, torch.float64))


def _opcheck(op, args):
    result = torch.library.opcheck(op, args, raise_exception=False)
    failed = {test: outcome for test, outcome in result.items() if outcome != "SUCCESS"}
    assert not failed, failed


@settings(max_examples=8)
@given(inp=message_inputs(max_atoms=5, max_edges=12), dtype=st.sampled_from([torch.float64, torch.float32]))
def test_opcheck_of_the_native_message_ops(inp, dtype):
    inp = {k: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    n, f = inp["x"].shape[0], inp["x"].shape[1] // 3
    _opcheck(NS.prepare_edges.default, (inp["r"], inp["idx_i"], inp["idx_j"], n))
    edges = NS.prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n)
    radial = _radial(inp, dtype)
    grad = lambda t: None if t is None else t.detach().clone().requires_grad_(True)  # noqa: E731
    tensors = (grad(inp["r"]), inp["idx_i"], inp["idx_j"], *edges, grad(inp["x"]), grad(inp["mu"]),
               grad(inp["weight"]), grad(inp["bias"]), inp["basis_params"])
    _opcheck(NS.painn_message.default, (*tensors, *radial))
    plain = [t.detach() if torch.is_tensor(t) else t for t in tensors]
    gq, gmu = torch.ones(n, f, dtype=dtype), torch.ones(n, 3, f, dtype=dtype)
    _opcheck(NS.painn_message_backward.default, (gq, gmu, *plain, *radial, True))


@settings(max_examples=3)
@given(inp=message_inputs(max_atoms=4, max_edges=8))
def test_native_message_differentiates_like_the_reference(inp):
    """The autograd formula registered for the native forward (its backward op) passes gradcheck."""
    n = inp["x"].shape[0]
    edges = NS.prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n)
    radial = _radial(inp, torch.float64)

    def f(r, x, weight, bias):
        dq, dmu = NS.painn_message(r, inp["idx_i"], inp["idx_j"], *edges, x, inp["mu"], weight, bias,
                                   inp["basis_params"], *radial)
        return dq, dmu

    leaves = [inp[k].detach().clone().requires_grad_(True) for k in ("r", "x", "weight", "bias")]
    torch.autograd.gradcheck(f, leaves)


@settings(max_examples=30)
@given(n=st.integers(0, 30), f=st.integers(1, 24), seed=st.integers(0, 2**16),
       dtype=st.sampled_from([torch.float64, torch.float32]), weight_grad=st.booleans(),
       scale=st.sampled_from([1.0, 0.0, 1e-20]))
def test_native_update_ops_equal_the_reference(n, f, seed, dtype, weight_grad, scale):
    """``painnfx_native::painn_update`` and its backward against the reference in float64: atom
    counts on both sides of the transposed-weight threshold (24), zero and tiny mu."""
    from strategies import update_inputs

    args = update_inputs(n, f, seed, scale=scale)
    gen = torch.Generator().manual_seed(seed + 1)
    gq, gmu = torch.randn(n, f, generator=gen, dtype=torch.float64), torch.randn(n, 3, f, generator=gen, dtype=torch.float64)
    with dispatch.use_backend("reference"):
        want = torch.ops.painnfx.painn_update(*args)
        want_grads = torch.ops.painnfx.painn_update_backward(gq, gmu, *args, weight_grad)
    cast = [a.to(dtype) if torch.is_tensor(a) else a for a in args]
    got = NS.painn_update(*cast)
    for name, g, w in zip(("q'", "mu'"), got, want):
        _close(g, w, dtype, name)
    grads = NS.painn_update_backward(gq.to(dtype), gmu.to(dtype), *cast, weight_grad)
    names = ("dL/dq", "dL/dmu", "dL/dU", "dL/dW1", "dL/db1", "dL/dW2", "dL/db2")
    for name, g, w in zip(names, grads, want_grads):
        if w is None or w.numel() == 0:
            assert g.numel() == 0, name
        else:
            _close(g, w, dtype, name)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_opcheck_and_gradcheck_of_the_native_update_ops(dtype):
    from strategies import update_inputs

    for n in (0, 3, 26):
        args = [a.to(dtype).requires_grad_() if torch.is_tensor(a) else a for a in update_inputs(n, 5, n)]
        _opcheck(NS.painn_update.default, tuple(args))
        plain = [a.detach() if torch.is_tensor(a) else a for a in args]
        g = (torch.ones(n, 5, dtype=dtype), torch.ones(n, 3, 5, dtype=dtype))
        for weight_grad in (True, False):
            _opcheck(NS.painn_update_backward.default, (*g, *plain, weight_grad))
    if dtype == torch.float64:
        args = [a.requires_grad_() if torch.is_tensor(a) else a for a in update_inputs(4, 3, 7)]
        torch.autograd.gradcheck(lambda *t: NS.painn_update(*t, args[-1]), tuple(args[:-1]))


@settings(max_examples=3)
@given(inp=message_inputs(max_atoms=4, max_edges=6))
def test_native_ops_refuse_wrong_shapes(inp):
    """A wrong call fails with the argument named, never reads out of bounds."""
    from strategies import update_inputs

    n = inp["x"].shape[0]
    edges = list(NS.prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], n))
    radial = _radial(inp, torch.float64)

    def message(**change):
        args = dict(r=inp["r"], idx_i=inp["idx_i"], idx_j=inp["idx_j"], dst_ptr=edges[0], dst_perm=edges[1],
                    src_ptr=edges[2], src_perm=edges[3], x=inp["x"], mu=inp["mu"], weight=inp["weight"],
                    bias=inp["bias"], basis_params=inp["basis_params"])
        args.update(change)
        return NS.painn_message(*args.values(), *radial)

    with pytest.raises(ValueError, match="painn_message: dst_ptr must be an int64 CPU tensor of shape"):
        message(dst_ptr=edges[0][:-1])
    with pytest.raises(ValueError, match="painn_message: weight must have shape"):
        message(weight=inp["weight"][:, :-1])
    with pytest.raises(ValueError, match="painn_message: idx_j must be an int64"):
        message(idx_j=inp["idx_j"].int())
    q, mu, *weights, eps = update_inputs(3, 4, 0)
    with pytest.raises(ValueError, match="painn_update: w1 must have shape"):
        NS.painn_update(q, mu, weights[0], weights[1][:, :-1], *weights[2:], eps)
    with pytest.raises(ValueError, match="painn_update_backward: grad_1 must have shape"):
        NS.painn_update_backward(q, mu[:2], q, mu, *weights, eps, False)
