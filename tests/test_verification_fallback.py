"""A deliberately wrong kernel: in strict mode (the suite's) optimize() raises a distinct error
naming the rewrite and the error it measured; for a user it falls back to the plain graph with
one warning, and the numbers stay right."""

import warnings

import pytest
import torch
from ase.build import molecule

from helpers import assert_kernels, evaluate, perturbed_model
from painnfx.ops import dispatch, reference
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from painnfx.rewriter.verify import VerificationError, VerificationWarning

CONFIG = dict(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=7)


@pytest.fixture
def wrong_kernel():
    """A CPU backend whose message forward is 0.1% off (the backward is right)."""
    def forward(*args):
        dq, dmu = reference.message_forward(*args)
        return dq * 1.001, dmu

    dispatch.register_backend("wrong", {"cpu"}, priority=-1)
    dispatch.implement("painn_message", "wrong", forward)
    dispatch.implement("painn_message_backward", "wrong", reference.message_backward)
    yield "wrong"
    dispatch.remove_backend("wrong")


def test_strict_mode_raises_naming_the_rewrite_and_its_error(wrong_kernel):
    model = perturbed_model(CONFIG)
    with pytest.raises(VerificationError, match=r"verification of fused_painn_message at \w+ failed: "
                                                r"relative error \S+ > 1e-09 on probe system 0") as info:
        optimize(model, backend=wrong_kernel, strict=True)
    assert info.value.rewrite.startswith("fused_painn_message at ")


def test_outside_strict_mode_one_warning_the_plain_path_and_correct_numbers(wrong_kernel):
    model = perturbed_model(CONFIG)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fast = optimize(model, backend=wrong_kernel, strict=False)
    ours = [w for w in caught if issubclass(w.category, UserWarning) and "painnfx" in str(w.message)]
    assert len(ours) == 1 and issubclass(ours[0].category, VerificationWarning), [str(w.message) for w in ours]
    assert "2 rewrite(s) of PaiNN failed verification" in str(ours[0].message)
    # the messages stay on the plain graph; the radial filter (verified on the C++ kernels, which the
    # forced backend leaves it to) is still fused
    assert "those parts run unfused" in str(ours[0].message)
    assert "fused_painn_message" not in fast.report.graph_after and "fused_radial_filter" in fast.report.graph_after
    atoms = molecule("CH3CH2OH")
    with record_calls() as calls:
        got = evaluate(fast, atoms)
    assert_kernels(calls, wrong_kernel, 0)  # the wrong kernel never runs: the plain graph does
    want = evaluate(model, atoms)
    torch.testing.assert_close(got.energy, want.energy, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got.forces, want.forces, rtol=1e-12, atol=1e-12)
