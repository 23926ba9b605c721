"""Energy, forces and stress as one graph traced ahead of time: the joint forward and backward of
an optimized model, run without the autograd engine.

``JointGraphs.run(key, fn, *tensors)`` traces ``fn`` (a function of tensors that evaluates the
optimized model's fused path and differentiates it with ``torch.autograd.grad``) once per kind of
call ``key``, with ``make_fx`` and symbolic atom and edge counts: autograd runs once, at trace
time, and what it would do on every call is recorded as graph nodes, the fused ops' analytical
backwards (``painnfx::painn_message_backward``) among them. The graph is then compiled by
Inductor (its dense remainder fused into C++ loops; the fused ops stay opaque calls) and run
under ``torch.inference_mode``: no tape is recorded and no engine walks one. One trace serves
every system size. The graph reads the model's live parameter tensors, so in-place updates are
seen (tested); when the model replaces a tensor (``load_state_dict(assign=True)``, ``.to()`` and
back), ``OptimizedModel`` drops its joint graphs and traces them again (optimized_model.py), and a new
dtype or device is refused with ``ModelChangedError``. Training (``create_graph=True``) keeps the
autograd path. Trace and compile run one at a time (make_fx and Dynamo are not thread-safe).

``OptimizedModel.joint_properties`` decides per size class whether a call takes this path
(optimized_model.py: the fused graph's joint graph and the plain model's, each checked output by output
against the fused autograd path, timed against it and the plain model); ``model/properties.py``
and the LAMMPS adapter hand it the function to trace.
"""

from __future__ import annotations

import threading
import time
import warnings
from typing import Callable, Optional

import torch
import torch.fx as fx
from torch.fx.experimental.proxy_tensor import make_fx

from painnfx.ops import InputError
from painnfx.ops.fused_op import inline_reference

from .fusions import JOINT_INLINED
from .cpp_ops import fused_nodes, native_counts, natively_run, use_native_ops, wrapper_options
from .direct_call import GuardedGraph


def trace(fn: Callable, *tensors, backend: Optional[str] = None) -> fx.GraphModule:
    """``fn`` traced on ``tensors`` with symbolic sizes (any atom and edge count). The fused ops a
    fusion marks ``joint_inlined`` (the update block: Inductor's code for its dense products and
    pointwise steps beat the opaque op there, docs/rewriter.md) are traced as their reference torch
    ops, which autograd differentiates at trace time (saving, not recomputing, their activations).
    On the CPU the matrix products become the library's (``painnfx::dense``), and the fused ops
    kept as ops run their C++ kernels where ``backend`` (the optimized model's) is the "cpp" one
    (cpp_ops.py): no Python per call."""
    inlined = set(JOINT_INLINED) - natively_run(backend)  # an op run natively is traced as the op
    with inline_reference(inlined):
        gm = make_fx(fn, tracing_mode="symbolic", _allow_non_fake_inputs=True)(*tensors)
    use_native_ops(gm)
    return gm


#: atom and edge counts of the system joint graphs are traced on: primes that coincide with no
#: feature, basis or spatial size (tracing on a 3-atom molecule would bake N = 3 into views)
TRACE_ATOMS, TRACE_EDGES = 7, 19


def trace_example(positions, numbers, edge_index, shifts, *rest) -> tuple:
    """Inputs like the given ones (dtypes, devices, the size-independent ``rest``) with
    ``TRACE_ATOMS`` atoms and ``TRACE_EDGES`` edges: what a joint graph is traced on (the sizes are
    symbolic; the values only have to be a valid system)."""
    n, e = TRACE_ATOMS, TRACE_EDGES
    pos = torch.arange(n * 3, dtype=positions.dtype, device=positions.device).reshape(n, 3) * 0.9
    src = torch.arange(e, device=edge_index.device) % n
    ei = torch.stack([src, (src + 1 + torch.arange(e, device=edge_index.device) // n) % n]).to(edge_index.dtype)
    return (pos, numbers[:1].expand(n).clone(), ei, torch.zeros(e, 3, dtype=shifts.dtype, device=shifts.device), *rest)


def node_counts(gm: fx.GraphModule, backend: Optional[str] = None) -> dict:
    """{"nodes": all, "fused": {op: count}, "native": {op: count}} of a joint graph traced for
    ``backend`` ("native": the nodes that run the C++ library's kernels)."""
    fused: dict = {}
    for n in fused_nodes(gm):
        fused[str(n.target)] = fused.get(str(n.target), 0) + 1
    return {"nodes": len(gm.graph.nodes), "fused": fused, "native": native_counts(gm, backend)}


def _on_cpu(tensors) -> bool:
    """Whether a graph's inputs are all on the CPU: only there is a joint graph compiled without
    Dynamo (direct_call.py); on a GPU that way has not been run yet, so it keeps torch.compile."""
    return all(t.device.type == "cpu" for t in tensors if isinstance(t, torch.Tensor))


class JointGraphs:
    """The traced (and, with ``compile``, Inductor-compiled) joint graphs of one optimized model,
    one per kind of call (``key``, e.g. with or without stress). ``compile_seconds[key]``: the
    first call's trace and compile time, reported apart from the timed calls. ``backend``: the
    fused ops' backend of the optimized model (None: the dispatcher's choice), which decides
    whether they become native ops."""

    def __init__(self, compile: bool = True, backend: Optional[str] = None):
        self.compile, self.backend = compile, backend
        self.graphs: dict = {}  # key -> traced GraphModule
        self._runners: dict = {}  # key -> what runs it (compiled or the GraphModule)
        self.compile_seconds: dict = {}
        self.options: dict = {}  # key -> the Inductor options it was compiled with
        self._lock = threading.RLock()  # one trace and compile at a time (make_fx and Dynamo are not thread-safe)

    def run(self, key, fn: Callable, *tensors, example: Optional[tuple] = None):
        """``fn(*tensors)`` through the graph of kind ``key`` (traced and compiled on first use,
        on ``example``, default ``trace_example(*tensors)``: then ``tensors`` start with
        (positions, numbers, edge_index, shifts) and the rest do not change size with the system)."""
        runner = self._runners.get(key)
        if runner is None:
            with self._lock:
                if key not in self._runners:
                    return self._first_run(key, fn, tensors, example)
            runner = self._runners[key]
        with torch.inference_mode():
            return runner(*tensors)

    def _first_run(self, key, fn: Callable, tensors: tuple, example: Optional[tuple]):
        """Trace and compile the graph of kind ``key``, then run it on ``tensors``."""
        start = time.perf_counter()
        example = trace_example(*tensors) if example is None else example
        gm = trace(fn, *example, backend=self.backend)
        options = wrapper_options(gm, self.backend) if self.compile else {}
        try:
            runner = self._compiled(gm, options, example)
        except InputError:
            raise
        except Exception as exc:  # noqa: BLE001  the C++ wrapper failed here: the Python one remains
            if not options:
                raise
            first = (str(exc).strip().splitlines() or [""])[0]
            warnings.warn(f"painnfx: Inductor's C++ wrapper failed for the {key} graph ({type(exc).__name__}: "
                          f"{first}); it is compiled with the Python wrapper", RuntimeWarning, stacklevel=3)
            options = {}
            runner = self._compiled(gm, options, example)
        with torch.inference_mode():
            out = runner(*tensors)
        self.compile_seconds[key] = time.perf_counter() - start
        self.graphs[key], self._runners[key], self.options[key] = gm, runner, options
        return out

    def _compiled(self, gm: fx.GraphModule, options: dict, example: tuple):
        """``gm`` compiled with ``options`` (or ``gm`` itself when not compiling), run once on
        ``example`` (sizes that coincide with nothing): by default Inductor alone, called
        without Dynamo where the graph's shape assumptions hold (direct_call.py), else
        ``torch.compile`` (compiled there). Inductor compiles with as many worker processes as torch
        has threads (``compile_threads``; its default is every core), and that setting is not part
        of its cache key."""
        if not self.compile:
            return gm
        options = {**options, "compile_threads": max(1, torch.get_num_threads())}

        def dynamo():
            return torch.compile(gm, dynamic=True, fullgraph=True, options=options)

        runner = GuardedGraph(gm, options, dynamo) if _on_cpu(example) else dynamo()
        with torch.inference_mode():
            runner(*example)
        return runner

    def calls(self, key) -> dict:
        """{"direct": n, "dynamo": n}: how the calls of graph ``key`` ran since it was compiled
        ({} for a graph run through ``torch.compile`` alone or not compiled)."""
        runner = self._runners.get(key)
        return dict(runner.calls) if isinstance(runner, GuardedGraph) else {}
