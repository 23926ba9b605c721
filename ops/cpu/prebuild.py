"""Building the CPU kernels in a process of their own, so that no call waits for the compiler.

On an empty cache the C++ library (build.py) takes ~10 s of two cores to compile. ``start()`` hands that to a process of its own
(``python -m painnfx.ops.cpu.prebuild``, through ``BOOTSTRAP``) and returns at once; an optimized model run with
``setup="background"`` (what ``PaiNNCalculator`` does) keeps answering with the plain model
meanwhile and switches when ``ready()``. The builder:

* runs at most as many compiler processes at a time as torch has threads in the process that
  started it (``torch.get_num_threads()``, what the user gave torch), and changes no thread or
  floating-point setting of anybody's;
* writes through the build cache (atomic renames, verified hashes), so a half-finished build is
  never loaded, and finishes even when the process that started it exits first: the next
  process starts with the kernels built;
* runs in the job's process group at nice 19 and ignores the terminal's interrupt, so Ctrl-C of
  the job does not stop it;
* holds ``<cache>/cpu-build.lock`` while it builds: a second builder (another process, a second
  model) waits for that one and builds nothing twice; its output goes to ``<cache>/cpu-build.log``.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from typing import Optional

from ..build_cache import cache_root
from . import build

#: seconds between two looks at the cache while a build is under way (each costs ~10 ms)
POLL_S = 0.5

_lock = threading.Lock()
_process: Optional[subprocess.Popen] = None
_ready = [False]
_last_look = [0.0]


def _look() -> None:
    if not _ready[0]:
        _ready[0] = build.cached()


def ready() -> bool:
    """Whether the library is built in the cache. While a build is under way this looks at the
    cache at most every ``POLL_S`` seconds."""
    if _ready[0]:
        return True
    now = time.monotonic()
    if now - _last_look[0] >= POLL_S:
        _last_look[0] = now
        _look()
    return _ready[0]


def unavailable() -> Optional[str]:
    """Why the library will not be built by a builder, or None: no compiler, or this process's
    builder ended without them (its output is in ``<cache>/cpu-build.log``)."""
    try:
        build.compiler()
    except build.CpuBuildError as exc:
        return str(exc)
    if _process is not None and _process.poll() is not None:
        _last_look[0] = 0.0
        if not ready():
            return f"its build failed (exit status {_process.returncode}; see {cache_root() / 'cpu-build.log'})"
    return None


def building() -> bool:
    """Whether a builder this process started is still running."""
    return _process is not None and _process.poll() is None


def start() -> bool:
    """Start the builder unless the library is built or this process's builder runs; True when one
    was started. Without a compiler there is nothing to start (False)."""
    global _process
    with _lock:
        _look()
        if _ready[0] or building():
            return False
        try:
            build.compiler()
        except build.CpuBuildError:
            return False
        folder = cache_root()
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "cpu-build.log", "ab") as log:
            _process = _spawn([sys.executable, "-c", BOOTSTRAP, str(build.default_jobs())], log)
        return True


#: the builder's first lines, before anything else (importing torch alone takes ~2 s of CPU): the
#: lowest priority, and deaf to the terminal's interrupt and hang-up (its compilers inherit both),
#: so that Ctrl-C of the job leaves the build to finish
BOOTSTRAP = ("import os, runpy, signal\n"
             "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
             "signal.signal(signal.SIGHUP, signal.SIG_IGN)\n"
             "try:\n    os.nice(19)\nexcept OSError:\n    pass\n"
             "runpy.run_module('painnfx.ops.cpu.prebuild', run_name='__main__', alter_sys=True)")


def _spawn(cmd: list, log) -> subprocess.Popen:
    """The builder, in the job's own session: Linux's autogroup scheduler shares the CPU between
    sessions whatever their nice values, and a builder in a session of its own slowed a 13-atom
    eager step 5-50x on 2 cores, where in the job's session at nice 19 it slows it not at all
    (``BOOTSTRAP`` keeps Ctrl-C from stopping it)."""
    return subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)


def refresh() -> None:
    """Look at the cache on the next ``ready()`` (after a build in this process)."""
    _last_look[0] = 0.0


def stop() -> None:
    """Stop this process's builder (the objects it compiled stay in the cache)."""
    if building():
        _process.kill()
        _process.wait()


def lowest_priority() -> None:
    """This process and the compilers it runs at the lowest CPU priority: the job's own threads come
    first (``BOOTSTRAP`` did it already; a builder run by hand gets it here)."""
    try:
        if os.getpriority(os.PRIO_PROCESS, 0) < 19:
            os.nice(19)
    except OSError:
        pass


def main(argv: list) -> int:
    """``python -m painnfx.ops.cpu.prebuild [JOBS]``: build the library, JOBS compiler processes at a
    time (what ``start`` runs, through ``BOOTSTRAP``)."""
    jobs = int(argv[0]) if argv else 1
    lowest_priority()
    folder = cache_root()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "cpu-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another builder's work is ours once it lets go
        start = time.perf_counter()
        _, info = build.build(jobs=jobs)
        print(f"painnfx: CPU kernels {'cached' if info['cached'] else 'built'} in {time.perf_counter() - start:.1f} s",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
