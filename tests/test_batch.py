"""painnfx.model.batch: many structures per call equal the ASE calculator one by one, whatever
the batch boundaries; bad structures are named; memory bounds are respected."""

import numpy as np
import pytest
import torch

import painnfx.model.batch as batch_module
from ase import Atoms
from ase.build import bulk, molecule
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_KERNELS, assert_fused, assert_kernels
from painnfx.model.batch import (DEFAULT_MAX_EDGES, DEFAULT_MAX_EDGES_PLAIN, BatchEvaluator, Failed, evaluate,
                                 iter_evaluate, pack)
from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.default import random_model
from painnfx.model.validation import InputError
from painnfx.ops.dispatch import record_calls
from painnfx.rewriter import optimize
from strategies import SMALL_CONFIG, molecules, periodic_cells

CONFIG = dict(SMALL_CONFIG, n_interactions=2)
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=1e-5)}
_MODELS: dict = {}


def _model(dtype, fused: bool):
    """One plain and one optimized model per dtype (optimize() verifies, which takes a while)."""
    key = (dtype, fused)
    if key not in _MODELS:
        plain = random_model(3, **CONFIG).to(dtype)
        _MODELS[key] = optimize(plain) if fused else plain
    return _MODELS[key]


def _one_by_one(model, frames, dtype):
    calc = PaiNNCalculator(model, dtype=dtype, optimize=False)
    out = []
    for a in frames:
        a = a.copy()
        a.calc = calc
        props = ["energy", "forces"] + (["stress"] if a.pbc.all() else [])
        calc.reset()
        calc.calculate(a, props)
        out.append(dict(calc.results))
    return out


def _compare(results, expected, dtype):
    for got, want in zip(results, expected, strict=True):
        tol = TOL[dtype]
        np.testing.assert_allclose(got.get_potential_energy(), want["energy"], **tol)
        np.testing.assert_allclose(got.get_forces(), want["forces"], **tol)
        if "stress" in want:
            np.testing.assert_allclose(got.get_stress(), want["stress"], **tol)
        else:
            assert "stress" not in got.calc.results


frames_strategy = st.lists(st.one_of(molecules(max_atoms=8), periodic_cells(max_atoms=6, elements=(1, 6, 8))),
                           min_size=1, max_size=7)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=15, deadline=None)
@given(frames=frames_strategy, max_atoms=st.integers(1, 40), max_edges=st.integers(1, 400))
def test_equals_the_calculator_one_by_one_whatever_the_batches(dtype, frames, max_atoms, max_edges):
    """Mixed sizes, elements, molecules and (partly) periodic cells with any cell, packed by
    any bounds: each structure's energy, forces and stress equal the calculator's own."""
    model = _model(dtype, fused=False)
    results = evaluate(frames, model, dtype=dtype, optimize=False, max_atoms=max_atoms, max_edges=max_edges)
    _compare(results, _one_by_one(model, frames, dtype), dtype)
    for got, atoms in zip(results, frames):  # copies, in input order
        assert got is not atoms and np.array_equal(got.numbers, atoms.numbers)
        assert np.array_equal(got.positions, atoms.positions)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=8, deadline=None)
@given(frames=frames_strategy, max_atoms=st.integers(4, 40))
def test_optimized_model_batched_runs_the_fused_kernels(dtype, frames, max_atoms):
    """optimize() of the model, batched: the fused graph ran (fused nodes kept, C++ kernels
    counted), with the plain model's one-by-one results."""
    fast = _model(dtype, fused=True)
    assert_fused(fast.report, CONFIG["n_interactions"])
    evaluator = BatchEvaluator(fast, dtype=dtype, optimize=True)
    assert evaluator.evaluator is fast
    with record_calls() as calls:
        results = list(iter_evaluate(frames, evaluator=evaluator, max_atoms=max_atoms))
    batches = len(pack([evaluator.prepare(i, a) for i, a in enumerate(frames)], max_atoms, 10**9))
    # one forward per layer per batch, and one backward each (empty structures never reach the model)
    runs = batches if all(len(a) for a in frames) else None
    if runs is not None:
        assert_kernels(calls, CPU_KERNELS, CONFIG["n_interactions"] * runs)
    _compare(results, _one_by_one(_model(dtype, fused=False), frames, dtype), dtype)


def test_packing_respects_the_bounds_and_groups_similar_sizes():
    frames = [molecule(n) for n in ("H2O", "C6H6", "CH4", "H2O", "C6H6", "CH3CH2OH")] * 3
    ev = BatchEvaluator(random_model(0, **CONFIG), optimize=False)
    systems = [ev.prepare(i, a) for i, a in enumerate(frames)]
    batches = pack(systems, max_atoms=20, max_edges=100)
    assert sorted(s.index for b in batches for s in b) == list(range(len(frames)))
    for b in batches:
        assert len(b) == 1 or (sum(s.n_atoms for s in b) <= 20 and sum(s.n_edges for s in b) <= 100)
    sizes = [s.n_atoms for b in batches for s in b]
    assert sizes == sorted(sizes)  # similar sizes together
    big = pack(systems, max_atoms=2, max_edges=1)  # every structure exceeds: each alone
    assert [len(b) for b in big] == [1] * len(frames)
    with pytest.raises(ValueError, match="positive"):
        pack(systems, 0, 10)
    # the default edge bound follows the path: the plain model's batches stay small (docs/batch.md)
    assert ev.default_max_edges == DEFAULT_MAX_EDGES_PLAIN < DEFAULT_MAX_EDGES
    assert BatchEvaluator(_model(torch.float64, fused=True), optimize=True).default_max_edges == DEFAULT_MAX_EDGES


def _bad_frames():
    good = [bulk("C", "diamond", a=3.6) * (1, 1, 2), molecule("H2O"), molecule("CH4")]
    nan = molecule("H2O")
    nan.positions[1, 2] = np.nan
    overlap = molecule("CH4")
    overlap.positions[2] = overlap.positions[1]
    unknown = molecule("H2O")
    unknown.numbers[0] = 79
    degenerate = Atoms("C", positions=[[0, 0, 0]], cell=[[2, 0, 0], [4, 0, 0], [0, 0, 2]], pbc=True)
    frames = [good[0], nan, good[1], overlap, unknown, degenerate, good[2]]
    reasons = {1: "NaN", 3: "overlaps", 4: "unknown element", 5: "degenerate cell"}
    return frames, reasons


def test_bad_structures_are_named_and_good_ones_still_evaluated():
    frames, reasons = _bad_frames()
    model = random_model(0, **dict(CONFIG, elements=[1, 6, 8]))
    results = list(iter_evaluate(iter(frames), model, optimize=False, window=2))  # a stream, in windows of 2
    assert len(results) == len(frames)
    for k, r in enumerate(results):
        if k in reasons:
            assert isinstance(r, Failed) and r.index == k and reasons[k] in r.reason, (k, r)
        else:
            assert not isinstance(r, Failed)
    good = [frames[k] for k in range(len(frames)) if k not in reasons]
    _compare([r for r in results if not isinstance(r, Failed)], _one_by_one(model, good, torch.float64),
             torch.float64)
    with pytest.raises(InputError, match="structure 1: positions contain NaN"):
        evaluate(frames, model, optimize=False)


def test_empty_and_single_atom_structures():
    model = random_model(0, **CONFIG)
    frames = [Atoms(), Atoms("H", positions=[[0, 0, 0]]), molecule("H2O"),
              Atoms("C", positions=[[0, 0, 0]], cell=np.eye(3) * 2.5, pbc=True)]  # sees only its own images
    results = evaluate(frames, model, optimize=False)
    assert results[0].get_potential_energy() == 0.0 and results[0].get_forces().shape == (0, 3)
    _compare(results[1:], _one_by_one(model, frames[1:], torch.float64), torch.float64)


def test_batched_stress_is_per_system():
    """Two different periodic cells in one batch: each gets its own strain derivative."""
    model = random_model(1, **CONFIG)
    a = bulk("C", "diamond", a=3.57)
    b = bulk("C", "diamond", a=3.7, cubic=True)
    b.rattle(0.05, seed=2)
    results = evaluate([a, b], model, optimize=False, max_atoms=100)
    assert not np.allclose(results[0].get_stress(), results[1].get_stress())
    _compare(results, _one_by_one(model, [a, b], torch.float64), torch.float64)


_JOINT: dict = {}


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@settings(max_examples=6, deadline=None)
@given(frames=frames_strategy, max_atoms=st.integers(4, 40))
def test_batches_through_the_joint_graph(dtype, frames, max_atoms):
    """Batched calls through the fused model's joint graph (traced once on a 5-system example, run
    on every batch's atom, edge and system counts; traced here, Inductor's compile is tested in
    test_joint_forces): the plain model's one-by-one results, per-system stress included (NaN
    for the systems without a cell in the batch's own stress tensor)."""
    from painnfx.rewriter.joint import JointGraphs

    if dtype not in _JOINT:
        _JOINT[dtype] = fast = optimize(random_model(3, **CONFIG).to(dtype))
        fast.path, fast.joint, fast.joint_graphs = "auto", True, JointGraphs(compile=False)
    fast = _JOINT[dtype]
    evaluator = BatchEvaluator(fast, dtype=dtype, optimize=True)
    results = list(iter_evaluate(frames, evaluator=evaluator, max_atoms=max_atoms))
    _compare(results, _one_by_one(_model(dtype, fused=False), frames, dtype), dtype)
    nonempty = [a for a in frames if len(a)]
    if len(nonempty) >= 2 and sum(len(a) for a in nonempty) <= max_atoms:  # one batch of several systems
        assert any(k.startswith("batch energy+forces") for k in fast.report.joint["graphs"])
    assert "rejected" not in fast.report.joint


def test_evaluate_prepares_its_evaluator_once_and_reuses_it(tmp_path):
    """evaluate() of the same model (the default one, a model object, a checkpoint file, a
    calculator) prepares its evaluator on the first call and reuses it afterwards; a changed
    checkpoint file or another setting prepares a new one. Counted, and the results are the same."""
    from painnfx.model import batch
    from painnfx.model.checkpoint import save_checkpoint

    frames = [Atoms("Cu3", positions=[[0, 0, 0], [2.5, 0, 0], [0, 2.5, 0]]), bulk("Cu", "fcc", a=3.61) * (1, 1, 2)]
    model = random_model(12, **CONFIG).double()
    path = tmp_path / "m.pt"
    save_checkpoint(model, path)
    calc = PaiNNCalculator(model, optimize=False)
    for source in (None, model, str(path), calc):
        before = dict(batch.reuse_counts)
        first = evaluate(frames, source, optimize=False)
        second = evaluate(frames, source, optimize=False)
        assert batch.reuse_counts["prepared"] - before["prepared"] <= 1, source  # the first call, if not before
        assert batch.reuse_counts["reused"] - before["reused"] >= 1, source
        for a, b in zip(first, second):
            assert a.get_potential_energy() == b.get_potential_energy()
            assert np.array_equal(a.get_forces(), b.get_forces())
    assert batch.evaluator_for(model, optimize=False) is batch.evaluator_for(model, optimize=False)
    assert batch.evaluator_for(model, optimize=False) is not batch.evaluator_for(model, optimize=False,
                                                                                 dtype=torch.float32)
    assert batch.evaluator_for(calc).calc is calc  # a calculator's own prepared model
    evaluator = batch.evaluator_for(None, optimize=False)
    assert batch.evaluator_for(evaluator) is evaluator
    before = batch.evaluator_for(str(path), optimize=False)
    save_checkpoint(random_model(13, **CONFIG).double(), path)  # a new file at the same path
    import os

    os.utime(path, ns=(1, 1))
    assert batch.evaluator_for(str(path), optimize=False) is not before


def test_small_molecules_share_one_neighbor_search(monkeypatch):
    """The non-periodic structures of a window are searched together (one vesin search), the
    periodic ones alone; the results are the calculator's one by one."""
    searches = []
    shared = batch_module.cluster_neighbor_lists

    def spy(positions, cutoff, **kw):
        searches.append(len(positions))
        return shared(positions, cutoff, **kw)

    monkeypatch.setattr(batch_module, "cluster_neighbor_lists", spy)
    model = random_model(2, **CONFIG)
    frames = [molecule("H2O"), molecule("CH4"), bulk("C", "diamond", a=3.57), Atoms("H", positions=[[0, 0, 0]]),
              molecule("C6H6"), Atoms()]
    results = list(iter_evaluate(frames, model, optimize=False, window=4))
    assert searches == [3, 2]  # windows [H2O, CH4, diamond, H] and [benzene, empty]
    _compare(results, _one_by_one(model, frames, torch.float64), torch.float64)
