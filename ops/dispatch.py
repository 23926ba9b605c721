"""Per-device dispatch of the fused ops.

Each op has one schema (no backend argument), declared once (``FusedOp``, ops/fused_op.py); its
default implementation, for every device, is the op's body: argument checks, then ``run`` (the
backend chosen here for the tensors' device type). A backend registers its implementations by
declaration and device type:

* a *native* backend's kernels are the dispatcher's own kernels for its device type (the "cpp"
  backend: operators.cpp registers the CPU kernel of each op in C++); its implementations here are
  how an eager call reaches them (below autograd);
* any other backend (CUDA through NVRTC launches, the emulator, the reference) runs in Python from
  the op's body.

``use_backend(name)`` is a thread-local override for tests and comparisons on one device (an op
the forced backend does not implement runs the device's default). Forcing a backend that is not
native also turns on torch's Python dispatcher in the block, where each op's Python kernel for the
CPU key (``FusedOp``) sends a dispatcher-level call (a compiled graph, ``opcheck``) to the forced
backend instead of the C++ kernel. The autograd formulas record the override in effect at forward
time and re-apply it in the backward (which autograd may run on another thread).

A backend that cannot serve a call (no compiler, no cuda-python, an unsupported dtype) says so
through its ``usable`` predicate, and the reference implementation runs: one place, not a fallback
in every kernel. ``record_calls()`` counts which implementation ran each call made through ``run``,
so tests and tools can state "the fused ops ran on the C++ kernels", not merely that they were
chosen (calls that reach the C++ kernels directly are counted in C++: ``cpu.backend.call_counts``).
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

REFERENCE = "reference"


@dataclass
class BackendInfo:
    name: str
    device_types: set = field(default_factory=set)  # {"*"}: every device
    priority: int = 0
    usable: Optional[Callable[..., bool]] = None  # (op name, *op args) -> can this backend run it?
    native: bool = False  # its kernels are the dispatcher's kernels for its device types
    counts: Optional[Callable[[], dict]] = None  # native: {op name: calls} counted by its library


_BACKENDS: dict[str, BackendInfo] = {REFERENCE: BackendInfo(REFERENCE, {"*"}, 0)}
_IMPLS: dict[tuple[str, str], Callable] = {}  # (op name, backend) -> implementation
_DEVICE_CHOICE: dict[tuple[str, str], str] = {}  # (op name, device type) -> backend
_OPS: dict[str, object] = {}  # op name -> its torch.library custom op
_local = threading.local()
_recorders: list = []  # Counters of record_calls() blocks in progress
_recorders_lock = threading.Lock()


def forced() -> Optional[str]:
    """The backend forced by ``use_backend`` on this thread, or None."""
    return getattr(_local, "name", None)


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Run the fused ops with backend ``name`` in this block (None: the dispatcher's choice)."""
    if name is not None and name not in _BACKENDS:
        raise ValueError(f"unknown backend {name!r}; registered: {available_backends()}")
    previous, _local.name = forced(), name
    python_kernels = name is not None and not _BACKENDS[name].native
    try:
        if python_kernels:
            with torch._C._EnablePythonDispatcher():
                yield
        else:
            yield
    finally:
        _local.name = previous


def available_backends() -> list[str]:
    return list(_BACKENDS)


def operator_names() -> list[str]:
    """The fused ops made dispatchable with ``define`` (each a ``painnfx::`` torch.library op)."""
    return list(_OPS)


def register_backend(name: str, device_types: set, priority: int = 1,
                     usable: Optional[Callable[..., bool]] = None,
                     counts: Optional[Callable[[], dict]] = None) -> None:
    """Declare a backend serving ``device_types`` (its implementations follow with ``implement``).
    ``usable(op_name, *args)``, if given, is asked before each call; False runs the reference.
    ``counts``: for a native backend (its kernels registered with torch's dispatcher by its own
    library), {op name: calls so far} as its library counts them, whoever called."""
    for other in _BACKENDS.values():
        shared = set(device_types) & other.device_types - {"*"}
        if shared and (counts is not None) != other.native and (priority > other.priority) == (counts is None):
            raise ValueError(f"backend {name!r} would outrank {other.name!r} on {sorted(shared)}, but only a native "
                             "backend (the dispatcher's own kernels) is chosen by the dispatcher there: give it a "
                             "lower priority and force it with use_backend()")
    _BACKENDS[name] = BackendInfo(name, set(device_types), priority, usable, counts is not None, counts)


def define(op_name: str, op) -> None:
    """Make ``op`` (a ``FusedOp``'s custom op, whose default implementation calls ``run``) dispatchable."""
    _OPS[op_name] = op


def implement(op_name: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op_name``: ``run`` chooses it for its
    device types unless a backend of higher priority implements the op there."""
    info = _BACKENDS.get(backend)
    if info is None:
        raise ValueError(f"register_backend({backend!r}, ...) first")
    _IMPLS[(op_name, backend)] = fn
    for device_type in info.device_types - {"*"}:
        current = _DEVICE_CHOICE.get((op_name, device_type))
        if current is not None and _BACKENDS[current].priority > info.priority:
            continue
        _DEVICE_CHOICE[(op_name, device_type)] = backend


def implement_op(declared, backend: str, forward: Callable, backward: Optional[Callable] = None) -> None:
    """``backend``'s implementation of a declared op (a ``FusedOp``): ``forward`` under its name and
    ``backward`` under its backward's. Backends name ops through their declarations, never by string."""
    implement(declared.name, backend, forward)
    if backward is not None:
        implement(declared.backward_name, backend, backward)


def chosen(op_name: str, device_type: str) -> str:
    """The backend that runs ``op_name`` on ``device_type`` right now."""
    name = forced()
    if name is None:
        return _DEVICE_CHOICE.get((op_name, device_type), REFERENCE)
    info = _BACKENDS[name]
    if "*" not in info.device_types and device_type not in info.device_types:
        raise RuntimeError(f"backend {name!r} does not run on {device_type} (it serves {sorted(info.device_types)})")
    if (op_name, name) not in _IMPLS:  # e.g. prepare_edges: one implementation serves all
        return _DEVICE_CHOICE.get((op_name, device_type), REFERENCE)
    return name


def select(op_name: str, device_type: str, *args) -> tuple:
    """(implementation, whether its backend is native) of the backend that runs this call; a call
    recorded by ``record_calls`` (a native backend's library counts its own)."""
    name = chosen(op_name, device_type)
    info = _BACKENDS[name]
    if info.usable is not None and not info.usable(op_name, *args):
        name, info = REFERENCE, _BACKENDS[REFERENCE]
    if _recorders and not info.native:
        with _recorders_lock:
            for calls in _recorders:
                calls[(op_name, name)] += 1
    return _IMPLS[(op_name, name)], info.native


def run(op_name: str, device_type: str, *args):
    """``op_name`` on ``args`` by the backend ``select`` chooses."""
    return select(op_name, device_type, *args)[0](*args)


def _native_counts() -> dict:
    """{(op name, backend): calls so far} of the native backends."""
    out = {}
    for info in list(_BACKENDS.values()):
        if info.counts is not None:
            out.update({(op, info.name): n for op, n in info.counts().items()})
    return out


@contextlib.contextmanager
def record_calls():
    """Count, in this block and on every thread, which implementation ran each fused op:
    ``with record_calls() as calls: ...`` then ``calls[("painn_message", "cpp")]``. The calls of a
    native backend's kernels, from Python or from compiled code, are its library's own counts
    (added when the block ends)."""
    calls: Counter = Counter()
    before = _native_counts()
    with _recorders_lock:
        _recorders.append(calls)
    try:
        yield calls
    finally:
        with _recorders_lock:
            _recorders[:] = [c for c in _recorders if c is not calls]  # (by identity: Counters compare by value)
        for key, n in _native_counts().items():
            if n > before.get(key, 0):
                calls[key] += n - before.get(key, 0)


def backends_that_ran(calls: Counter) -> dict:
    """``record_calls()`` counts as {op name: {backend: calls}}, for reports and tests."""
    out: dict = {}
    for (op_name, backend), n in sorted(calls.items()):
        out.setdefault(op_name, {})[backend] = n
    return out


def remove_backend(name: str) -> None:
    """Forget backend ``name`` (its device kernels fall back to the reference implementation)."""
    if name == REFERENCE:
        raise ValueError("the reference backend cannot be removed")
    _BACKENDS.pop(name, None)
    for key in [k for k in _IMPLS if k[1] == name]:
        del _IMPLS[key]
    for key in [k for k, v in _DEVICE_CHOICE.items() if v == name]:
        del _DEVICE_CHOICE[key]
        # the next best remaining backend of that device type takes over
        op_name, device_type = key
        left = [b for b in _BACKENDS.values() if device_type in b.device_types and (op_name, b.name) in _IMPLS]
        if left:
            _DEVICE_CHOICE[key] = max(left, key=lambda b: b.priority).name
