"""A CPU emulator of CUDA for the tests: the unchanged ``ops/cuda/*.cu`` kernels, compiled by
the host C++ compiler through a shim header (``cuda_emu.h``) and run with one fiber per GPU
thread (``runtime.cpp``), so that a kernel's logic, its barriers and the project's argument
packing are proven without a GPU.

    emu = build(["painn_message.cu"])                 # cached like the CUBINs
    emu.launch("painn_message_forward_f64", grid, block, args, schedule="reverse")

* ``__syncthreads()`` is a checked rendezvous (divergent barrier or early return: an
  ``EmulatorError`` naming the .cu file:line); warp shuffles run over the fibers of a warp.
* ``schedule`` runs the fibers between barriers forward, reverse or in random order: a
  missing barrier that passes in one order fails in another. The tests run all three.
* Every kernel ``K`` is exported as ``emu_K(grid, block, void** args, schedule, seed)``, the
  argument layout ``cuLaunchKernel`` takes; ``launch`` first compares each argument's byte
  size with the kernel's parameter types (``emu_K_sizes``), so a wrongly typed scalar fails.
* ``sanitize=True`` builds with AddressSanitizer + UBSan (out-of-bounds reads are reported with
  the .cu line; needs the sanitizer runtime preloaded, see tests/test_cuda_emulated.py).

It is slow (fibers switch at every barrier): fine for tests up to a few thousand edges, not
a CPU backend. Its maths is glibc's: compare with tolerances.
"""

from __future__ import annotations

import ctypes
import os
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from painnfx.ops.build_cache import BuildCache, CompilerNotFound, digest, host_compiler
from painnfx.ops.cuda.launch import ctypes_args, kernel_args, sizes

HERE = Path(__file__).parent
CUDA_DIR = Path(__import__("painnfx.ops.cuda", fromlist=["launch"]).__file__).parent
SCHEDULES = {"forward": 0, "reverse": 1, "random": 2}
_KERNEL = re.compile(r'extern\s+"C"\s+__emu_global__\s+void\s+(\w+)\s*\(([^)]*)\)')


class EmulatorError(RuntimeError):
    """A kernel misbehaved in the emulator (divergent barrier, bad arguments, ...)."""


@dataclass
class KernelInfo:
    name: str
    params: list  # parameter C types


def _compiler() -> str:
    try:
        return host_compiler()
    except CompilerNotFound as exc:
        raise EmulatorError(str(exc)) from None


def _param_type(param: str) -> str:
    param = param.replace("__restrict", " ").strip()
    m = re.match(r"^(.*?)(\w+)\s*$", param)
    if not m or not m.group(1).strip():
        raise EmulatorError(f"cannot read the type of kernel parameter {param!r}")
    return " ".join(m.group(1).split())


def parse_kernels(cu_path: Path, cxx: str) -> list[KernelInfo]:
    """The ``extern "C" __global__`` kernels of a .cu file (after macro expansion) and their parameter types."""
    out = subprocess.run([cxx, "-E", "-P", "-std=c++17", "-DEMU_PARSE", f"-I{HERE}", f"-I{CUDA_DIR}", "-include",
                          str(HERE / "cuda_emu.h"), "-x", "c++", str(cu_path)], capture_output=True, text=True,
                         timeout=120)
    if out.returncode:
        raise EmulatorError(f"preprocessing {cu_path.name} failed:\n{out.stderr}")
    kernels = []
    for name, params in _KERNEL.findall(out.stdout):
        types = [_param_type(p) for p in params.split(",") if p.strip() and p.strip() != "void"]
        kernels.append(KernelInfo(name, types))
    return kernels


def wrapper_source(cu_paths: Sequence[Path], kernels: list[KernelInfo]) -> str:
    lines = ['#include "cuda_emu.h"'] + [f'#include "{p}"' for p in cu_paths]
    for k in kernels:
        call = ", ".join(f"*({t}*)args[{i}]" for i, t in enumerate(k.params))
        lines += [
            f'extern "C" int emu_{k.name}(const unsigned* grid, const unsigned* block, void** args, int schedule, '
            "unsigned seed) {",
            f"    std::function<void()> body = [args]() {{ {k.name}({call}); }};",
            "    return emu::launch(grid, block, schedule, seed, body);",
            "}",
            f'extern "C" int emu_{k.name}_nargs() {{ return {len(k.params)}; }}',
            f'extern "C" void emu_{k.name}_sizes(unsigned long long* out) {{',
            *[f"    out[{i}] = sizeof({t});" for i, t in enumerate(k.params)],
            "}",
        ]
    return "\n".join(lines) + "\n"


CACHE = BuildCache("emulator")


def cache_dir() -> Path:
    return CACHE.folder


class Emulator:
    def __init__(self, lib_path: Path, kernels: list[KernelInfo]):
        self.path = lib_path
        self.lib = ctypes.CDLL(str(lib_path))
        self.lib.emu_error.restype = ctypes.c_char_p
        self.kernels = {k.name: k for k in kernels}

    def launch(self, name: str, grid, block, args: list, schedule: str = "forward", seed: int = 0) -> None:
        """Run kernel ``name`` on ``grid`` x ``block`` with ``args`` (values or ``kernel_args`` output)."""
        info = self.kernels.get(name)
        if info is None:
            raise EmulatorError(f"no kernel {name!r}; built: {sorted(self.kernels)}")
        args = kernel_args(args) if not _normalised(args) else args
        want = (ctypes.c_ulonglong * max(1, len(info.params)))()
        getattr(self.lib, f"emu_{name}_sizes")(want)
        got = sizes(args)
        if len(got) != len(info.params):
            raise EmulatorError(f"{name} takes {len(info.params)} arguments ({', '.join(info.params)}), got {len(got)}")
        for k, (t, g) in enumerate(zip(info.params, got)):
            if want[k] != g:
                raise EmulatorError(f"{name}: argument {k} ({t}) is {want[k]} bytes, the launcher packed {g}")
        holders, array = ctypes_args(args)
        g3 = (ctypes.c_uint * 3)(*_dim3(grid))
        b3 = (ctypes.c_uint * 3)(*_dim3(block))
        status = getattr(self.lib, f"emu_{name}")(g3, b3, array, SCHEDULES[schedule], ctypes.c_uint(seed))
        del holders
        if status:
            raise EmulatorError(f"{name}: {self.lib.emu_error().decode()}")


def _normalised(args) -> bool:
    from painnfx.ops.cuda.launch import Pointer

    import numpy as np

    return all(isinstance(a, (Pointer, np.generic)) for a in args)


def _dim3(d) -> tuple:
    d = tuple(d) if isinstance(d, (tuple, list)) else (int(d),)
    return tuple(int(v) for v in d) + (1,) * (3 - len(d))


def build(cu_files: Sequence[str], sanitize: bool = False, use_cache: bool = True,
          sources: Optional[dict] = None) -> Emulator:
    """Compile ``cu_files`` (names in ops/cuda, or paths) with the runtime into a shared library.

    ``sources`` maps a file name to replacement source text (the mutation tests use it)."""
    cxx = _compiler()
    tmp = Path(tempfile.mkdtemp(prefix="painnfx_emu_"))
    paths = []
    for f in cu_files:
        src = Path(f) if os.path.sep in str(f) else CUDA_DIR / f
        if sources and src.name in sources:
            mutated = tmp / src.name
            mutated.write_text(sources[src.name])
            src = mutated
        paths.append(src)
    kernels = [k for p in paths for k in parse_kernels(p, cxx)]
    wrapper = wrapper_source(paths, kernels)
    flags = ["-O1", "-g", "-fsanitize=address,undefined", "-fno-omit-frame-pointer"] if sanitize else ["-O2"]
    flags += ["-std=c++17", "-shared", "-fPIC", f"-I{HERE}", f"-I{CUDA_DIR}"]
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    key = digest([wrapper, *[p.read_text() for p in paths], (HERE / "cuda_emu.h").read_text(),
                  (HERE / "runtime.cpp").read_text(), *[h.read_text() for h in sorted(CUDA_DIR.glob("*.cuh"))],
                  " ".join(flags), version])
    name = f"emu_{key[:24]}.so"
    if not (use_cache and CACHE.lookup(name) is not None):  # missing or corrupt: build (verified like the CPU cache)
        (tmp / "wrapper.cpp").write_text(wrapper)

        def compile_to(out: Path) -> dict:
            res = subprocess.run([cxx, *flags, str(tmp / "wrapper.cpp"), str(HERE / "runtime.cpp"), "-o", str(out)],
                                 capture_output=True, text=True, timeout=600)
            if res.returncode:
                raise EmulatorError(f"compiling the emulator failed:\n{res.stderr[-4000:]}")
            return {"compiler": cxx, "flags": flags, "kernels": [k.name for k in kernels]}

        CACHE.store(name, compile_to)
    lib = CACHE.path(name)
    return Emulator(lib, kernels)
