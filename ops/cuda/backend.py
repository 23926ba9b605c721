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
from . import kernels, message

NAME = "cuda"
_unavailable: list = []  # the reason, once cuda-python failed to import


def _usable(op_name: str = "", *args) -> bool:
    """cuda-python imports (else the reference runs, after one warning), and the kernels take the
    call (``kernels.takes``: the update kernels bound the feature count)."""
    if _unavailable:
        return False
    if not kernels.takes(op_name, *args):
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


def register() -> None:
    dispatch.register_backend(NAME, {"cuda"}, priority=1, usable=_usable)
    for op in kernels.KERNELS:
        dispatch.implement_op(op.DECLARED, NAME, functools.partial(op.run_forward, _launch),
                              functools.partial(op.run_backward, _launch))
