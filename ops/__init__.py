"""painnfx.ops: fused PaiNN operations with analytical forward and backward.

Importing this package registers the torch.library custom ops ``painnfx::painn_message``
and ``painnfx::radial_filter`` (and their backward ops) with the reference backend.
"""

from .backends import available_backends, register_backend, use_backend
from .message import painn_message
from .radial_filter import radial_filter

__all__ = ["painn_message", "radial_filter", "available_backends", "register_backend", "use_backend"]
