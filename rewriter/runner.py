"""Calling a rewritten graph: the modules ``optimize`` returns.

``GraphRunner`` resolves the graph's parameter, buffer and constant arguments at construction to
the live tensors of the captured module (the same objects the model holds, so in-place updates
and ``load_state_dict`` are seen); a call only fills in the user inputs. The model may also
replace those tensors (``load_state_dict(assign=True)``, ``layer.weight = nn.Parameter(...)``,
``.to()`` of a submodule, ``p.data = ...``): every call first checks, in ~3 us, that each bound
tensor is still the one the model holds, on the same memory (``GraphRunner.sync``). If not, it
re-binds to the new tensors, or raises ``ModelChangedError`` where the graph cannot follow (a
new dtype, device or shape, or a new value of a buffer that the rewrite compiled into the fused
ops: the radial basis and the cutoff). ``OptimizedModel`` then also drops its compiled joint
graphs, which hold the old tensors, and traces them again on next use.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import math
import operator
import os
import threading
import time
import warnings
from typing import Callable, Optional

import torch
from torch import nn

from painnfx.ops import InputError, use_backend
from painnfx.ops.errors import ModelChangedError, NotPicklableError

from .capture import Captured
from .joint import JointGraphs, node_counts
from .report import OptimizeReport


class _Binding:
    """Where a graph argument comes from: ``store[attr]`` (a module's ``_parameters`` or
    ``_buffers``), and what the graph was built for."""

    def __init__(self, position: int, kind: str, name: str, target: nn.Module):
        owner, _, self.attr = name.rpartition(".")
        module = target.get_submodule(owner)
        self.store = module._parameters if kind == "parameter" else module._buffers
        self.position, self.kind, self.fqn = position, kind, name
        self.name = name.removeprefix("m.")  # the wrapped model's own name for it (capture.Target.m)
        t = self.store[self.attr]
        self.dtype, self.device, self.shape = t.dtype, t.device, tuple(t.shape)

    def changed(self, t) -> Optional[str]:
        """Why the graph cannot run with ``t`` in this place, or None."""
        what = f"{self.kind} {self.name}"
        if t is None:
            return f"{what} was removed from the model"
        if not isinstance(t, torch.Tensor):
            return f"{what} is now a {type(t).__name__}"
        if t.dtype != self.dtype or t.device != self.device:
            return (f"{what} is {t.dtype} on {t.device} now; the optimized graph was built for {self.dtype} on "
                    f"{self.device}")
        if tuple(t.shape) != self.shape:
            return f"{what} has shape {tuple(t.shape)} now; the optimized graph was built for {self.shape}"
        return None


class GraphRunner(nn.Module):
    def __init__(self, cap: Captured, backend: Optional[str] = None):
        super().__init__()
        self.graph_module = cap.gm
        self._args, self._slots = cap.static_arguments()
        p = next(iter(cap.target.parameters()))
        self.dtype, self.device = p.dtype, p.device
        self.backend = backend
        self._local = threading.local()  # frozen(): per thread
        self._lock = threading.Lock()
        self._bindings = [_Binding(k, gi.kind, gi.name, cap.target) for k, gi in enumerate(cap.inputs)
                          if gi.kind in ("parameter", "buffer")]
        # buffers whose values the rewrite read (folded, or compiled into a fused op) and those values
        read = {gi.name for gi in cap.inputs if gi.node in cap.read}
        self._baked = {b.name: self._args[b.position].detach().clone() for b in self._bindings if b.fqn in read}
        self.rebinds = 0  # how often the model's tensors were re-bound (sync)
        self._remember()

    def _remember(self) -> None:
        """What ``current`` compares against: the bound tensors, their memory, the baked buffers' versions."""
        self._stores = [b.store for b in self._bindings]
        self._attrs = [b.attr for b in self._bindings]
        self._tensors = [self._args[b.position] for b in self._bindings]
        self._pointers = [t.data_ptr() for t in self._tensors]
        self._watched = [self._args[b.position] for b in self._bindings if b.name in self._baked]
        self._versions = [t._version for t in self._watched]

    def _same_tensors(self) -> bool:
        """Whether every bound tensor is still the one the model holds, on the same memory."""
        return (all(map(operator.is_, map(operator.getitem, self._stores, self._attrs), self._tensors))
                and [t.data_ptr() for t in self._tensors] == self._pointers)

    def current(self) -> bool:
        """``_same_tensors`` and no baked buffer written in place (~3 us for the default model's 40
        tensors)."""
        return self._same_tensors() and [t._version for t in self._watched] == self._versions

    def sync(self) -> bool:
        """Follow the model's tensors: False when nothing changed; True after re-binding the graph's
        arguments to tensors the model replaced. Raises ``ModelChangedError`` where the graph cannot
        follow: a parameter or buffer of another dtype, device or shape, or a baked buffer (radial
        basis, cutoff) with new values. Inside torch.compile or export the graph being traced reads the
        parameters themselves: nothing to check there."""
        if torch.compiler.is_compiling() or self.current():
            return False
        with self._lock:
            if self.current():
                return False
            problems, constants = [], []
            for b in self._bindings:
                t = b.store.get(b.attr)
                why = b.changed(t)
                if why is not None:
                    problems.append(why)
                elif b.name in self._baked and not torch.equal(t.detach(), self._baked[b.name]):
                    constants.append(b.name)
            if constants:
                problems.append(f"new values of {', '.join(constants)}, which optimize() compiled into the fused "
                                "ops as constants")
            if problems:
                raise ModelChangedError("the model changed since optimize(): " + "; ".join(problems[:3])
                                        + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else "")
                                        + ". Call optimize() again on the changed model")
            replaced = not self._same_tensors()
            for b in self._bindings:
                self._args[b.position] = b.store[b.attr]
            self._remember()
            self.rebinds += replaced  # a baked buffer rewritten with its own values replaced nothing
            return replaced

    @property
    def _frozen(self) -> bool:
        return getattr(self._local, "frozen", False)

    @contextlib.contextmanager
    def frozen(self):
        """Calls in this block (on this thread) read the parameters detached: a backward computes no
        weight gradients (what a joint graph of forces is traced with; the fused backward otherwise
        computes them whenever the weights require grad, wanted or not)."""
        self._local.frozen = True
        try:
            yield
        finally:
            self._local.frozen = False

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

#: the fewest atoms and edges a call needs to take a joint graph: smaller systems (no atoms, no
#: edges, one atom) run the fused graph with autograd, cheap at that size; the traced graph's shape
#: assumptions (sizes of at least 2) would send them through a Dynamo compile of their own
JOINT_MIN_SIZE = 2

#: rounds in which the joint graphs take turns being timed (``_race``): 3 x best-of-3 calls each
RACE_ROUNDS = 3


#: what to save instead of an optimized model (its compiled graphs belong to the process)
SAVE_INSTEAD = (
    "an optimized model cannot be pickled (torch.save, pickle, multiprocessing): its graph and compiled pieces "
    "belong to this process. Save the model it wraps instead: save_checkpoint(fast.model, path) "
    "(painnfx.model.checkpoint), then optimize(load_checkpoint(path)) where it is needed; for a schnetpack "
    "potential, save the original and optimize() it after loading; or torch.export.export(fast, ...) and "
    "torch.export.save for a graph that loads anywhere. copy.deepcopy works: it optimizes a copy of the model")


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
        # (kind of call, size class, path policy) -> (joint path or None: autograd, graph key, the
        # JointGraphs it was decided with): later calls of the class go straight to the graph
        self._decided: dict = {}
        # first calls of a size class (measuring, tracing, compiling) run one at a time: concurrent
        # first calls wait for one compile instead of racing make_fx and Inductor
        self._lock = threading.RLock()
        self._rebinds = 0  # runner.rebinds when the joint graphs were made
        # where the wrapped model keeps its first parameter (first_parameter: read live, no module walk)
        self._first = next(((m._parameters, k) for m in model.modules() for k, p in m._parameters.items()
                            if p is not None), None)

    def first_parameter(self) -> Optional[torch.Tensor]:
        """``next(iter(self.parameters()))``, the wrapped model's first parameter as it is now,
        without walking the module tree on every call (what input checks compare dtypes with)."""
        if self._first is None or self._first[1] not in self._first[0]:
            return next(iter(self.parameters()), None)
        return self._first[0][self._first[1]]

    def __reduce_ex__(self, protocol):
        raise NotPicklableError(SAVE_INSTEAD)

    def __deepcopy__(self, memo):
        """``optimize()`` of a deep copy of the wrapped model (a new export and rewrite, ~1-3 s), with
        this one's backend, path policy and joint setting: its graph and compiled pieces are never
        shared or copied."""
        new = self._optimized(copy.deepcopy(self.model, memo))
        memo[id(self)] = new
        return new

    def __copy__(self):
        """``optimize()`` of the same wrapped model (parameters shared), with this one's settings."""
        return self._optimized(self.model)

    def _optimized(self, model: nn.Module) -> "OptimizedModel":
        from .optimize import optimize

        backend = self.runner.backend if self.runner is not None else None
        new = optimize(model, backend=backend or "auto")
        new.path, new.joint = self.path, self.joint
        return new

    def _follow_weights(self) -> None:
        """Check that the graph still reads the tensors the model holds (``GraphRunner.sync``); after
        the model replaced some, the joint graphs, which hold the old ones, are dropped (traced and
        compiled again on next use). Raises ``ModelChangedError`` where the graph cannot follow."""
        self.runner.sync()
        if self.runner.rebinds != self._rebinds:
            with self._lock:
                if self.runner.rebinds != self._rebinds:
                    self.joint_graphs = JointGraphs(compile=self.joint_graphs.compile, backend=self.joint_graphs.backend)
                    self._joint_verified.clear()
                    self.report.joint.pop("graphs", None)
                    self.report.joint["weights_replaced"] = self.runner.rebinds
                    self._rebinds = self.runner.rebinds

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
        self._follow_weights()
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
            with self._lock:  # one measurement per size class, even when threads arrive together
                known = self._measure(args, joint_calls, cls)
        if not joint_calls and known[0] in ENERGY_PATH:
            return ENERGY_PATH[known[0]]
        return known[0]

    def _measure(self, args, joint_calls: Optional[dict], cls: tuple) -> tuple:
        """(path, measured with joint graphs) for size class ``cls``, measured now unless another
        thread did so while this one waited for the lock."""
        n_atoms, n_edges = args[0].shape[0], args[2].shape[1]
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
        return known

    def _reject_joint(self, name: str, why: str) -> None:
        self._joint_rejected[name] = why
        self.report.joint.setdefault("rejected", {})[name] = why
        warnings.warn(f"painnfx: {why}; this model does not use that joint graph (the fused graph with autograd "
                      "runs instead; report.joint['rejected'] keeps the reason)", RuntimeWarning, stacklevel=4)

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
        if tensors[0].shape[0] < JOINT_MIN_SIZE or tensors[2].shape[1] < JOINT_MIN_SIZE:
            return None  # nothing to gain, and a size the traced graph treats as special: autograd
        self._follow_weights()
        self.runner.check(tensors[0])  # a graph traced for another dtype or device must not run
        cls = size_class(tensors[0].shape[0], tensors[2].shape[1])
        known = self._decided.get((key, cls, self._path))
        if known is not None and known[2] is self.joint_graphs:  # measured and checked: no Python beyond the call
            name, graph_key, graphs = known
            if name is None or name in self._joint_rejected:
                return None
            return self._guarded(name, functools.partial(graphs.run, graph_key, None, *tensors))

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
        if any((f"{key} ({name})", cls) not in self._joint_verified for name in calls):
            with self._lock:  # the first call of a size class checks (the very first traces and compiles)
                self._verify_joint(key, calls, cls, lambda: make(fused)(*tensors))
        calls = {name: call for name, call in calls.items() if name not in self._joint_rejected}
        if not calls:
            return None
        choice = "joint" if self._path == "joint" else self._choose(args, calls)
        if choice not in calls or choice in self._joint_rejected:
            self._decided[(key, cls, self._path)] = (None, None, self.joint_graphs)
            return None
        self._decided[(key, cls, self._path)] = (choice, f"{key} ({choice})", self.joint_graphs)
        return calls[choice]()  # None if it fails now: the caller runs autograd

    def _verify_joint(self, key: str, calls: dict, cls: tuple, reference_call: Callable) -> None:
        """Check each joint graph of ``calls`` not yet checked for size class ``cls`` against
        ``reference_call`` (the fused path with autograd); reject one that disagrees or fails."""
        for name in list(calls):
            graph_key = f"{key} ({name})"
            if (graph_key, cls) in self._joint_verified or name in self._joint_rejected:
                continue
            rejected = self._joint_agrees(name, calls[name], reference_call)
            if rejected is not None:
                self._reject_joint(name, rejected)
            if name in self._joint_rejected:
                continue
            self._joint_verified.add((graph_key, cls))
            graphs = self.report.joint.setdefault("graphs", {})
            if graph_key not in graphs:
                graphs[graph_key] = {**node_counts(self.joint_graphs.graphs[graph_key]),
                                     "wrapper": "C++" if self.joint_graphs.options[graph_key].get("cpp_wrapper") else "Python",
                                     "dynamo": not self.joint_graphs.calls(graph_key),  # standalone.py
                                     "compile_seconds": round(self.joint_graphs.compile_seconds[graph_key], 2)}

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

    def __reduce_ex__(self, protocol):
        raise NotPicklableError(SAVE_INSTEAD)

    def __deepcopy__(self, memo):
        """The rewrite of a deep copy of the original representation (see ``OptimizedModel``)."""
        from .capture import SchnetpackRepresentation
        from .optimize import rewrite

        original = copy.deepcopy(self.original, memo)
        cap, report = rewrite(SchnetpackRepresentation(original), name=self.report.model, backend=self.report.backend)
        if not report.applied:  # it was rewritten once; a copy that cannot be is a bug worth an error
            raise ModelChangedError(f"the copy of the representation could not be optimized: {report.why_not()}")
        new = OptimizedRepresentation(original, cap, report, self.runner.backend)
        memo[id(self)] = new
        return new

    def forward(self, inputs: dict) -> dict:
        p = self.keys
        r = inputs[p.Rij]
        self.runner.sync()
        self.runner.check(r)
        q, mu = self.runner(r_ij=r, numbers=inputs[p.Z], idx_i=inputs[p.idx_i].long(), idx_j=inputs[p.idx_j].long())
        inputs["scalar_representation"] = q
        inputs["vector_representation"] = mu
        return inputs
