r"""``painnfx::radial_filter``: radial basis, cutoff and filter Linear in one op.

    W = (phi(d) Wf^T + bf) * fc(d)     d (E,) -> W (E, out)

Used where the filter has consumers other than a PaiNN message (otherwise the rewriter
fuses it into ``painn_message`` and W is never materialised). The backward gives dL/dd
(hence forces through d(r)) and, when the weights need it, dL/dWf and dL/dbf. Dispatch and
double backward as for ``painn_message``. It runs once per evaluation (one filter for all
layers), so it checks its distances for NaN/inf (one host sync).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import dispatch, reference
from .checks import check_finite, check_radial

OP, BACKWARD = "radial_filter", "radial_filter_backward"


def _radial_filter_body(d: Tensor, weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: str,
                  cutoff_params: list[float]) -> Tensor:
    check_radial(OP, d, weight, bias, basis_params, basis, cutoff, cutoff_params)
    check_finite(OP, d)
    return dispatch.run(OP, d.device.type, d, weight, bias, basis_params, basis, cutoff, cutoff_params)


radial_filter = torch.library.custom_op("painnfx::radial_filter", mutates_args=())(_radial_filter_body)


@radial_filter.register_fake
def _radial_filter_fake(d, weight, bias, basis_params, basis, cutoff, cutoff_params):
    check_radial(OP, d, weight, bias, basis_params, basis, cutoff, cutoff_params)
    return d.new_empty(d.shape[0], weight.shape[0])


def _reference_forward(d, weight, bias, basis_params, basis, cutoff, cutoff_params):
    return reference.radial_filter_forward(d, weight, bias, basis_params, basis, cutoff, cutoff_params)


def _radial_filter_backward_body(grad: Tensor, d: Tensor, weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str,
                           cutoff: str, cutoff_params: list[float]) -> tuple[Tensor, Tensor, Tensor]:
    return dispatch.run(BACKWARD, d.device.type, grad, d, weight, bias, basis_params, basis, cutoff, cutoff_params)


radial_filter_backward = torch.library.custom_op(
    "painnfx::radial_filter_backward", mutates_args=())(_radial_filter_backward_body)


@radial_filter_backward.register_fake
def _radial_filter_backward_fake(grad, d, weight, bias, basis_params, basis, cutoff, cutoff_params):
    return torch.empty_like(d), torch.empty_like(weight), torch.empty_like(bias)


def _setup_context(ctx, inputs, output):
    d, weight, bias, basis_params, basis, cutoff, cutoff_params = inputs
    ctx.save_for_backward(d, weight, bias, basis_params)
    ctx.consts = (basis, cutoff, list(cutoff_params))
    ctx.backend = dispatch.forced()


def _backward(ctx, grad):
    d, weight, bias, basis_params = ctx.saved_tensors
    args = (grad, d, weight, bias, basis_params, *ctx.consts)
    if torch.is_grad_enabled():
        gd, gw, gb = reference.radial_filter_backward(*args)
    else:
        with dispatch.use_backend(ctx.backend):
            gd, gw, gb = radial_filter_backward(*args)
    need = ctx.needs_input_grad
    return gd if need[0] else None, gw if need[1] else None, gb if need[2] else None, None, None, None, None


radial_filter.register_autograd(_backward, setup_context=_setup_context)
dispatch.define(OP, radial_filter, _radial_filter_body)
dispatch.define(BACKWARD, radial_filter_backward, _radial_filter_backward_body)
dispatch.implement(OP, dispatch.REFERENCE, _reference_forward)
dispatch.implement(BACKWARD, dispatch.REFERENCE, reference.radial_filter_backward)
