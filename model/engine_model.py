"""What the LAMMPS and OpenMM adapters share: a painnfx model that an engine can pickle.

Engines keep their potential as a pickle (LAMMPS's ``pair_style mliap unified FILE``, OpenMM's
``XmlSerializer`` for a ``PythonForce``). The pickle of an :class:`EngineModel` holds plain data
only: the model as checkpoint bytes, read back with ``torch.load(weights_only=True)``, and how to
run it (dtype, device, optimize, adapter settings). The model is rebuilt, and optimized, in the
engine's process (on each MPI rank) on first use, through
:class:`~painnfx.model.calculator.PaiNNCalculator`, so that every adapter runs exactly what the ASE
calculator runs.
"""

from __future__ import annotations

import torch

from .checkpoint import checkpoint_bytes, load_checkpoint, read_checkpoint
from .default import resolve_model
from .painn import PaiNN, PaiNNConfig
from .validation import check_dtype, check_optimize


def plain_model(model) -> PaiNN:
    """The PaiNN behind ``model`` (a PaiNN, ``optimize()`` of one, a checkpoint path, or None)."""
    model = resolve_model(model)
    inner = getattr(model, "model", model)  # OptimizedModel -> the PaiNN it shares parameters with
    if not isinstance(inner, PaiNN):
        raise TypeError(f"an engine adapter needs a painnfx PaiNN (or optimize() of one), got {type(model).__name__}")
    return inner


class EngineModel:
    """A picklable painnfx model for an engine. Subclasses add their settings to ``_state`` and
    derive what they need in ``_configure``."""

    def __init__(self, model=None, *, dtype: torch.dtype = torch.float64, device: str = "cpu",
                 optimize="auto", **settings):
        check_optimize(optimize)  # checked here: the calculator is built on first use, in the engine's process
        check_dtype(dtype)
        self._state = {
            "checkpoint": checkpoint_bytes(plain_model(model)),
            "dtype": str(dtype).removeprefix("torch."),
            "device": str(device),
            "optimize": optimize,
            **settings,
        }
        self._build()

    def __getstate__(self) -> dict:
        return dict(self._state)

    def __setstate__(self, state: dict) -> None:
        self._state = dict(state)
        self._build()

    def _build(self) -> None:
        """Settings and the model's shape from the checkpoint; the model itself is set up (moved,
        frozen, optimized) on first use, so that writing a model file does not optimize a model
        the engine rebuilds anyway."""
        st = self._state
        self.dtype = getattr(torch, st["dtype"])
        self.device = torch.device(st["device"])
        cfg = PaiNNConfig(**read_checkpoint(st["checkpoint"])["config"])
        self.cutoff = float(cfg.cutoff)
        self.n_layers = int(cfg.n_interactions)
        self.elements = None if cfg.elements is None else [int(z) for z in cfg.elements]
        self.max_z = int(cfg.max_z)
        self._calc = None
        self._configure()

    @property
    def calc(self):
        """The :class:`~painnfx.model.calculator.PaiNNCalculator` that runs the model."""
        if self._calc is None:
            from .calculator import PaiNNCalculator

            st = self._state
            self._calc = PaiNNCalculator(load_checkpoint(st["checkpoint"]), device=self.device, dtype=self.dtype,
                                         optimize=st["optimize"])
        return self._calc

    @property
    def evaluator(self):
        """The model as the calculator runs it (``optimize()`` of it, or the plain model)."""
        return self.calc.evaluator

    def run_summary(self, calls) -> str:
        """One line for the engine's log: the path this process runs (fused graph or plain model) and
        which implementation ran each fused op in ``calls`` (``dispatch.record_calls()``)."""
        from painnfx.ops.dispatch import backends_that_ran

        if self.calc.optimized:
            report = self.evaluator.report
            answered = report.paths[-1]["path"] if report.paths else "fused graph"
            path = (f"{answered} ({report.fused_nodes} fused nodes, path {self.evaluator.path})" if report.applied
                    else f"{answered} (optimized once set up: {report.why_not()})")
        else:
            path = "plain model (not optimized)"
        ran = "; ".join(f"{op} " + ", ".join(f"{backend} x{n}" for backend, n in by.items())
                        for op, by in backends_that_ran(calls).items())
        return f"painnfx: {self.dtype} on {self.device}, {path}; first evaluation ran: {ran or 'no fused op'}"

    def _configure(self) -> None:
        pass
