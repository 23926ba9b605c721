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

from .painn import PaiNN, PaiNNConfig

FORMAT = "painnfx-painn"
VERSION = 1


class CheckpointError(RuntimeError):
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
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(_payload(model, metadata), tmp)
    os.replace(tmp, path)


def checkpoint_bytes(model: PaiNN, metadata: Optional[dict] = None) -> bytes:
    """The checkpoint file's bytes, for embedding in another file (the LAMMPS model file)."""
    buf = io.BytesIO()
    torch.save(_payload(model, metadata), buf)
    return buf.getvalue()


def read_checkpoint(path: Source) -> dict:
    """The checked payload of a checkpoint file (or of its bytes)."""
    if isinstance(path, (bytes, bytearray)):
        source, path = io.BytesIO(path), "<embedded checkpoint>"
    elif not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path} does not exist")
    else:
        source = path
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt/foreign files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or not a weights-only torch file: {exc.__class__.__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from exc
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


def load_checkpoint(path: Source, map_location: str | torch.device = "cpu") -> PaiNN:
    payload = read_checkpoint(path)
    try:
        model = PaiNN(PaiNNConfig(**payload["config"]))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path} has an invalid config: {exc}") from exc
    floats = [v.dtype for v in payload["state_dict"].values() if torch.is_tensor(v) and v.is_floating_point()]
    if floats:
        model = model.to(floats[0])  # a float64 model comes back in float64, not rounded to float32
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: weights do not fit its config: {exc}") from exc
    model.metadata = payload.get("metadata", {})
    return model.to(map_location)
