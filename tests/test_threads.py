"""Calls from several threads: one optimized model (or one calculator) shared by 4 threads gives,
call for call, bitwise what sequential calls give, compiles each forces graph once (first calls wait
for the one compile) and checks it once per size class, and keeps its fast path."""

from __future__ import annotations

import threading

import numpy as np
import torch
from ase.build import bulk
from helpers import system_tensors
from strategies import SMALL_CONFIG

from painnfx.model.calculator import PaiNNCalculator
from painnfx.model.default import random_model
from painnfx.model.properties import compute_properties
from painnfx.rewriter import optimize

THREADS, CALLS = 4, 50


def _structures(n=4):
    out = []
    for k in range(n):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
        atoms.rattle(0.05, seed=k)
        out.append(atoms)
    return out


def _in_threads(work) -> list:
    """``work(thread)`` on THREADS threads started together; their results, by thread."""
    start = threading.Barrier(THREADS)
    results, errors = [None] * THREADS, []

    def run(k):
        try:
            start.wait()
            results[k] = work(k)
        except BaseException as exc:  # noqa: BLE001  reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def _joint_calls(fast) -> int:
    return sum(n for key in fast.joint_graphs.graphs for n in fast.joint_graphs.calls(key).values())


def test_one_optimized_model_shared_by_four_threads_cold_and_warm():
    model = random_model(seed=3, **SMALL_CONFIG).double()
    fast = optimize(model)
    fast.path, fast.joint = "auto", True  # as the calculator runs it; the suite turns the compiled joint graphs off (conftest); this test needs them
    systems = [system_tensors(a, model.cutoff) for a in _structures()]

    def call(k):
        pos, numbers, nl, cell = systems[k % len(systems)]
        out = compute_properties(fast, pos, numbers, nl.edge_index, nl.shifts, cell, stress=True)
        return out.energy.clone(), out.forces.clone(), out.stress.clone()

    def work(thread):
        return [call(thread + k) for k in range(CALLS)]

    for phase in ("cold", "warm"):
        before = _joint_calls(fast)
        threaded = _in_threads(work)
        assert not fast.report.joint.get("rejected"), fast.report.joint  # nothing lost to the concurrency
        assert [p["path"] for p in fast.report.paths] == ["compiled forces graph"], fast.report.paths
        assert _joint_calls(fast) - before >= THREADS * CALLS, phase  # the compiled graph served every threaded call
        for thread, results in enumerate(threaded):
            for k, got in enumerate(results):
                want = call(thread + k)
                for a, b in zip(got, want):
                    assert torch.equal(a, b), (phase, thread, k)
    compiled = dict(fast.joint_graphs.compile_seconds)
    assert set(compiled) == {"energy+forces+stress"}, compiled


def test_one_calculator_shared_by_four_threads():
    calc = PaiNNCalculator(random_model(seed=4, **SMALL_CONFIG, elements=[29]), optimize=True)
    structures = _structures()
    sequential = []
    for atoms in structures:
        atoms.calc = calc
        sequential.append((atoms.get_potential_energy(), atoms.get_forces().copy(), atoms.get_stress().copy()))

    def work(thread):
        out = []
        for k in range(CALLS):
            atoms = structures[(thread + k) % len(structures)].copy()
            atoms.calc = calc
            out.append(((thread + k) % len(structures), atoms.get_potential_energy(), atoms.get_forces().copy(),
                        atoms.get_stress().copy()))
        return out

    for results in _in_threads(work):
        for index, energy, forces, stress in results:
            e, f, s = sequential[index]
            assert energy == e and np.array_equal(forces, f) and np.array_equal(stress, s)
