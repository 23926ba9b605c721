"""ASE calculator for PaiNN models: energy, free_energy, forces, stress (eV, Angstrom)."""

from __future__ import annotations

import threading
import warnings

import numpy as np
import torch
from ase.calculators.calculator import Calculator, PropertyNotImplementedError, all_changes

from .default import resolve_model
from .neighbors import SkinNeighborList
from .painn import PaiNN
from .properties import compute_properties, voigt
from .validation import (MAX_NEIGHBORS, MIN_DISTANCE, check_dtype, check_finite_results, check_numbers,
                         check_optimize, check_overlaps)


class PaiNNCalculator(Calculator):
    """Evaluate a PaiNN model on ``ase.Atoms``.

    ``model`` is a :class:`PaiNN`, ``optimize()`` of one (run as it is, with its own path
    policy), a checkpoint path, or None for the built-in default model.
    ``optimize``: ``"auto"`` (default) runs :func:`painnfx.rewriter.optimize` with the path rule
    (``painnfx.rewriter.optimized_model.PATH_RULE``): the compiled forces graph for energy and forces, the
    fused graph otherwise; True requires the rewrite and always runs the fused graph; False never
    rewrites. ``setup`` (with "auto"): "background" (default) answers the first calls with the
    plain model while the C++ kernels build in a process of their own, and takes each set-up step
    (rewrite, compile) once the job has run as long as the step is expected to take, so no job
    waits for a compiler; "now" rewrites here and compiles on the first call (the steady state at
    once: benchmarks, long runs). ``self.evaluator.prepare()`` does the set-up at a point of your
    choosing. ``dtype`` defaults to float64 for clean energy
    conservation in MD; float32 is faster. ``cuda_graphs=True`` (CUDA only) captures a whole
    step (energy, forces, stress) once and replays it on new positions (model/cuda_graphs.py).

    Input checks (``InputError`` naming the problem): unknown elements, NaN positions, degenerate
    cells, two atoms (or an atom and a periodic image) closer than ``min_distance`` (default
    ``validation.MIN_DISTANCE``, 0.5 A), an atom with more than ``max_neighbors`` neighbors (default
    ``validation.MAX_NEIGHBORS``, 1000). A non-finite energy, force or stress raises
    ``NonFiniteError``. One calculator may be shared by threads: calls run one at a time.

    Neighbors: one search of radius cutoff + ``neighbor_skin`` (default 1 A) serves the calls
    until an atom has moved half the skin (or the cell changes): the same edges as a new search
    each call, found in a fraction of its time (``neighbors.SkinNeighborList``); 0 searches anew
    every call.
    """

    implemented_properties = ["energy", "free_energy", "forces", "stress"]

    def __init__(
        self,
        model: PaiNN | str | None = None,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float64,
        optimize: bool | str = "auto",
        setup: str = "background",
        cuda_graphs: bool = False,
        min_distance: float = MIN_DISTANCE,
        max_neighbors: int = MAX_NEIGHBORS,
        neighbor_skin: float = 1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        check_dtype(dtype)
        check_optimize(optimize)
        from painnfx.rewriter.optimized_model import SETUPS

        if setup not in SETUPS:  # before the model loads: optimize() checks the same, later
            raise ValueError(f"setup must be one of {', '.join(SETUPS)}, got {setup!r}")
        self.min_distance, self.max_neighbors = float(min_distance), int(max_neighbors)
        self._lock = threading.RLock()  # ASE keeps one call's results on the calculator: one call at a time
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
        self.evaluator = self._maybe_optimize(self.model, optimize, setup)
        self.model = getattr(self.model, "model", self.model)  # optimize() of a PaiNN: the PaiNN behind it
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs=True needs a CUDA device, got {self.device}")
        self.cuda_graphs = cuda_graphs
        self._graphed: dict = {}  # (numbers, stress) -> GraphedEvaluator
        self.neighbors = SkinNeighborList(self.cutoff, neighbor_skin, self.max_neighbors)

    @staticmethod
    def _maybe_optimize(model, optimize, setup: str = "background"):
        """``optimize``: True (required), False (never) or "auto" (when it applies: a model that
        cannot be captured or matched runs unoptimized, as ``optimize()`` itself reports)."""
        from painnfx.rewriter import optimize as run_optimize
        from painnfx.rewriter.optimized_model import OptimizedModel

        if isinstance(model, OptimizedModel):  # optimized already: run it as it is, or the model behind it
            return model.model if optimize is False else model
        if optimize is False:
            return model

        if optimize is True:
            fast = run_optimize(model, setup="now")
            if not fast.applied:
                raise RuntimeError("optimize=True, but nothing in this model could be rewritten:\n"
                                   + fast.report.to_text())
            return fast
        from painnfx.rewriter.optimize import NothingRewrittenWarning

        with warnings.catch_warnings():  # a model with nothing to fuse is fine here; anything else is shown
            warnings.simplefilter("ignore", NothingRewrittenWarning)
            fast = run_optimize(model, setup=setup)
        if fast.ready and not fast.applied:
            return model
        fast.path = "auto"  # the path rule (optimized_model.PATH_RULE): the plain model until set-up is done
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
        """Whether the evaluator is an optimized model that runs, or will run once set up, the fused graph."""
        ev = self.evaluator
        return ev is not self.model and (not getattr(ev, "ready", True) or getattr(ev, "applied", True))

    def get_property(self, name, atoms=None, allow_calculation=True):
        with self._lock:  # results and the atoms they belong to are one state, shared by all callers
            return super().get_property(name, atoms, allow_calculation)

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        with self._lock:
            self._calculate(atoms, properties, system_changes)

    def _calculate(self, atoms, properties, system_changes):
        super().calculate(atoms, properties, system_changes)
        atoms = self.atoms
        want_stress = "stress" in properties
        if want_stress and not atoms.pbc.all():
            raise PropertyNotImplementedError(
                "stress needs a cell that is periodic in all three directions"
            )
        check_numbers(atoms.numbers, self.elements, self.max_z)
        nl = self.neighbors(atoms.positions, atoms.cell.array, atoms.pbc, dtype=self.dtype, device=self.device)
        pos = torch.as_tensor(atoms.positions, dtype=self.dtype, device=self.device)
        numbers = torch.as_tensor(atoms.numbers, dtype=torch.long, device=self.device)
        ei = nl.edge_index
        check_overlaps(ei, pos[ei[1]] - pos[ei[0]] + nl.shifts, self.min_distance)
        cell = torch.as_tensor(atoms.cell.array, dtype=self.dtype, device=self.device)
        if self.cuda_graphs:
            out = self._graphed_step(numbers, want_stress)(pos, ei, nl.shifts, cell)
        else:
            out = compute_properties(self.evaluator, pos, numbers, ei, nl.shifts, cell, stress=want_stress)
        energy = float(out.energy.sum())
        forces = out.forces.cpu().numpy().astype(np.float64)
        stress = voigt(out.stress) if want_stress else None
        check_finite_results(energy, forces, stress)
        self.results["energy"] = energy
        self.results["free_energy"] = energy
        self.results["forces"] = forces
        if want_stress:
            self.results["stress"] = stress
