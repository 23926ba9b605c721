"""Every pattern matches its own spellings and rejects near-misses; verification rejects a
deliberately wrong rewrite; a model with nothing to match still works."""

import pytest
import torch
from ase.build import molecule

from helpers import corrupt_replacements, evaluate
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.rewriter import optimize
from painnfx.rewriter.verify import VerificationError, VerificationWarning
from spelled import NEAR_MISSES, SPELLINGS, SpelledPaiNN

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

BASE = PaiNN(PaiNNConfig(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=11)).double()
with torch.no_grad():
    for p in BASE.parameters():
        p.add_(0.05 * torch.randn(p.shape, generator=torch.Generator().manual_seed(0), dtype=p.dtype))
ATOMS = molecule("CH3CH2OH")


def _matched(report, kind):
    return [m for p in report.passes for m in p.matches if m.get("kind") == kind]


@pytest.mark.parametrize("concept, spelling", [(c, s) for c, ss in SPELLINGS.items() for s in ss])
def test_each_spelling_is_fused(concept, spelling):
    model = SpelledPaiNN(BASE, **{concept: spelling})
    fast = optimize(model)
    assert fast.applied, fast.report.to_text()
    assert len(_matched(fast.report, "fused_painn_message")) == 2, fast.report.to_text()
    ref = evaluate(BASE, ATOMS)
    for m in (model, fast):
        out = evaluate(m, ATOMS)
        torch.testing.assert_close(out.energy, ref.energy, rtol=1e-11, atol=1e-11)
        torch.testing.assert_close(out.forces, ref.forces, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("miss", NEAR_MISSES)
def test_near_misses_are_not_fused_and_still_run(miss):
    model = SpelledPaiNN(BASE, near_miss=miss)
    fast = optimize(model)
    assert not _matched(fast.report, "fused_painn_message"), fast.report.to_text()
    assert not _matched(fast.report, "radial_filter")
    a, b = evaluate(fast, ATOMS), evaluate(model, ATOMS)
    # (the update blocks are no near miss: fused, they round differently from eager)
    torch.testing.assert_close(a.energy, b.energy, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(a.forces, b.forces, rtol=1e-10, atol=1e-11)


def test_near_miss_constants_are_reported():
    fast = optimize(SpelledPaiNN(BASE, near_miss="cutoff_wrong_period"))
    rejected = [r for p in fast.report.passes for r in p.rejected]
    assert any("cosine cutoff shape" in r and "do not describe 0.5 (cos(pi d / rc) + 1)" in r for r in rejected), rejected
    fast = optimize(SpelledPaiNN(BASE, near_miss="gaussian_positive_exponent"))
    rejected = [r for p in fast.report.passes for r in p.rejected]
    assert any("gaussian RBF shape" in r and "do not describe exp(" in r for r in rejected), rejected


def test_reads_constants_out_of_the_match():
    fast = optimize(BASE)
    (rbf,) = _matched(fast.report, "gaussian_rbf")
    assert rbf["K"] == 5 and rbf["offsets"].startswith("[0, 0.75, 1.5")
    (cut,) = _matched(fast.report, "cosine_cutoff")
    assert cut["rc"] == 3.0
    layers = [m["layer_rows"] for m in _matched(fast.report, "fused_painn_message")]
    assert layers == ["0:24", "24:48"]
    assert "folded" in _matched(fast.report, "fused_painn_message")[0]["mu"]


def test_verification_rejects_a_wrong_rewrite(monkeypatch):
    corrupt_replacements(monkeypatch, lambda outs: [o * (1 + 1e-6) for o in outs])
    with pytest.warns(VerificationWarning, match="failed verification"):
        fast = optimize(BASE, strict=False)
    assert not fast.applied
    rejected = [r for p in fast.report.passes for r in p.rejected]
    assert any("verification failed" in r for r in rejected), rejected
    a, b = evaluate(fast, ATOMS), evaluate(BASE, ATOMS)
    torch.testing.assert_close(a.energy, b.energy)


def test_verification_rejects_a_wrong_backward_only(monkeypatch):
    """Outputs right, gradient wrong: the VJP comparison must catch it."""
    class WrongGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, g):
            return 1.01 * g

    corrupt_replacements(monkeypatch, lambda outs: [WrongGrad.apply(o) for o in outs])
    with pytest.warns(VerificationWarning):
        fast = optimize(BASE, strict=False)
    assert not fast.applied
    with pytest.raises(VerificationError, match=r"verification of radial filter at \w+ failed: relative error"):
        optimize(BASE, strict=True)


class NoPaiNN(torch.nn.Module):
    """An energy model with nothing PaiNN-like in it."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(10, 4).double()
        self.lin = torch.nn.Linear(4, 1).double()
        self.cutoff = 3.0

    def forward(self, positions, numbers, edge_index, shifts):
        r = positions[edge_index[1]] - positions[edge_index[0]] + shifts
        pair = torch.exp(-(r**2).sum(-1))
        e = self.lin(self.emb(numbers)).squeeze(-1) + torch.zeros_like(numbers, dtype=r.dtype).index_add(0, edge_index[0], pair)
        return e.sum()[None]


def test_nothing_matched_returns_a_working_model():
    model = NoPaiNN()
    with pytest.warns(UserWarning, match="nothing was rewritten"):
        fast = optimize(model)
    assert not fast.applied and "nothing matched" in fast.report.summary()
    atoms = molecule("H2O")
    torch.testing.assert_close(evaluate(fast, atoms).forces, evaluate(model, atoms).forces)
