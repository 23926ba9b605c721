r"""Radial specs: every radial basis and every cutoff function, defined once.

A spec is the single home of one function of the interatomic distance d:

* ``values(d, params, derivative)``  the formula and its analytical derivative, in plain
  differentiable torch (the reference backend runs it; double backward differentiates it);
* ``unfused(d, params)``              the model's own spelling, whose autograd is the test oracle;
* ``kernel_id``                       the id its CUDA/C++ kernels switch on (``ops/cuda/radial.cuh``
  defines the same ids; a test keeps the two in step);
* ``pattern(v)``                      how the rewriter recognises it in an aten graph, written with
  the pattern vocabulary ``v`` that the rewriter passes in (this layer imports nothing above it);
* ``read(match)``                     the constants a match binds, checked for meaning (None: a
  near miss that has the shape but not the math);
* ``from_module(module)``             the constants of a model's basis/cutoff module (painnfx's or
  schnetpack's), or None if the module is not this function.

Constants: a basis takes ``basis_params`` (rows, K), one row per name in ``param_rows``; a
cutoff takes ``cutoff_params``, a tuple of floats named by ``param_names`` whose first entry
is the radius r_c. Adding a basis or a cutoff is one module here plus its case in radial.cuh.
"""

from __future__ import annotations

import functools
import re
from pathlib import Path
from typing import Sequence

import torch

from ..errors import InputError
from . import bessel, cosine, gaussian, mollifier
from .spec import BasisSpec, CutoffSpec


BASES: dict[str, BasisSpec] = {s.name: s for s in (gaussian.SPEC, bessel.SPEC)}
CUTOFFS: dict[str, CutoffSpec] = {s.name: s for s in (cosine.SPEC, mollifier.SPEC)}


def basis_spec(name: str) -> BasisSpec:
    spec = BASES.get(name)
    if spec is None:
        raise InputError(f"unknown radial basis {name!r}; expected one of {sorted(BASES)}")
    return spec


def cutoff_spec(name: str) -> CutoffSpec:
    spec = CUTOFFS.get(name)
    if spec is None:
        raise InputError(f"unknown cutoff function {name!r}; expected one of {sorted(CUTOFFS)}")
    return spec


def check_basis(name: str, basis_params: torch.Tensor) -> BasisSpec:
    spec = basis_spec(name)
    rows = len(spec.param_rows)
    if basis_params.ndim != 2 or basis_params.shape[0] != rows:
        raise InputError(f"basis_params for {name!r} must have shape ({rows}, K) holding "
                         f"{', '.join(spec.param_rows)}; got {tuple(basis_params.shape)}")
    return spec


def check_cutoff(name: str, params: Sequence[float]) -> CutoffSpec:
    spec = cutoff_spec(name)
    if len(params) != len(spec.param_names):
        raise InputError(f"cutoff {name!r} takes {len(spec.param_names)} parameters "
                         f"({', '.join(spec.param_names)}); got {list(params)}")
    if not spec.radius(params) > 0:
        raise InputError(f"cutoff radius must be positive, got {spec.radius(params)}")
    return spec


#: the largest K the CUDA and C++ kernels hold (MAX_K in ops/cuda/radial.cuh)
MAX_KERNEL_K = 64


def kernel_radial(op: str, dtype: torch.dtype, basis: str, basis_params: torch.Tensor, cutoff: str,
                  cutoff_params: Sequence[float]) -> tuple:
    """The radial specs as the CUDA and C++ kernels take them: (basis_params in ``dtype``,
    contiguous, whose rows are the kernels' p0 and p1; basis kernel id; cutoff kernel id;
    c0; c1), the unused cutoff constant 0. K above the kernels' maximum is refused."""
    k = basis_params.shape[1]
    if k > MAX_KERNEL_K:
        raise InputError(f"{op}: K = {k} radial functions exceed the kernel's maximum {MAX_KERNEL_K}")
    c = [float(v) for v in cutoff_params] + [0.0] * (2 - len(cutoff_params))
    b, cut = basis_spec(basis), cutoff_spec(cutoff)
    for kind, spec in (("basis", b), ("cutoff", cut)):
        problem = _missing_case(kind, spec.name, spec.kernel_id)
        if problem:
            raise InputError(f"{op}: {problem}")
    return basis_params.to(dtype).contiguous(), b.kernel_id, cut.kernel_id, c[0], c[1]


@functools.lru_cache(maxsize=None)
def _missing_case(kind: str, name: str, kernel_id: int) -> str:
    """Why radial.cuh cannot compute this spec ("" when it can): checked once per spec, not per call."""
    known = kernel_cases()[kind]
    if known.get(kernel_id) == name:
        return ""
    return (f"the {kind} {name!r} has kernel id {kernel_id}, but radial.cuh has cases for "
            f"{dict(sorted(known.items()))}: add its case there (docs/ops.md)")


@functools.lru_cache(maxsize=None)
def kernel_cases() -> dict:
    """{"basis": {id: name}, "cutoff": {id: name}}: the cases ``ops/cuda/radial.cuh`` implements."""
    text = (Path(__file__).parents[1] / "cuda" / "radial.cuh").read_text()
    cases: dict = {"basis": {}, "cutoff": {}}
    for kind, name, value in re.findall(r"#define PAINNFX_(BASIS|CUTOFF)_(\w+) (\d+)", text):
        cases[kind.lower()][int(value)] = name.lower()
    return cases


def basis_of_module(module: torch.nn.Module) -> tuple[str, torch.Tensor]:
    """(basis name, basis_params) of a model's radial-basis module."""
    for spec in BASES.values():
        params = spec.from_module(module)
        if params is not None:
            return spec.name, params
    raise TypeError(f"no radial spec for basis module {type(module).__name__}; known: {sorted(BASES)}")


def cutoff_of_module(module: torch.nn.Module) -> tuple[str, tuple]:
    """(cutoff name, cutoff_params) of a model's cutoff module."""
    for spec in CUTOFFS.values():
        params = spec.from_module(module)
        if params is not None:
            return spec.name, params
    raise TypeError(f"no radial spec for cutoff module {type(module).__name__}; known: {sorted(CUTOFFS)}")


def basis_values(d: torch.Tensor, name: str, basis_params: torch.Tensor, derivative: bool = True):
    """phi (E, K) and, if asked, dphi/dd (E, K)."""
    return basis_spec(name).values(d, basis_params.to(d.dtype), derivative)


def cutoff_values(d: torch.Tensor, name: str, params: Sequence[float], derivative: bool = True):
    """fc (E,) and, if asked, dfc/dd (E,)."""
    return cutoff_spec(name).values(d, tuple(float(p) for p in params), derivative)


__all__ = ["BasisSpec", "CutoffSpec", "BASES", "CUTOFFS", "basis_spec", "cutoff_spec", "check_basis",
           "check_cutoff", "kernel_radial", "MAX_KERNEL_K", "basis_of_module", "cutoff_of_module", "basis_values", "cutoff_values"]
