r"""``painnfx::painn_update``: PaiNN's update (mixing) block of one layer as a single op.

    V, W = split(mu U^T)                       U (2F, F), no bias
    |V|  = sqrt(sum_c V_c^2 + epsilon)
    a, b, c = split(W2 silu(W1 [q, |V|] + b1) + b2)
    q'  = q + a + c * sum_c V_c W_c,   mu' = mu + b * W

Inputs: q (N, F), mu (N, 3, F), mix_weight U, w1 (F, 2F), b1 (F,), w2 (3F, F), b2 (3F,),
epsilon. Outputs q' (N, F), mu' (N, 3, F). Per atom it is three small matrix products and a
dozen elementwise steps: eagerly about 15 ops forward and 30 backward per layer, one op each
here. Backward: ``painnfx::painn_update_backward`` (dL/dq, dL/dmu; the five weight gradients
only on request), generated with the op from the declaration below (``ops/fused_op.py``).

This module is the op: its checks, its reference forward and backward (any device; also what a
joint graph traces), the plain expression the tests differentiate with autograd, and the
declaration. Its kernels: ``cpu/painn_update.cpp`` (registered in ``cpu/operators.cpp``) and
``cuda/painn_update.cu`` (launched by ``cuda/update.py``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .checks import same
from .errors import InputError
from .fused_op import FusedOp


def check_update(q, mu, mix_weight, w1, b1, w2, b2) -> None:
    op = "painn_update"
    if q.ndim != 2 or not q.is_floating_point():
        raise InputError(f"{op}: q must be a floating tensor of shape (N, F), got {q.dtype} {tuple(q.shape)}")
    n, f = q.shape
    shapes = {"mu": (mu, (n, 3, f)), "mix_weight": (mix_weight, (2 * f, f)), "w1": (w1, (f, 2 * f)), "b1": (b1, (f,)),
              "w2": (w2, (3 * f, f)), "b2": (b2, (3 * f,))}
    for name, (t, shape) in shapes.items():
        if tuple(t.shape) != shape:
            raise InputError(f"{op}: {name} must have shape {shape}, got {tuple(t.shape)}")
    same(op, "q", q, [(name, t) for name, (t, _) in shapes.items()])



def _signature(q: Tensor, mu: Tensor, mix_weight: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
               epsilon: float) -> tuple[Tensor, Tensor]:
    check_update(q, mu, mix_weight, w1, b1, w2, b2)


def _fake(q, mu, *rest):
    return q.new_empty(q.shape), mu.new_empty(mu.shape)


def _update_intermediates(q, mu, mix_weight, w1, b1, w2, b2, epsilon: float):
    """Spelled with split and linear, as the model is: traced into a joint graph
    (``fused_op.inline_reference``), autograd then differentiates it as it does the model."""
    f = q.shape[1]
    v, w = torch.nn.functional.linear(mu, mix_weight).split(f, dim=2)  # (N, 3, F) each
    vn = torch.sqrt((v * v).sum(1) + epsilon)
    ctx = torch.cat([q, vn], dim=1)
    pre = torch.nn.functional.linear(ctx, w1, b1)
    h = torch.nn.functional.silu(pre)
    x = torch.nn.functional.linear(h, w2, b2)
    return v, w, vn, ctx, pre, h, x


def update_forward(q, mu, mix_weight, w1, b1, w2, b2, epsilon: float):
    """(q', mu') of PaiNN's update (mixing) block; q (N, F), mu (N, 3, F) (docs/ops.md):
    V, W = mu U^T;  a, b, c = W2 silu(W1 [q, |V|] + b1) + b2;  q' = q + a + c (V.W);  mu' = mu + b W."""
    f = q.shape[1]
    v, w, _, _, _, _, x = _update_intermediates(q, mu, mix_weight, w1, b1, w2, b2, epsilon)
    a, b, c = x.split(f, dim=1)
    return q + a + c * (v * w).sum(1), mu + b[:, None, :] * w


def update_backward(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon: float, weight_grad: bool = True):
    """(dL/dq, dL/dmu, and, when ``weight_grad``, dL/dU, dL/dW1, dL/db1, dL/dW2, dL/db2 else Nones).

    With s = V.W (summed over the 3 components), |V| = sqrt(V.V + eps):
    dL/da = gq, dL/dc = gq s, dL/ds = gq c, dL/db = gmu.W;  dL/dh = [da, db, dc] W2,
    dL/dpre = dL/dh silu'(pre);  [dL/dq_ctx, dL/d|V|] = dL/dpre W1;
    dL/dV = dL/ds W + dL/d|V| V / |V|,  dL/dW = gmu b + dL/ds V;  dL/dmu = gmu + [dV, dW] U.
    """
    f = q.shape[1]
    v, w, vn, ctx, pre, h, x = _update_intermediates(q, mu, mix_weight, w1, b1, w2, b2, epsilon)
    _, b, c = x.split(f, dim=1)
    s = (v * w).sum(1)
    gs = gq * c
    gx = torch.cat([gq, (gmu * w).sum(1), gq * s], dim=1)
    gh = gx @ w2
    sig = torch.sigmoid(pre)
    gpre = gh * sig * (1 + pre * (1 - sig))
    gctx = gpre @ w1
    gv = gs[:, None, :] * w + (gctx[:, f:] / vn)[:, None, :] * v
    gw = gmu * b[:, None, :] + gs[:, None, :] * v
    gvw = torch.cat([gv, gw], dim=2)
    gq_in = gq + gctx[:, :f]
    gmu_in = gmu + torch.matmul(gvw, mix_weight)
    if not weight_grad:
        return gq_in, gmu_in, None, None, None, None, None
    return gq_in, gmu_in, *update_weight_gradients(mu, gvw, gpre, gx, ctx, h)


def update_weight_gradients(mu, gvw, gpre, gx, ctx, h) -> tuple:
    """(dL/dU, dL/dW1, dL/db1, dL/dW2, dL/db2) from the per-atom factors dL/d[V, W] (N, 3, 2F),
    dL/dpre (N, F), dL/dx (N, 3F) and the inputs [q, |V|] (N, 2F), h (N, F): sums over atoms as
    matrix products (what the kernels' backwards hand back to be reduced, deterministically)."""
    f = mu.shape[-1]
    g_mix = gvw.reshape(-1, 2 * f).t() @ mu.reshape(-1, f)
    return g_mix, gpre.t() @ ctx, gpre.sum(0), gx.t() @ h, gx.sum(0)


def painn_update_unfused(q, mu, mix_weight, w1, b1, w2, b2, epsilon: float):
    """q' (N, F), mu' (N, 3, F) of one PaiNN update block, written the way the model writes it
    (with q as the model's (N, 1, F))."""
    f = q.shape[1]
    lin = torch.nn.functional.linear
    mu_v, mu_w = torch.split(lin(mu, mix_weight), f, dim=-1)
    mu_vn = torch.sqrt(torch.sum(mu_v ** 2, dim=-2, keepdim=True) + epsilon)
    ctx = torch.cat([q[:, None, :], mu_vn], dim=-1)
    dq, dmu, dqmu = torch.split(lin(torch.nn.functional.silu(lin(ctx, w1, b1)), w2, b2), f, dim=-1)
    q_out = q[:, None, :] + dq + dqmu * torch.sum(mu_v * mu_w, dim=1, keepdim=True)
    return q_out[:, 0, :], mu + dmu * mu_w


UPDATE = FusedOp("painn_update", _signature, _fake, update_forward, update_backward,
                 grads=("q", "mu", "mix_weight", "w1", "b1", "w2", "b2"),
                 weights=("mix_weight", "w1", "b1", "w2", "b2"))
OP, BACKWARD = UPDATE.name, UPDATE.backward_name
painn_update, painn_update_backward = UPDATE.op, UPDATE.backward_op
update = UPDATE.call
