r"""``painnfx::painn_message``: one PaiNN interaction's edge work as a single op.

    d = |r_e|, u = r_e / d, W_e = (phi(d) Wf^T + bf) fc(d)           (never stored whole)
    dq_i  = sum_{e=(i<-j)} W_s x_s,j
    dmu_i = sum_{e=(i<-j)} W_vr x_vr,j u_e + W_vv x_vv,j mu_j

Inputs: r (E, 3) edge vectors R[j] - R[i] + shift, idx_i/idx_j (E,) int64, x (N, 3F) the
interaction's context-net output, mu (N, 3, F) or None (= zero, the first layer),
weight (3F, K), bias (3F,) this layer's filter slice, basis_params (see ops.radial),
basis "gaussian" | "bessel", cutoff rc. Outputs dq (N, F), dmu (N, 3, F).

The backward (``painnfx::painn_message_backward``, same backend dispatch) is analytical. With
``create_graph=True`` the differentiable reference backward runs instead, so double backward
works on every backend.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor

from . import reference
from .backends import select
from .checks import check_message

_EMPTY = (0,)


@torch.library.custom_op("painnfx::painn_message", mutates_args=())
def painn_message(
    r: Tensor, idx_i: Tensor, idx_j: Tensor, x: Tensor, mu: Optional[Tensor], weight: Tensor,
    bias: Tensor, basis_params: Tensor, basis: str, cutoff: float, chunk_size: int = 0, backend: str = "auto",
) -> tuple[Tensor, Tensor]:
    check_message(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, values=True)
    backend = select(x.device, backend)
    return backend.message_forward(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, chunk_size)


@painn_message.register_fake
def _painn_message_fake(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, chunk_size=0,
                        backend="auto"):
    check_message(r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, values=False)
    n, f = x.shape[0], x.shape[1] // 3
    return x.new_empty(n, f), x.new_empty(n, 3, f)


@torch.library.custom_op("painnfx::painn_message_backward", mutates_args=())
def painn_message_backward(
    gq: Tensor, gmu: Tensor, r: Tensor, idx_i: Tensor, idx_j: Tensor, x: Tensor, mu: Optional[Tensor],
    weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: float, chunk_size: int,
    weight_grad: bool, backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(dL/dr, dL/dx, dL/dmu, dL/dweight, dL/dbias); empty tensors for the ones not computed."""
    backend = select(x.device, backend)
    gr, gx, gmu_in, gw, gb = backend.message_backward(
        gq, gmu, r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, chunk_size, weight_grad
    )
    def empty():  # one fresh tensor per missing output: outputs must not alias each other
        return x.new_empty(_EMPTY)

    return gr, gx, empty() if gmu_in is None else gmu_in, empty() if gw is None else gw, empty() if gb is None else gb


@painn_message_backward.register_fake
def _painn_message_backward_fake(gq, gmu, r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff,
                                 chunk_size, weight_grad, backend="auto"):
    def empty():
        return x.new_empty(_EMPTY)

    return (
        torch.empty_like(r), torch.empty_like(x), empty() if mu is None else torch.empty_like(mu),
        torch.empty_like(weight) if weight_grad else empty(), torch.empty_like(bias) if weight_grad else empty(),
    )


def _setup_context(ctx, inputs, output):
    r, idx_i, idx_j, x, mu, weight, bias, basis_params, basis, cutoff, chunk_size, backend = inputs
    ctx.save_for_backward(r, idx_i, idx_j, x, mu, weight, bias, basis_params)
    ctx.basis, ctx.cutoff, ctx.chunk_size, ctx.backend = basis, cutoff, chunk_size, backend


def _backward(ctx, gq, gmu):
    r, idx_i, idx_j, x, mu, weight, bias, basis_params = ctx.saved_tensors
    need = ctx.needs_input_grad
    gq = torch.zeros_like(x[:, : x.shape[1] // 3]) if gq is None else gq
    gmu = torch.zeros(x.shape[0], 3, x.shape[1] // 3, dtype=x.dtype, device=x.device) if gmu is None else gmu
    weight_grad = bool(need[5] or need[6])
    args = (gq, gmu, r, idx_i, idx_j, x, mu, weight, bias, basis_params, ctx.basis, ctx.cutoff, ctx.chunk_size,
            weight_grad)
    if torch.is_grad_enabled():
        # create_graph=True: differentiable analytical backward, so it can be differentiated again
        gr, gx, gmu_in, gw, gb = reference.message_backward(*args)
    else:
        gr, gx, gmu_in, gw, gb = painn_message_backward(*args, ctx.backend)
    return (
        gr if need[0] else None, None, None, gx if need[3] else None,
        gmu_in if (mu is not None and need[4]) else None,
        gw if need[5] else None, gb if need[6] else None, None, None, None, None, None,
    )


painn_message.register_autograd(_backward, setup_context=_setup_context)
