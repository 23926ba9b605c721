"""Launch arguments of the CUDA ``painn_update`` kernels (painn_update.cu), built from the op's
arguments; shared by the GPU launcher and the CPU emulator of the tests, like ``message.py``.

One block per atom, threads over its features. The kernels keep an atom's rows in shared
memory, which bounds F (``MAX_F``: 256 in float32, 128 in float64); a larger F is not usable
by this backend (``usable``), and the dispatcher runs (and records) the reference instead.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..update import UPDATE, update_weight_gradients
from .message import _SCALAR, _SUFFIX, Launch, _feature_block

MAX_F = {torch.float32: 256, torch.float64: 128}
#: the op these launches serve, and the kernel source they launch (kernels.py)
DECLARED = UPDATE
SOURCES = ("painn_update.cu",)


def usable(q) -> bool:
    """The kernels take this dtype and feature count."""
    return q.dtype in MAX_F and q.shape[1] <= MAX_F[q.dtype]


def takes(op_name: str, *args) -> bool:
    """For a backend's ``usable`` predicate (ops/dispatch.py): False only for an update-op call
    (forward: q first; backward: gq, gmu, q) whose feature count the kernels do not take."""
    if op_name not in (UPDATE.name, UPDATE.backward_name):
        return True
    return usable(args[2] if op_name == UPDATE.backward_name else args[0])


def _weights(mix_weight, w1, b1, w2, b2) -> dict:
    return {"u": mix_weight.contiguous(), "ut": mix_weight.t().contiguous(), "w1": w1.contiguous(),
            "w1t": w1.t().contiguous(), "b1": b1.contiguous(), "w2": w2.contiguous(), "w2t": w2.t().contiguous(),
            "b2": b2.contiguous()}


def forward_launch(q, mu, mix_weight, w1, b1, w2, b2, epsilon):
    """(Launch or None, q', mu')."""
    n, f = q.shape
    q_out, mu_out = torch.empty_like(q), torch.empty_like(mu)
    if n == 0:
        return None, q_out, mu_out
    w = _weights(mix_weight, w1, b1, w2, b2)
    q_, mu_ = q.contiguous(), mu.contiguous()
    args = [q_, mu_, w["ut"], w["w1t"], w["b1"], w["w2t"], w["b2"], _SCALAR[q.dtype](epsilon), np.int32(f), q_out,
            mu_out]
    keep = [q_, mu_, *w.values(), q_out, mu_out]
    return Launch(f"painn_update_forward_{_SUFFIX[q.dtype]}", (n, 1, 1), _feature_block(f), args, keep), q_out, mu_out


def backward_launch(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon, weight_grad):
    """(Launch or None, dL/dq, dL/dmu, the weight-gradient factors or Nones)."""
    n, f = q.shape
    gq_in, gmu_in = torch.empty_like(q), torch.empty_like(mu)
    factors = [q.new_empty(n, 3, 2 * f), q.new_empty(n, f), q.new_empty(n, 3 * f), q.new_empty(n, 2 * f),
               q.new_empty(n, f)] if weight_grad else [None] * 5
    if n == 0:
        return None, gq_in, gmu_in, factors
    w = _weights(mix_weight, w1, b1, w2, b2)
    tensors = [t.contiguous() for t in (gq, gmu, q, mu)]
    args = [*tensors, w["ut"], w["u"], w["w1t"], w["w1"], w["b1"], w["w2t"], w["w2"], w["b2"],
            _SCALAR[q.dtype](epsilon), np.int32(f), gq_in, gmu_in, *factors]
    keep = [*tensors, *w.values(), gq_in, gmu_in, *[t for t in factors if t is not None]]
    launch = Launch(f"painn_update_backward_{_SUFFIX[q.dtype]}", (n, 1, 1), _feature_block(f), args, keep)
    return launch, gq_in, gmu_in, factors


def run_forward(launch: Callable[[Launch], None], q, mu, mix_weight, w1, b1, w2, b2, epsilon):
    one, q_out, mu_out = forward_launch(q, mu, mix_weight, w1, b1, w2, b2, epsilon)
    if one is not None:
        launch(one)
    return q_out, mu_out


def run_backward(launch: Callable[[Launch], None], gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon,
                 weight_grad=True):
    """(dL/dq, dL/dmu, dL/dU, dL/dW1, dL/db1, dL/dW2, dL/db2): the kernel gives the first two and
    the per-atom factors of the others, reduced over atoms by three matrix products."""
    one, gq_in, gmu_in, factors = backward_launch(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon, weight_grad)
    if one is not None:
        launch(one)
    if not weight_grad:
        return gq_in, gmu_in, None, None, None, None, None
    return gq_in, gmu_in, *update_weight_gradients(mu, *factors)
