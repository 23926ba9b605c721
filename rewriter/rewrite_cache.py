"""Rewrites kept on disk, so that a second process optimizes the same model in milliseconds.

The rewrite (export, passes, verification: 1.5-2.5 s for the default model) depends only on the
model's weights and structure, the options, torch and painnfx's own code. After a verified
rewrite, its graph (as a plain ``torch.fx.GraphModule``: code and constants), the graph's inputs
and its report are written to ``<cache>/rewrites/`` under a key of all of those
(``weights_digest``, ``structure_digest``, the options, torch's version and a digest of the
rewriter's and the ops' source files, the kernels' C++ and CUDA sources included); a later process with the same key loads it (~30 ms) and,
like the in-process reuse, checks it on a probe system against its own model before using it.

The entries are pickles, read only from painnfx's own cache folder, which is as trusted as the
compiled libraries beside it (an entry whose hash does not match its sidecar is ignored); delete
the folder to clear them.
"""

from __future__ import annotations

import functools
import io
import pickle
from pathlib import Path
from typing import Optional

import torch
import torch.fx as fx

from painnfx.ops.build_cache import BuildCache, digest

from .capture import Captured

CACHE = BuildCache("rewrites")
HERE = Path(__file__).parent


class LeafTracer(fx.Tracer):
    """What re-creates a stored graph from its code: the fused nodes' adapters (``fusions.LEAVES``)
    stay single nodes, as the rewrite left them."""

    def __init__(self):
        from .fusions import LEAVES

        super().__init__(autowrap_functions=LEAVES)


#: the ops' sources that decide a rewrite: Python, and the kernels' C++ and CUDA (the verification
#: runs the kernels: a rewrite verified against other kernels is another rewrite)
OPS_SOURCES = ("*.py", "*.cpp", "*.h", "*.cu", "*.cuh")


@functools.lru_cache(maxsize=1)
def source_digest() -> str:
    """SHA-256 of painnfx's rewriter sources and the ops' sources and kernels: another painnfx, another key."""
    ops = HERE.parent / "ops"
    files = sorted({*HERE.rglob("*.py"), *(p for pattern in OPS_SOURCES for p in ops.rglob(pattern))})
    return digest([f"{p.relative_to(HERE.parent)}\n{p.read_text()}" for p in files])


def key(memo_key: tuple) -> str:
    return digest([repr(memo_key), torch.__version__, source_digest()])[:32]


def load(name: str, target) -> Optional[tuple]:
    """(Captured bound to ``target``, report) of entry ``name``, or None (missing, corrupt, or
    written by an incompatible torch or painnfx)."""
    if CACHE.lookup(f"{name}.pt") is None:
        return None
    try:
        entry = torch.load(CACHE.path(f"{name}.pt"), weights_only=False)
        cap = Captured(gm=entry["gm"], inputs=entry["inputs"], constants=entry["constants"], target=target,
                       read=set(entry["read"]))
        return cap, entry["report"]
    except (OSError, EOFError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError, AttributeError,
            ImportError, SyntaxError):
        return None


def store(name: str, cap: Captured, report) -> None:
    """Write the rewrite (best effort: a cache that cannot be written costs the next process a rewrite)."""
    graph = fx.GraphModule(cap.gm, cap.gm.graph)  # export's tracer cannot be re-created; this one can
    graph._tracer_cls, graph._tracer_extras = LeafTracer, {}
    buf = io.BytesIO()

    def write(out: Path) -> dict:
        out.write_bytes(buf.getvalue())
        return {"torch": torch.__version__}

    try:
        torch.save({"gm": graph, "inputs": cap.inputs, "constants": cap.constants, "read": sorted(cap.read),
                    "report": report}, buf)
        CACHE.store(f"{name}.pt", write)
    except (OSError, pickle.PicklingError, TypeError, AttributeError):
        pass
