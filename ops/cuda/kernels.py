"""The fused ops with CUDA kernels: one module each (``message.py``, ``update.py``) holding the op it
serves (``DECLARED``), its ``.cu`` files (``SOURCES``), the launches of its forward and backward
(``run_forward(launch, *args)``, ``run_backward(launch, *args)``) and, where the kernels bound
an argument, ``takes(op_name, *args)``. The GPU backend (backend.py), its launcher and the CPU
emulator of the tests (``painnfx.tools.emulator.backend``) register and compile what this list
names: a new op's kernels are its module and its entry here.
"""

from __future__ import annotations

from . import message, update

KERNELS = (message, update)
#: every kernel source, in the order the launcher compiles them
SOURCES = tuple(name for kernels in KERNELS for name in kernels.SOURCES)


def takes(op_name: str, *args) -> bool:
    """Whether the kernels take this call (for a backend's ``usable`` predicate, ops/dispatch.py)."""
    return all(kernels.takes(op_name, *args) for kernels in KERNELS if hasattr(kernels, "takes"))
