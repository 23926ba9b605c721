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
"""

from __future__ import annotations

from torch import Tensor

from . import reference
from .checks import check_update
from .fused_op import FusedOp


def _signature(q: Tensor, mu: Tensor, mix_weight: Tensor, w1: Tensor, b1: Tensor, w2: Tensor, b2: Tensor,
               epsilon: float) -> tuple[Tensor, Tensor]:
    check_update(q, mu, mix_weight, w1, b1, w2, b2)


def _fake(q, mu, *rest):
    return q.new_empty(q.shape), mu.new_empty(mu.shape)


UPDATE = FusedOp("painn_update", _signature, _fake, reference.update_forward, reference.update_backward,
                 grads=("q", "mu", "mix_weight", "w1", "b1", "w2", "b2"),
                 weights=("mix_weight", "w1", "b1", "w2", "b2"))
OP, BACKWARD = UPDATE.name, UPDATE.backward_name
painn_update, painn_update_backward = UPDATE.op, UPDATE.backward_op
update = UPDATE.call
