"""What the rewrite passes share: the captured graph, what earlier passes recognised (typed),
the probe values every rewrite is verified on, and the splicing of traced replacements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.fx as fx

from .capture import Captured
from .normalize import add_constant, constant_nodes
from .pattern import MatchContext
from .probes import probe_systems
from .verify import VerificationError, compare, evaluate_region, record_values, tolerance


@dataclass
class BasisInfo:
    spec: str
    params: torch.Tensor  # basis_params (rows, K)
    d: fx.Node

    @property
    def n_rbf(self) -> int:
        return self.params.shape[1]


@dataclass
class CutoffInfo:
    spec: str
    params: tuple
    d: fx.Node


@dataclass
class Replacement:
    """A replacement: ``fn`` (plain Python, traced when spliced) applied to ``args`` (graph
    nodes, or tensors that become constants of the rewritten graph)."""

    fn: Callable
    args: list

    def __call__(self, values: dict) -> list:
        out = self.fn(*[values[a] if isinstance(a, fx.Node) else a for a in self.args])
        return list(out) if isinstance(out, (tuple, list)) else [out]


def trace(fn: Callable, leaves: tuple) -> fx.Graph:
    """``fn`` as an fx graph; the fused-op adapters (``leaves``) stay single nodes."""
    return fx.Tracer(autowrap_functions=leaves).trace(fn)


@dataclass
class RewriteState:
    cap: Captured
    verify: bool = True
    strict: bool = False
    dtype: torch.dtype = torch.float64
    leaves: tuple = ()  # functions a traced replacement keeps as single nodes (fusions.LEAVES)
    # what the recognisers found, for every fusion to use
    basis: dict = field(default_factory=dict)  # fx.Node -> BasisInfo
    cutoffs: dict = field(default_factory=dict)  # fx.Node -> CutoffInfo
    zeros: set = field(default_factory=set)  # nodes provably zero
    found: dict = field(default_factory=dict)  # fusion name -> what its passes found, for its later passes
    _envs: Optional[list] = None
    _probe_args: Optional[list] = None

    @property
    def graph(self) -> fx.Graph:
        return self.cap.gm.graph

    def ctx(self) -> MatchContext:
        return MatchContext(constants=constant_nodes(self.cap))

    def probe_args(self) -> list:
        if self._probe_args is None:
            p = next(iter(self.cap.target.parameters()))
            cutoff = float(getattr(self.cap.target, "cutoff", 5.0)) or 5.0
            self._probe_args = [self.cap.arguments(self.cap.target.user_inputs(*system), detach=True)
                                for system in probe_systems(p.dtype, p.device, cutoff)]
        return self._probe_args

    def envs(self) -> list:
        if self._envs is None:
            self.cap.gm.recompile()
            self._envs = [record_values(self.cap.gm, args) for args in self.probe_args()]
        return self._envs

    def changed(self) -> None:
        self._envs = None

    def check(self, region: Sequence[fx.Node], outputs: Sequence[fx.Node], replacement: Replacement, rewrite: str):
        """Run region and replacement on every probe's values; (agree, worst error, reason).
        In strict mode a disagreement raises ``VerificationError`` naming ``rewrite``."""
        if not self.verify:
            return True, float("nan"), "not verified"
        order = {n: k for k, n in enumerate(self.graph.nodes)}
        region = sorted(set(region), key=order.__getitem__)
        rset = set(region)
        inputs = []
        for n in region:
            for a in n.all_input_nodes:
                if a not in rset and a not in inputs:
                    inputs.append(a)
        missing = [a.name for a in replacement.args if isinstance(a, fx.Node) and a not in inputs]
        if missing:
            return False, float("inf"), f"replacement reads {missing}, which are not inputs of the region"
        constants = constant_nodes(self.cap)
        differentiable = [a not in constants and a not in self.zeros for a in inputs]
        worst = 0.0
        for seed, env in enumerate(self.envs()):
            def region_fn(leaves):
                return evaluate_region(region, outputs, dict(zip(inputs, leaves)))

            def replacement_fn(leaves):
                return replacement(dict(zip(inputs, leaves)))

            verdict = compare(region_fn, replacement_fn, [env[a] for a in inputs], tolerance(self.dtype), seed,
                              differentiable, self.strict)
            worst = max(worst, verdict.max_rel_error)
            if not verdict.ok:
                if self.strict:
                    raise VerificationError(rewrite, f"{verdict.detail} on probe system {seed}")
                return False, worst, verdict.detail
        return True, worst, ""

    def replace_outputs(self, replacement: Replacement, outputs: Sequence[fx.Node], name: str) -> list[fx.Node]:
        """Splice ``replacement`` before the first of ``outputs`` (graph order) and let its outputs,
        in order, take over every use of ``outputs`` (with their recorded values' metadata); the
        new output nodes. The region they replace is left for dead-code elimination."""
        order = {n: k for k, n in enumerate(self.graph.nodes)}
        first = min(outputs, key=order.__getitem__)
        new_nodes = self.splice(replacement, first, f"{name}_{first.name}")
        for new, old in zip(new_nodes, outputs):
            new.meta.update({k: v for k, v in old.meta.items() if k == "val"})
            old.replace_all_uses_with(new)
        return new_nodes

    def splice(self, replacement: Replacement, anchor: fx.Node, name: str) -> list[fx.Node]:
        """Trace ``replacement.fn`` and insert its nodes before ``anchor``; its outputs."""
        gm = self.cap.gm
        args = [a if isinstance(a, fx.Node) else add_constant(gm, anchor, f"{name}_{k}", a)
                for k, a in enumerate(replacement.args)]
        traced = trace(replacement.fn, self.leaves)
        placeholders = [n for n in traced.nodes if n.op == "placeholder"]
        with self.graph.inserting_before(anchor):
            out = self.graph.graph_copy(traced, dict(zip(placeholders, args)))
        self.changed()
        return list(out) if isinstance(out, (tuple, list)) else [out]
