r"""``painnfx::radial_filter``: radial basis, cutoff and filter Linear in one op.

    W = (phi(d) Wf^T + bf) * fc(d)     d (E,) -> W (E, out)

Used where the filter has consumers other than a PaiNN message (otherwise the rewriter
fuses it into ``painn_message`` and W is never materialised). The backward gives dL/dd (hence
forces through d(r)), dL/dWf and dL/dbf. Declared, dispatched and differentiated (twice) as
``painn_message`` is (``ops/fused_op.py``). It runs once per evaluation (one filter for all
layers), so it checks its distances for NaN/inf (one host sync).
"""

from __future__ import annotations

from torch import Tensor

from . import reference
from .checks import check_finite, check_radial
from .fused_op import FusedOp


def _signature(d: Tensor, weight: Tensor, bias: Tensor, basis_params: Tensor, basis: str, cutoff: str,
               cutoff_params: list[float]) -> Tensor:
    check_radial("radial_filter", d, weight, bias, basis_params, basis, cutoff, cutoff_params)


def _fake(d, weight, *rest):
    return d.new_empty(d.shape[0], weight.shape[0])


def _finite(d, *rest):
    check_finite("radial_filter", d)


RADIAL_FILTER = FusedOp("radial_filter", _signature, _fake, reference.radial_filter_forward,
                        reference.radial_filter_backward, grads=("d", "weight", "bias"), value_check=_finite)
OP, BACKWARD = RADIAL_FILTER.name, RADIAL_FILTER.backward_name
radial_filter, radial_filter_backward = RADIAL_FILTER.op, RADIAL_FILTER.backward_op
