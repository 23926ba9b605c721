"""Launch arguments of the CUDA ``painn_message`` kernels, built from the op's arguments.

Shared by the real launcher (cuda.core on a GPU) and the CPU emulator of the tests, so the
emulated tests prove this code too: kernel choice by dtype, radial spec ids, the transposed
filter weight, numpy-typed scalars, grid and block shapes and the guards.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..errors import InputError
from ..radial import basis_spec, cutoff_spec

#: must equal MAX_K and TILE in painn_message.cu
MAX_K = 64
MAX_F = 1024
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_SCALAR = {torch.float32: np.float32, torch.float64: np.float64}


@dataclass
class Launch:
    kernel: str
    grid: tuple
    block: tuple
    args: list
    keep: list  # tensors the arguments point into (alive until the launch completes)


def forward_launch(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params):
    """(Launch or None, dq, dmu): outputs allocated here; None when there is nothing to launch."""
    n, f = x.shape[0], x.shape[1] // 3
    k = basis_params.shape[1]
    if x.dtype not in _SUFFIX:
        raise InputError(f"painn_message (cuda): dtype {x.dtype} is not supported (float32, float64)")
    if k > MAX_K:
        raise InputError(f"painn_message (cuda): K = {k} radial functions exceed the kernel's maximum {MAX_K}")
    if f > MAX_F:
        raise InputError(f"painn_message (cuda): F = {f} features exceed the kernel's maximum {MAX_F}")
    dq = x.new_empty(n, f)
    dmu = x.new_empty(n, 3, f)
    if n == 0 or r.shape[0] == 0:
        dq.zero_()
        dmu.zero_()
        return None, dq, dmu
    scalar = _SCALAR[x.dtype]
    dst_ptr, dst_perm = edges[0], edges[1]
    params = basis_params.to(x.dtype).contiguous()
    wt = weight.t().contiguous()
    c = list(cutoff_params) + [0.0] * (2 - len(cutoff_params))
    keep = [r.contiguous(), idx_j.contiguous(), x.contiguous(), None if mu is None else mu.contiguous(), wt,
            bias.contiguous(), params, dq, dmu]
    r_, j_, x_, mu_, wt_, b_, p_, _, _ = keep
    args = [r_, dst_ptr, dst_perm, j_, x_, mu_, wt_, b_, p_[0], p_[1] if p_.shape[0] > 1 else None,
            np.int32(basis_spec(basis).kernel_id), np.int32(cutoff_spec(cutoff).kernel_id), scalar(c[0]), scalar(c[1]),
            np.int32(f), np.int32(k), dq, dmu]
    block = (min(MAX_F, 32 * ((f + 31) // 32)), 1, 1)
    return Launch(f"painn_message_forward_{_SUFFIX[x.dtype]}", (n, 1, 1), block, args, keep), dq, dmu
