"""``optimize(model)``: the pass pipeline from capture to a module with fused nodes.

    capture -> normalize (strip asserts, de-in-place, CSE, fold constants, canonical forms)
    -> passes.PIPELINE (recognise bases and cutoffs, the fusions of the registry, DCE)
    -> lint + recompile -> end-to-end verification against the captured graph

The result has the model's call signature and results. If nothing matches, capture fails,
or the end-to-end verification disagrees, the original model is returned inside the same
wrapper (``report.applied`` is False and the report says why): never a broken model. A
module that is not a PaiNN-style energy model at all is refused with ``NotAnEnergyModel``.

Strict mode (``strict=True`` or ``PAINNFX_STRICT=1``, which the test suite sets) re-raises
what would otherwise be reported: a capture failure, a replacement raising on probe inputs,
and a verification (per rewrite or end to end) that disagrees, as ``VerificationError``.
Outside strict mode a failed verification leaves that part unfused, with one
``VerificationWarning``; a model with nothing to rewrite gives one ``NothingRewrittenWarning``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import inspect
import os
import threading
import warnings
from collections import OrderedDict
from typing import Optional

import torch
import torch.fx as fx
from torch import nn

from painnfx.ops import available_backends, use_backend
from painnfx.ops.build_cache import digest
from painnfx.ops.checks import check_dtype
from painnfx.ops.errors import InputError, PainnfxError

from . import normalize, rewrite_cache
from .adapters import is_schnetpack_potential
from .capture import AtomicEnergies, Captured, SchnetpackRepresentation, Target, TotalEnergy, capture
from .costs import weights_digest
from .fusions import BACKWARD_LAUNCHES, FUSED_TARGETS, LEAVES
from .passes import PIPELINE
from .report import OptimizeReport, PassResult, graph_table, launch_estimate, op_counts
from .optimized_model import SETUPS, OptimizedModel, OptimizedRepresentation
from .state import RewriteState
from .verify import VerificationError, VerificationWarning, verify_end_to_end

NORMALIZE = [
    normalize.strip_runtime_asserts,
    normalize.functionalize_inplace,
    normalize.eliminate_common_subexpressions,
    normalize.fold_constants,
    normalize.canonicalize,
    normalize.fold_constants,
    normalize.eliminate_common_subexpressions,
    normalize.drop_dead_nodes,
]

def capture_errors() -> tuple:
    """What torch.export raises for a model it cannot capture (reported; the model runs unchanged).
    Read when needed: importing torch._dynamo takes a second, which a model that is never rewritten
    (``PaiNNCalculator(optimize=False)``, a set-up not yet due) does not pay."""
    from torch._dynamo.exc import Unsupported, UserError

    return (UserError, Unsupported, RuntimeError, TypeError, ValueError, NotImplementedError, AttributeError)


class NotAnEnergyModel(PainnfxError, TypeError):
    """``optimize`` was given a module that is not a PaiNN-style energy model."""


class NothingRewrittenWarning(UserWarning):
    """``optimize`` found nothing it could fuse (or could not capture the model): it runs unchanged."""


def _strict(strict: Optional[bool]) -> bool:
    return bool(int(os.environ.get("PAINNFX_STRICT", "0"))) if strict is None else strict


def check_energy_model(model) -> None:
    """Raise ``NotAnEnergyModel`` unless ``model`` is a schnetpack potential or a module with the
    painnfx energy signature (positions, numbers, edge_index, shifts) and a ``cutoff``."""
    name = type(model).__name__
    if not isinstance(model, nn.Module):
        raise NotAnEnergyModel(f"optimize() takes a torch.nn.Module energy model, got {name}")
    if is_schnetpack_potential(model):
        return
    try:
        params = list(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        params = []
    problems = []
    if len(params) < 4:
        problems.append(f"its forward takes ({', '.join(params)}), not (positions, numbers, edge_index, shifts, ...)")
    if not isinstance(getattr(model, "cutoff", None), (int, float, torch.Tensor)):
        problems.append("it has no `cutoff` attribute")
    if next(iter(model.parameters()), None) is None:
        problems.append("it has no parameters")
    if problems:
        raise NotAnEnergyModel(
            f"optimize() expects a PaiNN-style energy model (painnfx PaiNN, a module with its signature "
            f"energy = model(positions, numbers, edge_index, shifts) and a `cutoff`, or a schnetpack "
            f"NeuralNetworkPotential); {name} does not qualify: " + "; ".join(problems))


def check_weights(model: nn.Module) -> None:
    """The model's floating-point parameters share one dtype that painnfx runs in and one device, and
    are finite."""
    kinds = {(p.dtype, p.device) for p in model.parameters() if p.is_floating_point()}
    if len(kinds) > 1:
        raise InputError("the model's parameters have mixed dtypes or devices "
                         f"({', '.join(sorted(f'{d} on {v}' for d, v in kinds))}): convert the whole model with "
                         ".to(dtype, device) before optimize()")
    for dtype, _ in kinds:
        check_dtype(dtype, "the model's parameter dtype")
    bad = [name for name, p in model.named_parameters() if p.is_floating_point() and not bool(torch.isfinite(p).all())]
    if bad:
        raise InputError(f"the model's parameters hold NaN or inf in {', '.join(bad[:3])}"
                         + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
                         + ": it would return NaN for every structure")


def _copy_graph_module(gm: fx.GraphModule) -> fx.GraphModule:
    graph = fx.Graph()
    out = graph.graph_copy(gm.graph, {})
    graph.output(out)
    return fx.GraphModule(gm, graph)


def rewrite(target: Target, verify: bool = True, name: str = "model", backend: str = "auto",
            strict: Optional[bool] = None):
    """Capture ``target``, normalise, run the pipeline, verify end to end: (Captured or None, report)."""
    strict = _strict(strict)
    report = OptimizeReport(model=name, backend=backend)
    p = next(iter(target.parameters()))
    try:
        cap = capture(target)
    except capture_errors() as exc:
        if strict:
            raise
        report.passes.append(PassResult("capture", rejected=[f"{type(exc).__name__}: {str(exc).splitlines()[0]}"]))
        return None, report
    report.passes.append(PassResult("capture", lines=[f"torch.export: {len(cap.gm.graph.nodes)} nodes, inputs "
                                                      f"{', '.join(target.names)} (atoms and edges symbolic)"]))
    original = _copy_graph_module(cap.gm)
    report.graph_before = cap.gm.code
    report.nodes_before = len(cap.gm.graph.nodes)
    report.ops_before = dict(op_counts(cap.gm))
    report.launches_before = launch_estimate(cap.gm, BACKWARD_LAUNCHES)
    norm = PassResult("normalize")
    for fn in NORMALIZE:
        norm.lines += [f"{fn.__name__}: {line}" for line in fn(cap)]
    report.passes.append(norm)

    report.table_before = graph_table(cap.gm)
    state = RewriteState(cap=cap, verify=verify, strict=strict, dtype=p.dtype, leaves=LEAVES)
    forced = None if backend == "auto" else backend
    with use_backend(forced):  # rewrites are verified on the backend the model will run
        for pass_fn in PIPELINE:
            report.passes.append(pass_fn(state))
    cap.gm.graph.lint()
    cap.gm.recompile()

    fused = [n for n in cap.gm.graph.nodes if n.op == "call_function" and n.target in FUSED_TARGETS]
    report.fused_nodes = len(fused)
    report.applied = bool(fused)
    report.nodes_after = len(cap.gm.graph.nodes)
    report.ops_after = dict(op_counts(cap.gm))
    report.launches_after = launch_estimate(cap.gm, BACKWARD_LAUNCHES)
    report.graph_after = cap.gm.code
    report.table_after = graph_table(cap.gm)
    if report.applied and verify:
        with use_backend(forced):
            verdict = end_to_end(original, state)
        if strict and not verdict.ok:
            raise VerificationError(f"the rewritten graph of {name} (end to end)", verdict.detail)
        report.end_to_end = (f"passed (max relative error {verdict.max_rel_error:.1e} on {len(state.probe_args())} "
                             "probe systems: energies and gradients to inputs and parameters)" if verdict.ok
                             else f"failed: {verdict.detail}")
        report.applied = verdict.ok
    return cap, report


def end_to_end(original: fx.GraphModule, state: RewriteState):
    """The captured graph against the final one (values and VJPs to float user inputs and parameters)."""
    cap = state.cap
    differentiable = [gi.kind in ("user", "parameter") for gi in cap.inputs]
    return verify_end_to_end(original, cap.gm, state.probe_args(), differentiable, state.dtype, state.strict)


#: rewrites kept for reuse in this process: (weights digest, model class, settings) -> (Captured, report)
_REWRITES: "OrderedDict[tuple, tuple]" = OrderedDict()
_REWRITES_KEPT = 8
_rewrites_lock = threading.Lock()
#: how often optimize() reused a rewrite of the same weights instead of exporting again
reuse_count = {"reused": 0, "loaded": 0, "rewritten": 0}


def _rewrite_reused(target: Target, memo_key: Optional[tuple], verify, name, backend, strict):
    """``rewrite(target, ...)``, or the rewrite of a model with the same class and weights done
    earlier in this process, bound to ``target``'s model (its graph is a function of the weights
    alone; the runner reads ``target``'s own tensors), or the one an earlier process wrote to the
    disk cache (rewrite_cache.py); either is checked on a probe system first."""
    if memo_key is None:
        return rewrite(target, verify, name, backend, strict)
    with _rewrites_lock:
        hit = _REWRITES.get(memo_key)
        if hit is not None:
            _REWRITES.move_to_end(memo_key)
    if hit is not None and not _same_function(hit[0], target, backend):
        hit = None  # the same weights and settings, but the model computes something else: rewrite it
    if hit is not None:
        cap, report = hit
        reuse_count["reused"] += 1
        report = copy.deepcopy(report)
        report.setup["reused"] = "this process"
        return dataclasses.replace(cap, target=target), report
    disk = rewrite_cache.key(memo_key)
    found = rewrite_cache.load(disk, target)
    if found is not None and _same_function(found[0], target, backend):
        cap, report = found
        reuse_count["loaded"] += 1
        report.setup["reused"] = "disk cache"
    else:
        cap, report = rewrite(target, verify, name, backend, strict)
        reuse_count["rewritten"] += 1
        if cap is not None and report.applied and verify:
            rewrite_cache.store(disk, cap, report)
    if cap is not None:
        with _rewrites_lock:
            _REWRITES[memo_key] = (cap, copy.deepcopy(report))
            while len(_REWRITES) > _REWRITES_KEPT:
                _REWRITES.popitem(last=False)
    return cap, report


def structure_digest(model: nn.Module) -> str:
    """The model's classes and plain settings (every submodule's class and its int, float, str,
    bool and None attributes; hooks): with ``weights_digest``, what decides whether an earlier
    rewrite serves this model."""
    parts = []
    for name, m in model.named_modules():
        simple = sorted((k, repr(v)) for k, v in vars(m).items()
                        if not k.startswith("_") and (v is None or isinstance(v, (bool, int, float, str, tuple))))
        hooks = [len(getattr(m, h, ())) for h in ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks")]
        parts.append(f"{name}|{type(m).__module__}.{type(m).__qualname__}|{simple}|{hooks}")
    return digest(parts)


def _pipeline() -> tuple:
    """The passes a rewrite runs now, by name (a changed pipeline is another rewrite)."""
    return tuple(f"{f.__module__}.{f.__qualname__}" for f in (*NORMALIZE, *PIPELINE))


def _same_function(cap: Captured, target: Target, backend: str) -> bool:
    """Whether the rewritten graph ``cap``, run on ``target``'s own tensors, gives ``target``'s
    energies and position gradients on a probe system (one call of each: ~10 ms)."""
    from .probes import random_system
    from .optimized_model import GraphRunner

    p = next(iter(target.parameters()))
    pos, numbers, edge_index, shifts = (t.to(p.device) for t in random_system(p.dtype, p.device, n_atoms=5))
    pos = pos.to(p.dtype)
    shifts = shifts.to(p.dtype)
    outs = []
    try:
        runner = GraphRunner(dataclasses.replace(cap, target=target), None if backend == "auto" else backend)
        for run in (lambda x: runner(**target.user_inputs(x, numbers, edge_index, shifts)),
                    lambda x: target(*target.user_inputs(x, numbers, edge_index, shifts).values())):
            x = pos.detach().clone().requires_grad_(True)
            with torch.enable_grad():
                out = run(x)
                out = out[0] if isinstance(out, (tuple, list)) else out
                (grad,) = torch.autograd.grad(out.sum(), x, allow_unused=True)
            outs.append((out.detach(), torch.zeros_like(x) if grad is None else grad))
    except Exception:  # noqa: BLE001  a stored graph that does not fit this model: rewrite it
        return False
    tol = 1e-8 if p.dtype == torch.float64 else 1e-3
    return all(torch.allclose(a, b, rtol=tol, atol=tol * max(1.0, float(b.abs().max()) if b.numel() else 1.0))
               for a, b in zip(outs[0], outs[1]))


def optimize(model: nn.Module, backend: str = "auto", verify: bool = True, *, strict: Optional[bool] = None,
             setup: str = "now"):
    """Rewrite ``model``'s energy graph with fused ops; same call signature and results.

    * a painnfx PaiNN (or any module with its energy signature) -> ``OptimizedModel``;
    * a schnetpack ``NeuralNetworkPotential`` with a PaiNN representation -> a copy of that
      potential whose ``representation`` runs the rewritten graph (its own input modules,
      output heads, forces/stress and postprocessors run unchanged; the original is untouched).

    ``backend``: "auto" lets torch's dispatcher pick each fused op's implementation for the
    tensors' device; a backend name (``painnfx.ops.available_backends()``) forces it for this
    model's calls. ``verify``: check every rewrite, and the whole graph, on probe systems.
    Constants (basis centres, widths, cutoff) are read from the model's buffers now: optimize
    again after changing them, the dtype or the device. The returned object has ``.report``.
    Raises ``NotAnEnergyModel`` for a module that is not a PaiNN-style energy model.

    ``setup``: "now" rewrites here (a second optimize() of a model with the same class and weights
    in this process reuses that rewrite: ``report.setup["reused"]``); "background" returns at once
    with the rewrite still to do: the plain model answers until the C++ kernels are built (in a
    process of their own) and the job has run long enough to pay for the rewrite (optimized_model.py's path
    rule; ``fast.prepare()`` does it now). Schnetpack potentials are rewritten now.
    """
    if setup not in SETUPS:
        raise ValueError(f"setup must be one of {', '.join(SETUPS)}, got {setup!r}")
    if backend != "auto" and backend not in available_backends():
        raise ValueError(f"unknown backend {backend!r}; available: {available_backends()}")
    check_energy_model(model)
    check_weights(model)
    forced = None if backend == "auto" else backend
    name = type(model).__name__
    if is_schnetpack_potential(model):
        cap, report = rewrite(SchnetpackRepresentation(model.representation), verify, name, backend, strict)
        new = copy.copy(model)
        new._modules = dict(model._modules)
        if report.applied:
            remake = functools.partial(_rewrite_representation, name=name, backend=backend)
            new.representation = OptimizedRepresentation(model.representation, cap, report, forced, remake=remake)
        _warn_fallback(report, name)
        new.report = report
        return new
    per_atom = hasattr(model, "atomic_energies") and hasattr(model, "aggregate")
    target = AtomicEnergies(model) if per_atom else TotalEnergy(model)
    weights = weights_digest(model)
    remake = functools.partial(optimize, backend=backend, verify=verify, strict=strict)
    memo_key = (weights, structure_digest(model), per_atom, backend, verify, _strict(strict), _pipeline())

    def rewritten():
        cap, report = _rewrite_reused(target, memo_key, verify, name, backend, strict)
        # deferred, a model with nothing to fuse is said so by its report, not by a warning in some later call
        _warn_fallback(report, name, stacklevel=5 if setup == "background" else 4, nothing=setup == "now")
        report.setup["mode"] = setup
        return cap, report

    if setup == "background":
        with _rewrites_lock:
            done = memo_key in _REWRITES
        if not done:  # the plain model answers until the deferred rewrite is due
            report = OptimizeReport(model=name, backend=backend, setup={"mode": setup, "pending": True})
            return OptimizedModel(model, None, report, per_atom, forced, setup=setup, pending=rewritten,
                                  weights=weights, remake=remake)
    cap, report = rewritten()
    return OptimizedModel(model, cap, report, per_atom, forced, setup=setup, weights=weights, remake=remake)


def _rewrite_representation(representation: nn.Module, name: str, backend: str) -> tuple:
    """(Captured, report) of a schnetpack PaiNN representation (what a copy of an
    ``OptimizedRepresentation`` is rewritten with)."""
    return rewrite(SchnetpackRepresentation(representation), name=name, backend=backend)


def _warn_fallback(report: OptimizeReport, name: str, stacklevel: int = 3, nothing: bool = True) -> None:
    """One warning per optimize() call when any part runs unfused: a ``VerificationWarning`` when
    a rewrite disagreed with the original (a bug worth reporting), else, when nothing was fused,
    a ``NothingRewrittenWarning``."""
    failed = report.failed_verifications()
    if failed:
        what = "it runs unchanged" if not report.applied else "those parts run unfused"
        warnings.warn(f"painnfx.optimize: {len(failed)} rewrite(s) of {name} failed verification ({'; '.join(failed)}); "
                      f"{what}", VerificationWarning, stacklevel=stacklevel)
    elif not report.applied and nothing:
        warnings.warn(f"painnfx.optimize: nothing was rewritten in {name}: {report.why_not()}; it runs unchanged",
                      NothingRewrittenWarning, stacklevel=stacklevel)
