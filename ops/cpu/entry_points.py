"""The C entry points of the CPU kernel library, declared from the source that built it.

ctypes trusts whatever it is given: a missing or misplaced argument becomes a wrong pointer or a
wrong scalar inside a kernel. So the argument types are not written by hand: the build reads
every ``extern "C"`` function of the preprocessed ``painn_message.cpp`` (its macros expanded),
stores the signatures beside the library (``signatures``), and each call is checked against
them: the number of arguments (a ``TypeError`` naming the parameter list), and each argument's
type through ctypes' ``argtypes`` (``ctypes.ArgumentError``), as the emulator does for CUDA
launches.
"""

from __future__ import annotations

import ctypes
import re

_EXPORT = re.compile(r'extern\s+"C"\s+([\w:]+)\s+(\w+)\s*\(([^)]*)\)\s*\{')
_SCALARS = {"int": ctypes.c_int, "unsigned": ctypes.c_uint, "float": ctypes.c_float, "double": ctypes.c_double,
            "std::int64_t": ctypes.c_int64, "int64_t": ctypes.c_int64}


def parse(preprocessed: str) -> dict:
    """{name: [return type, [parameter types]]} of the ``extern "C"`` functions of a source."""
    out = {}
    for ret, name, params in _EXPORT.findall(preprocessed):
        types = []
        for param in params.split(","):
            param = " ".join(param.replace("__restrict", " ").split())
            if not param or param == "void":
                continue
            m = re.match(r"^(.*?)\s*(\w+)$", param)
            if not m or not m.group(1):
                raise ValueError(f"cannot read the type of parameter {param!r} of {name}")
            types.append(" ".join(m.group(1).replace("*", " * ").split()))
        out[name] = [ret, types]
    return out


def _ctype(c_type: str):
    if "*" in c_type:
        return ctypes.c_void_p
    base = c_type.replace("const ", "").strip()
    if base not in _SCALARS:
        raise ValueError(f"no ctypes type for the C type {c_type!r}")
    return _SCALARS[base]


class EntryPoint:
    """One C function; a call with the wrong number of arguments raises before reaching C."""

    def __init__(self, function, name: str, ret: str, params: list):
        self.name, self.params = name, list(params)
        function.argtypes = [_ctype(t) for t in params]
        function.restype = None if ret == "void" else _ctype(ret)
        self._function = function

    def __call__(self, *args):
        if len(args) != len(self.params):
            raise TypeError(f"{self.name} takes {len(self.params)} arguments ({', '.join(self.params)}), "
                            f"got {len(args)}")
        return self._function(*args)


class Library:
    """The loaded library: ``lib.painn_message_forward_f32(...)`` is a checked ``EntryPoint``."""

    def __init__(self, cdll: ctypes.CDLL, signatures: dict):
        if not signatures:
            raise OSError("the CPU library has no recorded entry-point signatures (rebuild it)")
        self.path = cdll._name
        self.entry_points = {name: EntryPoint(getattr(cdll, name), name, ret, params)
                             for name, (ret, params) in signatures.items()}

    def __getattr__(self, name: str) -> EntryPoint:
        try:
            return self.__dict__["entry_points"][name]
        except KeyError:
            raise AttributeError(f"the CPU library has no entry point {name!r}") from None
