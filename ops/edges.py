r"""``painnfx::prepare_edges``: everything about an edge list that no layer weight changes,
computed once per energy evaluation and fed to every message op (forward and backward).

    prepare_edges(r, idx_i, idx_j, n_atoms)
        -> (dst_ptr (N+1), dst_perm (E), src_ptr (N+1), src_perm (E), reverse (E))

* destination-sorted CSR: the edges into atom i are ``dst_perm[dst_ptr[i]:dst_ptr[i+1]]``,
  ordered by source atom, then edge index (the forward kernels walk them to accumulate dq_i,
  dmu_i without atomics, reading the sources' features in memory order);
* source-sorted CSC: the edges out of atom j are ``src_perm[src_ptr[j]:src_ptr[j+1]]``, ordered
  by destination, then edge index (the backward kernels accumulate dL/dx_j, dL/dmu_j the same way);
* ``reverse[e]``: the edge e' = (j <- i) with r_e' = -r_e exactly, or -1. The two directed edges of
  a pair have the same length, so the same filter rows: the C++ kernels compute them once for both
  directions. Pairing is by value, so it needs no periodic shifts: an atom's edge to its own image
  (i <- i, r) pairs with the edge to the opposite image (i <- i, -r). Edges that find no partner (a
  half list, a LAMMPS rank's edges into its own atoms, vectors rounded differently) keep -1 and
  are computed by themselves. Where several edges have the same atoms and vector (a list with
  repeats), the k-th of one direction pairs with the k-th of the other, by edge index.

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


def _order(idx: Tensor, other: Tensor, n_atoms: int) -> tuple[Tensor, Tensor]:
    """(row pointers, permutation) of the edges sorted by ``idx``, then ``other``, then edge index;
    no host sync (searchsorted, not bincount), so it can be captured in a CUDA graph."""
    perm = torch.sort(idx * max(n_atoms, 1) + other, stable=True).indices
    atoms = torch.arange(n_atoms + 1, dtype=idx.dtype, device=idx.device)
    return torch.searchsorted(idx[perm], atoms), perm


def _run_bounds(new: Tensor) -> tuple[Tensor, Tensor]:
    """(first, one past the last) position of the run of equal keys that each position is in, from
    ``new`` (True where a run starts)."""
    e = new.shape[0]
    pos = torch.arange(e, device=new.device)
    first = torch.where(new, pos, 0).cummax(0).values
    last = torch.ones_like(new)
    last[:-1] = new[1:]
    end = torch.where(last, pos + 1, e).flip(0).cummin(0).values.flip(0)
    return first, end


def reverse_edges(r: Tensor, idx_i: Tensor, idx_j: Tensor) -> Tensor:
    """``reverse`` of prepare_edges, by sorting: edges with the same unordered atom pair and vector up to
    sign form a group, the direction with i < j (or, for i == j, the lexicographically positive
    vector) first; the k-th edge of one direction pairs with the k-th of the other."""
    e = r.shape[0]
    rev = torch.full((e,), -1, dtype=idx_i.dtype, device=idx_i.device)
    if e == 0:
        return rev
    x, y, z = r.unbind(1)
    positive = (x > 0) | ((x == 0) & ((y > 0) | ((y == 0) & (z > 0))))
    back = (idx_i > idx_j) | ((idx_i == idx_j) & ~positive)  # the second direction of its group
    canon = torch.where(back.unsqueeze(1), -r, r) + 0.0  # (+ 0.0: -0.0 becomes 0.0 for the sorts)
    a, b = torch.minimum(idx_i, idx_j), torch.maximum(idx_i, idx_j)
    keys = (a, b, canon[:, 0], canon[:, 1], canon[:, 2])
    order = torch.arange(e, device=r.device)
    for key in (back.long(), *reversed(keys)):  # least significant first; stable, so ties keep edge order
        order = order[torch.sort(key[order], stable=True).indices]
    sorted_keys = [k[order] for k in keys]
    new_group = torch.zeros(e, dtype=torch.bool, device=r.device)
    new_group[0] = True
    for k in sorted_keys:
        new_group[1:] |= k[1:] != k[:-1]
    second = back[order]
    new_side = new_group.clone()
    new_side[1:] |= second[1:] != second[:-1]
    group_first, group_end = _run_bounds(new_group)
    side_first, side_end = _run_bounds(new_side)
    pos = torch.arange(e, device=r.device)
    # first direction at rank k: partner at side_end + k, if the second side has k + 1 edges;
    # second direction at rank k: partner at group_first + k, if the first side has k + 1 edges
    k = pos - side_first
    partner = torch.where(second, group_first + k, side_end + k)
    valid = torch.where(second, k < side_first - group_first, side_end + k < group_end)
    rev[order] = torch.where(valid, order[torch.clamp(partner, max=e - 1)], -1)
    return rev


def prepare_reference(r, idx_i, idx_j, n_atoms):
    check_values(r, idx_i, idx_j, n_atoms)
    dst_ptr, dst_perm = _order(idx_i, idx_j, n_atoms)
    src_ptr, src_perm = _order(idx_j, idx_i, n_atoms)
    return dst_ptr, dst_perm, src_ptr, src_perm, reverse_edges(r, idx_i, idx_j)


def _signature(r: Tensor, idx_i: Tensor, idx_j: Tensor, n_atoms: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    _check_shapes(r, idx_i, idx_j, n_atoms)


def _fake(r, idx_i, idx_j, n_atoms):
    e = r.shape[0]
    return (idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e), idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e),
            idx_i.new_empty(e))


PREPARE_EDGES = FusedOp(OP, _signature, _fake, prepare_reference)
prepare_edges = PREPARE_EDGES.op
prepare = PREPARE_EDGES.call


def check_plan(op: str, edges, n_atoms: int, n_edges: int) -> None:
    """Shapes of a prepared-edges tuple handed to a message op (no values read)."""
    if len(edges) != 5:
        raise InputError(f"{op}: edges must be the 5 tensors prepare_edges returns, got {len(edges)}")
    for name, t, size in zip(("dst_ptr", "dst_perm", "src_ptr", "src_perm", "reverse"), edges,
                             (n_atoms + 1, n_edges, n_atoms + 1, n_edges, n_edges)):
        if t.dtype != torch.int64 or t.shape != (size,):
            raise InputError(f"{op}: edges.{name} must be int64 of shape ({size},), got {t.dtype} {tuple(t.shape)}; "
                             "pass the result of prepare_edges for this edge list")

