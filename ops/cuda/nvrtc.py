"""Compile CUDA C++ to CUBIN with NVRTC (cuda-python), with an on-disk cache.

Every NVRTC call goes through ``check``, which raises ``NvrtcError`` naming the call, the
error string and, for compilation, the full compile log. ``--ptxas-options=-v`` is always
passed so the log carries registers and spills per kernel (``ptxas_stats``).

Cache (``ops/build_cache.py``): ``$PAINNFX_CACHE_DIR/cubin`` (default ``~/.cache/painnfx/cubin``); an entry is keyed by the SHA-256
of (source, options, architecture, NVRTC version) and stores the CUBIN with a JSON sidecar
holding the CUBIN's own hash and the compile log. Writes go to a temporary file that is
renamed into place (safe for concurrent processes); an entry whose hash does not match is
treated as missing and rewritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from ..build_cache import BuildCache, digest


class NvrtcError(RuntimeError):
    """An NVRTC call failed; the message names the call and carries the compile log."""


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise NvrtcError("cuda-python (cuda-bindings) is not installed: pip install 'painnfx[cuda]'") from exc
    return nvrtc


def check(result, call: str, log: str = ""):
    """Unpack a cuda-python result tuple, raising on a non-success status."""
    nvrtc = _nvrtc()
    status, *values = result if isinstance(result, tuple) else (result,)
    if status != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, text = nvrtc.nvrtcGetErrorString(status)
        msg = f"{call} failed: {text.decode() if isinstance(text, bytes) else text}"
        if log:
            msg += f"\n--- compile log ---\n{log}"
        raise NvrtcError(msg)
    return values[0] if len(values) == 1 else tuple(values)


def version() -> tuple[int, int]:
    return tuple(check(_nvrtc().nvrtcVersion(), "nvrtcVersion"))


@dataclass
class Compiled:
    cubin: bytes
    log: str
    arch: str
    stats: dict = field(default_factory=dict)  # kernel -> {"registers", "spill_stores", "spill_loads"}
    cached: bool = False

    def spills(self) -> dict:
        return {k: v for k, v in self.stats.items() if v["spill_stores"] or v["spill_loads"]}


_FUNC = re.compile(r"Compiling entry function '([^']+)'")
_SPILL = re.compile(r"(\d+) bytes spill stores, (\d+) bytes spill loads")
_REGS = re.compile(r"Used (\d+) registers")


def ptxas_stats(log: str) -> dict:
    """Registers and spill bytes per kernel from a ``--ptxas-options=-v`` log."""
    stats, current = {}, None
    for line in log.splitlines():
        m = _FUNC.search(line)
        if m:
            current = m.group(1)
            stats[current] = {"registers": None, "spill_stores": 0, "spill_loads": 0}
            continue
        if current is None:
            continue
        m = _SPILL.search(line)
        if m:
            stats[current]["spill_stores"], stats[current]["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = _REGS.search(line)
        if m:
            stats[current]["registers"] = int(m.group(1))
    return stats


CACHE = BuildCache("cubin")


def cache_dir() -> Path:
    return CACHE.folder


def _key(source: str, options: Sequence[str], arch: str) -> str:
    return digest([source, "\0".join(options), arch, ".".join(map(str, version()))])


def _read_cache(key: str, arch: str):
    meta = CACHE.lookup(f"{key}.cubin")
    if meta is None:
        return None  # missing, corrupt or half-written entry: recompile
    cubin = CACHE.path(f"{key}.cubin").read_bytes()
    return Compiled(cubin, meta.get("log", ""), arch, ptxas_stats(meta.get("log", "")), cached=True)


def compile_cubin(source: str, name: str, arch: str, options: Sequence[str] = (), use_cache: bool = True) -> Compiled:
    """CUBIN for ``arch`` (e.g. "sm_90") of ``source``; cached on disk unless ``use_cache`` is False."""
    opts = [f"--gpu-architecture={arch}", "--ptxas-options=-v", "-std=c++17", *options]
    key = _key(source, opts, arch)
    if use_cache:
        hit = _read_cache(key, arch)
        if hit is not None:
            return hit
    nvrtc = _nvrtc()
    prog = check(nvrtc.nvrtcCreateProgram(source.encode(), name.encode(), 0, [], []), "nvrtcCreateProgram")
    try:
        status = nvrtc.nvrtcCompileProgram(prog, len(opts), [o.encode() for o in opts])
        size = check(nvrtc.nvrtcGetProgramLogSize(prog), "nvrtcGetProgramLogSize")
        buf = b" " * size
        check(nvrtc.nvrtcGetProgramLog(prog, buf), "nvrtcGetProgramLog")
        log = buf.decode(errors="replace").rstrip("\0 \n")
        check(status, f"nvrtcCompileProgram({name}, {arch})", log)
        size = check(nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        check(nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
    finally:
        nvrtc.nvrtcDestroyProgram(prog)
    out = Compiled(cubin, log, arch, ptxas_stats(log))
    if use_cache:
        def write(path: Path) -> dict:
            path.write_bytes(cubin)
            return {"log": log, "arch": arch, "name": name, "options": opts}

        CACHE.store(f"{key}.cubin", write)
    return out


_LOCAL_INCLUDE = re.compile(r'^#include "([^"]+)"\s*$', re.M)


def kernel_source(filename: str) -> str:
    """A ``.cu`` file shipped beside this module, with its local ``#include "..."`` files inlined,
    so that NVRTC needs no include path and the cache key covers the headers too."""
    here = Path(__file__).parent
    seen: set = set()

    def expand(name: str) -> str:
        if name in seen:
            return ""
        seen.add(name)
        text = (here / name).read_text()
        return _LOCAL_INCLUDE.sub(lambda m: expand(m.group(1)), text)

    return expand(filename)
