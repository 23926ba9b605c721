"""Hypothesis strategies shared by the test suite: structures and model configurations."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from hypothesis import strategies as st

SMALL_CONFIG = dict(n_atom_basis=8, n_interactions=2, n_rbf=6, cutoff=3.0)


@st.composite
def model_configs(draw, cutoff: float = 3.0):
    """Small PaiNN configurations covering every architectural option."""
    return dict(
        n_atom_basis=draw(st.sampled_from([4, 8, 16])),
        n_interactions=draw(st.integers(1, 3)),
        n_rbf=draw(st.integers(2, 10)),
        cutoff=cutoff,
        radial_basis=draw(st.sampled_from(["gaussian", "bessel"])),
        cutoff_fn=draw(st.sampled_from(["cosine", "mollifier"])),
        shared_filters=draw(st.booleans()),
        shared_interactions=draw(st.booleans()),
        seed=draw(st.integers(0, 2**16)),
    )


def _spread_points(rng: np.random.Generator, n: int, box: np.ndarray, min_dist: float) -> np.ndarray:
    """n random points in the box, rejecting ones closer than min_dist (no periodicity)."""
    pts: list[np.ndarray] = []
    tries = 0
    while len(pts) < n and tries < 200 * (n + 1):
        p = rng.random(3) @ box
        if all(np.linalg.norm(p - q) >= min_dist for q in pts):
            pts.append(p)
        tries += 1
    return np.array(pts).reshape(-1, 3)


@st.composite
def molecules(draw, max_atoms: int = 12, elements=(1, 6, 7, 8)):
    """Finite clusters (no pbc) of 1..max_atoms atoms, atoms at least 0.7 A apart."""
    n = draw(st.integers(1, max_atoms))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    size = draw(st.floats(1.5, 6.0))
    pos = _spread_points(rng, n, np.eye(3) * size, 0.7)
    numbers = rng.choice(np.array(elements), size=len(pos))
    return Atoms(numbers=numbers, positions=pos, pbc=False)


@st.composite
def periodic_cells(draw, max_atoms: int = 8, elements=(13, 29), mixed_pbc: bool = True):
    """Periodic (or partly periodic) cells, including small ones where atoms see their own images."""
    n = draw(st.integers(1, max_atoms))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    lengths = np.array([draw(st.floats(1.8, 6.0)) for _ in range(3)])
    shear = draw(st.floats(0.0, 0.3))
    cell = np.diag(lengths)
    cell[1, 0] = shear * lengths[1]
    cell[2, 0] = 0.5 * shear * lengths[2]
    pos = _spread_points(rng, n, cell, 0.9)
    if mixed_pbc:
        pbc = draw(st.sampled_from([(True, True, True), (True, True, False), (True, False, False)]))
    else:
        pbc = (True, True, True)
    numbers = rng.choice(np.array(elements), size=len(pos))
    atoms = Atoms(numbers=numbers, positions=pos, cell=cell, pbc=pbc)
    if all(pbc):
        # the periodic images of distinct points must not overlap either
        from ase.geometry import get_distances

        _, d = get_distances(atoms.positions, cell=cell, pbc=pbc)
        np.fill_diagonal(d, np.inf)
        if len(pos) > 1 and d.min() < 0.5:
            atoms = atoms[:1]
    return atoms


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


@st.composite
def message_inputs(draw, dtype=None, max_atoms: int = 7, max_edges: int = 40):
    """Random arguments of painn_message: unsorted and repeated edges, none, half or all of them
    with their reverse (j <- i, -r), isolated atoms, edges at exactly the cutoff, tiny edges,
    E = 0, one atom, mu = None (first layer), every basis and cutoff of the spec registry."""
    import torch

    dtype = dtype or torch.float64
    seed = draw(st.integers(0, 2**32 - 1))
    gen = torch.Generator().manual_seed(seed)
    n = draw(st.integers(1, max_atoms))
    e = draw(st.integers(0, max_edges))
    f = draw(st.integers(1, 5))
    k = draw(st.integers(2, 7))
    rc = draw(st.floats(1.5, 6.0))
    basis = draw(st.sampled_from(["gaussian", "bessel"]))
    cutoff = draw(st.sampled_from(["cosine", "mollifier"]))
    cutoff_params = [rc] if cutoff == "cosine" else [rc, draw(st.sampled_from([1e-7, 0.0, 0.1]))]
    lengths = torch.rand(e, generator=gen, dtype=torch.float64) * 1.2 * rc + 0.05
    special = draw(st.lists(st.sampled_from(["at_cutoff", "tiny", "beyond"]), max_size=min(e, 3)))
    for slot, kind in enumerate(special):
        lengths[slot] = {"at_cutoff": rc, "tiny": 1e-3, "beyond": 1.5 * rc}[kind]
    direction = torch.randn(e, 3, generator=gen, dtype=torch.float64)
    direction = direction / direction.norm(dim=1, keepdim=True).clamp_min(1e-12)
    r = direction * lengths[:, None]
    # leave the last atom isolated sometimes
    hi = n - 1 if (n > 1 and draw(st.booleans())) else n
    idx_i = torch.randint(0, hi, (e,), generator=gen)
    idx_j = torch.randint(0, hi, (e,), generator=gen)
    # the reverse (j <- i, -r) of some edges, as a full neighbor list has (and of its self-images)
    reversed_share = draw(st.sampled_from([0.0, 0.5, 1.0]))
    if e and reversed_share:
        pick = torch.rand(e, generator=gen) < reversed_share
        order = torch.randperm(e + int(pick.sum()), generator=gen)
        r, idx_i, idx_j = (torch.cat([r, -r[pick]])[order], torch.cat([idx_i, idx_j[pick]])[order],
                           torch.cat([idx_j, idx_i[pick]])[order])
    x = torch.randn(n, 3 * f, generator=gen, dtype=torch.float64)
    mu = None if draw(st.booleans()) else torch.randn(n, 3, f, generator=gen, dtype=torch.float64)
    weight = torch.randn(3 * f, k, generator=gen, dtype=torch.float64) / k**0.5
    bias = torch.randn(3 * f, generator=gen, dtype=torch.float64) * 0.1
    if basis == "gaussian":
        offsets = torch.linspace(0, rc, k, dtype=torch.float64)
        params = torch.stack([offsets, torch.full((k,), float(offsets[1] - offsets[0]), dtype=torch.float64)])
    else:
        params = (torch.arange(1, k + 1, dtype=torch.float64) * np.pi / rc)[None]
    cast = lambda t: None if t is None else t.to(dtype)
    return dict(r=cast(r), idx_i=idx_i, idx_j=idx_j, x=cast(x), mu=cast(mu), weight=cast(weight),
                bias=cast(bias), basis_params=params.to(dtype), basis=basis, cutoff=cutoff,
                cutoff_params=cutoff_params)


def update_inputs(n: int, f: int, seed: int, scale: float = 1.0, eps: float = 1e-8) -> list:
    """q, mu, U, W1, b1, W2, b2 (float64, weights scaled like a trained layer), epsilon."""
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, fan_in=1):
        return torch.randn(*shape, generator=gen, dtype=torch.float64) / fan_in ** 0.5

    return [rand(n, f), scale * rand(n, 3, f), rand(2 * f, f, fan_in=f), rand(f, 2 * f, fan_in=2 * f), rand(f),
            rand(3 * f, f, fan_in=f), rand(3 * f), eps]
