"""What set-up steps cost on this machine, remembered across processes.

An optimized model run with ``setup="background"`` takes a set-up step (the rewrite, compiling a
forces graph) only once the job has run at least as long as the step is expected to take
(optimized_model.py). The expectation comes from here: the seconds the same step took last time, for the
same weights, dtype, device, torch version and CPU (``key``). A compiled forces graph is loaded
from Inductor's own on-disk caches the second time (seconds instead of tens of seconds), and the
record says so; different weights, another torch or another CPU find no record and are expected
to pay the first-time price (``FIRST_TIME``).

The records live in ``<cache>/setup-costs.json`` (``painnfx.ops.build_cache.cache_root()``:
``$PAINNFX_CACHE_DIR`` or ``~/.cache/painnfx``), written atomically.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from typing import Optional

import torch
from torch import nn

from painnfx.ops.build_cache import atomic_write, cache_root, digest
from painnfx.ops.cpu.build import _cpu_identity

#: seconds a step is expected to take when no record says otherwise (this 2-core AMD EPYC VM: the
#: C++ kernels' build 6-7 s; the rewrite 1.4-2.1 s; a forces graph through Inductor with empty
#: caches 20-30 s)
FIRST_TIME = {"build": 8.0, "rewrite": 2.0, "compile": 30.0}
#: the second time, when the first is all the record knows: a compiled graph is then read from
#: Inductor's caches (2-4 s measured on the same VM)
SECOND_TIME = {"build": 8.0, "rewrite": 2.0, "compile": 4.0}
#: the least share of a call's time a step saves, for a job of known length (``plan``): the fused
#: graph takes 1/5 to 1/2 of the plain model's time (build, rewrite), the compiled forces graph
#: 1/4 to 6/7 of the fused graph's (docs/perf, AMD EPYC)
GAIN = {"build": 0.5, "rewrite": 0.5, "compile": 0.15}
FILE = "setup-costs.json"
_lock = threading.Lock()


def weights_digest(model: nn.Module) -> str:
    """SHA-256 of the model's class, parameters and buffers (names, dtypes, shapes, devices, values)."""
    h = hashlib.sha256(f"{type(model).__module__}.{type(model).__qualname__}".encode())
    for name, t in sorted(model.state_dict(keep_vars=False).items()):
        if not isinstance(t, torch.Tensor):
            continue
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|{t.device}".encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                 if t.numel() else b"")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def _cpu() -> str:
    return _cpu_identity()


def key(step: str, weights: str, dtype: torch.dtype, device: torch.device, detail: str = "") -> str:
    """The record's name: the step (and ``detail``, e.g. the kind of forces graph), the weights'
    digest, dtype, device, torch version and CPU."""
    return digest([step, detail, weights, str(dtype), str(device), torch.__version__, _cpu()])[:32]


def _read() -> dict:
    try:
        return json.loads((cache_root() / FILE).read_text())
    except (OSError, ValueError):
        return {}


def expected(step: str, record_key: Optional[str]) -> float:
    """Seconds ``step`` is expected to take under ``record_key``: what it took the last time it was
    repeated, ``SECOND_TIME[step]`` (at most what it took) when it ran once, else ``FIRST_TIME[step]``."""
    entry = _read().get(record_key, {}) if record_key is not None else {}
    seconds = entry.get("seconds")
    if not isinstance(seconds, (int, float)):
        return FIRST_TIME[step]
    return float(seconds) if entry.get("runs", 1) > 1 else min(float(seconds), SECOND_TIME[step])


def known(record_key: str) -> bool:
    return record_key in _read()


def record(record_key: str, seconds: float) -> None:
    """Remember that the step of ``record_key`` took ``seconds`` this time (atomically; best effort)."""
    with _lock:
        records = _read()
        runs = records.get(record_key, {}).get("runs", 0) + 1
        records[record_key] = {"seconds": round(float(seconds), 3), "runs": runs}
        try:
            atomic_write(cache_root() / FILE, json.dumps(records, indent=0).encode())
        except OSError:
            pass  # a read-only cache only costs the next process a later switch
