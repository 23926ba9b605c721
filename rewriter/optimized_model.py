"""The modules ``optimize`` returns: ``OptimizedModel`` (the path rule, PATH_RULE, and the set-up
that no job waits for) and ``GraphRunner``, which calls a rewritten graph.

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
from painnfx.ops.cpu import backend as cpu_backend
from painnfx.ops.cpu import prebuild
from painnfx.ops.errors import ModelChangedError, NotPicklableError

from . import costs
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


#: the fewest atoms and edges a call needs to take a compiled forces graph: smaller systems (no
#: atoms, no edges, one atom) run the fused graph with autograd, cheap at that size; the traced
#: graph's shape assumptions (sizes of at least 2) would send them through a Dynamo compile of their own
JOINT_MIN_SIZE = 2

#: above this many edges energy and forces run the fused graph with autograd: the compiled forces
#: graph is 0-14% faster at Cu500 and Cu2048 (21 000 and 86 000 edges), equal at Cu8000 with 1.7x
#: the memory (AMD EPYC, docs/perf)
JOINT_MAX_EDGES = 100_000

#: what each path is, by the name reports and ``report.paths`` use
PATH_NAMES = {
    "plain": "plain model (autograd)",
    "fused": "fused graph (forces by autograd through the analytical backwards)",
    "compiled": "compiled forces graph (energy, forces and stress traced ahead of time, Inductor)",
}

#: the path rule, as the report prints it
PATH_RULE = (
    "1. Until the fused graph is ready (rewrite done, C++ kernels built) the plain model answers.\n"
    "2. Energy alone, create_graph, fewer than 2 atoms or edges, or more than "
    f"{JOINT_MAX_EDGES} edges: the fused graph.\n"
    "3. Energy and forces (and stress): the compiled forces graph once it is compiled and checked "
    "against the fused graph on the first call of each size; the fused graph until then.\n"
    "4. setup='background': a set-up step (build, rewrite, compile) is taken at a call, once the job has run "
    "at least as long as the step is expected to take on this machine; a build starts in a process of its own "
    "once the job has run 1 s.\n"
    "5. setup='now': the rewrite runs in optimize(), each forces graph compiles on its first call.")

POLICIES = {
    "auto": "the path rule (report.path_rule)",
    "fused": "the fused graph on every call (forces by autograd); nothing is compiled",
}

SETUPS = ("now", "background")

#: a job younger than this starts no background build (setup="background"): a 30-step optimisation
#: of a small molecule ends first, and the builder's own start (its Python and torch, at nice 19)
#: still cost such a job up to a third of its time on 2 cores
BUILD_AFTER_S = 1.0


#: what to save instead of an optimized model (its compiled graphs belong to the process)
SAVE_INSTEAD = (
    "an optimized model cannot be pickled (torch.save, pickle, multiprocessing): its graph and compiled pieces "
    "belong to this process. Save the model it wraps instead: save_checkpoint(fast.model, path) "
    "(painnfx.model.checkpoint), then optimize(load_checkpoint(path)) where it is needed; for a schnetpack "
    "potential, save the original and optimize() it after loading; or torch.export.export(fast, ...) and "
    "torch.export.save for a graph that loads anywhere. copy.deepcopy works: it optimizes a copy of the model")


def joint_default() -> bool:
    """Whether the auto policy uses compiled forces graphs (``PAINNFX_JOINT``, default 1). Their
    first use per kind of call costs an Inductor compile (seconds): the test suite sets 0 and the
    compiled path's own tests turn it on."""
    return os.environ.get("PAINNFX_JOINT", "1") != "0"


#: a compiled graph's outputs must equal the fused autograd path's to this (relative to max |output|, at least 1)
JOINT_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}


def size_class(n_atoms: int, n_edges: int) -> tuple:
    """Systems within a factor of two in atoms and edges share one check of a compiled graph."""
    return (max(0, math.ceil(math.log2(max(n_atoms, 1)))), max(0, math.ceil(math.log2(max(n_edges, 1)))))


class OptimizedModel(nn.Module):
    """A painnfx-signature energy model whose graph has fused nodes. Shares parameters with
    ``model``; ``report`` says what was rewritten. When nothing could be rewritten it simply
    runs ``model``. Batched calls (``batch``) need a per-atom model (``atomic_energies`` and
    ``aggregate``): its per-atom energies are summed with the model's own ``aggregate``.

    ``path``: "auto" follows ``PATH_RULE`` (no measuring: the same call always takes the same
    path once set-up is done); "fused" always runs the fused graph with autograd. ``joint``
    (default ``PAINNFX_JOINT``, on): whether "auto" uses compiled forces graphs (joint.py:
    forward and backward traced ahead of time, Inductor, no autograd engine), each checked output
    by output against the fused path on the first call of every size class; one that disagrees or
    fails is never used again (``report.joint['rejected']``).

    ``setup``: "now" (the model is rewritten already; a compiled forces graph compiles on its
    first call) or "background" (``pending`` rewrites it later: until then the plain model answers;
    the C++ kernels build in a process of their own, and each set-up step is taken at a call
    boundary once the job has run at least as long as the step is expected to take, costs.py).
    ``report.paths`` records which path answered from which call on."""

    def __init__(self, model: nn.Module, cap: Optional[Captured], report: OptimizeReport, per_atom: bool,
                 backend: Optional[str] = None, path: str = "fused", joint: Optional[bool] = None,
                 setup: str = "now", pending: Optional[Callable] = None, weights: Optional[str] = None,
                 remake: Optional[Callable] = None):
        super().__init__()
        if setup not in SETUPS:
            raise ValueError(f"setup must be one of {', '.join(SETUPS)}, got {setup!r}")
        self.model = model
        self.runner = GraphRunner(cap, backend) if (cap is not None and report.applied) else None
        self.per_atom = per_atom
        self.report = report
        self.report.path_rule = PATH_RULE
        self.cutoff = float(getattr(model, "cutoff", 0.0))
        self.config = getattr(model, "config", None)
        self.path = path
        self.joint = joint_default() if joint is None else joint
        self.joint_graphs = JointGraphs(backend=backend)
        self.setup = setup
        self._backend = backend
        self._pending = pending  # () -> (Captured, report): the rewrite still to do (setup="background")
        self._weights = weights  # weights_digest of the model when optimized (cost records)
        self._remake = remake  # (model, setup=) -> optimize() of that model with this one's options (copies)
        self._joint_rejected: dict = {}  # graph key -> why it is not used
        # (kind of call, size class) -> the JointGraphs its compiled graph was checked in: later calls
        # of the class go straight to the graph (new joint graphs, after the weights were replaced, are
        # checked again)
        self._decided: dict = {}
        # set-up steps (rewrite, first calls of a size class: checking, tracing, compiling) run one at
        # a time: concurrent first calls wait for one compile instead of racing make_fx and Inductor
        self._lock = threading.RLock()
        self._rebinds = 0  # runner.rebinds when the joint graphs were made
        self._started: Optional[float] = None  # perf_counter of the first call (setup="background")
        self._calls = 0
        self._last_path: Optional[str] = None
        self._expected: dict = {}  # (step, detail) -> seconds it is expected to take (costs.py)
        self._planned = 0  # calls the job makes in all, when known (plan)
        self._rate: Optional[float] = None  # seconds from one call to the next, on the current path
        self._last_tick: Optional[float] = None
        self._setup_ran = False  # a set-up step ran since the last call started (its time is no rate)
        # where the wrapped model keeps its first parameter (first_parameter: read live, no module walk)
        self._first = next(((m._parameters, k) for m in model.modules() for k, p in m._parameters.items()
                            if p is not None), None)
        self.report.setup.setdefault("kernel_build_started", False)

    def first_parameter(self) -> Optional[torch.Tensor]:
        """``next(iter(self.parameters()))``, the wrapped model's first parameter as it is now,
        without walking the module tree on every call (what input checks compare dtypes with)."""
        if self._first is None or self._first[1] not in self._first[0]:
            return next(iter(self.parameters()), None)
        return self._first[0][self._first[1]]

    def _on_cpu(self) -> bool:
        p = self.first_parameter()
        return p is None or p.device.type == "cpu"

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
        if self._remake is None:
            raise TypeError("this OptimizedModel was not made by optimize(): it cannot be copied")
        new = self._remake(model, setup=self.setup)
        new.path, new.joint = self.path, self.joint
        return new

    # -- set-up ------------------------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether the rewrite is done (``applied`` then says whether the fused graph runs)."""
        return self._pending is None

    def _job_seconds(self) -> float:
        """Seconds since this model's first call: how long the job has run."""
        now = time.perf_counter()
        if self._started is None:
            self._started = now
        return now - self._started

    def _record_key(self, step: str, detail: str = "") -> Optional[str]:
        p = self.first_parameter()
        if self._weights is None or p is None:
            return None
        weights = "" if step == "build" else self._weights  # the kernels are the same for every model
        return costs.key(step, weights, p.dtype if step != "build" else "", p.device, detail)

    def plan(self, calls: int) -> "OptimizedModel":
        """Tell the model that the job makes about ``calls`` calls in all (an MD run of known length):
        a set-up step is then due as soon as the calls still to come would save as much time as the
        step costs, and never when they would not (setup="background"; without a plan, a step is due
        once the job has run as long as it costs)."""
        self._planned = int(calls)
        return self

    def _tick(self) -> None:
        """Count a call and time the one before it (``_rate``), unless a set-up step ran in it."""
        now = time.perf_counter()
        if self._last_tick is not None and not self._setup_ran:
            self._rate = now - self._last_tick
        self._last_tick, self._setup_ran = now, False
        self._calls += 1

    def _due(self, step: str, detail: str = "") -> bool:
        """Whether set-up step ``step`` is due: the job has run at least as long as the step is
        expected to take (read from the records once per model and step); with a ``plan``, once the
        calls still to come would save at least that much (``costs.GAIN``: the least share of a
        call's time the step saves)."""
        expected = self._expected.get((step, detail))
        if expected is None:
            expected = self._expected[(step, detail)] = costs.expected(step, self._record_key(step, detail))
        if self._planned:  # the calls still to come, at the current path's rate, must save what the step costs
            if self._rate is None:
                return False
            return max(0, self._planned - self._calls) * self._rate * costs.GAIN[step] >= expected
        return self._job_seconds() >= expected

    def _advance(self) -> None:
        """The deferred rewrite, when the C++ kernels are built and it is due (setup="background")."""
        if self._pending is None:
            return
        if self._on_cpu():
            if not prebuild.ready():
                due = self._due("build")
                # a planned job knows at its second call whether it builds now (in the foreground)
                start = self._rate is not None and not due if self._planned else self._job_seconds() >= BUILD_AFTER_S
                if start and not self.report.setup["kernel_build_started"]:
                    self.report.setup["kernel_build_started"] = prebuild.start()
                why = None if prebuild.building() else prebuild.unavailable()
                if why is None and due:  # the job pays for the build now: at full speed
                    with self._lock:
                        why, done = self._build_now(alongside=self._pending if self._due("rewrite") else None)
                        if why is None and done is not None:
                            self._take_rewrite(*done)
                            return
                if why is not None:  # the fused graph would run the reference ops: slower than the plain model
                    with self._lock:
                        self._give_up(why)
                if not prebuild.ready():
                    return
        if not self._due("rewrite"):
            return
        with self._lock:
            if self._pending is not None:
                self.prepare(compile=False, wait=False)

    def _build_now(self, alongside: Optional[Callable] = None) -> tuple:
        """Build the C++ kernels in this process, every core torch may use, in place of the background
        builder (which runs at the lowest priority and on a busy machine gets little of it; objects it
        compiled already are kept). ``alongside``: the pending rewrite, run in this thread while the
        compilers run (its capture needs no kernels; its first fused op waits for them). Returns
        (why the kernels cannot be built or None, (rewrite result, seconds) or None)."""
        if prebuild.ready():
            return None, None
        prebuild.stop()
        self._setup_ran = True
        timing: dict = {}

        def build() -> None:
            start = time.perf_counter()
            cpu_backend.library()
            timing["build"] = time.perf_counter() - start

        builder = threading.Thread(target=build, name="painnfx-kernel-build", daemon=True)
        builder.start()
        done = None
        try:
            if alongside is not None:
                start = time.perf_counter()
                done = alongside(), time.perf_counter() - start, False
        finally:
            builder.join()
        self.report.setup["kernel_build_s"] = round(timing.get("build", 0.0), 3)
        if cpu_backend.library() is None:
            return cpu_backend.info().get("error", "the build failed"), None
        key = self._record_key("build")
        if key is not None and not cpu_backend.info().get("cached"):
            costs.record(key, timing["build"])
        prebuild.refresh()
        return None, done

    def _give_up(self, why: str) -> None:
        """No fused graph for this model (setup="background"): the C++ kernels cannot be built here."""
        if self._pending is None:
            return
        self._pending = None
        self.report.setup.update(pending=False, kernels=why)
        warnings.warn(f"painnfx: the CPU kernels are unavailable ({why}); the plain model runs (the fused graph "
                      "would run the fused ops' reference implementation, slower than the plain model)",
                      RuntimeWarning, stacklevel=5)

    def prepare(self, compile: bool = False, wait: bool = True) -> "OptimizedModel":
        """Do the set-up now rather than when it is due: wait for the C++ kernels' build (``wait``),
        rewrite, and with ``compile`` also allow the compiled forces graphs at once (each compiles on
        its first call). Returns self."""
        with self._lock:
            if self._pending is not None:
                done = None
                if wait and self._on_cpu():
                    done = self._build_now(alongside=self._pending)[1]
                self._setup_ran = True
                if done is None:
                    start = time.perf_counter()
                    done = self._pending(), time.perf_counter() - start, True
                self._take_rewrite(*done)
            if compile:
                self.setup = "now"
        return self

    def _take_rewrite(self, result: tuple, seconds: float, alone: bool = True) -> None:
        """Switch to the rewrite ``self._pending()`` returned (``result``: (Captured, report)) in
        ``seconds``; ``alone``: not alongside the kernels' build (whose wait it then includes, so its
        time is not recorded as what a rewrite costs)."""
        if self._pending is None:
            return
        cap, report = result
        for name in ("paths", "joint", "path_policy"):  # what this model recorded so far
            setattr(report, name, getattr(self.report, name))
        report.setup = {**report.setup, **self.report.setup}
        self.report.__dict__.update(report.__dict__)
        self.report.path_rule = PATH_RULE
        self.report.setup.update(rewrite_s=round(seconds, 3), pending=False, rewrite_alongside_build=not alone)
        self.runner = GraphRunner(cap, self._backend) if (cap is not None and report.applied) else None
        self._pending = None
        key = self._record_key("rewrite")
        if key is not None and alone:
            costs.record(key, seconds)

    def _compile_due(self, graph_key: str) -> bool:
        """Whether compiling forces graph ``graph_key`` may happen now."""
        if self.setup == "now" or graph_key in self.joint_graphs.graphs:
            return True
        if self._on_cpu() and not prebuild.ready():
            return False
        return self._due("compile", graph_key)

    def _note(self, path: str, n_atoms: int, n_edges: int, why: str = "") -> None:
        """Record in ``report.paths`` that calls take ``path`` from this call on."""
        if path != self._last_path:
            self._last_path = path
            self.report.paths.append({"path": PATH_NAMES[path].split(" (")[0], "call": self._calls,
                                      "seconds": round(self._job_seconds(), 3), "atoms": n_atoms, "edges": n_edges,
                                      "why": why})

    def _follow_weights(self) -> None:
        """Check that the graph still reads the tensors the model holds (``GraphRunner.sync``); after
        the model replaced some, the joint graphs, which hold the old ones, are dropped (traced and
        compiled again on next use). Raises ``ModelChangedError`` where the graph cannot follow."""
        self.runner.sync()
        if self.runner.rebinds != self._rebinds:
            with self._lock:
                if self.runner.rebinds != self._rebinds:
                    self.joint_graphs = JointGraphs(compile=self.joint_graphs.compile, backend=self.joint_graphs.backend)
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
        if value not in POLICIES:
            raise ValueError(f"path must be one of {', '.join(POLICIES)}, got {value!r}")
        self._path = value
        self.report.path_policy = POLICIES[value]

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

    @staticmethod
    def _joint_agrees(graph_key: str, got, reference_call) -> Optional[str]:
        """None when the compiled graph's outputs ``got`` equal what ``reference_call`` (the same
        function run eagerly on the fused path, autograd and all) gives, every output (energy,
        forces, stress), to ``JOINT_TOLERANCE`` of the output's scale; else why not."""
        want = reference_call()
        for k, (a, b) in enumerate(zip(got, want)):
            b = b.detach()
            both_nan = torch.isnan(a) & torch.isnan(b)  # a batch's stress is NaN for systems without a cell
            tol = JOINT_TOLERANCE.get(b.dtype, 1e-4) * max(1.0, float(b.nan_to_num().abs().max()) if b.numel() else 0.0)
            err = float((a - b).abs().masked_fill(both_nan, 0).max()) if b.numel() else 0.0
            if not err <= tol:  # any other NaN fails
                return (f"compiled {graph_key} graph disagrees with the fused graph: output {k} off by {err:.2e} "
                        f"(tolerance {tol:.1e})")
        return None

    def _reject_joint(self, graph_key: str, why: str) -> None:
        self._joint_rejected[graph_key] = why
        self.report.joint.setdefault("rejected", {})[graph_key] = why
        warnings.warn(f"painnfx: {why}; this model does not use that compiled graph (the fused graph with autograd "
                      "runs instead; report.joint['rejected'] keeps the reason)", RuntimeWarning, stacklevel=4)

    def joint_properties(self, key: str, make: Callable, tensors: tuple, example: Optional[tuple] = None):
        """The energy, forces (and stress) of ``tensors`` through the compiled forces graph of kind
        ``key`` when the path rule takes it for this call, else None (the caller runs autograd on
        ``forward``). ``make(energy)`` gives the function to trace: it evaluates ``energy`` (a
        callable with the model's signature) and differentiates it. ``tensors`` start with
        (positions, numbers, edge_index, shifts). ``example``: what to trace on, the same kinds of tensors (default:
        ``joint.trace_example``, which needs the tensors after the first four not to change size
        with the system)."""
        if self._path != "auto" or not self.joint or not self.per_atom:
            return None
        self._advance()
        if self.runner is None:
            return None
        n_atoms, n_edges = tensors[0].shape[0], tensors[2].shape[1]
        if n_atoms < JOINT_MIN_SIZE or n_edges < JOINT_MIN_SIZE or n_edges > JOINT_MAX_EDGES:
            return None  # the fused graph (rule 2)
        self._follow_weights()
        self.runner.check(tensors[0])  # a graph traced for another dtype or device must not run
        cls = size_class(n_atoms, n_edges)
        graphs = self.joint_graphs
        if self._decided.get((key, cls)) is graphs:  # checked: no Python beyond the call
            self._calls += 1
            return self._guarded(key, functools.partial(graphs.run, key, None, *tensors))
        if key in self._joint_rejected or not self._compile_due(key):
            return None
        with self._lock:  # the first call of a size class checks (the very first traces and compiles)
            return self._first_of_class(key, make, tensors, example, cls)

    def _first_of_class(self, key: str, make: Callable, tensors: tuple, example: Optional[tuple], cls: tuple):
        """Run the compiled graph ``key`` on the first call of size class ``cls`` (compiling it on
        its very first call), check it against the fused graph, and return its outputs, or None
        after rejecting it."""
        def fused(positions, numbers, edge_index, shifts, batch=None, n_systems=1):
            with self.runner.frozen():
                return self._fused(positions, numbers, edge_index, shifts, batch, n_systems)

        graphs = self.joint_graphs
        compiling = key not in graphs.graphs
        got = self._guarded(key, functools.partial(graphs.run, key, make(fused), *tensors, example=example))
        if got is None:
            return None
        if compiling:
            self._setup_ran = True
            seconds = graphs.compile_seconds[key]
            record_key = self._record_key("compile", key)
            if record_key is not None:
                costs.record(record_key, seconds)
            self.report.joint.setdefault("graphs", {})[key] = {
                **node_counts(graphs.graphs[key], graphs.backend),
                "wrapper": "C++" if graphs.options[key].get("cpp_wrapper") else "Python",
                "dynamo": not graphs.calls(key),  # direct_call.py
                "compile_seconds": round(seconds, 2)}
        if self._decided.get((key, cls)) is not graphs:  # (another thread may have checked it while this one waited)
            why = self._joint_agrees(key, got, lambda: make(fused)(*tensors))
            if why is not None:
                self._reject_joint(key, why)
                return None
        self._decided[(key, cls)] = graphs
        self._tick()
        self._note("compiled", tensors[0].shape[0], tensors[2].shape[1], key)
        return got

    def _guarded(self, graph_key: str, call):
        """``call()``, or None after rejecting compiled graph ``graph_key`` when compiling or running
        it fails (an Inductor or Dynamo error for some shape): never a failed call for the user.
        Bad input (``InputError``) is the caller's error and propagates."""
        if graph_key in self._joint_rejected:
            return None
        try:
            return call()
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001  any compiler failure: the autograd paths remain
            first = (str(exc).strip().splitlines() or [""])[0]
            self._reject_joint(graph_key, f"compiled {graph_key} graph failed: {type(exc).__name__}: {first}")
            return None

    def forward(self, positions, numbers, edge_index, shifts, batch=None, n_systems: int = 1):
        args = (positions, numbers, edge_index, shifts, batch, n_systems)
        tracing = torch.compiler.is_compiling()  # torch.compile or export traces the graph: no bookkeeping
        if not tracing:
            self._tick()
            self._advance()
        if self.runner is None or (batch is not None and not self.per_atom):
            if self._last_path != "plain" and not tracing:
                self._note("plain", positions.shape[0], edge_index.shape[1],
                           "set-up under way" if self._pending is not None else self.report.why_not())
            return self._plain(*args)
        if self._last_path != "fused" and not tracing:
            self._note("fused", positions.shape[0], edge_index.shape[1])
        return self._fused(*args)


class OptimizedRepresentation(nn.Module):
    """Drop-in for a schnetpack PaiNN representation: inputs dict -> inputs dict with
    ``scalar_representation`` and ``vector_representation``, computed by the rewritten graph."""

    def __init__(self, representation: nn.Module, cap: Captured, report: OptimizeReport,
                 backend: Optional[str] = None, remake: Optional[Callable] = None):
        super().__init__()
        self.original = representation
        self._remake = remake  # (representation) -> (Captured, report): optimize()'s rewrite, for copies
        self.runner = GraphRunner(cap, backend)
        self.report = report
        self.cutoff = representation.cutoff
        self.keys = cap.target.keys

    def __reduce_ex__(self, protocol):
        raise NotPicklableError(SAVE_INSTEAD)

    def __deepcopy__(self, memo):
        """The rewrite of a deep copy of the original representation (see ``OptimizedModel``)."""
        if self._remake is None:
            raise TypeError("this OptimizedRepresentation was not made by optimize(): it cannot be copied")
        original = copy.deepcopy(self.original, memo)
        cap, report = self._remake(original)
        if not report.applied:  # it was rewritten once; a copy that cannot be is a bug worth an error
            raise ModelChangedError(f"the copy of the representation could not be optimized: {report.why_not()}")
        new = OptimizedRepresentation(original, cap, report, self.runner.backend, remake=self._remake)
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
