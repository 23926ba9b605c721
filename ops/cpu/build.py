"""Compiling the CPU kernels (``painn_message.cpp``) into a shared library on first use.

The host C++ compiler (``$CXX``, else g++ or c++) builds with ``-O3 -march=native -fopenmp``:
the library is built on, and for, the machine that runs it, so targeting its own instruction
set costs nothing in portability and gives the feature loops AVX2/AVX-512 where the CPU has
them (a portable baseline plus runtime dispatch would need several builds per kernel for no
gain here). The result is cached on disk like the CUBINs: key = SHA-256 of (sources, flags,
compiler version, CPU model and flags), a JSON sidecar with the library's own hash, atomic
writes; an entry whose hash does not match is rebuilt. ctypes loads it: no torch headers, no
host-side copies (the kernels get the tensors' data pointers).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).parent
INCLUDE = HERE.parent / "cuda"  # radial.cuh, shared with the CUDA kernels
SOURCE = HERE / "painn_message.cpp"
FLAGS = ("-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC", "-fno-math-errno")


class CpuBuildError(RuntimeError):
    """The CPU kernels could not be built (no compiler, or the compiler failed)."""


def compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx or not shutil.which(cxx):
        raise CpuBuildError("no C++ compiler found (install g++ or set CXX)")
    return cxx


def cache_dir() -> Path:
    return Path(os.environ.get("PAINNFX_CACHE_DIR", Path.home() / ".cache" / "painnfx")) / "cpu"


def _cpu_identity() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
        keep = [line for line in text.splitlines() if line.startswith(("model name", "flags"))][:2]
        return "\n".join(keep)
    except OSError:
        return platform.processor() or platform.machine()


def key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=60).stdout
    h = hashlib.sha256()
    for part in (SOURCE.read_text(), (INCLUDE / "radial.cuh").read_text(), " ".join(FLAGS), version, _cpu_identity()):
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _read(lib: Path, meta: Path):
    try:
        recorded = json.loads(meta.read_text())
        if recorded.get("sha256") != _sha(lib):
            return None  # corrupt or half-written: rebuild
        return recorded
    except (OSError, ValueError):
        return None


def build(use_cache: bool = True) -> tuple[Path, dict]:
    """(library path, metadata incl. ``build_seconds`` and ``cached``)."""
    cxx = compiler()
    k = key(cxx)
    lib = cache_dir() / f"painnfx_cpu_{k[:24]}.so"
    meta = lib.with_suffix(".json")
    if use_cache and lib.exists():
        recorded = _read(lib, meta)
        if recorded is not None:
            return lib, dict(recorded, cached=True)
    lib.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=lib.parent, prefix=lib.stem, suffix=".tmp")
    os.close(fd)
    start = time.perf_counter()
    try:
        res = subprocess.run([cxx, *FLAGS, f"-I{INCLUDE}", str(SOURCE), "-o", tmp], capture_output=True, text=True,
                             timeout=600)
        if res.returncode:
            raise CpuBuildError(f"{cxx} failed to build the CPU kernels:\n{res.stderr[-3000:]}")
        info = {"sha256": _sha(Path(tmp)), "compiler": cxx, "flags": list(FLAGS),
                "build_seconds": round(time.perf_counter() - start, 2)}
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fd, tmp_meta = tempfile.mkstemp(dir=lib.parent, prefix=meta.stem, suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(info, fh)
    os.replace(tmp_meta, meta)
    return lib, dict(info, cached=False)


def load(path: Path) -> ctypes.CDLL:
    return ctypes.CDLL(str(path))
