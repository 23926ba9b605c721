"""The emulated CUDA kernels as a dispatcher backend on CPU tensors (tests only).

``register()`` adds the backend "emulated" for the device type "cpu" with the lowest priority,
so it never replaces the C++ kernels as the CPU default: it runs only where it is asked for,
``optimize(model, backend="emulated")`` or ``use_backend("emulated")``. A forced backend is
recorded at forward time and re-applied in the backward (ops/dispatch.py), so an optimized
model then runs its whole energy+forces+stress step on the same ``.cu`` kernels and the same
launch-argument code (``ops/cuda/message.py``) that a GPU runs, through the emulator.

``schedule`` ("forward", "reverse", "random") orders the emulated threads between barriers.
Slow (fibers): for systems of a few atoms in tests, never a real backend.
"""

from __future__ import annotations

import functools

from painnfx.ops import dispatch
from painnfx.ops.cuda import kernels

from . import Emulator, build

NAME = "emulated"
SOURCES = list(kernels.SOURCES)
_state: dict = {"schedule": "forward", "seed": 0}


def emulator(sources=None) -> Emulator:
    """The emulator of the message and update kernels (built once, cached on disk like every build)."""
    if "emu" not in _state:
        _state["emu"] = build(SOURCES, sources=sources)
    return _state["emu"]


def _launch(launch) -> None:
    emulator().launch(launch.kernel, launch.grid, launch.block, launch.args, schedule=_state["schedule"],
                      seed=_state["seed"])


def register(schedule: str = "forward", seed: int = 0, sources=None) -> None:
    """Register (or re-register) the backend; ``sources`` replaces kernel files (mutation tests)."""
    _state.pop("emu", None)
    _state.update(schedule=schedule, seed=seed)
    emulator(sources)
    dispatch.register_backend(NAME, {"cpu"}, priority=-1, usable=kernels.takes)  # F bound as on a GPU
    for op in kernels.KERNELS:
        dispatch.implement_op(op.DECLARED, NAME, functools.partial(op.run_forward, _launch),
                              functools.partial(op.run_backward, _launch))


def unregister() -> None:
    _state.pop("emu", None)
    dispatch.remove_backend(NAME)
