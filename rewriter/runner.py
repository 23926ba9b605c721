"""Calling a rewritten graph: the modules ``optimize`` returns.

``GraphRunner`` resolves the graph's parameter, buffer and constant arguments once, at
construction, to the live tensors of the captured module (the same objects the model holds,
so in-place updates, ``load_state_dict`` and ``.to()`` of parameters are seen); a call only
fills in the user inputs.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import time
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from painnfx.ops import InputError, use_backend

from .capture import Captured
from .joint import JointGraphs, node_counts
from .report import OptimizeReport


class GraphRunner(nn.Module):
    def __init__(self, cap: Captured, backend: Optional[str] = None):
        super().__init__()
        self.graph_module = cap.gm
        self._args, self._slots = cap.static_arguments()
        p = next(iter(cap.target.parameters()))
        self.dtype, self.device = p.dtype, p.device
        self.backend = backend
        self._frozen = False

    @contextlib.contextmanager
    def frozen(self):
        """Calls in this block read the parameters detached: a backward computes no weight
        gradients (what a joint graph of forces is traced with; the fused backward otherwise
        computes them whenever the weights require grad, wanted or not)."""
        self._frozen = True
        try:
            yield
        finally:
            self._frozen = False

    def forward(self, **user):
        args = list(self._args)
        if self._frozen:
            args = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
        for k, name in self._slots:
            args[k] = user[name]
        if self.backend is None:
            return self.graph_module(*args)
        with use_backend(self.backend):
            return self.graph_module(*args)

    def check(self, t: torch.Tensor) -> None:
        if t.dtype != self.dtype or t.device != self.device:
            raise InputError(
                f"this optimized model was built for {self.dtype} on {self.device}; got {t.dtype} on {t.device}. "
                "Convert the model first, then call optimize() again"
            )


#: above this many edges the plain model (autograd or its joint graph) is neither measured nor
#: compiled: the fused path is faster there on every CPU and GPU measured (docs/perf) and its
#: memory is a fraction of eager's; measuring the plain model at that size would cost seconds
MEASURE_MAX_EDGES = 10_000

#: above this many edges nothing is measured or compiled: the fused autograd path runs. Up to
#: it the fused graph's joint graph races the fused autograd path (one round): 0-14% faster at
#: Cu500 and Cu2048 (21 000 and 86 000 edges), equal at Cu8000 with 1.7x the memory (AMD EPYC,
#: docs/perf), where the check and the race would cost ~10 calls of 1-2 s on the first call
JOINT_MEASURE_MAX_EDGES = 100_000

#: rounds in which the joint graphs take turns being timed (``_race``): 3 x best-of-3 calls each
RACE_ROUNDS = 3


def joint_default() -> bool:
    """Whether the auto policy considers the compiled joint graph (``PAINNFX_JOINT``, default 1).
    Its first use per kind of call costs an Inductor compile (seconds): the test suite sets 0 and
    the joint path's own tests turn it on."""
    return os.environ.get("PAINNFX_JOINT", "1") != "0"


#: a joint graph's outputs must equal the fused autograd path's to this (relative to max |output|, at least 1)
JOINT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


#: what a measured path means for a call that wants the energy alone
ENERGY_PATH = {"joint": "fused", "plain-joint": "plain"}

PATHS = {
    "fused": "fused graph on every call, forces by autograd",
    "auto": "auto: the fastest of fused, plain and (for energy with forces, unless PAINNFX_JOINT=0) the compiled "
            f"joint graphs of both, measured on the first call of each size class (above {MEASURE_MAX_EDGES} edges "
            f"the fused graph and its joint graph only, above {JOINT_MEASURE_MAX_EDGES} fused without measuring)",
    "joint": "the compiled joint graph for energy with forces (and stress), the fused graph for energy alone",
}


def joint_candidates(n_edges: int) -> tuple:
    """The joint graphs the auto policy considers for a system of ``n_edges`` edges."""
    if n_edges > JOINT_MEASURE_MAX_EDGES:
        return ()
    return ("joint",) if n_edges > MEASURE_MAX_EDGES else ("joint", "plain-joint")


def size_class(n_atoms: int, n_edges: int) -> tuple:
    """Systems within a factor of two in atoms and edges share one measured choice."""
    return (max(0, math.ceil(math.log2(max(n_atoms, 1)))), max(0, math.ceil(math.log2(max(n_edges, 1)))))


class OptimizedModel(nn.Module):
    """A painnfx-signature energy model whose graph has fused nodes. Shares parameters with
    ``model``; ``report`` says what was rewritten. When nothing could be rewritten it simply
    runs ``model``. Batched calls (``batch``) need a per-atom model (``atomic_energies`` and
    ``aggregate``): its per-atom energies are summed with the model's own ``aggregate``.

    ``path``: "fused" always runs the rewritten graph; "auto" (what ``PaiNNCalculator`` uses
    by default) never makes a call slower than the plain model: on the first call of each size
    class (``size_class``) it times energy+forces of both paths (``repeats`` calls each after a
    warm-up, the fastest counts) and keeps the faster; above ``MEASURE_MAX_EDGES`` edges it does
    not measure the plain model, and above ``JOINT_MEASURE_MAX_EDGES`` it takes the fused path
    unmeasured. ``report.path_choices`` records each choice and why.

    ``joint`` (default ``PAINNFX_JOINT``, on): where a caller asks for energy and forces together
    (``joint_properties``, what ``compute_properties`` does without ``create_graph``), the auto
    policy also times compiled joint graphs (joint.py: forward and backward traced ahead of time,
    Inductor, no autograd engine) of the fused graph and of the plain model, each after checking
    its energy and forces against the fused path's on the first call of every size class; one that
    disagrees is never used again (``report.joint``)."""

    def __init__(self, model: nn.Module, cap: Optional[Captured], report: OptimizeReport, per_atom: bool,
                 backend: Optional[str] = None, path: str = "fused", timer: Callable[[], float] = time.perf_counter,
                 repeats: int = 3, joint: Optional[bool] = None):
        super().__init__()
        self.model = model
        self.runner = GraphRunner(cap, backend) if (cap is not None and report.applied) else None
        self.per_atom = per_atom
        self.report = report
        self.cutoff = float(getattr(model, "cutoff", 0.0))
        self.config = getattr(model, "config", None)
        self.path = path
        self.timer, self.repeats = timer, repeats
        self._choice: dict = {}
        self.joint = joint_default() if joint is None else joint
        self.joint_graphs = JointGraphs(backend=backend)
        self._joint_verified: set = set()  # (joint graph key, size class) checked against the fused path
        self._joint_rejected: dict = {}  # joint path name -> why it is not used

    @property
    def applied(self) -> bool:
        return self.runner is not None

    @property
    def path(self) -> str:
        return self._path

    @path.setter
    def path(self, value: str) -> None:
        if value not in PATHS:
            raise ValueError(f"path must be one of {', '.join(PATHS)}, got {value!r}")
        self._path = value
        self.report.path_policy = PATHS[value]

    def _plain(self, positions, numbers, edge_index, shifts, batch, n_systems):
        if batch is None:
            return self.model(positions, numbers, edge_index, shifts)
        return self.model(positions, numbers, edge_index, shifts, batch, n_systems)

    def _fused(self, positions, numbers, edge_index, shifts, batch, n_systems):
        self.runner.check(positions)
        (out,) = self.runner(positions=positions, numbers=numbers, edge_index=edge_index, shifts=shifts)
        if not self.per_atom:
            return out
        return self.model.aggregate(out, batch, n_systems)

    def _time(self, fn, args) -> float:
        positions = args[0].detach().clone().requires_grad_(True)

        def call():
            energy = fn(positions, *args[1:])
            torch.autograd.grad(energy.sum(), positions, allow_unused=True)  # no edges: energy has no gradient

        with torch.enable_grad():
            return self._best(call, positions)

    def _best(self, call, like) -> float:
        """Fastest of ``repeats`` calls after a warm-up."""
        sync = torch.cuda.synchronize if like.is_cuda else (lambda: None)  # time the work, not the launch
        best = math.inf
        for k in range(self.repeats + 1):
            sync()
            start = self.timer()
            call()
            sync()
            if k:  # the first call is a warm-up
                best = min(best, self.timer() - start)
        return best

    def _race(self, calls: dict, like, rounds: int = RACE_ROUNDS) -> dict:
        """{name: best time} of the joint graphs over ``rounds`` rounds in which they take
        turns (one ``_best`` each per round), so that a slow spell of a shared machine hits each
        alike. At 3-5 atoms the two joint graphs are within ~10% of each other, and one best-of-3
        each, one after the other, picked by noise (CH4 fp64: plain-joint at 1.58 against 1.65 ms,
        where the fused graph's then ran 1.40 ms)."""
        best = {name: math.inf for name in calls}
        for _ in range(rounds if len(calls) > 1 else 1):
            for name, call in calls.items():
                best[name] = min(best[name], self._best(call, like))
        return best

    @staticmethod
    def _joint_agrees(name: str, joint_call, reference_call) -> Optional[str]:
        """None when joint graph ``name`` gives what ``reference_call`` (the same function run
        eagerly on the fused path, autograd and all) gives here, every output (energy, forces,
        stress), to ``JOINT_TOLERANCE`` of the output's scale; else why not."""
        got = joint_call()
        if got is None:  # it failed to compile or run (rejected already)
            return None
        want = reference_call()
        for k, (a, b) in enumerate(zip(got, want)):
            b = b.detach()
            both_nan = torch.isnan(a) & torch.isnan(b)  # a batch's stress is NaN for systems without a cell
            tol = JOINT_TOLERANCE.get(b.dtype, 1e-4) * max(1.0, float(b.nan_to_num().abs().max()) if b.numel() else 0.0)
            err = float((a - b).abs().masked_fill(both_nan, 0).max()) if b.numel() else 0.0
            if not err <= tol:  # any other NaN fails
                return f"{name} graph disagrees with the fused path: output {k} off by {err:.2e} (tolerance {tol:.1e})"
        return None

    def _choose(self, args, joint_calls: Optional[dict] = None) -> str:
        """The path for this call's size class, measured on its first call. A measurement made for
        energy alone is redone when a caller offers joint graphs (``joint_calls``: path -> call);
        one that included them serves energy-alone calls too ("joint" meaning the fused graph there,
        "plain-joint" the plain model)."""
        n_atoms, n_edges = args[0].shape[0], args[2].shape[1]
        cls = size_class(n_atoms, n_edges)
        known = self._choice.get(cls)
        if known is None or (joint_calls and not known[1]):
            large = n_edges > MEASURE_MAX_EDGES
            joint_calls = joint_calls or {}  # joint_properties offers only joint_candidates(n_edges)
            if large and not joint_calls:
                limit = JOINT_MEASURE_MAX_EDGES if n_edges > JOINT_MEASURE_MAX_EDGES else MEASURE_MAX_EDGES
                choice, why = "fused", f"more than {limit} edges"
            else:
                times = {"fused": self._time(self._fused, args)}
                if not large:
                    times["plain"] = self._time(self._plain, args)
                for name, t in self._race(joint_calls, args[0], rounds=1 if large else RACE_ROUNDS).items():
                    if name not in self._joint_rejected:  # one that failed while timed does not compete
                        times[name] = t
                choice = min(times, key=times.get)
                why = " vs ".join(f"{k} {t * 1e3:.3g} ms" for k, t in times.items()) + " per energy+forces"
            self._choice[cls] = known = (choice, bool(joint_calls))
            self.report.path_choices.append(
                {"atoms": n_atoms, "edges": n_edges, "size_class": list(cls), "path": choice, "why": why})
        if not joint_calls and known[0] in ENERGY_PATH:
            return ENERGY_PATH[known[0]]
        return known[0]

    def _reject_joint(self, name: str, why: str) -> None:
        self._joint_rejected[name] = why
        self.report.joint.setdefault("rejected", {})[name] = why
        warnings.warn(f"painnfx: {why}; this model does not use it", RuntimeWarning, stacklevel=4)

    def joint_properties(self, key: str, make: Callable, tensors: tuple, call_args: Optional[tuple] = None,
                         example: Optional[tuple] = None):
        """The energy, forces (and stress) of ``tensors`` through a compiled joint graph of kind
        ``key`` when the path policy picks one for this size class, else None (the caller runs
        autograd). ``make(energy)`` gives the function to trace: it evaluates ``energy`` (a
        callable with the model's signature) and differentiates it. Two joint graphs compete:
        "joint", the fused graph's (fused ops and their analytical backwards, Inductor around
        them), and "plain-joint", the plain model's (Inductor alone: what torch.compile of
        grad_and_value does, which wins where the fused ops' per-call overhead exceeds their
        arithmetic). ``tensors`` start with (positions, numbers, edge_index, shifts).
        ``call_args``: the model-call arguments the autograd paths are timed with (default: those
        four, no batch); ``example``: what to trace on, the same kinds of tensors (default:
        ``joint.trace_example``, which needs the tensors after the first four not to change size
        with the system)."""
        if self.runner is None or self._path == "fused" or not self.joint or not self.per_atom:
            return None
        self.runner.check(tensors[0])  # a graph traced for another dtype or device must not run

        def fused(positions, numbers, edge_index, shifts, batch=None, n_systems=1):
            with self.runner.frozen():
                return self._fused(positions, numbers, edge_index, shifts, batch, n_systems)

        def plain(positions, numbers, edge_index, shifts, batch=None, n_systems=1):
            return self._plain(positions, numbers, edge_index, shifts, batch, n_systems)

        energies = {"joint": fused}
        if self._path == "auto":
            energies["plain-joint"] = plain
            # only what the policy may choose at this size is compiled and checked
            energies = {k: v for k, v in energies.items() if k in joint_candidates(tensors[2].shape[1])}
        calls = {name: functools.partial(self._guarded, name, functools.partial(
                     self.joint_graphs.run, f"{key} ({name})", make(energy), *tensors, example=example))
                 for name, energy in energies.items() if name not in self._joint_rejected}
        args = call_args if call_args is not None else (*tensors[:4], None, 1)
        cls = size_class(tensors[0].shape[0], tensors[2].shape[1])
        for name in list(calls):
            graph_key = f"{key} ({name})"
            if (graph_key, cls) in self._joint_verified:
                continue
            # checked on the first call of each size class (the very first also traces and compiles)
            rejected = self._joint_agrees(name, calls[name], lambda: make(fused)(*tensors))
            if rejected is not None:
                self._reject_joint(name, rejected)
            if name in self._joint_rejected:
                del calls[name]
                continue
            self._joint_verified.add((graph_key, cls))
            graphs = self.report.joint.setdefault("graphs", {})
            if graph_key not in graphs:
                graphs[graph_key] = {**node_counts(self.joint_graphs.graphs[graph_key]),
                                     "wrapper": "C++" if self.joint_graphs.options[graph_key].get("cpp_wrapper") else "Python",
                                     "dynamo": not self.joint_graphs.calls(graph_key),  # standalone.py
                                     "compile_seconds": round(self.joint_graphs.compile_seconds[graph_key], 2)}
        if not calls:
            return None
        choice = "joint" if self._path == "joint" else self._choose(args, calls)
        if choice not in calls or choice in self._joint_rejected:
            return None
        return calls[choice]()  # None if it fails now: the caller runs autograd

    def _guarded(self, name: str, call):
        """``call()``, or None after rejecting joint path ``name`` when compiling or running its
        graph fails (an Inductor or Dynamo error for some shape): never a failed call for the user.
        Bad input (``InputError``) is the caller's error and propagates."""
        if name in self._joint_rejected:
            return None
        try:
            return call()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001  any compiler failure: the autograd paths remain
            first = (str(exc).strip().splitlines() or [""])[0]
            self._reject_joint(name, f"{name} graph failed: {type(exc).__name__}: {first}")
            return None

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        args = (positions, numbers, edge_index, shifts, batch, n_systems)
        if self.runner is None or (batch is not None and not self.per_atom):
            return self._plain(*args)
        if self._path == "auto" and self._choose(args, None) == "plain":
            return self._plain(*args)
        return self._fused(*args)


class OptimizedRepresentation(nn.Module):
    """Drop-in for a schnetpack PaiNN representation: inputs dict -> inputs dict with
    ``scalar_representation`` and ``vector_representation``, computed by the rewritten graph."""

    def __init__(self, representation: nn.Module, cap: Captured, report: OptimizeReport,
                 backend: Optional[str] = None):
        super().__init__()
        self.original = representation
        self.runner = GraphRunner(cap, backend)
        self.report = report
        self.cutoff = representation.cutoff
        self.keys = cap.target.keys

    def forward(self, inputs: dict) -> dict:
        p = self.keys
        r = inputs[p.Rij]
        self.runner.check(r)
        q, mu = self.runner(r_ij=r, numbers=inputs[p.Z], idx_i=inputs[p.idx_i].long(), idx_j=inputs[p.idx_j].long())
        inputs["scalar_representation"] = q
        inputs["vector_representation"] = mu
        return inputs
