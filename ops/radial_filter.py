r"""``painnfx::radial_filter``: basis expansion, cosine cutoff and filter Linear in one op.

    W = (phi(d) Wf^T + bf) * fc(d)     d (E,) -> W (E, out)

Used where the filter has consumers other than a PaiNN message (otherwise the rewriter
fuses it into ``painn_message`` and W is never materialised). The backward gives dL/dd
(hence forces through d(r)) and, when the weights need it, dL/dWf and dL/dbf.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import reference
from .backends import select
from .checks import check_radial


@torch.library.custom_op("painnfx::radial_filter", mutates_args=())
def radial_filter(d: Tensor, weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: float,
                  backend: str = "auto") -> Tensor:
    check_radial("radial_filter", d, weight, bias, basis_params, basis, cutoff, values=True)
    return select(d.device, backend).radial_filter_forward(d, weight, bias, basis_params, basis, cutoff)


@radial_filter.register_fake
def _radial_filter_fake(d, weight, bias, basis_params, basis, cutoff, backend="auto"):
    check_radial("radial_filter", d, weight, bias, basis_params, basis, cutoff, values=False)
    return d.new_empty(d.shape[0], weight.shape[0])


@torch.library.custom_op("painnfx::radial_filter_backward", mutates_args=())
def radial_filter_backward(
    grad: Tensor, d: Tensor, weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: float,
    backend: str = "auto",
) -> tuple[Tensor, Tensor, Tensor]:
    return select(d.device, backend).radial_filter_backward(grad, d, weight, bias, basis_params, basis, cutoff)


@radial_filter_backward.register_fake
def _radial_filter_backward_fake(grad, d, weight, bias, basis_params, basis, cutoff, backend="auto"):
    return torch.empty_like(d), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    d, weight, bias, basis_params, basis, cutoff, backend = inputs
    ctx.save_for_backward(d, weight, bias, basis_params)
    ctx.basis, ctx.cutoff, ctx.backend = basis, cutoff, backend


def _backward(ctx, grad):
    d, weight, bias, basis_params = ctx.saved_tensors
    args = (grad, d, weight, bias, basis_params, ctx.basis, ctx.cutoff)
    if torch.is_grad_enabled():
        gd, gw, gb = reference.radial_filter_backward(*args)
    else:
        gd, gw, gb = radial_filter_backward(*args, ctx.backend)
    need = ctx.needs_input_grad
    return gd if need[0] else None, gw if need[1] else None, gb if need[2] else None, None, None, None, None


radial_filter.register_autograd(_backward, setup_context=_setup_context)
