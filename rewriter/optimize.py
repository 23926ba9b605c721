"""``optimize(model)``: the pass pipeline from capture to a module with fused nodes.

    capture -> normalize (strip asserts, de-in-place, CSE, fold constants, canonical forms)
    -> match_radial_basis -> match_cosine_cutoff -> match_radial_filter (verified)
    -> fold_zero_mu -> match_message -> fuse_filter_into_message (verified)
    -> eliminate_dead_code -> lint + recompile

The result has the model's call signature and results. If nothing matches, or capture itself
fails, the original model is returned inside the same wrapper (``report.applied`` is False and
the report says why): never a broken model.
"""

from __future__ import annotations

import copy
import warnings
from typing import Optional

import torch
from torch import nn

from . import normalize
from .adapters import energy_module
from .capture import Captured, capture
from .passes import (
    RewriteState, eliminate_dead_code, fold_zero_mu, fuse_filter_into_message, match_cosine_cutoff, match_message,
    match_radial_basis, match_radial_filter,
)
from .replacements import fused_painn_message, fused_radial_filter
from .report import OptimizeReport, PassResult, launch_estimate, op_counts

NORMALIZE = [
    normalize.strip_runtime_asserts,
    normalize.functionalize_inplace,
    normalize.eliminate_common_subexpressions,
    normalize.fold_constants,
    normalize.canonicalize,
    normalize.fold_constants,
    normalize.eliminate_common_subexpressions,
]
PIPELINE = [
    match_radial_basis,
    match_cosine_cutoff,
    match_radial_filter,
    fold_zero_mu,
    match_message,
    fuse_filter_into_message,
    eliminate_dead_code,
]


class OptimizedModel(nn.Module):
    """The rewritten energy graph, fed with the live parameters of the original model."""

    def __init__(self, model: nn.Module, energy: nn.Module, cap: Optional[Captured], report: OptimizeReport):
        super().__init__()
        self.model = model
        self.energy = energy
        self.graph_module = cap.gm if (cap is not None and report.applied) else None
        self._inputs = cap.inputs if cap is not None else []
        self._root = cap.module if cap is not None else None
        self.report = report
        self.cutoff = float(getattr(model, "cutoff", getattr(energy, "cutoff", 0.0)))
        self.config = getattr(model, "config", None)
        p = next(iter(model.parameters()))
        self._dtype, self._device = p.dtype, p.device

    @property
    def applied(self) -> bool:
        return self.graph_module is not None

    def _graph_args(self, user: dict) -> list:
        args = []
        for gi in self._inputs:
            if gi.kind == "user":
                args.append(user[gi.name])
            elif gi.kind == "parameter":
                args.append(self._root.get_parameter(gi.name))
            elif gi.kind == "buffer":
                args.append(self._root.get_buffer(gi.name))
            else:
                args.append(getattr(self.graph_module, gi.name, None))
        return args

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        if not self.applied or batch is not None:
            # batched calls (one energy per system) run the original module
            return self.energy(positions, numbers, edge_index, shifts, batch, n_systems)
        if positions.dtype != self._dtype or positions.device != self._device:
            raise ValueError(
                f"this optimized model was built for {self._dtype} on {self._device}; got positions in "
                f"{positions.dtype} on {positions.device}. Convert the model first, then call optimize() again"
            )
        user = {"positions": positions, "numbers": numbers, "edge_index": edge_index, "shifts": shifts}
        (energy,) = self.graph_module(*self._graph_args(user))
        return energy


def optimize(model: nn.Module, backend: str = "auto", verify: bool = True, *, _sabotage=None) -> OptimizedModel:
    """Rewrite ``model``'s energy graph with fused ops; same call signature and results.

    ``model``: a painnfx PaiNN, a schnetpack NeuralNetworkPotential with a PaiNN representation,
    or any module with the painnfx energy signature. ``backend``: "auto" (best for the device),
    "reference" or "cuda". ``verify``: check every rewrite on probe systems before applying it.
    Constants (basis centres, widths, cutoff) are read from the model's buffers now: optimize
    again after changing them, or after changing the model's dtype or device.
    """
    from painnfx.ops.backends import available_backends

    if backend != "auto" and backend not in available_backends():
        raise ValueError(f"unknown backend {backend!r}; available: {available_backends()}")
    energy = energy_module(model)
    name = type(model).__name__
    report = OptimizeReport(model=name, backend=backend)
    p = next(iter(energy.parameters()), None)
    if p is None:
        report.passes.append(PassResult("capture", rejected=["model has no parameters"]))
        return OptimizedModel(model, energy, None, report)
    try:
        cap = capture(energy)
    except Exception as exc:  # capture limits are reported, and the model still runs
        report.passes.append(PassResult("capture", rejected=[f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]))
        warnings.warn(f"painnfx.optimize: could not capture {name}; running it unoptimized ({exc})", stacklevel=2)
        return OptimizedModel(model, energy, None, report)

    report.graph_before = cap.gm.code
    report.nodes_before = len(cap.gm.graph.nodes)
    report.ops_before = dict(op_counts(cap.gm))
    report.launches_before = launch_estimate(cap.gm)
    norm = PassResult("normalize")
    for fn in NORMALIZE:
        norm.lines += [f"{fn.__name__}: {line}" for line in fn(cap)]
    report.passes.append(norm)

    state = RewriteState(cap=cap, backend=backend, verify=verify, dtype=p.dtype, sabotage=_sabotage)
    for pass_fn in PIPELINE:
        report.passes.append(pass_fn(state))
    cap.gm.graph.lint()
    cap.gm.recompile()

    fused = [n for n in cap.gm.graph.nodes if n.op == "call_function" and n.target in (fused_painn_message, fused_radial_filter)]
    report.fused_nodes = len(fused)
    report.applied = bool(fused)
    report.nodes_after = len(cap.gm.graph.nodes)
    report.ops_after = dict(op_counts(cap.gm))
    report.launches_after = launch_estimate(cap.gm)
    report.graph_after = cap.gm.code
    if not report.applied:
        warnings.warn(f"painnfx.optimize: nothing matched in {name}; it runs unchanged", stacklevel=2)
    return OptimizedModel(model, energy, cap, report)
