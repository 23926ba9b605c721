"""radial_filter against autograd of (phi(d) Wf^T + bf) * fc(d)."""

import pytest
import torch

pytestmark = pytest.mark.usefixtures("each_backend")
from hypothesis import given
from hypothesis import strategies as st

from painnfx.ops import dispatch, radial_filter
from painnfx.ops.unfused import radial_filter_unfused
from strategies import message_inputs


def _args(inp, out_dim):
    d = inp["r"].norm(dim=1)
    gen = torch.Generator().manual_seed(out_dim)
    k = inp["basis_params"].shape[1]
    w = torch.randn(out_dim, k, generator=gen, dtype=torch.float64).to(d.dtype)
    b = torch.randn(out_dim, generator=gen, dtype=torch.float64).to(d.dtype)
    return [d, w, b, inp["basis_params"], inp["basis"], inp["cutoff"], inp["cutoff_params"]]


def _value_and_grads(fn, args):
    leaves = [a.detach().clone().requires_grad_(True) for a in args[:3]]
    out = fn(*leaves, *args[3:])
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(out.dtype)
    grads = torch.autograd.grad((out * g).sum(), leaves) if out.numel() else [torch.zeros_like(l) for l in leaves]
    return out, grads


# float64: the absolute floor covers autograd's own cancellation in d/dd sin(f d)/d at
# d ~ 1e-3 (about eps * f / d); the fused op uses a series there and is the more accurate.
@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=1e-10, atol=1e-10)), (torch.float32, dict(rtol=2e-4, atol=2e-5))])
@given(inp=message_inputs(), out_dim=st.integers(1, 9))
def test_matches_autograd(inp, out_dim, dtype, tol):
    args = _args(inp, out_dim)
    args = [a.to(dtype) if torch.is_tensor(a) else a for a in args]
    a, ga = _value_and_grads(radial_filter, args)
    # the oracle is float64 autograd on the same (rounded) inputs: the truth the op approximates
    b, gb = _value_and_grads(radial_filter_unfused, [a_.double() if torch.is_tensor(a_) else a_ for a_ in args])
    torch.testing.assert_close(a.double(), b, **tol)
    for p, q in zip(ga, gb):
        torch.testing.assert_close(p.double(), q, **tol)


@pytest.mark.parametrize("dtype, tol", [(torch.float64, dict(rtol=1e-10, atol=1e-10)), (torch.float32, dict(rtol=2e-4, atol=2e-5))])
@pytest.mark.parametrize("out_dim", [48, 53])
def test_many_edges_and_column_tails(each_backend, dtype, tol, out_dim):
    """More edges than one tile of the C++ kernels (8), a third of them beyond the cutoff (so
    tiles are gathered across skipped edges), and C not a multiple of a register block (16
    floats, 8 doubles): every tile and column path against autograd, on the backend asked for."""
    gen = torch.Generator().manual_seed(out_dim)
    d = torch.rand(70, generator=gen, dtype=torch.float64) * 6.0
    k = 7
    w = torch.randn(out_dim, k, generator=gen, dtype=torch.float64) / k ** 0.5
    b = torch.randn(out_dim, generator=gen, dtype=torch.float64)
    params = torch.stack([torch.linspace(0, 4, k), torch.full((k,), 0.6)]).double()
    args = [d.to(dtype), w.to(dtype), b.to(dtype), params, "gaussian", "cosine", [4.0]]
    with dispatch.record_calls() as calls:
        a, ga = _value_and_grads(radial_filter, args)
    assert {op: backend for (op, backend), n in calls.items() if n} == {
        "radial_filter": each_backend, "radial_filter_backward": each_backend}
    exp, gexp = _value_and_grads(radial_filter_unfused, [a_.double() if torch.is_tensor(a_) else a_ for a_ in args])
    assert (a[d >= 4.0] == 0).all() and (a[d < 3.9].abs() > 0).any()
    torch.testing.assert_close(a.double(), exp, **tol)
    for p, q in zip(ga, gexp):
        torch.testing.assert_close(p.double(), q, **tol)


def test_gradcheck_gradgradcheck():
    gen = torch.Generator().manual_seed(0)
    d = (torch.rand(12, generator=gen, dtype=torch.float64) * 2.8 + 0.1).requires_grad_(True)
    w = torch.randn(5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(5, generator=gen, dtype=torch.float64, requires_grad=True)
    for basis, params in [("gaussian", torch.stack([torch.linspace(0, 3, 4), torch.ones(4)]).double()),
                          ("bessel", (torch.arange(1, 5) * torch.pi / 3.0)[None].double())]:
        f = lambda d, w, b: radial_filter(d, w, b, params, basis, "cosine", [3.0])
        assert torch.autograd.gradcheck(f, (d, w, b))
        assert torch.autograd.gradgradcheck(f, (d, w, b))


def test_bessel_at_zero_distance_is_finite():
    params = (torch.arange(1, 4) * torch.pi / 3.0)[None].double()
    d = torch.tensor([0.0, 1.0], dtype=torch.float64)
    out = radial_filter(d, torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), params, "bessel", "cosine", [3.0])
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, radial_filter_unfused(d, torch.ones(2, 3, dtype=torch.float64), torch.zeros(2, dtype=torch.float64), params, "bessel", "cosine", [3.0]))


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(d=torch.ones(3, 1, dtype=torch.float64)), r"distances must be a floating tensor of shape \(E,\)"),
        (dict(w=torch.ones(2, 5, dtype=torch.float64)), "weight must have shape"),
        (dict(b=torch.ones(3, dtype=torch.float64)), "bias must have shape"),
        (dict(d=torch.tensor([1.0, float("nan")], dtype=torch.float64)), "NaN"),
        (dict(w=torch.ones(2, 3)), "weight has dtype torch.float32"),
    ],
)
def test_bad_inputs(change, match):
    args = dict(d=torch.ones(2, dtype=torch.float64), w=torch.ones(2, 3, dtype=torch.float64), b=torch.ones(2, dtype=torch.float64))
    args.update(change)
    params = torch.stack([torch.linspace(0, 3, 3), torch.ones(3)]).double()
    with pytest.raises(ValueError, match=match):
        radial_filter(args["d"], args["w"], args["b"], params, "gaussian", "cosine", [3.0])
