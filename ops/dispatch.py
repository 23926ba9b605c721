"""Per-device dispatch of the fused ops through torch.library.

Each op has one schema (no backend argument). Its implementations register by name and
device type: the reference implementation is the op's default (every device), and a backend
registered for a device type (``"cpu"``, ``"cuda"``) installs itself with the op's
``register_kernel(device_type)``, so torch's dispatcher picks it from the tensors' device
with no further code. ``use_backend(name)`` is a thread-local override for tests and
comparisons on one device (an op the forced backend does not implement runs the device's
default); the autograd formulas record the override in effect at forward
time and re-apply it in the backward (which autograd may run on another thread).

A backend that cannot serve a call (no compiler, no cuda-python, an unsupported dtype) says
so through its ``usable`` predicate, and the reference implementation runs: one place, not a
fallback in every kernel. ``record_calls()`` counts which implementation really ran, so tests
and tools can state "the fused ops ran on the C++ kernels", not merely that they were chosen.
"""

from __future__ import annotations

import contextlib
import threading
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

REFERENCE = "reference"


@dataclass
class BackendInfo:
    name: str
    device_types: set = field(default_factory=set)  # {"*"}: every device
    priority: int = 0
    usable: Optional[Callable[..., bool]] = None  # (op name, *op args) -> can this backend run it?


_BACKENDS: dict[str, BackendInfo] = {REFERENCE: BackendInfo(REFERENCE, {"*"}, 0)}
_IMPLS: dict[tuple[str, str], Callable] = {}  # (op name, backend) -> implementation
_DEVICE_CHOICE: dict[tuple[str, str], str] = {}  # (op name, device type) -> backend
_OPS: dict[str, tuple] = {}  # op name -> (torch.library custom op, its body)
_INSTALLED: set = set()  # (op name, device type) with a dispatcher kernel
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
    try:
        yield
    finally:
        _local.name = previous


def available_backends() -> list[str]:
    return list(_BACKENDS)


def operator_names() -> list[str]:
    """The fused ops made dispatchable with ``define`` (each a ``painnfx::`` torch.library op)."""
    return list(_OPS)


def register_backend(name: str, device_types: set, priority: int = 1,
                     usable: Optional[Callable[..., bool]] = None) -> None:
    """Declare a backend serving ``device_types`` (its implementations follow with ``implement``).
    ``usable(op_name, *args)``, if given, is asked before each call; False runs the reference."""
    _BACKENDS[name] = BackendInfo(name, set(device_types), priority, usable)


def define(op_name: str, op, body: Callable) -> None:
    """Make ``op`` dispatchable. ``body`` is its default implementation: argument checks, then
    ``run(op_name, device_type, ...)``; it is also what each device type's kernel runs, so
    checks and defaults are the same whichever backend is chosen."""
    _OPS[op_name] = (op, body)


def implement(op_name: str, backend: str, fn: Callable) -> None:
    """Register ``fn`` as ``backend``'s implementation of ``op_name``; for a non-reference backend
    this installs the dispatcher kernel of each of its device types."""
    info = _BACKENDS.get(backend)
    if info is None:
        raise ValueError(f"register_backend({backend!r}, ...) first")
    _IMPLS[(op_name, backend)] = fn
    for device_type in info.device_types - {"*"}:
        current = _DEVICE_CHOICE.get((op_name, device_type))
        if current is not None and _BACKENDS[current].priority > info.priority:
            continue
        _DEVICE_CHOICE[(op_name, device_type)] = backend
        if (op_name, device_type) not in _INSTALLED:
            op, body = _OPS[op_name]
            op.register_kernel(device_type)(body)
            _INSTALLED.add((op_name, device_type))


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


def run(op_name: str, device_type: str, *args):
    name = chosen(op_name, device_type)
    usable = _BACKENDS[name].usable
    if usable is not None and not usable(op_name, *args):
        name = REFERENCE
    if _recorders:
        with _recorders_lock:
            for calls in _recorders:
                calls[(op_name, name)] += 1
    return _IMPLS[(op_name, name)](*args)


@contextlib.contextmanager
def record_calls():
    """Count, in this block and on every thread, which implementation ran each fused op:
    ``with record_calls() as calls: ...`` then ``calls[("painn_message", "cpp")]``."""
    calls: Counter = Counter()
    with _recorders_lock:
        _recorders.append(calls)
    try:
        yield calls
    finally:
        with _recorders_lock:
            _recorders.remove(calls)


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
