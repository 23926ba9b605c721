"""Input checks that turn bad structures into clear errors instead of wrong numbers."""

from __future__ import annotations

import math
from typing import Iterable, Optional

import numpy as np
import torch

from painnfx.ops.checks import SUPPORTED_DTYPES, check_dtype  # noqa: F401  (re-exported for the model layer)
from painnfx.ops.errors import InputError, NonFiniteError  # one error type each, in every layer

#: Distinct atoms (or an atom and another's periodic image) closer than this are "overlapping":
#: refused always (the model divides by the distance).
OVERLAP_DISTANCE = 1e-6

#: The closest two atoms (or an atom and a periodic image) may be by default, in Angstrom: shorter
#: than any chemical bond (H-H is 0.74 A), so a structure with a closer pair is outside what any
#: trained potential describes, and is refused unless the caller passes a smaller ``min_distance``.
MIN_DISTANCE = 0.5

#: The most neighbors (within the cutoff) one atom may have by default. Dense solids have ~45-160
#: within 5-6 A; more than this means a cell far smaller than the cutoff (one atom in a 0.2 A cube
#: has 65 000 images within 5 A) or a collapsed structure. Estimated from the density before the
#: neighbor search (no large allocation), counted exactly after it; ``max_neighbors`` raises it.
MAX_NEIGHBORS = 1000



def check_positions(pos: np.ndarray) -> None:
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():
        idx = np.flatnonzero(bad)[:10].tolist()
        raise InputError(f"positions contain NaN or inf (atoms {idx}); fix the structure first")


def check_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    if not np.isfinite(cell).all():
        raise InputError("cell contains NaN or inf")
    for k in range(3):
        if pbc[k] and np.linalg.norm(cell[k]) < 1e-8:
            raise InputError(f"cell vector {k} is zero but pbc[{k}] is True")
    if pbc.any():
        periodic = cell[pbc]
        if np.linalg.matrix_rank(periodic, tol=1e-8) < len(periodic):
            raise InputError("periodic cell vectors are linearly dependent (degenerate cell)")
    for k in range(3):  # caught here, before a neighbor search would list millions of images
        if pbc[k] and np.linalg.norm(cell[k]) < OVERLAP_DISTANCE:
            raise InputError(f"every atom overlaps its own periodic image: cell vector {k} is "
                             f"{np.linalg.norm(cell[k]):.2e} A long (< {OVERLAP_DISTANCE:g} A)")


def check_numbers(numbers, elements: Optional[Iterable[int]], max_z: int) -> None:
    z = np.asarray(numbers.cpu() if torch.is_tensor(numbers) else numbers).reshape(-1)
    if z.size and (z.min() < 1 or z.max() >= max_z):
        raise InputError(f"atomic numbers must lie in 1..{max_z - 1}; got {sorted(set(z.tolist()))}")
    if elements is not None:
        unknown = sorted(set(z.tolist()) - set(int(e) for e in elements))
        if unknown:
            from ase.data import chemical_symbols

            names = [chemical_symbols[u] for u in unknown]
            raise InputError(
                f"unknown element(s) {names} (Z={unknown}): this model knows only "
                f"{[chemical_symbols[e] for e in elements]}"
            )


def check_optimize(optimize) -> None:
    """``optimize`` is one of the calculator's settings: True, False or "auto"."""
    if optimize not in (True, False, "auto"):
        raise ValueError(f"optimize must be True, False or 'auto', got {optimize!r}")


def check_overlaps(edge_index: torch.Tensor, r_ij: torch.Tensor, min_distance: float = MIN_DISTANCE) -> None:
    """Raise if two distinct atoms, or an atom and any periodic image, are closer than
    ``min_distance`` (never less than ``OVERLAP_DISTANCE``)."""
    if r_ij.numel() == 0:
        return
    limit = max(float(min_distance), OVERLAP_DISTANCE)
    d = torch.linalg.vector_norm(r_ij.detach(), dim=1)
    close = d < limit
    if bool(close.any()):
        e = int(torch.argmin(d))
        i, j = int(edge_index[0, e]), int(edge_index[1, e])
        what = "its own periodic image" if i == j else f"atom {j}"
        if float(d[e]) < OVERLAP_DISTANCE:
            raise InputError(f"atom {i} overlaps {what} (distance {float(d[e]):.2e} A < {OVERLAP_DISTANCE:g} A)")
        raise InputError(
            f"atom {i} is {float(d[e]):.3g} A from {what}, closer than min_distance = {limit:g} A "
            f"({int(close.sum()) // 2 or 1} such pair(s)): no chemical bond is that short, so the model's answer "
            "would mean nothing. Pass a smaller min_distance (e.g. PaiNNCalculator(min_distance=0.1)) to evaluate "
            "it anyway"
        )


#: a structure may span at most this many cutoff radii along any direction (its atoms' coordinates,
#: and the cell vectors of periodic directions): vesin's cell list crashed the process (SIGFPE)
#: above ~3e5 cutoffs, and coordinates that large have lost the precision MD needs anyway
MAX_SPAN_CUTOFFS = 3e4


def check_span(positions: np.ndarray, cutoff: float, cell: np.ndarray, pbc: np.ndarray) -> None:
    """Refuse coordinates or periodic cell vectors beyond ``MAX_SPAN_CUTOFFS`` cutoffs."""
    limit = MAX_SPAN_CUTOFFS * cutoff
    if len(positions) and float(np.abs(positions).max()) > limit:
        raise InputError(f"atom coordinates reach {float(np.abs(positions).max()):.3g} A, beyond {limit:.3g} A "
                         f"({MAX_SPAN_CUTOFFS:g} cutoffs) from the origin: the neighbor search cannot handle such a "
                         "span; wrap the positions into the cell, or drop atoms far from the rest")
    for k in range(3):
        if pbc[k] and np.linalg.norm(cell[k]) > limit:
            raise InputError(f"cell vector {k} is {np.linalg.norm(cell[k]):.3g} A long, beyond {limit:.3g} A "
                             f"({MAX_SPAN_CUTOFFS:g} cutoffs): the neighbor search cannot handle such a cell")


def estimated_neighbors(positions: np.ndarray, cutoff: float, cell: np.ndarray, pbc: np.ndarray) -> float:
    """About how many neighbors an atom has within ``cutoff``, from the density, without a search:
    the atoms per volume of the periodic cell (a non-periodic direction by the atoms' extent, at
    least the cutoff sphere's diameter, so that a flat or small cluster is not taken as infinitely
    dense) times the cutoff sphere, and never more than every atom's images within reach of the
    cell's planes."""
    n = len(positions)
    if n == 0:
        return 0.0
    volume, images = 1.0, 1.0
    if pbc.any():
        normals = np.cross(cell[[1, 2, 0]], cell[[2, 0, 1]])  # normal k: plane of the other two vectors
        full = abs(float(np.linalg.det(cell))) if pbc.all() else None
    for k in range(3):
        if pbc[k]:
            spacing = (full / np.linalg.norm(normals[k])) if full else np.linalg.norm(cell[k])
            images *= 2 * np.ceil(cutoff / max(spacing, 1e-300)) + 1
            volume *= spacing
        else:
            volume *= max(float(np.ptp(positions[:, k])), 2.0 * cutoff)
    sphere = 4.0 / 3.0 * np.pi * cutoff**3
    return float(min(n * sphere / volume if volume > 0 else np.inf, n * images))


def check_system_tensors(model, positions, numbers, edge_index, shifts) -> None:
    """Shapes, dtypes and devices of a model call, checked against the model's parameters (its
    ``first_parameter()`` where it has one: an optimized model's, without walking its modules)."""
    first = getattr(model, "first_parameter", None)
    if first is not None:
        param = first()
    else:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
    dtype = param.dtype if param is not None else positions.dtype
    device = param.device if param is not None else positions.device
    if not positions.is_floating_point():
        raise InputError(f"positions must be floating point, got {positions.dtype}")
    for name, t in (("positions", positions), ("shifts", shifts)):
        if t.dtype != dtype:
            raise InputError(
                f"{name} has dtype {t.dtype} but the model's parameters are {dtype}; "
                f"convert with .to({dtype}) (or the model with .to({t.dtype}))"
            )
    for name, t in (("positions", positions), ("numbers", numbers), ("edge_index", edge_index), ("shifts", shifts)):
        if t.device != device:
            raise InputError(f"{name} is on {t.device} but the model is on {device}")
    if positions.ndim != 2 or positions.shape[1] != 3:
        raise InputError(f"positions must have shape (N, 3), got {tuple(positions.shape)}")
    if numbers.dtype not in (torch.int64, torch.int32) or numbers.shape != positions.shape[:1]:
        raise InputError(f"numbers must be an integer tensor of shape ({positions.shape[0]},), got {numbers.dtype} {tuple(numbers.shape)}")
    if edge_index.dtype != torch.int64 or edge_index.ndim != 2 or edge_index.shape[0] != 2:
        raise InputError(f"edge_index must be int64 of shape (2, E), got {edge_index.dtype} {tuple(edge_index.shape)}")
    if shifts.shape != (edge_index.shape[1], 3):
        raise InputError(f"shifts must have shape ({edge_index.shape[1]}, 3), got {tuple(shifts.shape)}")
    if positions.is_cuda and torch.cuda.is_current_stream_capturing():
        return  # values cannot be read inside a CUDA-graph capture (checked before each replay)
    # the sum is finite exactly when every position is (a NaN or inf survives any sum; only a sum
    # of huge finite values could overflow): one reduction, and the elementwise check only then
    if not math.isfinite(float(positions.sum())) and not bool(torch.isfinite(positions).all()):
        raise InputError("positions contain NaN or inf")
    if edge_index.numel():
        lo, hi = (int(v) for v in torch.aminmax(edge_index))
        if lo < 0 or hi >= positions.shape[0]:
            raise InputError(f"edge_index refers to atoms outside 0..{positions.shape[0] - 1}")


#: why results come out NaN or inf, and what to check
NON_FINITE = ("NaN or inf in the energy, forces or stress: the model's weights may hold NaN or inf (load_checkpoint "
              "refuses such files; check weights set in code), or the structure lies far outside anything the "
              "model can describe")


def non_finite(energy, forces=None, stress=None) -> list:
    """Which of the results (numpy arrays or numbers; None: not computed) hold NaN or inf."""
    return [name for name, value in (("energy", energy), ("forces", forces), ("stress", stress))
            if value is not None and not np.isfinite(np.asarray(value)).all()]


def check_finite_results(energy, forces=None, stress=None, where: str = "") -> None:
    """Raise ``NonFiniteError`` when any result is NaN or inf: never hand one on silently."""
    bad = non_finite(energy, forces, stress)
    if bad:
        raise NonFiniteError(f"{where}the model returned a non-finite {' and '.join(bad)} ({NON_FINITE})")
