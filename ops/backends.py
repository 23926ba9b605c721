"""Backend registry: which implementation of the fused ops runs on which device.

The reference backend (chunked torch, any device) is always registered. Others (the
NVRTC/CUDA backend) register themselves for a device type with a priority; the highest
priority backend that reports itself available for the tensor's device runs. ``use_backend``
forces one, e.g. to compare CUDA with the reference on the same GPU.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import reference


@dataclass
class Backend:
    name: str
    message_forward: Callable
    message_backward: Callable
    radial_filter_forward: Callable
    radial_filter_backward: Callable
    available: Callable[[torch.device], bool] = lambda device: True
    priority: int = 0
    supports_double_backward: bool = True


REFERENCE = Backend(
    name="reference",
    message_forward=reference.message_forward,
    message_backward=reference.message_backward,
    radial_filter_forward=reference.radial_filter_forward,
    radial_filter_backward=reference.radial_filter_backward,
    priority=0,
)

_REGISTRY: dict[str, Backend] = {"reference": REFERENCE}
_DEVICE_TYPES: dict[str, set[str]] = {"reference": {"*"}}
_forced: Optional[str] = None


def register_backend(backend: Backend, device_types: set[str]) -> None:
    _REGISTRY[backend.name] = backend
    _DEVICE_TYPES[backend.name] = set(device_types)


def backends_for(device: torch.device) -> list[Backend]:
    """Backends usable on ``device``, best first."""
    usable = [
        b for name, b in _REGISTRY.items()
        if ("*" in _DEVICE_TYPES[name] or device.type in _DEVICE_TYPES[name]) and b.available(device)
    ]
    return sorted(usable, key=lambda b: -b.priority)


def select(device: torch.device, name: str = "auto") -> Backend:
    """The backend to run on ``device``: ``name`` if given (not "auto"), else the one forced
    by ``use_backend``, else the best available."""
    wanted = name if name != "auto" else _forced
    if wanted is not None:
        backend = _REGISTRY.get(wanted)
        if backend is None:
            raise ValueError(f"unknown backend {wanted!r}; registered: {available_backends()}")
        if backend not in backends_for(device):
            raise RuntimeError(f"backend {wanted!r} is not available on {device}")
        return backend
    return backends_for(device)[0]


def available_backends() -> list[str]:
    return list(_REGISTRY)


@contextlib.contextmanager
def use_backend(name: Optional[str]):
    """Force backend ``name`` (None: automatic) inside the block."""
    global _forced
    if name is not None and name not in _REGISTRY:
        raise ValueError(f"unknown backend {name!r}; registered: {available_backends()}")
    previous, _forced = _forced, name
    try:
        yield
    finally:
        _forced = previous
