"""Compiling the CPU kernels (``painn_message.cpp``, ``painn_update.cpp``) into one shared library on first use.

The host C++ compiler (``$CXX``, else g++ or c++) builds with ``-O3 -march=native -fopenmp``:
the library is built on, and for, the machine that runs it, so targeting its own instruction
set costs nothing in portability and gives the feature loops AVX2/AVX-512 where the CPU has
them. ``PAINNFX_CPU_ARCH`` chooses another ``-march`` (e.g. ``x86-64-v2``: no AVX) for a
library that must run on other CPUs than the one that built it. The result is cached on disk (``ops/build_cache.py``, shared with the CUBINs and the
emulator): key = SHA-256 of (sources, flags, compiler version, CPU model and flags), a JSON
sidecar with the library's own hash, atomic writes; an entry whose hash does not match is rebuilt. ctypes loads it: no torch headers, no
host-side copies (the kernels get the tensors' data pointers).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional

from ..build_cache import BuildCache, CompilerNotFound, digest, host_compiler
from ..errors import PainnfxError
from .entry_points import Library, parse

HERE = Path(__file__).parent
INCLUDE = HERE.parent / "cuda"  # radial.cuh, shared with the CUDA kernels
#: the kernels' sources (each compiled as the units of ``units()``), the operators' source (native.py:
#: against torch's headers), and every header any of them includes (every cache key reads them all):
#: the one list of the CPU sources
SOURCES = (HERE / "painn_message.cpp", HERE / "painn_update.cpp")
OPERATORS = HERE / "native_ops.cpp"
HEADERS = (HERE / "cpu_common.h", HERE / "small_products.h", INCLUDE / "radial.cuh")
FLAGS = ("-O3", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")
#: ``$PAINNFX_CPU_ARCH``: the instruction set the kernels are built for (g++ ``-march``). "native"
#: (default) is this machine's own (AVX2, AVX-512 where it has them); a named level such as
#: "x86-64-v2" (SSE4.2, no AVX) gives a library that runs on any x86-64 CPU of that level: for an
#: image built on one machine and run on others, or an old laptop
ARCH_VARIABLE = "PAINNFX_CPU_ARCH"
_ARCH = re.compile(r"^[A-Za-z0-9_.+-]+$")


def flags() -> tuple:
    arch = os.environ.get(ARCH_VARIABLE, "").strip() or "native"
    if not _ARCH.match(arch):
        raise CpuBuildError(f"{ARCH_VARIABLE}={arch!r} is not a -march value (e.g. native, x86-64-v2, x86-64-v3)")
    return FLAGS[:1] + (f"-march={arch}",) + FLAGS[1:] + ("-DPAINNFX_LIBMVEC",) * bool(vector_maths())


def vector_maths() -> tuple:
    """The linker flags of glibc's vector maths library (libmvec: exp, sin, ... on SSE to AVX-512
    vectors, within 4 ulp) where this is x86-64 glibc and it is installed, else (). With it the
    kernels' radial-basis loops call vector exponentials instead of one scalar call per basis
    function (painn_message.cpp). Linked by its runtime name, so no development symlink is needed."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ()
    name = _find_mvec()
    return (f"-l:{name}",) if name else ()


@functools.lru_cache(maxsize=1)
def _find_mvec():
    """libmvec's runtime name (``find_library`` runs ldconfig: once per process)."""
    return ctypes.util.find_library("mvec")


class CpuBuildError(PainnfxError, RuntimeError):
    """The CPU kernels could not be built (no compiler, or the compiler failed)."""


CACHE = BuildCache("cpu")


def compiler() -> str:
    try:
        return host_compiler()
    except CompilerNotFound as exc:
        raise CpuBuildError(str(exc)) from None


def cache_dir() -> Path:
    return CACHE.folder


@functools.lru_cache(maxsize=1)
def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor() or platform.machine()


def key(cxx: str) -> str:
    return digest([*(p.read_text() for p in (*SOURCES, *HEADERS)), " ".join(unit_flags()), compiler_version(cxx),
                   _cpu_identity()])


def _name(cxx: str) -> str:
    return f"painnfx_cpu_{key(cxx)[:24]}.so"


def _recorded(name: str):
    recorded = CACHE.lookup(name)
    return recorded if recorded is not None and recorded.get("signatures") else None  # (an older entry has none)


def cached() -> bool:
    """Whether the library for this machine, compiler and sources is built and intact in the cache
    (nothing is built; False without a compiler)."""
    try:
        return _recorded(_name(compiler())) is not None
    except (CpuBuildError, OSError, subprocess.SubprocessError):
        return False


def build(use_cache: bool = True, jobs: Optional[int] = None) -> tuple[Path, dict]:
    """(library path, metadata incl. ``build_seconds`` and ``cached``). ``jobs``: compiler processes
    at a time (default ``default_jobs()``)."""
    cxx = compiler()
    name = _name(cxx)
    if use_cache:
        recorded = _recorded(name)
        if recorded is not None:
            return CACHE.path(name), dict(recorded, cached=True)

    def compile_to(out: Path) -> dict:
        start = time.perf_counter()
        link(cxx, compile_units(cxx, units(), "the CPU kernels", jobs), out, vector_maths(), "the CPU kernels")
        return {"compiler": cxx, "flags": list(unit_flags()), "build_seconds": round(time.perf_counter() - start, 2),
                "signatures": signatures(cxx)}

    info = CACHE.store(name, compile_to)
    return CACHE.path(name), dict(info, cached=False)


def units() -> tuple:
    """The kernels' compilation units (source, defines): painn_message.cpp once per dtype, so that
    the three compile side by side (~5 s each on the 2-core AMD EPYC VM, against ~13 s for one unit)."""
    message, update = SOURCES
    return ((message, ("-DPAINNFX_EXPORT=32",)), (message, ("-DPAINNFX_EXPORT=64",)), (update, ()))


#: compiled units, shared by the ctypes library and the native ops (native.py)
OBJECTS = BuildCache("cpu-obj")


def unit_flags() -> tuple:
    """The flags every unit compiles with: ``flags()`` in C++20 (torch's headers, in the native
    ops, need it; one set of flags lets both libraries link the same objects)."""
    return tuple(f for f in flags() if f not in ("-std=c++17", "-shared")) + ("-std=c++20", "-w")


def default_jobs() -> int:
    """Compiler processes at a time: the thread count torch was given (``torch.get_num_threads()``),
    so a build never runs more at once than the user asked torch to."""
    import torch

    return max(1, torch.get_num_threads())


@functools.lru_cache(maxsize=4)
def compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout


def compile_units(cxx: str, units, what: str, jobs: Optional[int] = None, extra: tuple = ()) -> list:
    """Object files of ``units`` ((source, defines) pairs; ``extra``: flags for all of them, e.g.
    torch's include paths), each cached in ``OBJECTS``, compiled ``jobs`` at a time."""
    version = compiler_version(cxx)

    def one(unit) -> Path:
        source, defines = unit
        options = [*unit_flags(), *defines, f"-I{HERE}", f"-I{INCLUDE}", *extra]
        k = digest([source.read_text(), *(p.read_text() for p in sorted(HEADERS)), " ".join(options), version,
                    _cpu_identity()])
        name = f"{source.stem}{''.join(d.split('=')[-1] for d in defines)}_{k[:24]}.o"
        if OBJECTS.lookup(name) is None:
            def compile_to(out: Path) -> dict:
                res = subprocess.run([cxx, *options, "-c", str(source), "-o", str(out)], capture_output=True,
                                     text=True, timeout=600)
                if res.returncode:
                    raise CpuBuildError(f"{cxx} failed to build {what} ({source.name}):\n{res.stderr[-3000:]}")
                return {}

            OBJECTS.store(name, compile_to)
        return OBJECTS.path(name)

    with ThreadPoolExecutor(max_workers=max(1, jobs or default_jobs())) as pool:
        return list(pool.map(one, units))


def link(cxx: str, objects: list, out: Path, libraries: tuple, what: str) -> None:
    res = subprocess.run([cxx, "-shared", "-fopenmp", *map(str, objects), "-o", str(out), *libraries],
                         capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise CpuBuildError(f"{cxx} failed to build {what} (linking):\n{res.stderr[-3000:]}")


def signatures(cxx: str) -> dict:
    """The ``extern "C"`` entry points of the sources, read after preprocessing (entry_points.py)."""
    found: dict = {}
    for source in SOURCES:
        res = subprocess.run([cxx, "-E", "-P", *[f for f in flags() if f.startswith(("-std", "-f", "-m"))],
                              f"-I{HERE}", f"-I{INCLUDE}", str(source)], capture_output=True, text=True, timeout=120)
        if res.returncode:
            raise CpuBuildError(f"{cxx} failed to preprocess the CPU kernels:\n{res.stderr[-3000:]}")
        entries = parse(res.stdout)
        if not entries:
            raise CpuBuildError(f"no extern \"C\" entry points found in {source.name}")
        found.update(entries)
    return found


def load(path: Path, info: dict) -> Library:
    """The library at ``path`` with its entry points checked against ``info["signatures"]``."""
    return Library(ctypes.CDLL(str(path)), info.get("signatures", {}))
