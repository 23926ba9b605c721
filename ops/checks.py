"""Argument checks of the per-layer fused ops: shapes, dtypes, devices and radial specs.

They read no tensor values, so they never synchronise with the device; the value checks
(finite edge vectors, no zero-length edge, indices in range) run once per evaluation in
``prepare_edges``. Failures raise ``InputError`` naming the op and the argument.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch

from .errors import InputError
from .radial import check_basis, check_cutoff


#: the floating-point dtypes painnfx models and the fused ops run in
SUPPORTED_DTYPES = (torch.float32, torch.float64)


def check_dtype(dtype, what: str = "dtype") -> torch.dtype:
    """``dtype`` if painnfx runs in it (float32, float64), else ``InputError`` naming those."""
    if dtype not in SUPPORTED_DTYPES:
        raise InputError(f"{what} {dtype} is not supported: painnfx models run in torch.float32 or torch.float64 "
                         "(in half precision the forces come out NaN)")
    return dtype


def capturing(t: torch.Tensor) -> bool:
    return t.is_cuda and torch.cuda.is_current_stream_capturing()


_PLAIN = (torch.Tensor, torch.nn.Parameter)  # a model's weights reach the update op as Parameters


def eager(*tensors) -> bool:
    """True when plain tensors run eagerly: no compile, tracing, fake or dispatch mode and no
    torch.func transform (grad, vmap) that needs the torch.library op itself (the fused ops then
    skip torch.library's Python layers)."""
    return (not torch.compiler.is_compiling() and torch._C._len_torch_dispatch_stack() == 0
            and not torch._C._is_torch_function_mode_enabled()
            and not torch._C._are_functorch_transforms_active()
            and all(t is None or type(t) in _PLAIN for t in tensors))


def real(t: torch.Tensor) -> bool:
    """False for fake/meta tensors, whose values cannot be read."""
    return t.device.type != "meta" and not isinstance(t, torch._subclasses.FakeTensor)


def check_finite(op: str, t: torch.Tensor) -> None:
    """NaN/inf check that reads values (a host sync): only for once-per-evaluation ops."""
    if t.numel() and real(t) and not capturing(t) and not bool(torch.isfinite(t).all()):
        raise InputError(f"{op}: distances contain NaN or inf")


def same(op: str, ref_name: str, ref: torch.Tensor, tensors, dtype: bool = True) -> None:
    for name, t in tensors:
        if dtype and t.dtype != ref.dtype:
            raise InputError(f"{op}: {name} has dtype {t.dtype} but {ref_name} has {ref.dtype}")
        if t.device != ref.device:
            raise InputError(f"{op}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def check_filter_weights(op: str, weight, bias, basis_params, basis: str, cutoff: str,
                         cutoff_params: Sequence[float], rows: Optional[int] = None) -> None:
    check_basis(basis, basis_params)
    check_cutoff(cutoff, cutoff_params)
    k = basis_params.shape[1]
    if weight.ndim != 2 or weight.shape[1] != k or (rows is not None and weight.shape[0] != rows):
        want = f"({rows if rows is not None else 'out'}, K={k})"
        raise InputError(f"{op}: weight must have shape {want}, got {tuple(weight.shape)}")
    if bias.shape != (weight.shape[0],):
        raise InputError(f"{op}: bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")


def check_radial(op: str, d, weight, bias, basis_params, basis, cutoff, cutoff_params) -> None:
    if d.ndim != 1 or not d.is_floating_point():
        raise InputError(f"{op}: distances must be a floating tensor of shape (E,), got {d.dtype} {tuple(d.shape)}")
    check_filter_weights(op, weight, bias, basis_params, basis, cutoff, cutoff_params)
    same(op, "distances", d, [("weight", weight), ("bias", bias)])
    same(op, "distances", d, [("basis_params", basis_params)], dtype=False)


def check_message(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params) -> None:
    op = "painn_message"
    if r.ndim != 2 or r.shape[1] != 3:
        raise InputError(f"{op}: r must have shape (E, 3), got {tuple(r.shape)}")
    if not r.is_floating_point():
        raise InputError(f"{op}: r must be floating point, got {r.dtype}")
    e = r.shape[0]
    for name, idx in (("idx_i", idx_i), ("idx_j", idx_j)):
        if idx.dtype != torch.int64 or idx.shape != (e,):
            raise InputError(f"{op}: {name} must be int64 of shape ({e},), got {idx.dtype} {tuple(idx.shape)}")
    if x.ndim != 2 or x.shape[1] % 3:
        raise InputError(f"{op}: x must have shape (N, 3F), got {tuple(x.shape)}")
    n, f = x.shape[0], x.shape[1] // 3
    if mu is not None and mu.shape != (n, 3, f):
        raise InputError(f"{op}: mu must have shape ({n}, 3, {f}), got {tuple(mu.shape)}")
    check_filter_weights(op, weight, bias, basis_params, basis, cutoff, cutoff_params, rows=3 * f)
    floats = [("x", x), ("weight", weight), ("bias", bias)] + ([("mu", mu)] if mu is not None else [])
    same(op, "r", r, floats)
    same(op, "r", r, [("idx_i", idx_i), ("idx_j", idx_j), ("basis_params", basis_params)], dtype=False)
