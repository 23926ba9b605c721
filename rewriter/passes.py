"""The rewrite pipeline, ``PIPELINE``, in order: the recognisers that annotate radial bases and
cutoff functions and read their constants (``recognize.py``), the passes of every fusion in the
fusion registry's order (``fusions.FUSIONS``; each fusion's module lists its own passes), and
dead-code elimination. Each pass takes the ``RewriteState`` and returns a ``PassResult`` saying what
it matched, replaced, rejected, and which candidates nearly matched; the report prints them in
this order.
"""

from __future__ import annotations

from .fusions import PASSES as FUSION_PASSES
from .normalize import remove_dead_code
from .recognize import match_cutoff, match_radial_basis
from .report import PassResult
from .state import RewriteState


def eliminate_dead_code(state: RewriteState) -> PassResult:
    removed = remove_dead_code(state.cap.gm)
    state.changed()
    return PassResult("eliminate_dead_code", lines=[f"removed {removed} nodes"])


PIPELINE = [match_radial_basis, match_cutoff, *FUSION_PASSES, eliminate_dead_code]
