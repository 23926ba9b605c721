r"""``painnfx::painn_message``: one PaiNN interaction's edge work as a single op.

    d = |r_e|, u = r_e / d, W_e = (phi(d) Wf^T + bf) fc(d)           (never stored whole)
    dq_i  = sum_{e=(i<-j)} W_s x_s,j
    dmu_i = sum_{e=(i<-j)} W_vr x_vr,j u_e + W_vv x_vv,j mu_j

Inputs: r (E, 3) edge vectors R[j] - R[i] + shift, idx_i/idx_j (E,) int64, edges (the
4 tensors of ``prepare_edges`` for this edge list), x (N, 3F) the interaction's context-net
output, mu (N, 3, F) or None (= zero, the first layer), weight (3F, K), bias (3F,) this
layer's filter slice, basis_params and basis (a radial-basis spec name), cutoff (a cutoff
spec name) and cutoff_params (ops.radial). Outputs dq (N, F), dmu (N, 3, F).

Backward: ``painnfx::painn_message_backward`` (dL/dr, dL/dx, dL/dmu, dL/dweight, dL/dbias; the
weight gradients only on request), dispatched per device like the forward. The op, its fake,
backward and autograd formula are generated from the declaration below (``ops/fused_op.py``).
"""

from __future__ import annotations

from typing import Optional

from torch import Tensor

from . import reference
from .checks import check_message
from .edges import check_plan
from .fused_op import FusedOp


def _signature(r: Tensor, idx_i: Tensor, idx_j: Tensor, edges: list[Tensor], x: Tensor, mu: Optional[Tensor],
               weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: str, cutoff_params: list[float],
               chunk_size: int = 0) -> tuple[Tensor, Tensor]:
    check_message(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params)
    check_plan("painn_message", edges, x.shape[0], r.shape[0])


def _fake(r, idx_i, idx_j, edges, x, *rest):
    n, f = x.shape[0], x.shape[1] // 3
    return x.new_empty(n, f), x.new_empty(n, 3, f)


MESSAGE = FusedOp("painn_message", _signature, _fake, reference.message_forward, reference.message_backward,
                  grads=("r", "x", "mu", "weight", "bias"), weights=("weight", "bias"))
OP, BACKWARD = MESSAGE.name, MESSAGE.backward_name
painn_message, painn_message_backward = MESSAGE.op, MESSAGE.backward_op
message = MESSAGE.call
