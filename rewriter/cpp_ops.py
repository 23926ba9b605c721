"""A traced joint graph's CPU ops swapped for the native ones, and how Inductor should wrap it.

``use_native_ops`` rewrites, in place:

* each CPU ``aten.mm``/``aten.addmm`` into ``painnfx_native::dense`` (ops/cpu/native_ops.cpp). A
  small molecule's energy and forces take ~34 matrix products (context networks, update blocks,
  readout, forward and backward), each a BLAS call of ~10-15 us at 3-15 rows, mostly packing
  the weight; ``dense`` runs small-row kernels with the weight as given up to 16 rows and ATen's
  product beyond (decided per call, so one graph serves every size);
* the fused ops ``painnfx::prepare_edges``, ``painn_message`` and ``painn_message_backward``
  (and ``painn_update``/``_backward`` where a graph has them), where the "cpp" backend would run
  them, into their ``painnfx_native`` twins: the same C++ kernels behind the dispatcher instead
  of ~50-100 us of Python each (torch.library's wrapper, checks, ctypes). The radial basis and
  cutoff names become the kernels' ids and constants here, once (``ops.radial.kernel_radial``).
  The update block is traced as its reference torch ops (fusions.JOINT_INLINED): Inductor's code
  for it beat the native update op by 15-20% at 3-50 atoms (docs/rewriter.md).

``wrapper_options`` then picks Inductor's C++ wrapper (the compiled graph calls its kernels and
the native ops from C++, no Python between them) for a CPU graph left with no Python-implemented
op; a graph that still has one keeps the Python wrapper, which calls it without a C++-to-Python
proxy.

``PAINNFX_NATIVE=0`` turns all of it off (ATen's products, the Python ops, the Python wrapper).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.fx as fx

from painnfx.ops import dispatch
from painnfx.ops.edges import PREPARE_EDGES
from painnfx.ops.message import MESSAGE
from painnfx.ops.radial import kernel_radial
from painnfx.ops.update import UPDATE

_MM, _ADDMM = torch.ops.aten.mm.default, torch.ops.aten.addmm.default
#: the ops (by the declaration's name) with a native twin of the same name in ``painnfx_native``
_TWINNED = (PREPARE_EDGES.name, MESSAGE.name, MESSAGE.backward_name, UPDATE.name, UPDATE.backward_name)
#: the node targets of the native twins
NATIVE_FUSED = {f"painnfx_native.{name}.default": name for name in _TWINNED}
#: the fused ops whose native twins take the same arguments (no radial spec to resolve)
_SAME_ARGS = (PREPARE_EDGES.name, UPDATE.name, UPDATE.backward_name)


def enabled() -> bool:
    """Whether joint graphs use the native ops and the C++ wrapper (``PAINNFX_NATIVE``, default 1) and
    the native library could be built here."""
    from painnfx.ops.cpu import native

    if not native.wanted():
        return False
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


def _replace(gm: fx.GraphModule, node: fx.Node, target, args: tuple) -> None:
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(target, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def _val(arg):
    return arg.meta.get("val") if isinstance(arg, fx.Node) else None


def _radial_args(basis_params, basis, cutoff, cutoff_params, x) -> Optional[tuple]:
    """(basis id, cutoff id, c0, c1) for a native message op, or None when the kernels cannot take
    this spec or dtype (the Python op keeps the node, and says why when it runs)."""
    params, xv = _val(basis_params), _val(x)
    if not isinstance(params, torch.Tensor) or not isinstance(xv, torch.Tensor) or params.dtype != xv.dtype:
        return None
    try:
        _, basis_id, cutoff_id, c0, c1 = kernel_radial("native ops", xv.dtype, basis, params, cutoff, cutoff_params)
    except ValueError:
        return None
    return basis_id, cutoff_id, c0, c1


def _fused_ops_run_on_cpp(backend: Optional[str]) -> bool:
    """Whether the fused ops would run on the C++ kernels here (backend ``backend``)."""
    from painnfx.ops.cpu import backend as cpp

    with dispatch.use_backend(backend):
        return (all(dispatch.chosen(op.name, "cpu") == cpp.NAME for op in (MESSAGE, UPDATE))
                and cpp.library() is not None)


def natively_run(backend: Optional[str]) -> set:
    """The fused ops a CPU joint graph traced for ``backend`` runs as native twins: what it need not
    trace as reference torch ops (joint.trace)."""
    if not enabled() or not _fused_ops_run_on_cpp(backend):
        return set()
    return {PREPARE_EDGES.name, MESSAGE.name}


def _native_fused_ops(gm: fx.GraphModule) -> int:
    ns, count = torch.ops.painnfx_native, 0
    declared = {d.op._opoverload: d.name for d in (PREPARE_EDGES, MESSAGE, UPDATE)}
    declared.update({d.backward_op._opoverload: d.backward_name for d in (MESSAGE, UPDATE)})
    for node in list(gm.graph.nodes):
        name = declared.get(node.target) if node.op == "call_function" else None
        if name is None:
            continue
        if name in _SAME_ARGS:
            _replace(gm, node, getattr(ns, name).default, tuple(node.args))
        elif name == MESSAGE.name:
            r, idx_i, idx_j, edges, x, mu, weight, bias, params, basis, cutoff, cutoff_params = node.args[:12]
            radial = _radial_args(params, basis, cutoff, cutoff_params, x)
            if radial is None:
                continue
            _replace(gm, node, getattr(ns, name).default,
                     (r, idx_i, idx_j, *edges, x, mu, weight, bias, params, *radial))
        elif name == MESSAGE.backward_name:
            gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias, params, basis, cutoff, cutoff_params = node.args[:14]
            radial = _radial_args(params, basis, cutoff, cutoff_params, x)
            if radial is None:
                continue
            _replace(gm, node, getattr(ns, name).default,
                     (gq, gmu, r, idx_i, idx_j, *edges, x, mu, weight, bias, params, *radial, node.args[-1]))
        count += 1
    return count


def use_native_ops(gm: fx.GraphModule, backend: Optional[str] = None) -> int:
    """Swap the graph's CPU float ``mm``/``addmm`` (beta = alpha = 1, a 1-D bias) for
    ``painnfx_native::dense``, and its fused message ops for their native twins where the "cpp"
    backend would run them under ``backend`` (the optimized model's); returns how many nodes.
    Nothing when ``enabled()`` is false."""
    if not enabled() or not _on_cpu_graph(gm):
        return 0
    count = 0
    for node in list(gm.graph.nodes):
        operands = _operands(node) if node.op == "call_function" and _on_cpu(node) else None
        if operands is not None:
            _replace(gm, node, torch.ops.painnfx_native.dense.default, operands)
            count += 1
    if _fused_ops_run_on_cpp(backend):
        count += _native_fused_ops(gm)
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
