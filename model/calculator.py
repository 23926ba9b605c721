"""ASE calculator for PaiNN models: energy, free_energy, forces, stress (eV, Angstrom)."""

from __future__ import annotations

import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .default import resolve_model
from .neighbors import neighbor_list
from .painn import PaiNN
from .properties import compute_properties, voigt
from .validation import check_numbers, check_overlaps


class PaiNNCalculator(Calculator):
    """Evaluate a PaiNN model on ``ase.Atoms``.

    ``model`` is a :class:`PaiNN`, ``optimize()`` of one (run as it is, with its own path
    policy), a checkpoint path, or None for the built-in default model.
    ``optimize`` runs :func:`painnfx.rewriter.optimize` on the model first: ``"auto"``
    (default) does so when it applies and then, per system size, runs whichever of the fused
    graph and the plain model is faster (measured on the first call of that size), so it never
    makes a calculation slower; True requires the rewrite and always runs the fused graph;
    False never rewrites. ``dtype`` defaults to float64 for clean energy
    conservation in MD; float32 is faster. ``cuda_graphs=True`` (CUDA only) captures a whole
    step (energy, forces, stress) once and replays it on new positions (model/cuda_graphs.py).
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: PaiNN | str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        optimize: bool | str = "auto",
        cuda_graphs: bool = False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        model = resolve_model(model)
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a PaiNN, a checkpoint path or None, got {type(model)}")
        self.device = torch.device(device)
        self.dtype = dtype
        self.model = model.to(device=self.device, dtype=dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.cutoff = float(getattr(model, "cutoff"))
        cfg = getattr(model, "config", None)
        self.elements = getattr(cfg, "elements", None)
        self.max_z = getattr(cfg, "max_z", 100)
        self.evaluator = self._maybe_optimize(self.model, optimize)
        self.model = getattr(self.model, "model", self.model)  # optimize() of a PaiNN: the PaiNN behind it
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.cuda_graphs = cuda_graphs
        self._graphed: dict = {}  # (numbers, stress) -> GraphedEvaluator

    @staticmethod
    def _maybe_optimize(model, optimize):
        """``optimize``: True (required), False (never) or "auto" (when it applies: a model that
        cannot be captured or matched runs unoptimized, as ``optimize()`` itself reports)."""
        from painnfx.rewriter import optimize as run_optimize
        from painnfx.rewriter.runner import OptimizedModel

        if isinstance(model, OptimizedModel):  # optimized already: run it as it is, or the model behind it
            return model.model if optimize is False else model
        if optimize is False:
            return model

        if optimize is True:
            fast = run_optimize(model)
            if not fast.applied:
                raise RuntimeError("optimize=True, but nothing in this model could be rewritten:\n"
                                   + fast.report.to_text())
            return fast
        from painnfx.rewriter.optimize import NothingRewrittenWarning

        with warnings.catch_warnings():  # a model with nothing to fuse is fine here; anything else is shown
            warnings.simplefilter("ignore", NothingRewrittenWarning)
            fast = run_optimize(model)
        if not fast.applied:
            return model
        fast.path = "auto"  # never slower than the plain model: measured per system size (runner.py)
        return fast

    def _graphed_step(self, numbers: torch.Tensor, stress: bool):
        """The captured MD step for these atoms (fixed-size MD: one capture, replayed; a neighbor
        count above the edge capacity re-captures, see model/cuda_graphs.py)."""
        from .cuda_graphs import GraphedEvaluator

        key = (tuple(numbers.tolist()), stress)
        if key not in self._graphed:
            self._graphed = {key: GraphedEvaluator(self.evaluator, numbers, stress=stress)}
        return self._graphed[key]

    @property
    def optimized(self) -> bool:
        return self.evaluator is not self.model

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a cell that is periodic in all three directions"
            )
        check_numbers(atoms.numbers, self.elements, self.max_z)
        nl = neighbor_list(
            atoms.positions, self.cutoff, atoms.cell.array, atoms.pbc, dtype=self.dtype, device=self.device
        )
        pos = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        ei = nl.edge_index
        check_overlaps(ei, pos[ei[1]] - pos[ei[0]] + nl.shifts)
        cell = torch.as_tensor(atoms.cell.array, dtype=self.dtype, device=self.device)
        if self.cuda_graphs:
            out = self._graphed_step(numbers, want_stress)(pos, ei, nl.shifts, cell)
        else:
            out = compute_properties(self.evaluator, pos, numbers, ei, nl.shifts, cell, stress=want_stress)
        energy = float(out.energy.sum())
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = out.forces.cpu().numpy().astype(np.float64)
        if want_stress:
            self.results["stress"] = voigt(out.stress)
