"""The matrix products of a traced joint graph, and how Inductor should wrap the graph.

A small molecule's energy and forces take ~34 matrix products (the context networks, the update
blocks and the readout, forward and backward), each a BLAS call that costs ~10-15 us at 3-12 rows,
mostly in packing the weight: half of the whole call at 3 atoms. ``use_native_products`` swaps
each CPU ``aten.mm``/``aten.addmm`` of a traced graph for ``painnfx_native::dense``
(ops/cpu/native_ops.cpp), which runs small-row kernels with the weight as given up to a few
rows and ATen's own product beyond (decided per call, so one graph serves every size).

``wrapper_options`` picks Inductor's C++ wrapper (the compiled graph calls its kernels and the
native ops from C++, no Python between them) for a CPU graph that calls no Python-implemented
op; a graph with the fused ``painnfx::`` ops keeps the Python wrapper, from which those are
called without a C++-to-Python proxy per call.

``PAINNFX_NATIVE=0`` turns both off (ATen's products, the Python wrapper).
"""

from __future__ import annotations

import os

import torch
import torch.fx as fx

_MM, _ADDMM = torch.ops.aten.mm.default, torch.ops.aten.addmm.default


def enabled() -> bool:
    """Whether joint graphs use the native ops and the C++ wrapper (``PAINNFX_NATIVE``, default 1) and
    the native library could be built here."""
    if os.environ.get("PAINNFX_NATIVE", "1") == "0":
        return False
    from painnfx.ops.cpu import native

    return native.available()


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


def use_native_products(gm: fx.GraphModule) -> int:
    """Replace the graph's CPU float ``mm``/``addmm`` (beta = alpha = 1, a 1-D bias) by
    ``painnfx_native::dense`` in place; returns how many. Nothing when ``enabled()`` is false."""
    if not enabled():
        return 0
    dense = torch.ops.painnfx_native.dense.default
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or not _on_cpu(node):
            continue
        operands = _operands(node)
        if operands is None:
            continue
        with gm.graph.inserting_before(node):
            new = gm.graph.call_function(dense, operands)
        new.meta = dict(node.meta)
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _calls_python_ops(gm: fx.GraphModule) -> bool:
    """Whether the graph calls an op implemented in Python (the fused ``painnfx::`` ops)."""
    return any(n.op == "call_function" and str(n.target).startswith("painnfx.") for n in gm.graph.nodes)


def _on_cpu_graph(gm: fx.GraphModule) -> bool:
    devices = {v.device.type for n in gm.graph.nodes if isinstance(v := n.meta.get("val"), torch.Tensor)}
    return devices == {"cpu"}


def wrapper_options(gm: fx.GraphModule) -> dict:
    """Inductor options for compiling ``gm``: the C++ wrapper for a CPU graph without Python ops."""
    if enabled() and _on_cpu_graph(gm) and not _calls_python_ops(gm):
        return {"cpp_wrapper": True}
    return {}


def native_counts(gm: fx.GraphModule) -> dict:
    """{op: count} of the ``painnfx_native`` nodes of a graph."""
    found: dict = {}
    for n in gm.graph.nodes:
        if n.op == "call_function" and str(n.target).startswith("painnfx_native."):
            found[str(n.target)] = found.get(str(n.target), 0) + 1
    return found
