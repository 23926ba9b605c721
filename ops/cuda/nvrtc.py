"""Compile CUDA C++ to CUBIN with NVRTC (cuda-python), with an on-disk cache.

Every NVRTC call goes through ``check``, which raises ``NvrtcError`` naming the call, the
error string and, for compilation, the full compile log. ``--ptxas-options=-v`` is always
passed so the log carries registers and spills per kernel (``ptxas_stats``).

Cache: ``$PAINNFX_CACHE_DIR`` or ``~/.cache/painnfx/cubin``; an entry is keyed by the SHA-256
of (source, options, architecture, NVRTC version) and stores the CUBIN with a JSON sidecar
holding the CUBIN's own hash and the compile log. Writes go to a temporary file that is
renamed into place (safe for concurrent processes); an entry whose hash does not match is
treated as missing and rewritten.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence


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


def cache_dir() -> Path:
    return Path(os.environ.get("PAINNFX_CACHE_DIR", Path.home() / ".cache" / "painnfx" / "cubin"))


def _key(source: str, options: Sequence[str], arch: str) -> str:
    h = hashlib.sha256()
    for part in (source, "\0".join(options), arch, ".".join(map(str, version()))):
        h.update(part.encode())
        h.update(b"\1")
    return h.hexdigest()


def _read_cache(key: str, arch: str):
    base = cache_dir() / key
    try:
        meta = json.loads(base.with_suffix(".json").read_text())
        cubin = base.with_suffix(".cubin").read_bytes()
    except (OSError, ValueError):
        return None
    if hashlib.sha256(cubin).hexdigest() != meta.get("sha256"):
        return None  # corrupt or half-written entry: recompile
    return Compiled(cubin, meta.get("log", ""), arch, ptxas_stats(meta.get("log", "")), cached=True)


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


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
        base = cache_dir() / key
        _atomic_write(base.with_suffix(".cubin"), cubin)
        meta = {"sha256": hashlib.sha256(cubin).hexdigest(), "log": log, "arch": arch, "name": name, "options": opts}
        _atomic_write(base.with_suffix(".json"), json.dumps(meta).encode())
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
