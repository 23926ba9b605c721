"""What the LAMMPS and OpenMM adapters share: a painnfx model that an engine can pickle.

Engines keep their potential as a pickle (LAMMPS's ``pair_style mliap unified FILE``, OpenMM's
``XmlSerializer`` for a ``PythonForce``). The pickle of an :class:`EngineModel` holds plain data
only: the model as checkpoint bytes, read back with ``torch.load(weights_only=True)``, and how to
run it (dtype, device, optimize, adapter settings). Unpickling rebuilds the model, optimized, in
the engine's process (on each MPI rank), through :class:`~painnfx.model.calculator.PaiNNCalculator`,
so that every adapter runs exactly what the ASE calculator runs.
"""

from __future__ import annotations

import torch

from .checkpoint import checkpoint_bytes, load_checkpoint
from .default import resolve_model
from .painn import PaiNN


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
        if optimize not in (True, False, "auto"):
            raise ValueError(f"optimize must be True, False or 'auto', got {optimize!r}")
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
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
        from .calculator import PaiNNCalculator

        st = self._state
        self.dtype = getattr(torch, st["dtype"])
        self.device = torch.device(st["device"])
        self.calc = PaiNNCalculator(load_checkpoint(st["checkpoint"]), device=self.device, dtype=self.dtype,
                                    optimize=st["optimize"])
        self.model, self.evaluator = self.calc.model, self.calc.evaluator
        cfg = self.model.config
        self.cutoff = float(self.model.cutoff)
        self.n_layers = int(self.model.n_interactions)
        self.elements = None if cfg.elements is None else [int(z) for z in cfg.elements]
        self.max_z = int(cfg.max_z)
        self._configure()

    def _configure(self) -> None:
        pass
