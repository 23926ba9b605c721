"""The "cpp" backend: the fused ops' CPU kernels, one library registered with torch's dispatcher.

``operators.cpp`` registers each fused op's CPU kernel under the op itself (``painnfx::painn_message``
and the rest, declared in ``ops/*.py``), so the dispatcher runs C++ for CPU tensors whoever calls:
a compiled graph (Inductor's C++ wrapper with no Python in between), ``torch.compile``, export,
``opcheck``. An eager call of the fused graph (``FusedOp.call``) reaches the same function through
``dispatch.select``: its implementations here redispatch straight to the CPU kernel (~2 us), below
torch.library's Python layers. ``record_calls`` counts those; ``call_counts()`` counts in C++ every
call of every op of the library, whoever made it.

The library is built on first use (build.py) and loaded with ``torch.ops.load_library``. Until
then, or without a compiler, or if the build fails (one warning says why), the ops run their
reference implementation. Double backward (``create_graph=True``) runs the differentiable
reference backward, as on every backend.
"""

from __future__ import annotations

import functools
import threading
from typing import Optional

import torch

from .. import dispatch
from ..build_cache import load_once
from ..errors import InputError
from ..fused_op import declared
from .build import CpuBuildError, build

NAME = "cpp"
_DTYPES = (torch.float32, torch.float64)
_CPU = torch._C.DispatchKeySet(torch._C.DispatchKey.CPU)
_state: dict = {}
_lock = threading.Lock()


def _build_and_load() -> tuple:
    path, info = build()
    torch.ops.load_library(str(path))
    from . import dense

    dense.register_python_parts()
    return path, info


def library():
    """The loaded library's path, or None (with one warning) when it cannot be built here (called
    per op call: after the first, one dict lookup)."""
    return load_once(_state, _lock, _build_and_load, (CpuBuildError, OSError, RuntimeError),
                     "the CPU kernels are unavailable ({reason}); the fused ops run their reference implementation")


@functools.lru_cache(maxsize=1)
def kernel_ops() -> tuple:
    """The ops the loaded library has kernels for, in the order of its call counts (``dense`` first)."""
    return tuple(torch.ops.painnfx.cpu_counted_ops())


def loaded() -> bool:
    """Whether the library is loaded in this process (nothing is built)."""
    return _state.get("product") is not None


def info() -> dict:
    """Build facts (``build_seconds``, ``cached``, ``flags``) or the reason the kernels are unavailable."""
    library()
    return dict(_state.get("info", {}))


def call_counts() -> dict:
    """{op: calls} of the library's kernels since it was loaded ({} when it is not): what ran in
    C++, counted there (also calls from Inductor's C++ wrapper, which no Python hook sees). Builds
    nothing."""
    if not loaded():
        return {}
    return dict(zip(kernel_ops(), torch.ops.painnfx.cpu_call_counts()))


def _fused_op_counts() -> dict:
    return {op: n for op, n in call_counts().items() if op != "dense"}


#: MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6): what torch.set_flush_denormal(True) sets
FTZ_DAZ = (1 << 15) | (1 << 6)


def mxcsr() -> Optional[int]:
    """The calling thread's x86 MXCSR (0 on other ISAs), or None without the library."""
    return None if library() is None else int(torch.ops.painnfx.cpu_mxcsr())


def pool_mxcsr(threads: int) -> list:
    """The MXCSR of each of ``threads`` OpenMP threads of the library ([] without it)."""
    return [] if library() is None else list(torch.ops.painnfx.cpu_pool_mxcsr(threads))


def flush_denormal_state() -> Optional[bool]:
    """Whether the calling thread flushes subnormals (x86 MXCSR FTZ and DAZ, what
    ``torch.set_flush_denormal`` sets; torch has no getter); None where unknown (no kernels, other ISA)."""
    csr = mxcsr()
    return None if not csr else (csr & FTZ_DAZ) == FTZ_DAZ


def _kernel(declared_op):
    """The CPU kernel of a declared op, called below autograd and torch.library's Python layers;
    its argument errors (ValueError from C++) raised as ``InputError``."""
    redispatch = declared_op._opoverload.redispatch

    def run(*args):
        try:
            return redispatch(_CPU, *args)
        except InputError:
            raise
        except ValueError as exc:
            raise InputError(str(exc)) from None

    return run


def usable(op_name: str, *args) -> bool:
    """The library is built (or buildable) here, has a kernel for this op and takes this dtype
    (float32, float64)."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    return dtype in _DTYPES and library() is not None and op_name in kernel_ops()


def register() -> None:
    """The "cpp" backend, implementing every declared op (a call of one the library has no kernel
    for runs the reference: ``usable``)."""
    dispatch.register_backend(NAME, {"cpu"}, priority=1, usable=usable, counts=_fused_op_counts)
    for op in declared():
        backward = op.backward_op
        dispatch.implement_op(op, NAME, _kernel(op.op), None if backward is None else _kernel(backward))
