"""Each pair's filter once: prepare_edges pairs every edge (i <- j, r) with its reverse (j <- i, -r),
and the C++ message kernels compute a pair's filter rows once for both directions. Checked here:
the pairing rule (reference and C++ give the same plan), the paired kernels against the per-edge
ones and the reference on periodic cells (self-images), molecules, half lists and every thread
count, and a mutated kernel (the reverse edge's direction term with the wrong sign) failing."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import CPU_KERNELS, env_skip
from painnfx.model.neighbors import neighbor_list
from painnfx.ops import dispatch, painn_message, prepare_edges, use_backend
from painnfx.ops.cpu import backend
from painnfx.ops.edges import prepare_reference, reverse_edges
from strategies import molecules, periodic_cells

REPO = Path(__file__).resolve().parents[1]


def _cpp():
    if backend.library() is None:
        env_skip(f"the C++ kernels cannot be built here: {backend.info().get('error')}")


def rule(r, idx_i, idx_j) -> list:
    """The pairing rule, edge by edge: the k-th edge (i <- j, r) pairs with the k-th (j <- i, -r)."""
    e = r.shape[0]
    out = []
    for a in range(e):
        same = [b for b in range(e) if idx_i[b] == idx_i[a] and idx_j[b] == idx_j[a] and torch.equal(r[b], r[a])]
        back = [b for b in range(e) if idx_i[b] == idx_j[a] and idx_j[b] == idx_i[a] and torch.equal(r[b], -r[a])]
        k = same.index(a)
        out.append(back[k] if k < len(back) else -1)
    return out


@st.composite
def edge_lists(draw):
    """Small integer-valued edge lists: repeats, self-edges, -0.0 components, and the reverses of some."""
    n = draw(st.integers(1, 4))
    e = draw(st.integers(0, 14))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    ii, jj = torch.randint(0, n, (e,), generator=gen), torch.randint(0, n, (e,), generator=gen)
    r = torch.randint(-2, 3, (e, 3), generator=gen).double()
    r[(r == 0).all(1)] = 1.0
    pick = torch.rand(e, generator=gen) < draw(st.sampled_from([0.0, 0.5, 1.0]))
    order = torch.randperm(e + int(pick.sum()), generator=gen)
    ii, jj, r = torch.cat([ii, jj[pick]])[order], torch.cat([jj, ii[pick]])[order], torch.cat([r, -r[pick]])[order]
    dtype = draw(st.sampled_from([torch.float32, torch.float64]))
    return r.to(dtype), ii, jj, n


@settings(max_examples=60, deadline=None)
@given(edge_lists())
def test_the_reference_pairs_by_the_rule(case):
    r, ii, jj, n = case
    rev = reverse_edges(r, ii, jj)
    assert rev.tolist() == rule(r, ii, jj)
    paired = rev >= 0
    assert torch.equal(rev[rev[paired]], torch.nonzero(paired).flatten())  # symmetric


@settings(max_examples=60, deadline=None)
@given(edge_lists())
def test_cpp_plans_equal_the_reference(case):
    _cpp()
    r, ii, jj, n = case
    with use_backend(CPU_KERNELS):
        cpp = prepare_edges(r, ii, jj, n)
    for got, want in zip(cpp, prepare_reference(r, ii, jj, n)):
        assert torch.equal(got, want)


def _structure_inputs(atoms, cutoff, dtype, f, k, mu, half=False, seed=0):
    nl = neighbor_list(atoms.positions, cutoff, atoms.cell.array, atoms.pbc)
    ii, jj = nl.edge_index
    shifts = nl.shifts.to(dtype)
    if half:  # one direction of each pair: what a user's half list or a LAMMPS rank may hold
        keep = (ii < jj) | ((ii == jj) & (shifts[:, 0] > 0))
        ii, jj, shifts = ii[keep], jj[keep], shifts[keep]
    pos = torch.tensor(atoms.positions, dtype=dtype)
    r = pos[jj] - pos[ii] + shifts @ torch.tensor(atoms.cell.array, dtype=dtype)
    n = len(atoms)
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape, s=1.0: (torch.randn(*shape, generator=gen, dtype=torch.float64) * s).to(dtype)
    params = torch.stack([torch.linspace(0, cutoff, k, dtype=dtype), torch.full((k,), cutoff / k, dtype=dtype)])
    return dict(r=r, ii=ii, jj=jj, x=rand(n, 3 * f), mu=rand(n, 3, f) if mu else None, w=rand(3 * f, k, s=k**-0.5),
                b=rand(3 * f, s=0.1), params=params, cutoff=cutoff)


def _run(inp, edges, weights=False):
    """(dq, dmu, dL/dr, dL/dx, dL/dmu[, dL/dw, dL/db]) for a fixed loss with every output in it."""
    leaves = {k: inp[k].detach().clone().requires_grad_(True) for k in ("r", "x", "mu", "w", "b")
              if inp[k] is not None and (weights or k not in ("w", "b"))}
    get = lambda k: leaves.get(k, inp[k])
    dq, dmu = painn_message(get("r"), inp["ii"], inp["jj"], edges, get("x"), get("mu"), get("w"), get("b"),
                            inp["params"], "gaussian", "cosine", [inp["cutoff"]])
    probe = torch.cos(torch.arange(dmu.numel(), dtype=dmu.dtype)).view_as(dmu)
    loss = (dq**2).sum() + (dmu * probe).sum()
    return (dq.detach(), dmu.detach(), *torch.autograd.grad(loss, list(leaves.values())))


def _close(a, b, dtype):
    tol = 1e-12 if dtype == torch.float64 else 2e-5
    assert len(a) == len(b)
    for x, y in zip(a, b):
        if x.numel() == 0:
            assert y.numel() == 0
            continue
        assert (x - y).abs().max() <= tol * max(1.0, float(y.abs().max())), float((x - y).abs().max())


STRUCTURES = st.one_of(periodic_cells(max_atoms=6), molecules(max_atoms=10))


@settings(max_examples=25, deadline=None)
@given(atoms=STRUCTURES, dtype=st.sampled_from([torch.float32, torch.float64]), mu=st.booleans(),
       threads=st.sampled_from([1, 2, 3]), half=st.booleans(), weights=st.booleans())
def test_paired_kernels_equal_per_edge_and_reference(atoms, dtype, mu, threads, half, weights):
    """Drawn cells (atoms that see their own images) and molecules, full and half lists, with and
    without weight gradients, 1-3 threads: the C++ kernels with the plan's pairs, the same kernels
    with no pair (every edge by itself) and the reference agree."""
    _cpp()
    inp = _structure_inputs(atoms, 3.0, dtype, f=4, k=5, mu=mu, half=half)
    edges = list(prepare_edges(inp["r"], inp["ii"], inp["jj"], len(atoms)))
    if half:
        assert (edges[4] < 0).all()
    unpaired = edges[:4] + [torch.full_like(edges[4], -1)]
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with dispatch.record_calls() as calls, use_backend(CPU_KERNELS):
            paired = _run(inp, edges, weights)
            alone = _run(inp, unpaired, weights)
    finally:
        torch.set_num_threads(saved)
    assert calls[("painn_message", CPU_KERNELS)] == 2 and calls[("painn_message_backward", CPU_KERNELS)] == 2
    with use_backend("reference"):
        ref = _run(inp, edges, weights)
    _close(paired, ref, dtype)
    _close(alone, ref, dtype)


@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("cells", [1, 3, 4])
def test_every_edge_of_a_cu_cell_is_paired_and_equal(cells, threads):
    """fcc Cu: 1 atom (42 edges, all to its own images), 27 and 64 cubic cells (108 and 256 atoms,
    shuffled for 256: pairs then cross the thread ranges). fp64, every output to 1e-12 relative."""
    _cpp()
    atoms = bulk("Cu", "fcc", a=3.61) if cells == 1 else bulk("Cu", "fcc", a=3.61, cubic=True) * ((cells,) * 3)
    if cells == 4:
        atoms = atoms[np.random.default_rng(0).permutation(len(atoms))]
    atoms.rattle(0.02, seed=cells)
    inp = _structure_inputs(atoms, 5.0, torch.float64, f=8, k=6, mu=True)
    edges = list(prepare_edges(inp["r"], inp["ii"], inp["jj"], len(atoms)))
    assert (edges[4] >= 0).all()
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        with use_backend(CPU_KERNELS):
            got = _run(inp, edges)
    finally:
        torch.set_num_threads(saved)
    with use_backend("reference"):
        _close(got, _run(inp, edges), torch.float64)


def test_a_full_list_pairs_every_edge_of_a_molecule():
    atoms = molecule("CH3CH2OH")
    inp = _structure_inputs(atoms, 5.0, torch.float64, f=2, k=3, mu=False)
    rev = prepare_edges(inp["r"], inp["ii"], inp["jj"], len(atoms))[4]
    assert (rev >= 0).all() and torch.equal(inp["ii"][rev], inp["jj"]) and torch.equal(inp["r"][rev], -inp["r"])


MUTANT_CHECK = r"""
import torch
from ase.build import bulk
from painnfx.ops import use_backend
from painnfx.ops.cpu import backend
import painnfx.ops
import test_paired_edges as t
print(painnfx.ops.__file__, flush=True)
assert backend.library() is not None, backend.info()
atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
atoms.rattle(0.02, seed=1)
inp = t._structure_inputs(atoms, 5.0, torch.float64, f=4, k=5, mu=True)
edges = list(t.prepare_edges(inp["r"], inp["ii"], inp["jj"], len(atoms)))
with use_backend(t.CPU_KERNELS):
    got = t._run(inp, edges)
with use_backend("reference"):
    t._close(got, t._run(inp, edges), torch.float64)
"""


def test_a_kernel_with_the_reverse_direction_unflipped_fails(tmp_path):
    """The mutant the pairing invites: the partner edge takes the leader's direction u instead of -u.
    Built from a copy of the sources (only the mutated unit compiles; the rest comes from the unit
    cache) and checked in a subprocess, which must fail where this tree passes."""
    _cpp()
    pkg = tmp_path / "painnfx"
    pkg.mkdir()
    for sub in ("rewriter", "model", "tools"):
        (pkg / sub).symlink_to(REPO / sub)
    shutil.copytree(REPO / "ops", pkg / "ops", ignore=shutil.ignore_patterns("__pycache__"))
    source = pkg / "ops" / "cpu" / "painn_message.cpp"
    text = source.read_text()
    flipped = "const T back[3] = {-u[0], -u[1], -u[2]};"
    assert text.count(flipped) == 2
    source.write_text(text.replace(flipped, "const T back[3] = {u[0], u[1], u[2]};"))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), str(REPO / "tests")]))
    res = subprocess.run([sys.executable, "-c", MUTANT_CHECK], env=env, capture_output=True, text=True, timeout=600,
                         cwd=tmp_path)
    assert res.stdout.startswith(str(pkg / "ops")), res.stdout  # the copy ran, not this tree
    last = res.stderr.strip().splitlines()[-1] if res.stderr.strip() else ""
    assert res.returncode != 0 and last.startswith("AssertionError: "), res.stderr[-2000:]  # _close's error
