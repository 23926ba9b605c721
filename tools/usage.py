"""Bad command-line input, answered with one clear line and exit status 2 (argparse's
convention), never a traceback: the checks the subcommands share, and the errors
``painnfx`` turns into that line (``cli.main``)."""

from __future__ import annotations

import argparse
import json
import math
import os

from painnfx.model.files import replaced_when_complete


class UsageError(Exception):
    """Input the user can fix: ``painnfx`` prints ``painnfx CMD: error: MESSAGE`` and exits with 2."""


class MissingProgram(RuntimeError):
    """A program a subcommand runs is not installed or not found (LAMMPS): answered like bad input."""


def int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum``."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def finite_float(minimum: float, inclusive: bool = True):
    """An argparse type: a finite number >= ``minimum`` (> with ``inclusive=False``); "nan" and
    "inf", which float() accepts, are refused."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
        if value < minimum or (not inclusive and value == minimum):
            raise argparse.ArgumentTypeError(f"must be {'at least' if inclusive else 'more than'} {minimum:g}, "
                                             f"got {value:g}")
        return value

    return parse


positive_float = finite_float(0.0, inclusive=False)
non_negative_float = finite_float(0.0)


def check_device(name: str) -> str:
    """``--device``: a device torch knows and this machine has."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"--device {name}: not a torch device ({exc})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UsageError(f"--device {name}: no CUDA device is available here (torch {torch.__version__}, "
                             f"CUDA build: {torch.version.cuda or 'no'}); use --device cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UsageError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type != "cpu":
        raise UsageError(f"--device {name}: painnfx runs on cpu or cuda devices")
    return name


def read_json(text: str, option: str) -> dict:
    """A JSON object given on the command line."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(f"{option}: malformed JSON ({exc.msg} at character {exc.pos}): {text!r}") from None
    if not isinstance(value, dict):
        raise UsageError(f"{option}: expected a JSON object like '{{\"n_atom_basis\": 8}}', got {text!r}")
    return value


def readable_file(path: str, option: str) -> None:
    """``path`` exists and is a file this process may read."""
    if not os.path.exists(path):
        raise UsageError(f"{option} {path}: no such file")
    if not os.path.isfile(path) or not os.access(path, os.R_OK):
        raise UsageError(f"{option} {path}: not a readable file")


def read_structure(path: str, option: str = "--structure"):
    """An ``ase.Atoms`` from a file ASE reads (the last frame of a trajectory)."""
    from ase.io import read

    readable_file(path, option)
    try:
        return read(path)
    except Exception as exc:  # ASE raises many types for files it cannot parse
        raise UsageError(f"{option} {path}: ASE cannot read it ({type(exc).__name__}: {exc})") from None


def output_file(path: str, option: str = "--out"):
    """Make sure ``path`` can be written (its folder is created) before any long work starts."""
    from pathlib import Path

    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot create its folder {target.parent} ({exc.strerror or exc})") from None
    if target.is_dir():
        raise UsageError(f"{option} {path}: is a folder, not a file")
    if not os.access(target.parent, os.W_OK):
        raise UsageError(f"{option} {path}: folder {target.parent} is not writable")
    return target


def write_text(path, text: str) -> None:
    """``path`` gets ``text`` through ``replaced_when_complete``: never a half-written file."""
    with replaced_when_complete(path) as fh:
        fh.write(text)


def save_figure(fig, path, **kwargs) -> None:
    """``fig.savefig`` through ``replaced_when_complete`` (the format from ``path``'s suffix)."""
    fmt = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with replaced_when_complete(path, "wb") as fh:
        fig.savefig(fh, format=fmt, **kwargs)


def user_errors() -> tuple:
    """The exception types that mean bad input (a message for the user, not a traceback)."""
    from painnfx.model.checkpoint import CheckpointError
    from painnfx.model.validation import InputError
    from painnfx.rewriter import NotAnEnergyModel

    return (UsageError, CheckpointError, InputError, NotAnEnergyModel, MissingProgram, FileNotFoundError,
            PermissionError, IsADirectoryError, NotADirectoryError, FileExistsError)
