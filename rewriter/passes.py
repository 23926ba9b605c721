"""The rewrite pipeline, in order. Each pass takes the ``RewriteState`` and returns a
``PassResult`` saying what it matched, replaced, rejected, and which candidates nearly matched.

    match_radial_basis        annotate radial bases (every spec of ops.radial), read their constants
    match_cutoff              annotate cutoff functions (every spec), read r_c (and the rest)
    match_radial_filter       linear(basis) * cutoff -> fused_radial_filter                (verified)
    find_zero_mu              prove which vector features are zero (the first layer's mu)
    match_message             annotate PaiNN message blocks (gather, products, scatter)
    fuse_filter_into_message  radial filter + its messages -> fused_painn_message per layer (verified)
    share_edge_plans          one prepared-edges node per edge list
    eliminate_dead_code       drop what the replacements made unused

The fusion passes come from the fusion registry (``fusions``), in registry order.
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
