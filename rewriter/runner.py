"""Calling a rewritten graph: the modules ``optimize`` returns.

``GraphRunner`` resolves the graph's parameter, buffer and constant arguments once, at
construction, to the live tensors of the captured module (the same objects the model holds,
so in-place updates, ``load_state_dict`` and ``.to()`` of parameters are seen); a call only
fills in the user inputs.
"""

from __future__ import annotations

import math
import time
from typing import Callable, Optional

import torch
from torch import nn

from painnfx.ops import InputError, use_backend

from .capture import Captured
from .report import OptimizeReport


class GraphRunner(nn.Module):
    def __init__(self, cap: Captured, backend: Optional[str] = None):
        super().__init__()
        self.graph_module = cap.gm
        self._args, self._slots = cap.static_arguments()
        p = next(iter(cap.target.parameters()))
        self.dtype, self.device = p.dtype, p.device
        self.backend = backend

    def forward(self, **user):
        args = list(self._args)
        for k, name in self._slots:
            args[k] = user[name]
        if self.backend is None:
            return self.graph_module(*args)
        with use_backend(self.backend):
            return self.graph_module(*args)

    def check(self, t: torch.Tensor) -> None:
        if t.dtype != self.dtype or t.device != self.device:
            raise InputError(
                f"this optimized model was built for {self.dtype} on {self.device}; got {t.dtype} on {t.device}. "
                "Convert the model first, then call optimize() again"
            )


#: above this many edges the fused path is taken without measuring: it is faster there on every
#: CPU and GPU measured (docs/perf) and its memory is a fraction of eager's; measuring the plain
#: path at that size would cost seconds
MEASURE_MAX_EDGES = 10_000


def size_class(n_atoms: int, n_edges: int) -> tuple:
    """Systems within a factor of two in atoms and edges share one measured choice."""
    return (max(0, math.ceil(math.log2(max(n_atoms, 1)))), max(0, math.ceil(math.log2(max(n_edges, 1)))))


class OptimizedModel(nn.Module):
    """A painnfx-signature energy model whose graph has fused nodes. Shares parameters with
    ``model``; ``report`` says what was rewritten. When nothing could be rewritten it simply
    runs ``model``. Batched calls (``batch``) need a per-atom model (``atomic_energies`` and
    ``aggregate``): its per-atom energies are summed with the model's own ``aggregate``.

    ``path``: "fused" always runs the rewritten graph; "auto" (what ``PaiNNCalculator`` uses
    by default) never makes a call slower than the plain model: on the first call of each size
    class (``size_class``) it times energy+forces of both paths (``repeats`` calls each after a
    warm-up, the fastest counts) and keeps the faster; above ``MEASURE_MAX_EDGES`` edges it takes
    the fused path unmeasured. ``report.path_choices`` records each choice and why."""

    def __init__(self, model: nn.Module, cap: Optional[Captured], report: OptimizeReport, per_atom: bool,
                 backend: Optional[str] = None, path: str = "fused", timer: Callable[[], float] = time.perf_counter,
                 repeats: int = 3):
        super().__init__()
        self.model = model
        self.runner = GraphRunner(cap, backend) if (cap is not None and report.applied) else None
        self.per_atom = per_atom
        self.report = report
        self.cutoff = float(getattr(model, "cutoff", 0.0))
        self.config = getattr(model, "config", None)
        self.path = path
        self.timer, self.repeats = timer, repeats
        self._choice: dict = {}

    @property
    def applied(self) -> bool:
        return self.runner is not None

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in ("fused", "auto"):
            raise ValueError(f"path must be 'fused' or 'auto', got {value!r}")
        self._path = value
        self.report.path_policy = ("fused graph on every call" if value == "fused" else
                                   "auto: the faster of fused and plain, measured on the first call of each size class "
                                   f"(fused without measuring above {MEASURE_MAX_EDGES} edges)")

    def _plain(self, positions, numbers, edge_index, shifts, batch, n_systems):
        if batch is None:
            return self.model(positions, numbers, edge_index, shifts)
        return self.model(positions, numbers, edge_index, shifts, batch, n_systems)

    def _fused(self, positions, numbers, edge_index, shifts, batch, n_systems):
        self.runner.check(positions)
        (out,) = self.runner(positions=positions, numbers=numbers, edge_index=edge_index, shifts=shifts)
        if not self.per_atom:
            return out
        return self.model.aggregate(out, batch, n_systems)

    def _time(self, fn, args) -> float:
        positions = args[0].detach().clone().requires_grad_(True)
        sync = torch.cuda.synchronize if positions.is_cuda else (lambda: None)  # time the work, not the launch
        best = math.inf
        with torch.enable_grad():
            for k in range(self.repeats + 1):
                sync()
                start = self.timer()
                energy = fn(positions, *args[1:])
                torch.autograd.grad(energy.sum(), positions)
                sync()
                if k:  # the first call is a warm-up
                    best = min(best, self.timer() - start)
        return best

    def _choose(self, args) -> str:
        n_atoms, n_edges = args[0].shape[0], args[2].shape[1]
        cls = size_class(n_atoms, n_edges)
        if cls not in self._choice:
            if n_edges > MEASURE_MAX_EDGES:
                choice, why = "fused", f"more than {MEASURE_MAX_EDGES} edges"
            else:
                fused, plain = self._time(self._fused, args), self._time(self._plain, args)
                choice = "fused" if fused <= plain else "plain"
                why = f"fused {fused * 1e3:.3g} ms vs plain {plain * 1e3:.3g} ms per energy+forces"
            self._choice[cls] = choice
            self.report.path_choices.append(
                {"atoms": n_atoms, "edges": n_edges, "size_class": list(cls), "path": choice, "why": why})
        return self._choice[cls]

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        args = (positions, numbers, edge_index, shifts, batch, n_systems)
        if self.runner is None or (batch is not None and not self.per_atom):
            return self._plain(*args)
        if self._path == "auto" and self._choose(args) == "plain":
            return self._plain(*args)
        return self._fused(*args)


class OptimizedRepresentation(nn.Module):
    """Drop-in for a schnetpack PaiNN representation: inputs dict -> inputs dict with
    ``scalar_representation`` and ``vector_representation``, computed by the rewritten graph."""

    def __init__(self, representation: nn.Module, cap: Captured, report: OptimizeReport,
                 backend: Optional[str] = None):
        super().__init__()
        self.original = representation
        self.runner = GraphRunner(cap, backend)
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
