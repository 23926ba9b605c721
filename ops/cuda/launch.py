"""Kernel arguments, prepared once for every way a kernel runs.

``kernel_args`` turns Python values into what a CUDA kernel's parameters are: a tensor or
None becomes a device pointer (an int; None is the null pointer), and scalars must already be
numpy scalars of the parameter's exact type (np.int32, np.int64, np.float32, np.float64).
A plain Python int or float is refused: cuda.core packs an int as 8 bytes and a float as a
double, so a ``float cutoff`` or ``int F`` parameter passed that way would be silently wrong.

``ctypes_args`` packs such a list the way ``cuLaunchKernel`` takes it (an array of pointers
to each argument's bytes); the CPU emulator of the tests (painnfx.tools.emulator) launches
through it and checks every argument's size against the kernel's parameter types, so this
packing is what the tests exercise.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np
import torch

_CTYPES = {np.dtype(np.int32): ctypes.c_int32, np.dtype(np.int64): ctypes.c_int64,
           np.dtype(np.float32): ctypes.c_float, np.dtype(np.float64): ctypes.c_double}


@dataclass(frozen=True)
class Pointer:
    """A device (or, in the emulator, host) address; 0 is the null pointer."""

    address: int


def kernel_args(values) -> list:
    """Normalise a kernel's arguments: tensors/None -> Pointer, numpy scalars kept as they are."""
    out = []
    for k, v in enumerate(values):
        if v is None:
            out.append(Pointer(0))
        elif torch.is_tensor(v):
            if not v.is_contiguous():
                raise ValueError(f"kernel argument {k}: tensor must be contiguous")
            out.append(Pointer(v.data_ptr()))
        elif isinstance(v, np.generic) and v.dtype in _CTYPES:
            out.append(v)
        elif isinstance(v, (bool, int, float)):
            raise TypeError(f"kernel argument {k} is a Python {type(v).__name__} ({v!r}); pass a numpy scalar of the "
                            "parameter's type (np.int32, np.float32, ...): a Python int packs as 8 bytes and a float "
                            "as a double")
        else:
            raise TypeError(f"kernel argument {k}: cannot pass {type(v).__name__}")
    return out


def sizes(args: list) -> list[int]:
    """Byte size of each normalised argument, as the kernel receives it."""
    return [ctypes.sizeof(ctypes.c_void_p) if isinstance(a, Pointer) else a.dtype.itemsize for a in args]


def ctypes_args(args: list):
    """(keep-alive list, void** array) in cuLaunchKernel's layout."""
    holders = [ctypes.c_void_p(a.address) if isinstance(a, Pointer) else _CTYPES[a.dtype](a.item()) for a in args]
    array = (ctypes.c_void_p * max(1, len(holders)))(*[ctypes.cast(ctypes.pointer(h), ctypes.c_void_p) for h in holders])
    return holders, array


def launch_values(args: list) -> list:
    """The arguments as cuda.core's ``launch`` takes them: pointers as ints, numpy scalars as they are."""
    return [a.address if isinstance(a, Pointer) else a for a in args]
