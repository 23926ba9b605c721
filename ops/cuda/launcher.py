"""Running the CUDA kernels on a GPU with cuda.core, on PyTorch's current stream.

* ``Device(i).set_current()`` makes the primary context (the one PyTorch uses) current.
* Each .cu file is compiled by NVRTC for the device's own architecture (``sm_XY`` from its
  compute capability, ``-lineinfo`` for compute-sanitizer and profilers, ``--ftz=true``: float32
  values below the smallest normal are flushed to zero, as the C++ kernels and the emulator
  flush them, docs/cuda.md), cached on disk
  (nvrtc.py) and loaded once per device: ``load(device)`` does all of it up front, which the
  CUDA-graph mode calls before any capture (a capture freezes pointers and sizes and must not
  compile or load).
* ``run(launch, device)`` launches on ``torch.cuda.current_stream(device)`` through its
  ``__cuda_stream__`` protocol (torch >= 2.10; older torch gets a small adapter), with the
  arguments from ``launch.kernel_args`` (pointers as ints, numpy-typed scalars). No host
  synchronisation and no allocation besides PyTorch's caching allocator.
"""

from __future__ import annotations

import threading

import torch

from .kernels import SOURCES
from .launch import kernel_args, launch_values
from .nvrtc import compile_cubin, kernel_source

OPTIONS = ("-lineinfo", "--ftz=true")
_modules: dict = {}  # (device index, file) -> cuda.core ObjectCode
_kernels: dict = {}  # (device index, kernel name) -> cuda.core Kernel
_lock = threading.Lock()


class CudaStream:
    """``__cuda_stream__`` for a torch stream on torch versions that lack it."""

    def __init__(self, stream: "torch.cuda.Stream"):
        self._stream = stream

    def __cuda_stream__(self):
        return (0, int(self._stream.cuda_stream))


def stream_for(device: torch.device):
    stream = torch.cuda.current_stream(device)
    return stream if hasattr(stream, "__cuda_stream__") else CudaStream(stream)


def arch(device: torch.device) -> str:
    major, minor = torch.cuda.get_device_capability(device)
    return f"sm_{major}{minor}"


def load(device: torch.device) -> None:
    """Compile (or read from the cache) and load every kernel for ``device``."""
    from cuda.core import Device, ObjectCode

    index = torch.device(device).index if torch.device(device).index is not None else torch.cuda.current_device()
    with _lock:
        Device(index).set_current()
        for name in SOURCES:
            if (index, name) in _modules:
                continue
            compiled = compile_cubin(kernel_source(name), name, arch(torch.device("cuda", index)), OPTIONS)
            _modules[(index, name)] = ObjectCode.from_cubin(compiled.cubin)
            for kernel in compiled.stats:
                _kernels[(index, kernel)] = _modules[(index, name)].get_kernel(kernel)


def run(launch, device: torch.device) -> None:
    """Launch one ``Launch`` (message.py, update.py) on the current stream of ``device``."""
    from cuda.core import LaunchConfig
    from cuda.core import launch as cuda_launch

    index = device.index if device.index is not None else torch.cuda.current_device()
    kernel = _kernels.get((index, launch.kernel))
    if kernel is None:
        load(device)
        kernel = _kernels[(index, launch.kernel)]
    config = LaunchConfig(grid=launch.grid, block=launch.block)
    cuda_launch(stream_for(device), config, kernel, *launch_values(kernel_args(launch.args)))
