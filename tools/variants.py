"""Ways of computing energy + forces that the benchmark compares, all on the same weights.

Each variant turns (model, prepared system) into a zero-argument ``step`` that computes
energy and forces once; ``None`` means the variant is unavailable here (with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch

from painnfx.model.painn import PaiNN
from painnfx.model.properties import compute_properties


@dataclass
class Prepared:
    positions: torch.Tensor
    numbers: torch.Tensor
    edge_index: torch.Tensor
    shifts: torch.Tensor
    cell_shifts: torch.Tensor
    cell: torch.Tensor
    pbc: object


def _properties_step(evaluator, s: Prepared) -> Callable[[], object]:
    def step():
        return compute_properties(evaluator, s.positions, s.numbers, s.edge_index, s.shifts)

    step.evaluator = evaluator  # the benchmark reads an optimized model's path choices from it
    return step


def eager(model: PaiNN, s: Prepared):
    return _properties_step(model, s)


def optimized(model: PaiNN, s: Prepared):
    from painnfx.rewriter import optimize

    fast = optimize(model)
    if not fast.applied:
        raise Unavailable("optimize() rewrote nothing")
    return _properties_step(fast, s)


def _optimized_with_path(model: PaiNN, path: str):
    from painnfx.rewriter import optimize

    fast = optimize(model)
    if not fast.applied:
        raise Unavailable("optimize() rewrote nothing")
    fast.path, fast.joint = path, True
    return fast


def auto(model: PaiNN, s: Prepared):
    """What ``PaiNNCalculator()`` runs once its set-up is done: the optimized model with the auto
    path rule (the compiled forces graph for energy and forces, compiled on the first call, which
    the benchmark reports as ``first_call_s`` and does not time)."""
    return _properties_step(_optimized_with_path(model, "auto"), s)


def optimized_graphs(model: PaiNN, s: Prepared):
    """The optimized model with a whole step captured in a CUDA graph (model/cuda_graphs.py)."""
    if s.positions.device.type != "cuda":
        raise Unavailable("CUDA graphs need a CUDA device")
    from painnfx.model.cuda_graphs import GraphedEvaluator
    from painnfx.rewriter import optimize

    fast = optimize(model)
    graphed = GraphedEvaluator(fast, s.numbers)

    def step():
        return graphed(s.positions, s.edge_index, s.shifts)

    return step


def compiled(mode: Optional[str]):
    def make(model: PaiNN, s: Prepared):
        fn = torch.compile(model, mode=mode, dynamic=False, fullgraph=False)
        return _properties_step(fn, s)

    return make


def compile_forces(model: PaiNN, s: Prepared):
    """The strongest peer a user has without painnfx: ``torch.compile`` of
    ``torch.func.grad_and_value`` of the plain model's energy, so the compiler sees forward and
    backward as one function (no autograd engine at run time)."""
    def energy(positions):
        return model(positions, s.numbers, s.edge_index, s.shifts).sum()

    fn = torch.compile(torch.func.grad_and_value(energy), dynamic=False, fullgraph=False)

    def step():
        grad, e = fn(s.positions)
        return e, -grad

    return step


def schnetpack(model: PaiNN, s: Prepared):
    try:
        from painnfx.model.schnetpack_interop import schnetpack_inputs, to_schnetpack
    except ImportError as exc:  # pragma: no cover
        raise Unavailable(f"schnetpack not importable: {exc}")
    try:
        nnpot = to_schnetpack(model).to(s.positions.device)
    except ImportError as exc:
        raise Unavailable(f"schnetpack not importable: {exc}")
    inputs = schnetpack_inputs(s.positions, s.numbers, s.edge_index, s.cell_shifts, s.cell, s.pbc)

    def step():
        out = nnpot(dict(inputs))
        return out["energy"], out["forces"]

    return step


class Unavailable(RuntimeError):
    """This variant cannot run in this environment."""


VARIANTS: dict[str, Callable] = {
    "eager": eager,
    "compile": compiled(None),
    "compile-ro": compiled("reduce-overhead"),
    "compile-forces": compile_forces,
    "optimized": optimized,
    "auto": auto,
    "optimized-graphs": optimized_graphs,
    "schnetpack": schnetpack,
}

DEFAULT_VARIANTS = ["eager", "compile", "compile-forces", "schnetpack", "optimized", "auto"]


def throughput(optimize, batched: bool):
    """Energy+forces of a whole set of structures: one call per structure, or packed into
    batches (painnfx.model.batch, bounded by ``max_atoms``/``max_edges``; None: the evaluator's
    default for its path). Neighbor lists are
    built beforehand, outside the timed step, for both. ``optimize`` as for PaiNNCalculator:
    False (the eager model) or "auto" (what the calculator runs)."""
    def make(model: PaiNN, structures: list, max_atoms: int, max_edges: int):
        from painnfx.model.batch import BatchEvaluator, pack

        evaluator = BatchEvaluator(model, device=next(model.parameters()).device,
                                   dtype=next(model.parameters()).dtype, optimize=optimize, stress=False)
        systems = [evaluator.prepare(k, atoms) for k, atoms in enumerate(structures)]
        max_edges = max_edges or evaluator.default_max_edges
        groups = pack(systems, max_atoms, max_edges) if batched else [[s] for s in systems]

        def step():
            return [evaluator.run_packed(group) for group in groups]

        step.batches, step.max_edges = len(groups), max_edges
        step.n_edges = sum(s.n_edges for s in systems)
        return step

    return make


THROUGHPUT_VARIANTS: dict[str, Callable] = {
    "eager-1by1": throughput(False, batched=False),
    "eager-batched": throughput(False, batched=True),
    "optimized-1by1": throughput("auto", batched=False),
    "optimized-batched": throughput("auto", batched=True),
}
