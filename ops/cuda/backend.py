"""The "cuda" backend: the fused message and update ops' forward and backward kernels, registered with
``painnfx.ops.dispatch`` for the device type "cuda", so torch's dispatcher runs them for CUDA
tensors with no further code (``use_backend("reference")`` still selects the reference).

Double backward (training on forces, ``create_graph=True``) runs the differentiable reference
backward on CUDA too (ops/message.py); first-order backwards (MD, energy training) run these
kernels. ``radial_filter`` (a filter with consumers besides messages) and ``prepare_edges``
(torch sorts, already device code) run their reference implementations on the GPU.

If cuda-python is missing on a machine with a GPU, the first call warns once and the reference
implementation runs instead.
"""

from __future__ import annotations

import functools
import warnings

from .. import dispatch
from ..message import MESSAGE
from ..update import UPDATE
from . import message, update

NAME = "cuda"
_unavailable: list = []  # the reason, once cuda-python failed to import


def _usable(op_name: str = "", *args) -> bool:
    """cuda-python imports (else the reference runs, after one warning), and for the update op
    the kernels take its feature count (``update.MAX_F``)."""
    if _unavailable:
        return False
    if not update.takes(op_name, *args):
        return False
    try:
        import cuda.core  # noqa: F401
    except ImportError as exc:
        _unavailable.append(str(exc))
        warnings.warn(f"painnfx: cuda-python is not importable ({exc}); the fused ops run their reference "
                      "implementation on the GPU. pip install 'painnfx[cuda]' for the CUDA kernels", stacklevel=3)
        return False
    return True


def _launch(launch: message.Launch) -> None:
    from .launcher import run

    run(launch, launch.keep[0].device)  # keep[0]: the edge vectors, on the op's device


message_forward = functools.partial(message.run_forward, _launch)
message_backward = functools.partial(message.run_backward, _launch)
update_forward = functools.partial(update.run_forward, _launch)
update_backward = functools.partial(update.run_backward, _launch)


def register() -> None:
    dispatch.register_backend(NAME, {"cuda"}, priority=1, usable=_usable)
    dispatch.implement_op(MESSAGE, NAME, message_forward, message_backward)
    dispatch.implement_op(UPDATE, NAME, update_forward, update_backward)
