"""Input checks that turn bad structures into clear errors instead of wrong numbers."""

from __future__ import annotations

from typing import Iterable, Optional

import numpy as np
import torch

#: Distinct atoms (or an atom and another's periodic image) closer than this are "overlapping".
OVERLAP_DISTANCE = 1e-6


class InputError(ValueError):
    """A structure or tensor the model cannot evaluate meaningfully."""


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


def check_overlaps(edge_index: torch.Tensor, r_ij: torch.Tensor) -> None:
    """Raise if two distinct atoms, or an atom and any periodic image, sit on top of each other."""
    if r_ij.numel() == 0:
        return
    d = torch.linalg.vector_norm(r_ij.detach(), dim=1)
    close = d < OVERLAP_DISTANCE
    if bool(close.any()):
        e = int(torch.nonzero(close)[0])
        i, j = int(edge_index[0, e]), int(edge_index[1, e])
        what = "its own periodic image" if i == j else f"atom {j}"
        raise InputError(
            f"atom {i} overlaps {what} (distance {float(d[e]):.2e} A < {OVERLAP_DISTANCE:g} A)"
        )


def check_tensor(name: str, t: torch.Tensor, dtype: torch.dtype, device: torch.device) -> None:
    if t.dtype != dtype:
        raise InputError(f"{name} has dtype {t.dtype}, but the model runs in {dtype}; convert it first")
    if t.device != device:
        raise InputError(f"{name} is on {t.device}, but the model is on {device}")
