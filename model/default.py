"""The built-in default model.

If the trained Cu checkpoint shipped in ``painnfx/model/data/default_cu.pt`` is present it
is used; otherwise a deterministic, randomly initialised PaiNN (seed 0, F=128, L=3, K=20,
rc=5 A) stands in, which is fine for timing and for testing but predicts nothing physical.
"""

from __future__ import annotations

from importlib import resources

from .checkpoint import load_checkpoint
from .painn import PaiNN, PaiNNConfig

DEFAULT_CHECKPOINT = "default_cu.pt"


def default_checkpoint_path():
    path = resources.files("painnfx.model.data") / DEFAULT_CHECKPOINT
    return path if path.is_file() else None


def random_model(seed: int = 0, **config) -> PaiNN:
    """Deterministic randomly initialised PaiNN (same weights for the same seed and config)."""
    return PaiNN(PaiNNConfig(seed=seed, **config)).eval()


def default_model() -> PaiNN:
    path = default_checkpoint_path()
    if path is not None:
        return load_checkpoint(path).eval()
    return random_model(seed=0)


def is_trained_default() -> bool:
    return default_checkpoint_path() is not None


def resolve_model(model):
    """What calculators and engine adapters accept as ``model``: None (the default model), a
    checkpoint path, or a module, returned as it is."""
    if model is None:
        return default_model()
    if isinstance(model, str) or hasattr(model, "__fspath__"):
        return load_checkpoint(model)
    return model
