"""The pattern language (typed bindings, schema-normalised arity, users counts, backtracking,
failure reasons), end-to-end verification, strict mode and refusing non-energy models."""

import pytest
import torch
import torch.fx as fx
from ase.build import molecule

import importlib
from helpers import corrupt_replacements, evaluate
from painnfx.model.painn import PaiNN, PaiNNConfig
from painnfx.rewriter import NotAnEnergyModel, optimize
from painnfx.rewriter.pattern import MatchContext, Var, add, any_of, exp, find_all, match_at, mul
from painnfx.rewriter.verify import VerificationError, VerificationWarning
from spelled import SpelledPaiNN

aten = torch.ops.aten
BASE = PaiNN(PaiNNConfig(n_atom_basis=8, n_interactions=2, n_rbf=5, cutoff=3.0, seed=11)).double()
optimize_module = importlib.import_module("painnfx.rewriter.optimize")


def _graph(build):
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.placeholder("y")
    out = build(g, x, y)
    g.output(out)
    return g, out


def test_alternatives_backtrack():
    # mul(exp(x), x): the first alternative binds u = exp(x) and then fails on the second
    # argument; only backtracking into the second alternative (u = x) finds the match
    g, root = _graph(lambda g, x, y: g.call_function(aten.mul.Tensor, (g.call_function(aten.exp.default, (x,)), x)))
    pattern = mul(any_of(Var("u"), exp(Var("u"))), Var("u"))
    m, _, _ = match_at(root, pattern, MatchContext({}))
    assert m is not None and m.node("u").name == "x"
    # and commutative operators try the other argument order: mul(x, exp(x)) matches too
    g, root = _graph(lambda g, x, y: g.call_function(aten.mul.Tensor, (x, g.call_function(aten.exp.default, (x,)))))
    assert match_at(root, mul(exp(Var("u")), Var("u")), MatchContext({}))[0] is not None


def test_arguments_are_normalised_against_the_schema_and_arity_is_exact():
    pattern = add(Var("a"), Var("b"))
    g, root = _graph(lambda g, x, y: g.call_function(aten.add.Tensor, (x, y), {"alpha": 1}))
    assert match_at(root, pattern, MatchContext({}))[0] is not None  # alpha=1 is the default
    g, root = _graph(lambda g, x, y: g.call_function(aten.add.Tensor, (x, y), {"alpha": 2}))
    m, reason, _ = match_at(root, pattern, MatchContext({}))
    assert m is None and "not its default" in reason


def test_users_count_and_typed_bindings():
    def build(g, x, y):
        e = g.call_function(aten.exp.default, (x,))
        g.call_function(aten.sin.default, (e,))  # a second reader of e
        return g.call_function(aten.mul.Tensor, (e, y))

    g, root = _graph(build)
    m, reason, _ = match_at(root, mul(exp(Var("x"), users=1), Var("y")), MatchContext({}))
    assert m is None and "2 users" in reason
    m, _, _ = match_at(root, mul(exp(Var("x"), name="e"), Var("y")), MatchContext({}))
    assert m.node("e").target is aten.exp.default and m.kind("x") == "node"
    with pytest.raises(KeyError, match="binds no 'z'"):
        m["z"]


def test_failed_candidates_say_why_and_inspect_shows_it():
    fast = optimize(SpelledPaiNN(BASE, near_miss="sin_cutoff"))
    misses = [r for p in fast.report.passes for r in p.near_misses]
    assert any("cosine cutoff" in r and "expected cos, found sin" in r for r in misses), misses
    assert "near miss: cosine cutoff" in fast.report.to_text()
    found, missed = find_all(fx.symbolic_trace(lambda x: x.exp()).graph, exp(exp(Var("x"))), MatchContext({}))
    assert found == [] and missed == []  # a root that fails on its own operator is no near miss


def test_end_to_end_verification_catches_a_broken_normalisation(monkeypatch):
    """A wrong canonicalisation (silu -> relu) that no per-rewrite check can see (the probes are
    recorded after normalisation): the whole-graph comparison must refuse the result."""
    def silu_to_relu(cap):
        for node in cap.gm.graph.nodes:
            if node.op == "call_function" and getattr(node.target, "overloadpacket", None) is aten.silu:
                node.target = aten.relu.default
        return ["silu -> relu (deliberately wrong)"]

    monkeypatch.setattr(optimize_module, "NORMALIZE", optimize_module.NORMALIZE + [silu_to_relu])
    with pytest.raises(VerificationError, match=r"rewritten graph of \w+ \(end to end\) failed: relative error"):
        optimize(BASE)  # strict (the suite's mode): a distinct error naming what disagreed
    with pytest.warns(VerificationWarning, match="end-to-end verification failed"):
        fast = optimize(BASE, strict=False)
    assert not fast.applied
    assert sum(m["kind"] == "fused_painn_message" for p in fast.report.passes for m in p.matches) == 2
    atoms = molecule("CH3CH2OH")
    torch.testing.assert_close(evaluate(fast, atoms).forces, evaluate(BASE, atoms).forces)


def test_end_to_end_verification_passes_and_is_reported():
    fast = optimize(BASE)
    assert fast.applied and fast.report.end_to_end.startswith("passed")
    assert "end-to-end verification: passed" in fast.report.to_text()


def test_strict_mode_reraises_what_would_be_a_quiet_rejection(monkeypatch):
    def boom(outs):
        raise RuntimeError("bug in a replacement")

    corrupt_replacements(monkeypatch, boom)
    with pytest.raises(RuntimeError, match="bug in a replacement"):
        optimize(BASE, strict=True)
    with pytest.warns(UserWarning):
        fast = optimize(BASE, strict=False)
    rejected = [r for p in fast.report.passes for r in p.rejected]
    assert any("RuntimeError: bug in a replacement" in r for r in rejected), rejected


@pytest.mark.parametrize("module, why", [
    (torch.nn.Linear(3, 1), "forward takes \\(input\\)"),
    (torch.nn.Sequential(), "has no parameters"),
])
def test_a_module_that_is_no_energy_model_is_refused(module, why):
    with pytest.raises(NotAnEnergyModel, match=f"expects a PaiNN-style energy model(.|\n)*{why}"):
        optimize(module)


def test_edges_are_prepared_and_validated_once_per_evaluation():
    """One prepare_edges node feeds every layer; the value checks (host syncs) run once per
    energy+forces evaluation, never in the per-layer message ops."""
    from helpers import CPU_KERNELS
    from painnfx.ops.dispatch import backends_that_ran, record_calls

    model = PaiNN(PaiNNConfig(n_atom_basis=8, n_interactions=3, n_rbf=5, cutoff=3.0, seed=2)).double()
    fast = optimize(model)
    plans = [n for n in fast.runner.graph_module.graph.nodes if n.op == "call_function" and n.target.__name__ == "edge_plan"]
    messages = [n for n in fast.runner.graph_module.graph.nodes
                if n.op == "call_function" and getattr(n.target, "__name__", "") == "fused_painn_message"]
    assert len(plans) == 1 and len(messages) == 3 and all(m.args[3] is plans[0] for m in messages)
    with record_calls() as calls:
        evaluate(fast, molecule("CH3CH2OH"))
    assert backends_that_ran(calls)["prepare_edges"] == {CPU_KERNELS: 1}  # its value checks: once
