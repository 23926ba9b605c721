"""painn_update (PaiNN's update block) against autograd of the model's own spelling, on each CPU
backend (the backend asserted), with hypothesis drawing atoms, features and inputs."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from painnfx.ops import dispatch, painn_update
from painnfx.ops.update import painn_update_unfused
from painnfx.ops.update import UPDATE
from strategies import update_inputs

pytestmark = pytest.mark.usefixtures("each_backend")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=2e-4, atol=2e-5)}


def _value_and_grads(fn, args, dtype, weights: bool = True):
    tensors = [a.to(dtype).detach().requires_grad_(k < 2 or weights) for k, a in enumerate(args[:7])]
    out = fn(*tensors, args[7])
    gen = torch.Generator().manual_seed(1)
    g = [torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype) for o in out]
    wrt = [t for t in tensors if t.requires_grad]
    grads = torch.autograd.grad(out, wrt, g, allow_unused=True) if out[0].numel() else [torch.zeros_like(t) for t in wrt]
    return [o.detach() for o in out], grads


def _assert_like_autograd(args, dtype, weights=True):
    with dispatch.record_calls() as calls:
        a, ga = _value_and_grads(painn_update, args, dtype, weights)
    # the oracle: float64 autograd of the plain expression on the same (rounded) inputs
    b, gb = _value_and_grads(painn_update_unfused, [x.to(dtype).double() if torch.is_tensor(x) else x for x in args],
                             torch.float64, weights)
    for p, q in zip([*a, *ga], [*b, *gb]):
        # absolute error relative to the tensor's scale: a weight gradient sums over all atoms
        scale = max(1.0, float(q.abs().max())) if q.numel() else 1.0
        torch.testing.assert_close(p.double(), q, rtol=TOL[dtype]["rtol"], atol=TOL[dtype]["atol"] * scale)
    return calls


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 19), f=st.integers(1, 40), seed=st.integers(0, 2**16), scale=st.sampled_from([0.0, 1e-3, 1.0]),
       weights=st.booleans())
def test_matches_autograd(each_backend, dtype, n, f, seed, scale, weights):
    """Any atom count (tiles of 8 and their tails, none), feature counts across register blocks,
    zero and tiny vector features (|V| = sqrt(eps): the first layer's mu is zero), with and
    without the weight gradients."""
    calls = _assert_like_autograd(update_inputs(n, f, seed, scale), dtype, weights)
    assert calls[("painn_update", each_backend)] == 1
    assert calls[("painn_update_backward", each_backend)] == (n > 0)  # no atoms: nothing to differentiate


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_model_sized_layer(each_backend, dtype):
    """F = 128 (the default model), 45 atoms: every column block whole."""
    calls = _assert_like_autograd(update_inputs(45, 128, 3), dtype)
    assert calls[("painn_update", each_backend)] == 1


def test_double_backward_is_differentiable(each_backend):
    """Force training: the backward is differentiated again (the reference formula)."""
    args = update_inputs(4, 5, 7)
    tensors = [a.detach().requires_grad_(True) for a in args[:7]]
    assert torch.autograd.gradgradcheck(lambda *t: UPDATE.call(*t, args[7]), tensors)


def test_bad_inputs_are_named(each_backend):
    q, mu, u, w1, b1, w2, b2, eps = update_inputs(3, 4, 0)
    with pytest.raises(ValueError, match="mu must have shape"):
        painn_update(q, mu[:, :2], u, w1, b1, w2, b2, eps)
    with pytest.raises(ValueError, match="w2 must have shape"):
        painn_update(q, mu, u, w1, b1, w2.t(), b2, eps)
    with pytest.raises(ValueError, match="mix_weight has dtype"):
        painn_update(q, mu, u.float(), w1, b1, w2, b2, eps)
    with pytest.raises(ValueError, match="q must be a floating tensor"):
        painn_update(q[0], mu, u, w1, b1, w2, b2, eps)


def test_weight_gradients_only_when_the_backward_uses_them(each_backend, monkeypatch):
    """Forces of a model with trainable weights (autograd.grad to the inputs only) skip the weight
    gradients, as autograd prunes the plain model's; a backward that reaches the weights gets them."""
    seen = []
    impl = dispatch._IMPLS[("painn_update_backward", each_backend)]
    monkeypatch.setitem(dispatch._IMPLS, ("painn_update_backward", each_backend),
                        lambda *a: seen.append(a[-1]) or impl(*a))
    args = update_inputs(6, 8, 11)
    tensors = [a.detach().requires_grad_(True) for a in args[:7]]
    out = UPDATE.call(*tensors, args[7])
    torch.autograd.grad(out[0].sum() + out[1].sum(), tensors[:2], retain_graph=True)
    (out[0].sum() + out[1].sum()).backward()
    assert seen == [False, True]
    ref = [t.detach().requires_grad_(True) for t in tensors]
    want = torch.autograd.grad([o.sum() for o in painn_update_unfused(*ref, args[7])], ref)
    for t, w in zip(tensors, want):
        torch.testing.assert_close(t.grad if t.grad is not None else torch.zeros_like(t), w, rtol=1e-10, atol=1e-10)
