"""Recognising and importing the third-party model families ``optimize`` understands."""

from __future__ import annotations

import typing


def import_schnetpack():
    """Import schnetpack, patching the one name it needs from older torch.

    schnetpack 2.1 does ``from torch.utils.data.dataloader import T_co``, which torch >= 2.6
    no longer defines. It is only a type annotation, so a covariant TypeVar stands in.
    """
    import torch.utils.data.dataloader as dataloader

    if not hasattr(dataloader, "T_co"):
        dataloader.T_co = typing.TypeVar("T_co", covariant=True)
    import schnetpack

    return schnetpack


def is_schnetpack_potential(model) -> bool:
    """A schnetpack ``NeuralNetworkPotential``-like module (representation + output modules)."""
    mod = type(model).__module__
    return mod.startswith("schnetpack") and hasattr(model, "representation") and hasattr(model, "output_modules")
