"""Calling a rewritten graph: the modules ``optimize`` returns.

``GraphRunner`` resolves the graph's parameter, buffer and constant arguments once, at
construction, to the live tensors of the captured module (the same objects the model holds,
so in-place updates, ``load_state_dict`` and ``.to()`` of parameters are seen); a call only
fills in the user inputs.
"""

from __future__ import annotations

from typing import Optional

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


class OptimizedModel(nn.Module):
    """A painnfx-signature energy model whose graph has fused nodes. Shares parameters with
    ``model``; ``report`` says what was rewritten. When nothing could be rewritten it simply
    runs ``model``. Batched calls (``batch``) need a per-atom model (``atomic_energies`` and
    ``aggregate``): its per-atom energies are summed with the model's own ``aggregate``."""

    def __init__(self, model: nn.Module, cap: Optional[Captured], report: OptimizeReport, per_atom: bool,
                 backend: Optional[str] = None):
        super().__init__()
        self.model = model
        self.runner = GraphRunner(cap, backend) if (cap is not None and report.applied) else None
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
        return self.model.aggregate(out, batch, n_systems)


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
