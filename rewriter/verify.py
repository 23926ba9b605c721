"""Verification of rewrites: run a matched region of the graph and its replacement on the
values that flow into that region when the model evaluates random probe systems, and compare
both the outputs and vector-Jacobian products (the analytical backwards) of the two.

A rewrite is applied only if it agrees on every probe; the report says by how much.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.fx as fx

from .capture import Captured


@dataclass
class Verdict:
    ok: bool
    max_rel_error: float
    detail: str = ""


def probe_systems(cap: Captured, seeds: Sequence[int] = (1, 2)) -> list[list]:
    """Flat graph arguments for random probe systems (a cluster, and one whose edges carry
    periodic-image shifts), with the model's live parameters and buffers."""
    target = cap.target
    p = next(iter(target.parameters()))
    cutoff = float(getattr(target, "cutoff", 5.0)) or 5.0
    out = []
    for seed in seeds:
        gen = torch.Generator().manual_seed(seed)
        n = 6 + seed
        pos = torch.rand(n, 3, generator=gen, dtype=torch.float64) * 0.6 * cutoff
        numbers = torch.tensor(([1, 6, 7, 8] * n)[seed % 4:][:n])
        ii, jj = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
        keep = ii != jj
        ei = torch.stack([ii[keep], jj[keep]])
        shifts = torch.zeros(ei.shape[1], 3, dtype=torch.float64)
        if seed % 2 == 0:
            shifts[::5] = torch.randn(len(shifts[::5]), 3, generator=gen, dtype=torch.float64) * 0.5
        r = pos[ei[1]] - pos[ei[0]] + shifts
        keep = r.norm(dim=1) > 0.3  # well-separated probes
        ei, shifts = ei[:, keep], shifts[keep]
        user = target.user_inputs(pos.to(p.dtype).to(p.device), numbers.to(p.device), ei.to(p.device),
                                  shifts.to(p.dtype).to(p.device))
        args = []
        for gi in cap.inputs:
            if gi.kind == "user":
                args.append(user[gi.name])
            elif gi.kind == "constant":
                args.append(cap.constants[gi.node])
            elif gi.kind == "parameter":
                args.append(target.get_parameter(gi.name).detach())
            else:
                args.append(target.get_buffer(gi.name).detach())
        out.append(args)
    return out


class _Recorder(fx.Interpreter):
    def __init__(self, gm):
        super().__init__(gm)
        self.values = {}

    def run_node(self, n):
        value = super().run_node(n)
        self.values[n] = value
        return value


def record_values(gm: fx.GraphModule, args: list) -> dict:
    rec = _Recorder(gm)
    with torch.no_grad():
        rec.run(*args)
    return rec.values


def evaluate_region(region: Sequence[fx.Node], outputs: Sequence[fx.Node], env: dict):
    """Evaluate ``region`` (call_function nodes, in graph order) given values for its inputs."""
    values = dict(env)
    for node in region:
        args = fx.node.map_arg(node.args, lambda a: values[a])
        kwargs = fx.node.map_arg(node.kwargs, lambda a: values[a])
        values[node] = node.target(*args, **kwargs)
    return [values[o] for o in outputs]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return float("inf")
    if a.numel() == 0:
        return 0.0
    scale = max(float(b.abs().max()), 1e-30)
    return float((a - b).abs().max()) / scale


def compare(region_fn: Callable, replacement_fn: Callable, inputs: list, tol: float, seed: int = 0,
            differentiable: Sequence[bool] = ()) -> Verdict:
    """Outputs and VJPs of two functions of the same inputs. Floating inputs get gradients
    unless ``differentiable`` marks them False (constants the replacement bakes in)."""
    diff_ok = list(differentiable) or [True] * len(inputs)

    def run(fn):
        leaves = [x.detach().clone().requires_grad_(True) if torch.is_tensor(x) and x.is_floating_point() and ok
                  else x for x, ok in zip(inputs, diff_ok)]
        outs = fn(leaves)
        gen = torch.Generator().manual_seed(seed)
        loss = 0.0
        for o in outs:
            cot = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype=o.dtype, device=o.device)
            loss = loss + (o * cot).sum()
        diff = [x for x in leaves if torch.is_tensor(x) and x.requires_grad]
        grads = torch.autograd.grad(loss, diff, allow_unused=True) if torch.is_tensor(loss) and loss.requires_grad else [None] * len(diff)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, diff)]
        return [o.detach() for o in outs], grads

    try:
        out_a, grad_a = run(region_fn)
        out_b, grad_b = run(replacement_fn)
    except Exception as exc:  # a replacement that cannot even run is a failed verification
        return Verdict(False, float("inf"), f"{type(exc).__name__}: {exc}")
    errs = [_rel_err(b, a) for a, b in zip(out_a, out_b)] + [_rel_err(b, a) for a, b in zip(grad_a, grad_b)]
    worst = max(errs) if errs else 0.0
    return Verdict(worst <= tol, worst, "" if worst <= tol else f"relative error {worst:.2e} > {tol:.0e}")


def tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-4
