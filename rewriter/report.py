"""What the pass pipeline did, for people (text) and machines (JSON)."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import torch.fx as fx

#: ops that only reinterpret memory or shapes: no kernel of their own
_METADATA = {
    "view", "reshape", "_unsafe_view", "unsqueeze", "squeeze", "select", "slice", "split", "split_with_sizes",
    "getitem", "t", "expand", "permute", "transpose", "sym_size", "alias", "detach",
}
#: rough number of kernels autograd runs for one op's backward (estimate, by op name)
_BACKWARD_KERNELS = {
    "mul": 2, "div": 3, "add": 1, "sub": 1, "linear": 3, "index": 1, "index_add": 1, "exp": 1, "pow": 2,
    "sin": 2, "cos": 2, "linalg_vector_norm": 3, "embedding": 1, "silu": 2, "sum": 1, "cat": 1, "where": 2,
    "sqrt": 2, "zeros": 0, "zeros_like": 0, "lt": 0, "eq": 0, "to": 1, "_to_copy": 1, "ones_like": 0,
}


def op_name(node: fx.Node) -> str:
    t = node.target
    packet = getattr(t, "overloadpacket", None)
    if packet is not None:
        return packet.__name__
    return getattr(t, "__name__", str(t))


def op_counts(gm: fx.GraphModule) -> Counter:
    return Counter(op_name(n) for n in gm.graph.nodes if n.op == "call_function")


def launch_estimate(gm: fx.GraphModule, fused: dict) -> dict:
    """Kernel launches of one forward and one backward, estimated from the op list (CUDA).
    ``fused`` maps each fused node's name to its launches in the backward (one for a fused op
    with an analytical backward, none for an edge plan: a few sorts), as the fusion registry
    says (``fusions.BACKWARD_LAUNCHES``)."""
    fwd = bwd = 0
    for n in gm.graph.nodes:
        if n.op != "call_function":
            continue
        name = op_name(n)
        if name in _METADATA:
            continue
        fwd += 1
        if name in fused:
            bwd += fused[name]
        else:
            bwd += _BACKWARD_KERNELS.get(name, 2)
    return {"forward": fwd, "backward": bwd, "total": fwd + bwd}


def graph_table(gm: fx.GraphModule) -> list:
    """The graph as plain data: one dict per node (name, op, target, input names)."""
    rows = []
    for n in gm.graph.nodes:
        target = op_name(n) if n.op == "call_function" else str(n.target)
        rows.append({"name": n.name, "op": n.op, "target": target, "inputs": [a.name for a in n.all_input_nodes]})
    return rows


@dataclass
class PassResult:
    name: str
    lines: list = field(default_factory=list)
    matches: list = field(default_factory=list)
    rejected: list = field(default_factory=list)
    near_misses: list = field(default_factory=list)  # candidates that failed below their root, with why


@dataclass
class OptimizeReport:
    model: str
    backend: str
    passes: list = field(default_factory=list)
    nodes_before: int = 0
    nodes_after: int = 0
    ops_before: dict = field(default_factory=dict)
    ops_after: dict = field(default_factory=dict)
    launches_before: dict = field(default_factory=dict)
    launches_after: dict = field(default_factory=dict)
    fused_nodes: int = 0
    applied: bool = False
    end_to_end: str = ""  # the whole-graph verification's verdict
    path_policy: str = ""  # "auto" (the path rule) or the fused graph always
    path_rule: str = ""  # optimized_model.PATH_RULE
    paths: list = field(default_factory=list)  # which path answered from which call on, and why
    setup: dict = field(default_factory=dict)  # set-up mode and steps: rewrite_s, kernel_build_started, pending
    joint: dict = field(default_factory=dict)  # joint graphs built ({"graphs": {key: counts}}), or why rejected
    graph_before: str = ""
    graph_after: str = ""
    table_before: list = field(default_factory=list)  # normalized graph, before the rewrites
    table_after: list = field(default_factory=list)

    def to_dict(self, graphs: bool = False) -> dict:
        d = asdict(self)
        if not graphs:
            for key in ("graph_before", "graph_after", "table_before", "table_after"):
                d.pop(key)
        return d

    def summary(self) -> str:
        if not self.applied:
            return f"optimize({self.model}): {self.why_not()}; the model runs unchanged"
        return (f"optimize({self.model}): {self.fused_nodes} fused nodes, {self.nodes_before} -> {self.nodes_after} "
                f"graph nodes, est. kernel launches {self.launches_before.get('total')} -> "
                f"{self.launches_after.get('total')} per energy+forces")

    def why_not(self) -> str:
        """Why the rewritten graph is not used (empty if it is)."""
        if self.applied:
            return ""
        if self.setup.get("pending"):
            return "set-up under way (the rewrite waits for the C++ kernels' build and for the job to run long enough)"
        if self.setup.get("kernels"):
            return f"the CPU kernels are unavailable ({self.setup['kernels']})"
        if self.end_to_end:
            return f"end-to-end verification {self.end_to_end}"
        capture = next((p for p in self.passes if p.name == "capture"), None)
        if capture is not None and capture.rejected:
            return f"capture failed ({capture.rejected[0]})"
        return "nothing matched"

    def failed_verifications(self) -> list:
        """Rewrites that disagreed with the original on the probes (they run unfused)."""
        failed = [r for p in self.passes for r in p.rejected if "verification failed" in r]
        if self.end_to_end.startswith("failed"):
            failed.append(f"end-to-end verification {self.end_to_end}")
        return failed

    def to_text(self, near_misses: int = 5) -> str:
        out = [self.summary(), ""]
        for p in self.passes:
            out.append(f"[{p.name}]")
            for line in p.lines:
                out.append(f"  {line}")
            for m in p.matches:
                out.append("  matched " + ", ".join(f"{k}={v}" for k, v in m.items() if k != "region"))
            for r in p.rejected:
                out.append(f"  REJECTED {r}")
            for r in p.near_misses[:near_misses]:
                out.append(f"  near miss: {r}")
            if len(p.near_misses) > near_misses:
                out.append(f"  ... {len(p.near_misses) - near_misses} more near misses (--json lists all)")
            if not (p.lines or p.matches or p.rejected or p.near_misses):
                out.append("  (nothing)")
        out.append("")
        if self.end_to_end:
            out.append(f"end-to-end verification: {self.end_to_end}")
        if self.path_policy:
            out.append(f"path: {self.path_policy}")
            if self.path_policy.startswith("the path rule"):
                out += [f"  {line}" for line in self.path_rule.splitlines()]
        for c in self.paths:
            out.append(f"  from call {c['call']} ({c['seconds']} s into the job; {c['atoms']} atoms, {c['edges']} edges): "
                       f"{c['path']}" + (f" ({c['why']})" if c["why"] else ""))
        if self.setup.get("rewrite_s") is not None:
            out.append(f"set-up: rewrite {self.setup['rewrite_s']} s ({self.setup.get('mode', 'now')})")
        traced = self.joint.get("traced")
        if traced:
            out.append(f"joint graph (energy+forces, traced): plain model {traced['plain_nodes']} nodes -> optimized "
                       f"{traced['optimized_nodes']} nodes; fused nodes: {_ops(traced['fused'])}"
                       + (f"; native ops: {_ops(traced['native'])}" if traced.get("native") else ""))
        for key, g in self.joint.get("graphs", {}).items():
            native = f"; native ops: {_ops(g['native'])}" if g.get("native") else ""
            wrapper = f"; Inductor's {g['wrapper']} wrapper" if g.get("wrapper") else ""
            if "dynamo" in g:
                wrapper += ", through torch.compile" if g["dynamo"] else ", called without Dynamo where its shapes allow"
            out.append(f"joint graph ({key}): {g['nodes']} nodes, fused nodes: {_ops(g['fused'])}{native}{wrapper}; "
                       f"traced and compiled in {g['compile_seconds']} s")
        if self.joint.get("rejected"):
            out.append(f"joint graph rejected: {self.joint['rejected']}")
        out.append(f"nodes: {self.nodes_before} -> {self.nodes_after}")
        out.append(f"kernel launches (estimate, fwd+bwd): {self.launches_before} -> {self.launches_after}")
        before, after = Counter(self.ops_before), Counter(self.ops_after)
        names = sorted(set(before) | set(after), key=lambda k: -max(before[k], after[k]))
        out.append("ops (before -> after): " + ", ".join(f"{k} {before[k]}->{after[k]}" for k in names if before[k] != after[k]))
        return "\n".join(out)


def _ops(counts: dict) -> str:
    """"painn_message 3, dense 34" from {"painnfx.painn_message.default": 3, ...}."""
    return ", ".join(f"{op.split('.')[1]} {n}" for op, n in counts.items())
