"""painn_message (forward and analytical backward) against autograd of the unfused expression."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("each_backend")
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.ops import InputError, painn_message, prepare_edges
from painnfx.ops.unfused import painn_message_unfused
from strategies import message_inputs

ORDER = ["r", "idx_i", "idx_j", "x", "mu", "weight", "bias", "basis_params", "basis", "cutoff", "cutoff_params"]
DIFF = ["r", "x", "mu", "weight", "bias"]
#: float32 tolerances against float64 autograd on the same inputs (documented in docs/ops.md)
F32 = dict(rtol=1e-4, atol=1e-5)


def fused(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params, chunk_size=0):
    """painn_message with its prepared edges, in the unfused expression's argument order."""
    edges = list(prepare_edges(r, idx_i, idx_j, x.shape[0]))
    return painn_message(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params,
                         chunk_size)


def _call(fn, inp, **extra):
    return fn(*[inp[k] for k in ORDER], **extra)


def _leaves(inp):
    inp = dict(inp)
    for k in DIFF:
        if inp[k] is not None:
            inp[k] = inp[k].detach().clone().requires_grad_(True)
    return inp


def _value_and_grads(fn, inp, seed=0, **extra):
    inp = _leaves(inp)
    dq, dmu = _call(fn, inp, **extra)
    gen = torch.Generator().manual_seed(seed)
    gq = torch.randn(dq.shape, generator=gen, dtype=torch.float64).to(dq.dtype)
    gmu = torch.randn(dmu.shape, generator=gen, dtype=torch.float64).to(dmu.dtype)
    loss = (dq * gq).sum() + (dmu * gmu).sum()
    leaves = [inp[k] for k in DIFF if inp[k] is not None]
    grads = torch.autograd.grad(loss, leaves, allow_unused=True) if loss.requires_grad else [None] * len(leaves)
    grads = [torch.zeros_like(l) if g is None else g for g, l in zip(grads, leaves)]
    return (dq, dmu), grads


def _compare(inp, tol, **extra):
    """Fused op in the inputs' dtype against float64 autograd of the unfused expression on the
    same (possibly float32-rounded) inputs."""
    (a, ga) = _value_and_grads(fused, inp, **extra)
    as64 = {k: (v.double() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in inp.items()}
    (b, gb) = _value_and_grads(painn_message_unfused, as64)
    for p, q in zip(a, b):
        torch.testing.assert_close(p.double(), q, **tol)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p.double(), q, **tol)


@given(message_inputs(), st.sampled_from([0, 1, 3]))
def test_matches_autograd_float64(inp, chunk):
    _compare(inp, dict(rtol=1e-10, atol=1e-11), chunk_size=chunk)


@given(message_inputs(dtype=torch.float32))
def test_matches_autograd_float32(inp):
    _compare(inp, F32)


@settings(max_examples=8)
@given(message_inputs(max_atoms=4, max_edges=8))
def test_gradcheck_and_gradgradcheck(inp):
    # fc'' jumps at rc (0.5 (pi/rc)^2 inside, 0 outside), so a central difference that
    # straddles rc sees half the one-sided value: keep edges off the cutoff sphere here.
    d = inp["r"].norm(dim=1)
    near = (d - inp["cutoff_params"][0]).abs() < 1e-3
    inp["r"] = torch.where(near[:, None], inp["r"] * 0.9, inp["r"])
    inp = _leaves(inp)
    names = [k for k in DIFF if inp[k] is not None]

    def f(*tensors):
        args = dict(inp, **dict(zip(names, tensors)))
        return _call(fused, args, chunk_size=3)

    tensors = tuple(inp[k] for k in names)
    assert torch.autograd.gradcheck(f, tensors)
    assert torch.autograd.gradgradcheck(f, tensors)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=1e-10, atol=1e-10)), (torch.float32, F32)])
@pytest.mark.parametrize("f", [40, 43])
def test_many_edges_per_atom_and_feature_tails(each_backend, dtype, tol, f):
    """More edges per atom than one tile of the C++ kernels (8) and 3F not a multiple of a
    register block (16 floats, 8 doubles): every tile and column path against autograd."""
    gen = torch.Generator().manual_seed(f)
    n, e, k = 5, 120, 7
    inp = dict(r=torch.randn(e, 3, generator=gen, dtype=torch.float64) * 1.5,
               idx_i=torch.randint(0, n, (e,), generator=gen), idx_j=torch.randint(0, n, (e,), generator=gen),
               x=torch.randn(n, 3 * f, generator=gen, dtype=torch.float64),
               mu=torch.randn(n, 3, f, generator=gen, dtype=torch.float64),
               weight=torch.randn(3 * f, k, generator=gen, dtype=torch.float64) / k ** 0.5,
               bias=torch.randn(3 * f, generator=gen, dtype=torch.float64),
               basis_params=torch.stack([torch.linspace(0, 4, k), torch.full((k,), 0.6)]).double(),
               basis="gaussian", cutoff="cosine", cutoff_params=[4.0])
    inp = {key: (v.to(dtype) if torch.is_tensor(v) and v.is_floating_point() else v) for key, v in inp.items()}
    _compare(inp, tol)


def test_double_backward_matches_unfused():
    """Force-training style: d/dweight of |dE/dr|^2, fused vs unfused."""
    gen = torch.Generator().manual_seed(0)
    n, e, f, k = 5, 25, 3, 4
    inp = dict(
        r=torch.randn(e, 3, generator=gen, dtype=torch.float64), idx_i=torch.randint(0, n, (e,), generator=gen),
        idx_j=torch.randint(0, n, (e,), generator=gen), x=torch.randn(n, 3 * f, generator=gen, dtype=torch.float64),
        mu=torch.randn(n, 3, f, generator=gen, dtype=torch.float64), weight=torch.randn(3 * f, k, generator=gen, dtype=torch.float64),
        bias=torch.randn(3 * f, generator=gen, dtype=torch.float64), basis="gaussian", cutoff="cosine",
        cutoff_params=[3.0], basis_params=torch.stack([torch.linspace(0, 3, k), torch.full((k,), 1.0)]).double(),
    )
    results = []
    for fn in (fused, painn_message_unfused):
        leaves = _leaves(inp)
        dq, dmu = _call(fn, leaves)
        energy = dq.pow(2).sum() + dmu.pow(2).sum()
        (gr,) = torch.autograd.grad(energy, [leaves["r"]], create_graph=True)
        results.append(torch.autograd.grad(gr.pow(2).sum(), [leaves["weight"], leaves["x"]]))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-11)


def test_no_edges_gives_zeros_and_zero_grads():
    x = torch.randn(3, 6, dtype=torch.float64, requires_grad=True)
    r = torch.zeros(0, 3, dtype=torch.float64, requires_grad=True)
    idx = torch.zeros(0, dtype=torch.long)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(6, dtype=torch.float64)
    params = torch.stack([torch.linspace(0, 2, 4), torch.ones(4)]).double()
    dq, dmu = fused(r, idx, idx, x, None, w, b, params, "gaussian", "cosine", [2.0])
    assert dq.shape == (3, 2) and dmu.shape == (3, 3, 2)
    assert not dq.any() and not dmu.any()
    gr, gx, gw = torch.autograd.grad(dq.sum() + dmu.sum(), [r, x, w])
    assert gr.shape == (0, 3) and not gx.any() and not gw.any()


def test_edges_beyond_cutoff_contribute_nothing():
    inp = dict(
        r=torch.tensor([[3.0, 0, 0], [0, 0, 2.0000001]], dtype=torch.float64), idx_i=torch.tensor([0, 1]),
        idx_j=torch.tensor([1, 0]), x=torch.randn(2, 6, dtype=torch.float64), mu=torch.randn(2, 3, 2, dtype=torch.float64),
        weight=torch.randn(6, 3, dtype=torch.float64), bias=torch.randn(6, dtype=torch.float64),
        basis_params=torch.stack([torch.linspace(0, 2, 3), torch.ones(3)]).double(), basis="gaussian",
        cutoff="cosine", cutoff_params=[2.0],
    )
    (dq, dmu), grads = _value_and_grads(fused, inp)
    assert not dq.any() and not dmu.any()
    assert all(not g.any() for g in grads)


BAD = [
    (lambda a: a.update(r=a["r"][:, :2]), r"r must have shape \(E, 3\)"),
    (lambda a: a.update(idx_i=a["idx_i"].int()), "idx_i must be int64"),
    (lambda a: a.update(idx_j=a["idx_j"][:-1]), "idx_j must be int64 of shape"),
    (lambda a: a.update(x=a["x"][:, :5]), r"x must have shape \(N, 3F\)"),
    (lambda a: a.update(mu=a["mu"][:, :2]), "mu must have shape"),
    (lambda a: a.update(weight=a["weight"][:, :2]), "weight must have shape"),
    (lambda a: a.update(bias=a["bias"][:3]), "bias must have shape"),
    (lambda a: a.update(x=a["x"].float()), "x has dtype torch.float32 but r has torch.float64"),
    (lambda a: a.update(basis="chebyshev"), "unknown radial basis"),
    (lambda a: a.update(cutoff="polynomial"), "unknown cutoff function"),
    (lambda a: a.update(basis_params=a["basis_params"][:1]), "basis_params for 'gaussian'"),
    (lambda a: a.update(cutoff_params=[-1.0]), "cutoff radius must be positive"),
    (lambda a: a.update(cutoff_params=[2.0, 0.1]), "cutoff 'cosine' takes 1 parameters"),
    (lambda a: a["r"].__setitem__((0, 0), float("nan")), "NaN or inf"),
    (lambda a: a["r"].__setitem__(0, 0.0), "zero length"),
    (lambda a: a.update(idx_j=a["idx_j"] + 10), "outside"),
]


def _small_inputs(n: int = 4, e: int = 6, f: int = 2, k: int = 3) -> dict:
    return dict(
        r=torch.randn(e, 3, dtype=torch.float64), idx_i=torch.randint(0, n, (e,)), idx_j=torch.randint(0, n, (e,)),
        x=torch.randn(n, 3 * f, dtype=torch.float64), mu=torch.randn(n, 3, f, dtype=torch.float64),
        weight=torch.randn(3 * f, k, dtype=torch.float64), bias=torch.randn(3 * f, dtype=torch.float64),
        basis_params=torch.stack([torch.linspace(0, 2, k), torch.ones(k)]).double(), basis="gaussian",
        cutoff="cosine", cutoff_params=[2.0],
    )


@pytest.mark.parametrize("corrupt, match", BAD)
def test_bad_inputs_raise_clear_errors(corrupt, match):
    inp = _small_inputs()
    corrupt(inp)
    with pytest.raises(ValueError, match=match):
        _call(fused, inp)


@pytest.mark.parametrize("corrupt, match", BAD[:3] + BAD[7:8] + BAD[9:10])
def test_eager_calls_raise_input_errors(corrupt, match):
    """What the rewritten graph calls (``FusedOp.call``, eagerly): the same checks, as ``InputError``
    on every backend (the C++ kernels' own checks, translated)."""
    from painnfx.ops.message import message

    inp = _small_inputs()
    edges = list(prepare_edges(inp["r"], inp["idx_i"], inp["idx_j"], inp["x"].shape[0]))
    corrupt(inp)
    with pytest.raises(InputError, match=match):
        message(*[inp[k] for k in ORDER[:3]], edges, *[inp[k] for k in ORDER[3:]])


def test_prepare_edges_refuses_a_negative_atom_count():
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(ValueError, match="n_atoms must be >= 0, got -1"):
        prepare_edges(torch.zeros(0, 3), empty, empty, -1)


def test_edge_plan_of_another_edge_list_is_refused():
    n, e = 4, 6
    r = torch.randn(e, 3, dtype=torch.float64)
    idx = torch.randint(0, n, (e,))
    other = list(prepare_edges(r[:-1], idx[:-1], idx[:-1], n))
    x, w = torch.randn(n, 6, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64)
    params = torch.stack([torch.linspace(0, 2, 3), torch.ones(3)]).double()
    with pytest.raises(ValueError, match="edges.dst_perm must be int64 of shape"):
        painn_message(r, idx, idx, other, x, None, w, w[:, 0], params, "gaussian", "cosine", [2.0])


def test_prepared_edges_are_sorted_csr_and_csc():
    gen = torch.Generator().manual_seed(3)
    n, e = 6, 40
    idx_i, idx_j = torch.randint(0, n - 1, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    r = torch.randn(e, 3, generator=gen, dtype=torch.float64)
    dst_ptr, dst_perm, src_ptr, src_perm, reverse = prepare_edges(r, idx_i, idx_j, n)
    assert reverse.tolist() == [-1] * e  # random vectors: no edge has a reverse
    for ptr, perm, idx, other in ((dst_ptr, dst_perm, idx_i, idx_j), (src_ptr, src_perm, idx_j, idx_i)):
        assert sorted(perm.tolist()) == list(range(e))
        # by atom, then the other atom, then edge index
        assert list(zip(idx[perm].tolist(), other[perm].tolist(), perm.tolist())) == sorted(
            zip(idx.tolist(), other.tolist(), range(e)))
        for a in range(n):
            assert (idx[perm[ptr[a]:ptr[a + 1]]] == a).all() and int(ptr[a + 1] - ptr[a]) == int((idx == a).sum())
    # the per-layer ops read no values: a device->host sync happens only in prepare_edges
    assert prepare_edges(torch.zeros(0, 3), idx_i[:0], idx_j[:0], n)[0].tolist() == [0] * (n + 1)


@given(message_inputs())
def test_the_eager_path_equals_the_library_op(inp):
    """``ops.message.message`` (the eager path an optimized model takes) and the torch.library op:
    same values and gradients."""
    from painnfx.ops.edges import prepare
    from painnfx.ops.message import message

    def eager(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params, chunk_size=0):
        edges = prepare(r, idx_i, idx_j, x.shape[0])
        return message(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params)

    (a, ga), (b, gb) = _value_and_grads(eager, inp), _value_and_grads(fused, inp)
    for p, q in zip(list(a) + list(ga), list(b) + list(gb)):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
