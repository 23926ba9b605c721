"""The two kinds of radial spec (see the package docstring) and helpers their entries share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import torch


@dataclass(frozen=True)
class BasisSpec:
    name: str
    kernel_id: int
    param_rows: tuple
    values: Callable[[torch.Tensor, torch.Tensor, bool], tuple]
    unfused: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    pattern: Callable[[Any], Any]
    read: Callable[[Any], Optional[torch.Tensor]]
    from_module: Callable[[torch.nn.Module], Optional[torch.Tensor]]
    formula: str = ""


@dataclass(frozen=True)
class CutoffSpec:
    name: str
    kernel_id: int
    param_names: tuple
    values: Callable[[torch.Tensor, tuple, bool], tuple]
    unfused: Callable[[torch.Tensor, tuple], torch.Tensor]
    pattern: Callable[[Any], Any]
    read: Callable[[Any], Optional[tuple]]
    from_module: Callable[[torch.nn.Module], Optional[tuple]]
    formula: str = ""

    def radius(self, params: Sequence[float]) -> float:
        return float(params[0])



def flat(t) -> Optional[torch.Tensor]:
    """A bound constant as a flat float64 tensor (None if it is not a tensor or number)."""
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        t = torch.tensor([float(t)])
    if not torch.is_tensor(t):
        return None
    return t.detach().reshape(-1).to(torch.float64)


def scalar(t) -> Optional[float]:
    v = flat(t)
    return float(v[0]) if v is not None and v.numel() == 1 else None


def buffers(module: torch.nn.Module, class_name: str, names: Sequence[str]) -> Optional[list]:
    """The named buffers of ``module`` if its class is ``class_name`` (painnfx or schnetpack)."""
    if type(module).__name__ != class_name or not all(hasattr(module, n) for n in names):
        return None
    return [getattr(module, n).detach() for n in names]
