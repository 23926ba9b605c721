"""Compiling the CPU kernels and their dispatcher registrations into one shared library on first use.

Sources: ``painn_message.cpp`` (twice: one unit per dtype, so the units compile side by side),
``painn_update.cpp`` and ``operators.cpp`` (the ops' CPU kernels registered with torch's dispatcher,
against the installed torch's headers). The host C++ compiler (``$CXX``, else g++ or c++) builds with ``-O3
-march=native -fopenmp``: the library is built on, and for, the machine that runs it, so targeting
its own instruction set costs nothing in portability and gives the feature loops AVX2/AVX-512 where
the CPU has them. ``PAINNFX_CPU_ARCH`` chooses another ``-march`` (e.g. ``x86-64-v2``: no AVX) for a
library that must run on other CPUs than the one that built it. Units and the library are cached on
disk (``ops/build_cache.py``, shared with the CUBINs and the emulator): key = SHA-256 of (sources,
flags, compiler version, CPU model and flags, torch version), a JSON sidecar with the library's own
hash, atomic writes; an entry whose hash does not match is rebuilt. ``torch.ops.load_library``
loads it (backend.py).
"""

from __future__ import annotations

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

HERE = Path(__file__).parent
INCLUDE = HERE.parent / "cuda"  # radial.cuh, shared with the CUDA kernels
#: the CPU sources, found here: the registrations with torch's dispatcher (against torch's
#: headers), every other ``*.cpp`` a kernel (compiled as the units of ``units()``), and every header
#: any of them includes (every cache key reads them all)
OPERATORS = HERE / "operators.cpp"
SOURCES = tuple(sorted(p for p in HERE.glob("*.cpp") if p != OPERATORS))
HEADERS = (*sorted(HERE.glob("*.h")), INCLUDE / "radial.cuh")
#: a kernel source that compiles one dtype's entry points per unit when given ``-DPAINNFX_EXPORT=32``
#: or ``=64`` (its units then compile side by side)
PER_DTYPE = "PAINNFX_EXPORT"
FLAGS = ("-O3", "-fopenmp", "-std=c++20", "-fPIC", "-fno-math-errno", "-w")
#: ``$PAINNFX_CPU_ARCH``: the instruction set the kernels are built for (g++ ``-march``). "native"
#: (default) is this machine's own (AVX2, AVX-512 where it has them); a named level such as
#: "x86-64-v2" (SSE4.2, no AVX) gives a library that runs on any x86-64 CPU of that level: for an
#: image built on one machine and run on others, or an old laptop
ARCH_VARIABLE = "PAINNFX_CPU_ARCH"
_ARCH = re.compile(r"^[A-Za-z0-9_.+-]+$")


def flags() -> tuple:
    """The flags every unit compiles with."""
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
#: compiled units (a changed source rebuilds its own unit only)
OBJECTS = BuildCache("cpu-obj")


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


def torch_includes() -> tuple:
    """Compiler flags for code that includes torch's headers (the installed torch's, its C++ ABI)."""
    from torch.utils import cpp_extension

    import torch

    return (*(f"-I{p}" for p in cpp_extension.include_paths()),
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")


def torch_links() -> tuple:
    """Linker flags for code that calls libtorch (found at run time through an rpath)."""
    import torch

    lib = Path(torch.__file__).parent / "lib"
    return (f"-L{lib}", f"-Wl,-rpath,{lib}", "-ltorch_cpu", "-lc10")


def key(cxx: str) -> str:
    import torch

    return digest([*(p.read_text() for p in (*SOURCES, OPERATORS, *HEADERS)), " ".join(flags()),
                   compiler_version(cxx), _cpu_identity(), torch.__version__])


def _name(cxx: str) -> str:
    return f"painnfx_cpu_{key(cxx)[:24]}.so"


def cached() -> bool:
    """Whether the library for this machine, compiler, sources and torch is built and intact in the
    cache (nothing is built; False without a compiler)."""
    try:
        return CACHE.lookup(_name(compiler())) is not None
    except (CpuBuildError, OSError, subprocess.SubprocessError):
        return False


def build(use_cache: bool = True, jobs: Optional[int] = None) -> tuple[Path, dict]:
    """(library path, metadata incl. ``build_seconds`` and ``cached``). ``jobs``: compiler processes
    at a time (default ``default_jobs()``)."""
    cxx = compiler()
    name = _name(cxx)
    if use_cache:
        recorded = CACHE.lookup(name)
        if recorded is not None:
            return CACHE.path(name), dict(recorded, cached=True)

    def compile_to(out: Path) -> dict:
        start = time.perf_counter()
        link(cxx, compile_units(cxx, units(), jobs), out)
        return {"compiler": cxx, "flags": list(flags()), "build_seconds": round(time.perf_counter() - start, 2)}

    info = CACHE.store(name, compile_to)
    return CACHE.path(name), dict(info, cached=False)


def units() -> tuple:
    """The library's compilation units (source, flags of its own), longest first (they compile
    side by side): operators.cpp (~8 s on the 2-core AMD EPYC VM: torch's headers), a source that
    reads ``PER_DTYPE`` once per dtype (painn_message.cpp: ~4-5 s each, against ~9 s for one unit of
    both), the other kernels once (painn_update.cpp ~3 s)."""
    split = [s for s in SOURCES if PER_DTYPE in s.read_text()]
    return ((OPERATORS, torch_includes()), *((s, (f"-D{PER_DTYPE}={bits}",)) for s in split for bits in (64, 32)),
            *((s, ()) for s in SOURCES if s not in split))


def default_jobs() -> int:
    """Compiler processes at a time: the thread count torch was given (``torch.get_num_threads()``),
    so a build never runs more at once than the user asked torch to."""
    import torch

    return max(1, torch.get_num_threads())


@functools.lru_cache(maxsize=4)
def compiler_version(cxx: str) -> str:
    return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout


def compile_units(cxx: str, units, jobs: Optional[int] = None) -> list:
    """Object files of ``units`` ((source, flags) pairs), each cached in ``OBJECTS``, compiled
    ``jobs`` at a time."""
    version = compiler_version(cxx)

    def one(unit) -> Path:
        source, own = unit
        options = [*flags(), *own, f"-I{HERE}", f"-I{INCLUDE}"]
        k = digest([source.read_text(), *(p.read_text() for p in sorted(HEADERS)), " ".join(options), version,
                    _cpu_identity()])
        tag = "".join(d.split("=")[-1] for d in own if d.startswith(f"-D{PER_DTYPE}"))
        name = f"{source.stem}{tag}_{k[:24]}.o"
        if OBJECTS.lookup(name) is None:
            def compile_to(out: Path) -> dict:
                res = subprocess.run([cxx, *options, "-c", str(source), "-o", str(out)], capture_output=True,
                                     text=True, timeout=600)
                if res.returncode:
                    raise CpuBuildError(f"{cxx} failed to build the CPU kernels ({source.name}):\n{res.stderr[-3000:]}")
                return {}

            OBJECTS.store(name, compile_to)
        return OBJECTS.path(name)

    with ThreadPoolExecutor(max_workers=max(1, jobs or default_jobs())) as pool:
        return list(pool.map(one, units))


def link(cxx: str, objects: list, out: Path) -> None:
    res = subprocess.run([cxx, "-shared", "-fopenmp", *map(str, objects), "-o", str(out), *torch_links(),
                          *vector_maths()], capture_output=True, text=True, timeout=600)
    if res.returncode:
        raise CpuBuildError(f"{cxx} failed to build the CPU kernels (linking):\n{res.stderr[-3000:]}")
