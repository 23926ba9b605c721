"""Where compiled kernels live, and how they get there: one home for what the C++ kernels
(``ops/cpu/build.py``), the CUBINs (``ops/cuda/nvrtc.py``) and the CUDA emulator
(``painnfx.tools.emulator``) share.

* ``cache_root()``: ``$PAINNFX_CACHE_DIR`` or ``~/.cache/painnfx``; each kind of artefact has its
  own folder below it (``cpu``, ``cubin``, ``emulator``).
* ``host_compiler()``: ``$CXX``, else g++, else c++.
* ``BuildCache``: an entry is a file named by a key (a SHA-256 of everything that decides the
  build: sources, flags, compiler version, ...) and a JSON sidecar holding the file's own
  SHA-256; both are written atomically (temporary file + rename), and an entry whose hash does
  not match (corrupt, half-written) is built again.
* ``load_once``: a built product loaded on first use, once per process, or None with one
  warning that says why (the C++ library, the CUDA emulator).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Iterable, Optional


class CompilerNotFound(RuntimeError):
    """No host C++ compiler: ``$CXX`` is unset or not executable, and neither g++ nor c++ is on PATH."""


def cache_root() -> Path:
    return Path(os.environ.get("PAINNFX_CACHE_DIR") or Path.home() / ".cache" / "painnfx")


def host_compiler() -> str:
    cxx = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
    if not cxx or not shutil.which(cxx):
        raise CompilerNotFound("no C++ compiler found (install g++ or set CXX)")
    return cxx


def digest(parts: Iterable[str | bytes]) -> str:
    """SHA-256 of ``parts`` with separators (a cache key)."""
    h = hashlib.sha256()
    for part in parts:
        h.update(part if isinstance(part, bytes) else part.encode())
        h.update(b"\0")
    return h.hexdigest()


def sha256_file(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
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


class BuildCache:
    """Verified, atomically written build products of one ``kind`` (a folder of ``cache_root()``)."""

    def __init__(self, kind: str):
        self.kind = kind

    @property
    def folder(self) -> Path:
        return cache_root() / self.kind  # read each time: tests and users may change the variable

    def path(self, name: str) -> Path:
        return self.folder / name

    def lookup(self, name: str) -> Optional[dict]:
        """The sidecar of entry ``name`` if the file is there and its hash matches, else None."""
        target = self.path(name)
        try:
            meta = json.loads(target.with_suffix(".json").read_text())
            if meta.get("sha256") == sha256_file(target):
                return meta
        except (OSError, ValueError):
            pass
        return None  # missing, corrupt or half-written: build again

    def store(self, name: str, build: Callable[[Path], dict]) -> dict:
        """Run ``build(tmp_path)`` (it writes the product there and returns metadata), then move the
        product into place and write its sidecar with the product's hash; returns the sidecar."""
        target = self.path(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem, suffix=".tmp")
        os.close(fd)
        try:
            meta = dict(build(Path(tmp)), sha256=sha256_file(Path(tmp)))
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        atomic_write(target.with_suffix(".json"), json.dumps(meta).encode())
        return meta


def load_once(state: dict, lock: threading.Lock, make: Callable[[], tuple], errors: tuple, unavailable: str):
    """``make()`` -> (product, info), run once per process under ``lock`` and kept in ``state``
    (``state["product"]``, ``state["info"]``). If it raises one of ``errors``: the product is None,
    ``info`` holds the error, and one warning says "painnfx: <unavailable with {reason} filled in>"
    (the first line of the error); the caller's caller is named as where it happened."""
    if "product" in state:
        return state["product"]
    with lock:
        if "product" not in state:
            try:
                product, info = make()
                state.update(product=product, info=info)
            except errors as exc:
                state.update(product=None, info={"error": str(exc)})
                reason = (str(exc).splitlines() or [""])[0]
                warnings.warn(f"painnfx: {unavailable.format(reason=reason)}", stacklevel=4)
    return state["product"]
