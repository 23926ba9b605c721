"""painnfx.ops: fused PaiNN operations with analytical forward and backward.

Importing this package registers the torch.library custom ops ``painnfx::prepare_edges``,
``painnfx::painn_message``, ``painnfx::radial_filter`` and ``painnfx::painn_update`` (and their
backward ops), with the
reference implementation as every device's default, the C++ kernels (``ops.cpu``) registered
for the device type "cpu" and the CUDA kernels (``ops.cuda``) for "cuda", through ``ops.dispatch``. Radial bases and cutoffs are defined once in ``ops.radial``.
"""

from .dispatch import available_backends, register_backend, use_backend
from .edges import prepare_edges
from .errors import InputError, ModelChangedError, NonFiniteError, PainnfxError
from .message import painn_message
from .radial_filter import radial_filter
from .update import painn_update
from .cpu import backend as _cpu_backend
from .cuda import backend as _cuda_backend

_cpu_backend.register()  # torch's dispatcher runs the C++ kernels for CPU tensors
_cuda_backend.register()  # and the CUDA kernels for CUDA tensors

__all__ = ["prepare_edges", "painn_message", "radial_filter", "painn_update", "available_backends", "register_backend",
           "use_backend", "InputError", "ModelChangedError", "NonFiniteError", "PainnfxError"]
