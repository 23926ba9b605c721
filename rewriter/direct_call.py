"""A joint graph compiled by Inductor without Dynamo, called directly where its shape assumptions hold.

``torch.compile`` of a joint graph checks Dynamo's guards on every call (the cache lookup, the
graph's bytecode, the compiled region's wrapper): ~90 us of a 5-atom call of ~0.6 ms (profiler,
AMD EPYC). A joint graph is traced once with symbolic sizes (joint.trace), so Inductor can compile
it as it is (``torch._inductor.standalone_compile``, the sizes the graph's own). What Dynamo's
guards would check is what the trace assumed: the graph's ShapeEnv guards (sizes that must agree,
contiguous strides, sizes of at least 2, where the trace took 0 and 1 as special), here compiled
into one Python function (~3 us), plus each input's dtype, device and rank. A call that meets them
runs the compiled graph directly; any other (one atom, no edges, a strided input) goes through
``torch.compile`` of the same graph, compiled on first need, which recompiles as Dynamo decides.
"""

from __future__ import annotations

import threading
from typing import Callable

import torch
import torch.fx as fx


class GuardedGraph:
    """``gm`` compiled by Inductor with ``options``, called directly where the graph's assumptions
    hold, else through ``dynamo()`` (a ``torch.compile`` of the same graph, made on first need).
    ``calls``: how many calls took each way."""

    def __init__(self, gm: fx.GraphModule, options: dict, dynamo: Callable[[], Callable]):
        from torch._guards import detect_fake_mode
        from torch._inductor import standalone_compile
        from torch.fx.experimental.symbolic_shapes import SYMPY_INTERP

        inputs = [n.meta.get("val") for n in gm.graph.nodes if n.op == "placeholder"]
        if not all(isinstance(v, torch.Tensor) for v in inputs):
            raise TypeError("a joint graph's inputs are tensors")
        # compiled on a GraphModule of its own that shares gm's attributes (the model's live
        # parameters: in-place updates stay seen), which Inductor may rewrite
        graph = fx.Graph()
        graph.output(graph.graph_copy(gm.graph, {}))
        owned = fx.GraphModule(gm, graph)
        self.compiled = standalone_compile(owned, inputs, dynamic_shapes="from_graph",
                                           options={"config_patches": dict(options)}, donate_graph_module=True)
        # produced after compiling: Inductor may have added guards of its own to the graph's ShapeEnv
        code = detect_fake_mode(inputs).shape_env.produce_guards_expression(inputs, ignore_static=False)
        self._shapes_hold = eval(f"lambda L: {code}", dict(SYMPY_INTERP)) if code else (lambda L: True)
        self._kinds = [(v.dtype, v.device, v.dim()) for v in inputs]
        self._names = [f"t{i}" for i in range(len(inputs))]
        self._make_dynamo, self._dynamo = dynamo, None
        self._lock = threading.Lock()  # Dynamo compiles on a call: one call at a time takes that way
        self.calls = {"direct": 0, "dynamo": 0}

    def covers(self, tensors) -> bool:
        """Whether the compiled graph was made for tensors like these."""
        if len(tensors) != len(self._kinds):
            return False
        for t, (dtype, device, dim) in zip(tensors, self._kinds):
            if not isinstance(t, torch.Tensor) or t.dtype != dtype or t.device != device or t.dim() != dim:
                return False
        return bool(self._shapes_hold(dict(zip(self._names, tensors))))

    def __call__(self, *tensors):
        if self.covers(tensors):
            self.calls["direct"] += 1
            return self.compiled(*tensors)
        with self._lock:
            if self._dynamo is None:
                self._dynamo = self._make_dynamo()
            self.calls["dynamo"] += 1
            return self._dynamo(*tensors)
