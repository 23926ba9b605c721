"""Versioned checkpoints, loaded with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict: ``format``, ``version``, ``config`` (PaiNNConfig fields),
``state_dict`` and free-form ``metadata`` (training data, errors, seed). Nothing in it is
unpickled as code.
"""

from __future__ import annotations

import io
import os
from typing import Optional, Union

import torch

from painnfx.ops.errors import PainnfxError

from .files import replaced_when_complete
from .painn import PaiNN, PaiNNConfig

FORMAT = "painnfx-painn"
VERSION = 1


class CheckpointError(PainnfxError, RuntimeError):
    """A checkpoint that cannot be loaded: missing, corrupt, foreign or of a newer version."""


Source = Union[str, os.PathLike, bytes]


def _payload(model: PaiNN, metadata: Optional[dict]) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "metadata": metadata if metadata is not None else dict(getattr(model, "metadata", {}) or {}),
    }


def save_checkpoint(model: PaiNN, path: str | os.PathLike, metadata: Optional[dict] = None) -> None:
    """Write ``model``'s checkpoint to ``path``; an existing file is replaced only by a complete one."""
    with replaced_when_complete(path, "wb") as fh:
        torch.save(_payload(model, metadata), fh)


def checkpoint_bytes(model: PaiNN, metadata: Optional[dict] = None) -> bytes:
    """The checkpoint file's bytes, for embedding in another file (the LAMMPS model file)."""
    buf = io.BytesIO()
    torch.save(_payload(model, metadata), buf)
    return buf.getvalue()


def read_checkpoint(path: Source) -> dict:
    """The checked payload of a checkpoint file (or of its bytes)."""
    if isinstance(path, (bytes, bytearray)):
        source, path = io.BytesIO(path), "<embedded checkpoint>"
    elif os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    elif not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    else:
        source = path
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only torch file: {exc.__class__.__name__}: "
            f"{_reason(exc)}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a painnfx PaiNN checkpoint (no format={FORMAT!r} field)")
    version = payload.get("version")
    if not isinstance(version, int) or version > VERSION or version < 1:
        raise CheckpointError(
            f"{path} has checkpoint version {version!r}; this painnfx reads versions 1..{VERSION}"
            " (upgrade painnfx to read newer checkpoints)"
        )
    for key in ("config", "state_dict"):
        if not isinstance(payload.get(key), dict):
            raise CheckpointError(f"{path} lacks its {key!r} entry")
    return payload


def _reason(exc: Exception) -> str:
    """What torch's load error says is wrong with the file, without its advice to load with
    ``weights_only=False``: that would run whatever code an untrusted file holds."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    useful = [line for line in lines if not any(word in line for word in (
        "weights_only", "Weights only load failed", "Check the documentation", "arbitrary code"))]
    return (useful or [type(exc).__name__])[0]


def _check_finite(path, state_dict: dict) -> None:
    bad = [k for k, v in state_dict.items() if torch.is_tensor(v) and v.is_floating_point()
           and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path} has NaN or inf weights in {', '.join(bad[:5])}"
                              + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
                              + ": a model with them returns NaN for every structure")


def _sizes_agree(config: PaiNNConfig, state: dict) -> bool:
    """Whether the config's feature, element and basis sizes are those of the weights (then building
    the model allocates no more than the checkpoint already holds)."""
    emb, filt = state.get("embedding.weight"), state.get("filter_net.weight")
    return (torch.is_tensor(emb) and torch.is_tensor(filt)
            and tuple(emb.shape) == (config.max_z, config.n_atom_basis) and filt.dim() == 2
            and filt.shape[1] == config.n_rbf and filt.shape[0] in (3 * config.n_atom_basis,
                                                                     3 * config.n_atom_basis * config.n_interactions))


def _check_shapes(path, config: PaiNNConfig, state: dict) -> None:
    """Raise ``CheckpointError`` naming the weights whose shapes do not fit ``config`` (compared
    with a model built on the meta device: a config of absurd sizes allocates nothing)."""
    try:
        with torch.device("meta"):
            shapes = {k: tuple(v.shape) for k, v in PaiNN(config).state_dict().items()}
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{path} has an invalid config: {exc}") from None
    wrong = [k for k, shape in shapes.items() if not torch.is_tensor(state.get(k)) or tuple(state[k].shape) != shape]
    if wrong or set(state) - set(shapes):
        extra = sorted(set(state) - set(shapes))
        raise CheckpointError(f"{path}: weights do not fit its config: " + "; ".join(
            [f"{k} should have shape {shapes[k]}, found "
             + (str(tuple(state[k].shape)) if torch.is_tensor(state.get(k)) else "none") for k in wrong[:3]]
            + ([f"unexpected entries {extra[:3]}"] if extra else [])))


def load_checkpoint(path: Source, map_location: str | torch.device = "cpu") -> PaiNN:
    """The PaiNN a checkpoint file (or its bytes) holds, in the dtype it was saved in. Raises
    ``CheckpointError`` naming what is wrong: a missing file or a folder, a corrupt or foreign file,
    pickled code, a newer version, an invalid config, weights that do not fit it or are not finite."""
    payload = read_checkpoint(path)
    state = payload["state_dict"]
    try:
        config = PaiNNConfig(**payload["config"])
    except (TypeError, ValueError, OverflowError, RuntimeError) as exc:
        raise CheckpointError(f"{path} has an invalid config: {exc}") from None
    if not _sizes_agree(config, state):  # the model would not be the size of the weights: compare shapes first
        _check_shapes(path, config, state)
    _check_finite(path, state)
    model = PaiNN(config)
    floats = [v.dtype for v in state.values() if torch.is_tensor(v) and v.is_floating_point()]
    if floats:
        model = model.to(floats[0])  # a float64 model comes back in float64, not rounded to float32
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        _check_shapes(path, config, state)
        raise CheckpointError(f"{path}: weights do not fit its config: {exc}") from None
    model.metadata = payload.get("metadata", {})
    return model.to(map_location)
