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
from .adapters import is_schnetpack_potential
from .capture import AtomicEnergies, Captured, SchnetpackRepresentation, Target, TotalEnergy, capture
from .passes import (
    RewriteState, eliminate_dead_code, fold_zero_mu, fuse_filter_into_message, match_cosine_cutoff, match_message,
    match_radial_basis, match_radial_filter,
)
from .replacements import fused_painn_message, fused_radial_filter
from .report import OptimizeReport, PassResult, graph_table, launch_estimate, op_counts

NORMALIZE = [
    normalize.strip_runtime_asserts,
    normalize.functionalize_inplace,
    normalize.eliminate_common_subexpressions,
    normalize.fold_constants,
    normalize.canonicalize,
    normalize.fold_constants,
    normalize.eliminate_common_subexpressions,
    normalize.drop_dead_nodes,
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


def aggregate(e_atom: torch.Tensor, batch: Optional[torch.Tensor], n_systems: int) -> torch.Tensor:
    """Per-system sums of per-atom energies, spelled as the eager PaiNN spells them."""
    if batch is None:
        return e_atom.sum()[None]
    return torch.zeros(n_systems, dtype=e_atom.dtype, device=e_atom.device).index_add(0, batch, e_atom)


class GraphRunner(nn.Module):
    """Calls a rewritten graph with the live parameters and buffers of the captured module."""

    def __init__(self, cap: Captured):
        super().__init__()
        self.graph_module = cap.gm
        self._inputs = cap.inputs
        self._target = [cap.target]  # a list: not registered as a submodule twice
        p = next(iter(cap.target.parameters()))
        self.dtype, self.device = p.dtype, p.device

    def forward(self, **user):
        target = self._target[0]
        args = []
        for gi in self._inputs:
            if gi.kind == "user":
                args.append(user[gi.name])
            elif gi.kind == "parameter":
                args.append(target.get_parameter(gi.name))
            elif gi.kind == "buffer":
                args.append(target.get_buffer(gi.name))
            else:
                args.append(getattr(self.graph_module, gi.name, None))
        return self.graph_module(*args)

    def check(self, t: torch.Tensor) -> None:
        if t.dtype != self.dtype or t.device != self.device:
            raise ValueError(
                f"this optimized model was built for {self.dtype} on {self.device}; got {t.dtype} on {t.device}. "
                "Convert the model first, then call optimize() again"
            )


class OptimizedModel(nn.Module):
    """A painnfx-signature energy model whose graph has fused nodes. Shares parameters with
    ``model``; ``report`` says what was rewritten. When nothing could be rewritten it simply
    runs ``model``."""

    def __init__(self, model: nn.Module, cap: Optional[Captured], report: OptimizeReport, per_atom: bool):
        super().__init__()
        self.model = model
        self.runner = GraphRunner(cap) if (cap is not None and report.applied) else None
        self.per_atom = per_atom
        self.report = report
        self.cutoff = float(getattr(model, "cutoff", 0.0))
        self.config = getattr(model, "config", None)

    @property
    def applied(self) -> bool:
        return self.runner is not None

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        if self.runner is None or (batch is not None and not self.per_atom):
            if batch is None:
                return self.model(positions, numbers, edge_index, shifts)
            return self.model(positions, numbers, edge_index, shifts, batch, n_systems)
        self.runner.check(positions)
        (out,) = self.runner(positions=positions, numbers=numbers, edge_index=edge_index, shifts=shifts)
        if not self.per_atom:
            return out
        return aggregate(out, batch, n_systems)


class OptimizedRepresentation(nn.Module):
    """Drop-in for a schnetpack PaiNN representation: inputs dict -> inputs dict with
    ``scalar_representation`` and ``vector_representation``, computed by the rewritten graph."""

    def __init__(self, representation: nn.Module, cap: Captured, report: OptimizeReport):
        super().__init__()
        self.original = representation
        self.runner = GraphRunner(cap)
        self.report = report
        self.cutoff = representation.cutoff
        self.keys = cap.target.keys

    def forward(self, inputs: dict) -> dict:
        p = self.keys
        r = inputs[p.Rij]
        self.runner.check(r)
        q, mu = self.runner(r_ij=r, numbers=inputs[p.Z], idx_i=inputs[p.idx_i].long(), idx_j=inputs[p.idx_j].long())
        inputs["scalar_representation"] = q
        inputs["vector_representation"] = mu
        return inputs


def rewrite(target: Target, backend: str = "auto", verify: bool = True, name: str = "model", _sabotage=None):
    """Capture ``target`` and run the pass pipeline: (Captured or None, OptimizeReport)."""
    report = OptimizeReport(model=name, backend=backend)
    p = next(iter(target.parameters()), None)
    if p is None:
        report.passes.append(PassResult("capture", rejected=["model has no parameters"]))
        return None, report
    try:
        cap = capture(target)
    except Exception as exc:  # capture limits are reported, and the model still runs
        report.passes.append(PassResult("capture", rejected=[f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]))
        return None, report
    report.passes.append(PassResult("capture", lines=[f"torch.export: {len(cap.gm.graph.nodes)} nodes, inputs "
                                                      f"{', '.join(target.names)} (atoms and edges symbolic)"]))
    report.graph_before = cap.gm.code
    report.nodes_before = len(cap.gm.graph.nodes)
    report.ops_before = dict(op_counts(cap.gm))
    report.launches_before = launch_estimate(cap.gm)
    norm = PassResult("normalize")
    for fn in NORMALIZE:
        norm.lines += [f"{fn.__name__}: {line}" for line in fn(cap)]
    report.passes.append(norm)

    report.table_before = graph_table(cap.gm)
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
    report.table_after = graph_table(cap.gm)
    return cap, report


def optimize(model: nn.Module, backend: str = "auto", verify: bool = True, *, _sabotage=None):
    """Rewrite ``model``'s energy graph with fused ops; same call signature and results.

    * a painnfx PaiNN (or any module with its energy signature) -> ``OptimizedModel``;
    * a schnetpack ``NeuralNetworkPotential`` with a PaiNN representation -> a copy of that
      potential whose ``representation`` runs the rewritten graph (its own input modules,
      output heads, forces/stress and postprocessors run unchanged; the original is untouched).

    ``backend``: "auto" (best for the device), "reference" or "cuda". ``verify``: check every
    rewrite on probe systems before applying it. Constants (basis centres, widths, cutoff) are
    read from the model's buffers now: optimize again after changing them, the dtype or the
    device. The returned object has ``.report`` (``OptimizeReport``). If nothing matches, the
    result runs the original model and says so, with a warning.
    """
    from painnfx.ops.backends import available_backends

    if backend != "auto" and backend not in available_backends():
        raise ValueError(f"unknown backend {backend!r}; available: {available_backends()}")
    name = type(model).__name__
    if is_schnetpack_potential(model):
        cap, report = rewrite(SchnetpackRepresentation(model.representation), backend, verify, name, _sabotage)
        new = copy.copy(model)
        new._modules = dict(model._modules)
        if report.applied:
            new.representation = OptimizedRepresentation(model.representation, cap, report)
        else:
            warnings.warn(f"painnfx.optimize: nothing was rewritten in {name}; it runs unchanged", stacklevel=2)
        new.report = report
        return new
    per_atom = hasattr(model, "atomic_energies")
    target = AtomicEnergies(model) if per_atom else TotalEnergy(model)
    cap, report = rewrite(target, backend, verify, name, _sabotage)
    if not report.applied:
        warnings.warn(f"painnfx.optimize: nothing was rewritten in {name}; it runs unchanged", stacklevel=2)
    return OptimizedModel(model, cap, report, per_atom)
