r"""``painnfx::prepare_edges``: everything about an edge list that no layer weight changes,
computed once per energy evaluation and fed to every message op (forward and backward).

    prepare_edges(r, idx_i, idx_j, n_atoms) -> (dst_ptr (N+1), dst_perm (E), src_ptr (N+1), src_perm (E))

* destination-sorted CSR: the edges into atom i are ``dst_perm[dst_ptr[i]:dst_ptr[i+1]]``
  (the forward kernels walk them to accumulate dq_i, dmu_i without atomics);
* source-sorted CSC: the edges out of atom j are ``src_perm[src_ptr[j]:src_ptr[j+1]]``
  (the backward kernels accumulate dL/dx_j, dL/dmu_j the same way). The CSC walk needs no
  symmetric neighbor list: the op never sees the periodic shifts that would pair an edge
  with its reverse.

The sorts are stable, so the order is deterministic. This op is also where the values of
the edge list are validated (finite r, no zero-length edge, indices inside 0..N-1): those
checks read tensors back to the host, so they run here once per evaluation and never inside
the per-layer ops. Per-edge geometry and basis values are *not* shared across layers: they
are a few flops per edge next to the K x 3F filter product, recomputed in registers by the
kernels, and storing phi (E, K) and its derivative would add E (2K + 2) numbers to the
peak memory.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import capturing, real
from .errors import InputError
from .fused_op import FusedOp

OP = "prepare_edges"


def _check_shapes(r, idx_i, idx_j, n_atoms) -> None:
    if r.ndim != 2 or r.shape[1] != 3:
        raise InputError(f"{OP}: r must have shape (E, 3), got {tuple(r.shape)}")
    e = r.shape[0]
    for name, idx in (("idx_i", idx_i), ("idx_j", idx_j)):
        if idx.dtype != torch.int64 or idx.shape != (e,):
            raise InputError(f"{OP}: {name} must be int64 of shape ({e},), got {idx.dtype} {tuple(idx.shape)}")
        if idx.device != r.device:
            raise InputError(f"{OP}: {name} is on {idx.device} but r is on {r.device}")
    if not r.is_floating_point():
        raise InputError(f"{OP}: r must be floating point, got {r.dtype}")
    if n_atoms < 0:
        raise InputError(f"{OP}: n_atoms must be >= 0, got {n_atoms}")


def check_values(r, idx_i, idx_j, n_atoms: int) -> None:
    """The checks that need the values (one host sync each); skipped under CUDA-graph capture."""
    if r.shape[0] == 0 or not real(r) or capturing(r):
        return
    if not bool(torch.isfinite(r).all()):
        raise InputError(f"{OP}: edge vectors r contain NaN or inf")
    if not bool((r != 0).any(dim=1).all()):
        raise InputError(f"{OP}: an edge has zero length (overlapping atoms); its direction is undefined")
    lo = min(int(idx_i.min()), int(idx_j.min()))
    hi = max(int(idx_i.max()), int(idx_j.max()))
    if lo < 0 or hi >= n_atoms:
        raise InputError(f"{OP}: edge indices span {lo}..{hi}, outside 0..{n_atoms - 1}")


def _order(idx: Tensor, n_atoms: int) -> tuple[Tensor, Tensor]:
    """(row pointers, permutation); no host sync (searchsorted, not bincount), so it can be
    captured in a CUDA graph."""
    ordered, perm = torch.sort(idx, stable=True)
    atoms = torch.arange(n_atoms + 1, dtype=idx.dtype, device=idx.device)
    return torch.searchsorted(ordered, atoms), perm


def prepare_reference(r, idx_i, idx_j, n_atoms):
    check_values(r, idx_i, idx_j, n_atoms)
    dst_ptr, dst_perm = _order(idx_i, n_atoms)
    src_ptr, src_perm = _order(idx_j, n_atoms)
    return dst_ptr, dst_perm, src_ptr, src_perm


def _signature(r: Tensor, idx_i: Tensor, idx_j: Tensor, n_atoms: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    _check_shapes(r, idx_i, idx_j, n_atoms)


def _fake(r, idx_i, idx_j, n_atoms):
    e = r.shape[0]
    return idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e), idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e)


PREPARE_EDGES = FusedOp(OP, _signature, _fake, prepare_reference)
prepare_edges = PREPARE_EDGES.op
prepare = PREPARE_EDGES.call


def check_plan(op: str, edges, n_atoms: int, n_edges: int) -> None:
    """Shapes of a prepared-edges tuple handed to a message op (no values read)."""
    if len(edges) != 4:
        raise InputError(f"{op}: edges must be the 4 tensors prepare_edges returns, got {len(edges)}")
    for name, t, size in zip(("dst_ptr", "dst_perm", "src_ptr", "src_perm"), edges,
                             (n_atoms + 1, n_edges, n_atoms + 1, n_edges)):
        if t.dtype != torch.int64 or t.shape != (size,):
            raise InputError(f"{op}: edges.{name} must be int64 of shape ({size},), got {t.dtype} {tuple(t.shape)}; "
                             "pass the result of prepare_edges for this edge list")

