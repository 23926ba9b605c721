"""A traced joint graph's CPU matrix products swapped for the library's, and how Inductor should wrap it.

``use_native_ops`` rewrites, in place, each CPU ``aten.mm``/``aten.addmm`` into ``painnfx::dense``
(ops/cpu/dense.py). A small molecule's energy and forces take ~34 matrix products (context
networks, update blocks, readout, forward and backward), each a BLAS call of ~10-15 us at 3-15 rows,
mostly packing the weight; ``dense`` runs small-row kernels with the weight as given up to 16 rows
and ATen's product beyond (decided per call, so one graph serves every size).

The fused ops need no swap: their CPU kernels are registered with the dispatcher (operators.cpp), so
a graph's ``painnfx::prepare_edges``/``painn_message`` nodes run C++ when the optimized model's
backend is the "cpp" one. The update block is traced as its reference torch ops
(fusions.JOINT_INLINED): Inductor's code for it beat the C++ update op by 15-20% at 3-50 atoms
(docs/rewriter.md).

``wrapper_options`` then picks Inductor's C++ wrapper (the compiled graph calls its kernels and the
library's from C++, no Python between them) for a CPU graph whose every op has a C++ kernel; a
graph whose fused ops run a Python backend keeps the Python wrapper.

``PAINNFX_NATIVE=0`` turns all of it off (ATen's products and the Python wrapper).
"""

from __future__ import annotations

import os
from typing import Optional

import torch
import torch.fx as fx

from painnfx.ops import dispatch
from painnfx.ops.cpu import backend as cpp
from painnfx.ops.edges import PREPARE_EDGES
from painnfx.ops.message import MESSAGE
from painnfx.ops.update import UPDATE

_MM, _ADDMM = torch.ops.aten.mm.default, torch.ops.aten.addmm.default
#: the node target of the library's matrix product
DENSE = "painnfx.dense.default"


def wanted() -> bool:
    """Whether joint graphs are to use the library's products and the C++ wrapper (``PAINNFX_NATIVE``,
    default 1)."""
    return os.environ.get("PAINNFX_NATIVE", "1") != "0"


def enabled() -> bool:
    """``wanted()``, and the library could be built here."""
    return wanted() and cpp.library() is not None


def _on_cpu(node: fx.Node) -> bool:
    val = node.meta.get("val")
    return isinstance(val, torch.Tensor) and val.device.type == "cpu" and val.dtype in (torch.float32, torch.float64)


def _operands(node: fx.Node):
    """(a, b, bias) of a product node ``dense`` can replace, else None."""
    if node.target is _MM and len(node.args) == 2 and not node.kwargs:
        return node.args[0], node.args[1], None
    if node.target is _ADDMM and len(node.args) == 3 and not node.kwargs:
        bias = node.args[0]
        val = bias.meta.get("val") if isinstance(bias, fx.Node) else None
        if isinstance(val, torch.Tensor) and val.dim() == 1:
            return node.args[1], node.args[2], bias
    return None


def _fused_ops_run_on_cpp(backend: Optional[str]) -> bool:
    """Whether the fused ops would run on the C++ kernels here (backend ``backend``)."""
    with dispatch.use_backend(backend):
        return (all(dispatch.chosen(op.name, "cpu") == cpp.NAME for op in (MESSAGE, UPDATE))
                and cpp.library() is not None)


def natively_run(backend: Optional[str]) -> set:
    """The fused ops a CPU joint graph traced for ``backend`` keeps as ops, run by their C++
    kernels: what it need not trace as reference torch ops (joint.trace)."""
    if not enabled() or not _fused_ops_run_on_cpp(backend):
        return set()
    return {PREPARE_EDGES.name, MESSAGE.name}


def use_native_ops(gm: fx.GraphModule) -> int:
    """Swap the graph's CPU float ``mm``/``addmm`` (beta = alpha = 1, a 1-D bias) for
    ``painnfx::dense``; returns how many nodes. Nothing when ``enabled()`` is false."""
    if not enabled() or not _on_cpu_graph(gm):
        return 0
    count = 0
    for node in list(gm.graph.nodes):
        operands = _operands(node) if node.op == "call_function" and _on_cpu(node) else None
        if operands is not None:
            with gm.graph.inserting_before(node):
                new = gm.graph.call_function(torch.ops.painnfx.dense.default, operands)
            new.meta = dict(node.meta)
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
            count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def fused_nodes(gm: fx.GraphModule) -> list:
    """The graph's nodes of the declared fused ops and their backwards (``painnfx.<op>.default``)."""
    declared = {f"painnfx.{name}.default" for name in dispatch.operator_names()}
    return [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) in declared]


def _on_cpu_graph(gm: fx.GraphModule) -> bool:
    devices = {v.device.type for n in gm.graph.nodes if isinstance(v := n.meta.get("val"), torch.Tensor)}
    return devices == {"cpu"}


def wrapper_options(gm: fx.GraphModule, backend: Optional[str] = None) -> dict:
    """Inductor options for compiling ``gm``: the C++ wrapper for a CPU graph whose fused ops (if
    any) run their C++ kernels under ``backend``."""
    if enabled() and _on_cpu_graph(gm) and (not fused_nodes(gm) or _fused_ops_run_on_cpp(backend)):
        return {"cpp_wrapper": True}
    return {}


def native_counts(gm: fx.GraphModule, backend: Optional[str] = None) -> dict:
    """{op: count} of a CPU graph's nodes that run the library's C++ kernels under ``backend``:
    its products, and its fused ops where the "cpp" backend runs them."""
    nodes = [n for n in gm.graph.nodes if n.op == "call_function" and str(n.target) == DENSE]
    if _on_cpu_graph(gm) and enabled() and _fused_ops_run_on_cpp(backend):
        nodes += fused_nodes(gm)
    found: dict = {}
    for n in nodes:
        found[str(n.target)] = found.get(str(n.target), 0) + 1
    return found
