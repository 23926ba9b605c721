"""Argument checks for the fused ops: wrong shapes, dtypes, devices or non-finite input
raise ``ValueError`` naming the op and the argument instead of producing wrong numbers."""

from __future__ import annotations

from typing import Optional

import torch

from .radial import check_basis


def _capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


def _real(t: torch.Tensor) -> bool:
    """False for fake/meta tensors, whose values cannot be read."""
    return t.device.type != "meta" and not isinstance(t, torch._subclasses.FakeTensor)


def check_radial(op: str, d, weight, bias, basis_params, basis: str, cutoff: float, values: bool) -> None:
    check_basis(basis, basis_params)
    if d.ndim != 1:
        raise ValueError(f"{op}: distances must have shape (E,), got {tuple(d.shape)}")
    k = basis_params.shape[1]
    if weight.ndim != 2 or weight.shape[1] != k:
        raise ValueError(f"{op}: weight must have shape (out, K={k}), got {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise ValueError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    if not cutoff > 0:
        raise ValueError(f"{op}: cutoff must be positive, got {cutoff}")
    for name, t in (("weight", weight), ("bias", bias)):
        if t.dtype != d.dtype or t.device != d.device:
            raise ValueError(f"{op}: {name} is {t.dtype} on {t.device}, distances are {d.dtype} on {d.device}")
    if values and _real(d) and not _capturing(d) and d.numel() and not bool(torch.isfinite(d).all()):
        raise ValueError(f"{op}: distances contain NaN or inf")


def check_message(r, idx_i, idx_j, x, mu: Optional[torch.Tensor], weight, bias, basis_params,
                  basis: str, cutoff: float, values: bool) -> None:
    op = "painn_message"
    check_basis(basis, basis_params)
    if r.ndim != 2 or r.shape[1] != 3:
        raise ValueError(f"{op}: r must have shape (E, 3), got {tuple(r.shape)}")
    e = r.shape[0]
    for name, idx in (("idx_i", idx_i), ("idx_j", idx_j)):
        if idx.dtype != torch.int64 or idx.shape != (e,):
            raise ValueError(f"{op}: {name} must be int64 of shape ({e},), got {idx.dtype} {tuple(idx.shape)}")
    if x.ndim != 2 or x.shape[1] % 3:
        raise ValueError(f"{op}: x must have shape (N, 3F), got {tuple(x.shape)}")
    n, f = x.shape[0], x.shape[1] // 3
    if mu is not None and mu.shape != (n, 3, f):
        raise ValueError(f"{op}: mu must have shape ({n}, 3, {f}), got {tuple(mu.shape)}")
    k = basis_params.shape[1]
    if weight.shape != (3 * f, k):
        raise ValueError(f"{op}: weight must have shape ({3 * f}, {k}), got {tuple(weight.shape)}")
    if bias.shape != (3 * f,):
        raise ValueError(f"{op}: bias must have shape ({3 * f},), got {tuple(bias.shape)}")
    if not cutoff > 0:
        raise ValueError(f"{op}: cutoff must be positive, got {cutoff}")
    if not r.is_floating_point():
        raise ValueError(f"{op}: r must be floating point, got {r.dtype}")
    tensors = [("x", x), ("weight", weight), ("bias", bias)] + ([("mu", mu)] if mu is not None else [])
    for name, t in tensors:
        if t.dtype != r.dtype:
            raise ValueError(f"{op}: {name} has dtype {t.dtype} but r has {r.dtype}")
    for name, t in tensors + [("idx_i", idx_i), ("idx_j", idx_j), ("basis_params", basis_params)]:
        if t.device != r.device:
            raise ValueError(f"{op}: {name} is on {t.device} but r is on {r.device}")
    if not values or not _real(r) or _capturing(r) or e == 0:
        return
    if not bool(torch.isfinite(r).all()):
        raise ValueError(f"{op}: edge vectors r contain NaN or inf")
    if not bool((r != 0).any(dim=1).all()):
        raise ValueError(f"{op}: an edge has zero length (overlapping atoms); its direction is undefined")
    lo = min(int(idx_i.min()), int(idx_j.min()))
    hi = max(int(idx_i.max()), int(idx_j.max()))
    if lo < 0 or hi >= n:
        raise ValueError(f"{op}: edge indices span {lo}..{hi}, outside 0..{n - 1}")
