"""The fusion registry: each fusion is one module holding its patterns, the semantic checks of
what they bind, and a replacement written as a plain Python function that is traced into the
graph (``RewriteState.splice``), in the spirit of torch._inductor's ``register_replacement``.

A fusion contributes passes (in pipeline order) and the fused nodes its replacements leave
in the graph; ``optimize`` runs ``PASSES``, and the report, ``painnfx inspect`` and Graphviz
read the fused-node names from ``FUSED_NODES``; the tracer's leaves, the targets that make a
graph "applied" and the report's launch counts derive from the same records. A new fusion is a
module here plus its entry in ``FUSIONS``; what its passes find lives in ``RewriteState.found``
under its name.
"""

from __future__ import annotations

from dataclasses import dataclass

from painnfx.ops.update import UPDATE

from ..replacements import edge_plan, fused_painn_message, fused_radial_filter
from . import message, radial_filter, update


@dataclass(frozen=True)
class Fusion:
    name: str
    passes: tuple
    nodes: tuple  # fused ops its replacements put into the graph (an analytical backward each)
    plans: tuple = ()  # set-up nodes they share, with no backward and nothing fused (edge plans)
    #: fused ops traced into the compiled joint graphs (rewriter/joint.py) as their reference torch
    #: ops, differentiated by autograd at trace time: where Inductor, fusing them with their
    #: neighbours, was measured faster than the opaque op
    joint_inlined: tuple = ()


FUSIONS = (
    Fusion(radial_filter.NAME, tuple(radial_filter.PASSES), (fused_radial_filter,)),
    Fusion(message.NAME, tuple(message.PASSES), (fused_painn_message,), plans=(edge_plan,)),
    Fusion(update.NAME, tuple(update.PASSES), (update.fused_painn_update,), joint_inlined=(UPDATE,)),
)
PASSES = [p for fusion in FUSIONS for p in fusion.passes]
#: the functions a traced replacement keeps as single nodes (``RewriteState.splice``)
LEAVES = tuple(fn for fusion in FUSIONS for fn in fusion.nodes + fusion.plans)
FUSED_NODES = {fn.__name__: fusion.name for fusion in FUSIONS for fn in fusion.nodes + fusion.plans}
#: the nodes that make an optimized graph "applied" (edge plans alone fuse nothing)
FUSED_TARGETS = {fn for fusion in FUSIONS for fn in fusion.nodes}
#: the fused ops traced into joint graphs as their reference torch ops (``fused_op.inline_reference``)
JOINT_INLINED = tuple(op.name for fusion in FUSIONS for op in fusion.joint_inlined)
#: kernel launches of each fused node's backward (report.launch_estimate)
BACKWARD_LAUNCHES = {fn.__name__: 0 if fn in fusion.plans else 1 for fusion in FUSIONS
                     for fn in fusion.nodes + fusion.plans}
