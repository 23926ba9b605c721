"""Launch arguments of the CUDA ``painn_message`` kernels, built from the op's arguments.

Shared by the real launcher (cuda.core on a GPU) and the CPU emulator of the tests, so the
emulated tests prove this code too: kernel choice by dtype, radial spec ids, the transposed
filter weight, numpy-typed scalars, grid and block shapes and the guards.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from ..message import MESSAGE
from ..radial import MAX_KERNEL_K as MAX_K  # noqa: F401  (re-exported for the tests)
from ..radial import kernel_radial

#: the largest F: one thread per feature channel, at most 1024 threads per block
MAX_F = 1024
#: the op these launches serve, and the kernel sources they launch (kernels.py)
DECLARED = MESSAGE
SOURCES = ("painn_message.cu", "painn_message_backward.cu")
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
    n = x.shape[0]
    f, k, params, wt, b, radial = _common(x, basis_params, weight, bias, basis, cutoff, cutoff_params)
    dq = x.new_zeros(n, f)
    dmu = x.new_zeros(n, 3, f)
    if n == 0 or r.shape[0] == 0:
        return None, dq, dmu
    keep = [r.contiguous(), idx_j.contiguous(), x.contiguous(), None if mu is None else mu.contiguous(), wt, b,
            params, dq, dmu]
    r_, j_, x_, mu_ = keep[:4]
    args = [r_, edges[0], edges[1], j_, x_, mu_, wt, b, *radial, dq, dmu]
    return Launch(f"painn_message_forward_{_SUFFIX[x.dtype]}", (n, 1, 1), _feature_block(f), args, keep), dq, dmu


#: edges per block of the edge kernel (EDGE_WARPS in painn_message_backward.cu), and the
#: number of edge ranges (stage-1 blocks) of the weight-gradient reduction
EDGE_WARPS = 4
WEIGHT_PARTS = 64
PAIRS_PER_BLOCK = 256


def _feature_block(f: int) -> tuple:
    """One thread per feature channel, rounded up to whole warps (the node kernels)."""
    return (min(MAX_F, 32 * ((f + 31) // 32)), 1, 1)


def _common(x, basis_params, weight, bias, basis, cutoff, cutoff_params):
    op = "painn_message (cuda)"
    f, k = x.shape[1] // 3, basis_params.shape[1]
    if x.dtype not in _SUFFIX:
        raise InputError(f"{op}: dtype {x.dtype} is not supported (float32, float64)")
    params, basis_id, cutoff_id, c0, c1 = kernel_radial(op, x.dtype, basis, basis_params, cutoff, cutoff_params)
    if f > MAX_F:
        raise InputError(f"{op}: F = {f} features exceed the kernel's maximum {MAX_F}")
    scalar = _SCALAR[x.dtype]
    radial = [params[0], params[1] if params.shape[0] > 1 else None, np.int32(basis_id), np.int32(cutoff_id),
              scalar(c0), scalar(c1), np.int32(f), np.int32(k)]
    return f, k, params, weight.t().contiguous(), bias.contiguous(), radial


def backward_launches(gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff,
                      cutoff_params, weight_grad):
    """(launches in order, (gr, gx, gmu_in or None, gw or None, gb or None)) of the backward."""
    n, e = x.shape[0], r.shape[0]
    f, k, params, wt, b, radial = _common(x, basis_params, weight, bias, basis, cutoff, cutoff_params)
    s = _SUFFIX[x.dtype]
    gr = torch.zeros_like(r)
    gx = torch.zeros_like(x)
    gmu_in = torch.zeros_like(mu) if mu is not None else None
    gw = torch.zeros_like(weight) if weight_grad else None
    gb = torch.zeros_like(bias) if weight_grad else None
    outputs = (gr, gx, gmu_in, gw, gb)
    if n == 0 or e == 0:
        return [], outputs
    r_, ii, jj, x_, gq_, gmu_ = (t.contiguous() for t in (r, idx_i, idx_j, x, gq, gmu))
    mu_ = None if mu is None else mu.contiguous()
    src_ptr, src_perm = edges[2], edges[3]
    keep = [r_, ii, jj, x_, mu_, gq_, gmu_, wt, b, params, *outputs]
    launches = [
        Launch(f"painn_message_backward_nodes_{s}", (n, 1, 1), _feature_block(f),
               [r_, src_ptr, src_perm, ii, x_, mu_, gq_, gmu_, wt, b, *radial, gx, gmu_in], keep),
        Launch(f"painn_message_backward_edges_{s}", ((e + EDGE_WARPS - 1) // EDGE_WARPS, 1, 1), (32 * EDGE_WARPS, 1, 1),
               [r_, ii, jj, edges[4], x_, mu_, gq_, gmu_, wt, b, *radial, np.int64(e), gr], keep),
    ]
    if weight_grad:
        parts = min(WEIGHT_PARTS, e)
        pairs = 3 * f * (k + 1)
        partial = x.new_empty(parts, pairs)
        keep.append(partial)
        launches += [
            Launch(f"painn_message_backward_weights_{s}", (parts, (pairs + PAIRS_PER_BLOCK - 1) // PAIRS_PER_BLOCK, 1),
                   (PAIRS_PER_BLOCK, 1, 1), [r_, ii, jj, x_, mu_, gq_, gmu_, *radial, np.int64(e), partial], keep),
            Launch(f"painn_message_reduce_partials_{s}", ((pairs + PAIRS_PER_BLOCK - 1) // PAIRS_PER_BLOCK, 1, 1),
                   (PAIRS_PER_BLOCK, 1, 1), [partial, np.int32(parts), np.int32(f), np.int32(k), gw, gb], keep),
        ]
    return launches, outputs


def run_forward(launch: Callable[[Launch], None], r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis,
                cutoff, cutoff_params, chunk_size=0):
    """The forward op with ``launch`` running each kernel launch (on a GPU, or in the emulator)."""
    one, dq, dmu = forward_launch(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff,
                                  cutoff_params)
    if one is not None:
        launch(one)
    return dq, dmu


def run_backward(launch: Callable[[Launch], None], gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias,
                 basis_params, basis, cutoff, cutoff_params, chunk_size=0, weight_grad=True):
    """The backward op (dL/dr, dL/dx, dL/dmu, dL/dweight, dL/dbias) with ``launch`` running each launch."""
    launches, outputs = backward_launches(gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params,
                                          basis, cutoff, cutoff_params, weight_grad)
    for one in launches:
        launch(one)
    return outputs
