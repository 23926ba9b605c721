"""Verification: numbers decide whether a rewrite is kept.

* Per rewrite: the matched region and its replacement are run on the values that flow into
  the region when the model evaluates random probe systems; outputs and vector-Jacobian
  products (the analytical backwards) must agree, or the rewrite is not applied.
* End to end: after the whole pipeline, the captured graph (before normalisation) and the
  final graph are run on the probes; energies (outputs) and their VJPs to the float user
  inputs (positions, edge vectors) and to every parameter must agree, or the optimized model
  falls back to the original. This covers the normalisation passes, which no per-rewrite
  check sees (probes are recorded after them).

Exceptions: a replacement that raises one of ``EXPECTED`` on probe inputs is a failed
verification (reported); anything else is a bug and propagates. In strict mode (tests,
``PAINNFX_STRICT=1``) expected exceptions propagate too, and a verification that disagrees
raises ``VerificationError`` naming the rewrite and the error it measured, so that a wrong
kernel fails the test suite instead of quietly leaving the model on its plain graph. Outside
strict mode the fallback stays, announced by one ``VerificationWarning``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.fx as fx

from painnfx.ops.errors import PainnfxError

#: what a wrong replacement raises on probe inputs (shape/dtype mismatches, bad indices)
EXPECTED = (RuntimeError, ValueError, TypeError, IndexError)


class VerificationError(PainnfxError, RuntimeError):
    """Strict mode: a rewrite (or the whole rewritten graph) disagreed with the original."""

    def __init__(self, rewrite: str, detail: str):
        super().__init__(f"verification of {rewrite} failed: {detail} (strict mode, PAINNFX_STRICT=1, raises "
                         "instead of falling back to the plain graph)")
        self.rewrite, self.detail = rewrite, detail


class VerificationWarning(UserWarning):
    """A rewrite disagreed with the original on the probes; the plain graph runs there instead."""


@dataclass
class Verdict:
    ok: bool
    max_rel_error: float
    detail: str = ""


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


def _run_with_grads(fn: Callable, inputs: list, differentiable: Sequence[bool], seed: int):
    leaves = [x.detach().clone().requires_grad_(True) if torch.is_tensor(x) and x.is_floating_point() and ok
              else x for x, ok in zip(inputs, differentiable)]
    outs = [o for o in fn(leaves) if torch.is_tensor(o)]
    gen = torch.Generator().manual_seed(seed)
    loss = 0.0
    for o in outs:
        cot = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(dtype=o.dtype, device=o.device)
        loss = loss + (o * cot).sum()
    diff = [x for x in leaves if torch.is_tensor(x) and x.requires_grad]
    if torch.is_tensor(loss) and loss.requires_grad:
        grads = torch.autograd.grad(loss, diff, allow_unused=True)
    else:
        grads = [None] * len(diff)
    grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, diff)]
    return [o.detach() for o in outs], grads


def compare(reference_fn: Callable, candidate_fn: Callable, inputs: list, tol: float, seed: int = 0,
            differentiable: Sequence[bool] = (), strict: bool = False) -> Verdict:
    """Outputs and VJPs of two functions of the same inputs. Floating inputs get gradients
    unless ``differentiable`` marks them False (constants the candidate bakes in)."""
    diff_ok = list(differentiable) or [True] * len(inputs)
    out_a, grad_a = _run_with_grads(reference_fn, inputs, diff_ok, seed)
    try:
        out_b, grad_b = _run_with_grads(candidate_fn, inputs, diff_ok, seed)
    except EXPECTED as exc:
        if strict:
            raise
        return Verdict(False, float("inf"), f"{type(exc).__name__}: {str(exc).splitlines()[0]}")
    if len(out_a) != len(out_b):
        return Verdict(False, float("inf"), f"{len(out_b)} outputs instead of {len(out_a)}")
    errs = [_rel_err(b, a) for a, b in zip(out_a, out_b)] + [_rel_err(b, a) for a, b in zip(grad_a, grad_b)]
    worst = max(errs) if errs else 0.0
    return Verdict(worst <= tol, worst, "" if worst <= tol else f"relative error {worst:.2e} > {tol:.0e}")


def tolerance(dtype: torch.dtype) -> float:
    return 1e-9 if dtype == torch.float64 else 2e-4


def verify_end_to_end(original: fx.GraphModule, final: fx.GraphModule, probe_args: list,
                      differentiable: Sequence[bool], dtype: torch.dtype, strict: bool = False) -> Verdict:
    """The final graph against the captured one on every probe: outputs, and VJPs to the
    arguments marked ``differentiable`` (float user inputs and parameters)."""
    worst = 0.0
    for seed, args in enumerate(probe_args):
        def run(gm):
            return lambda leaves: list(gm(*leaves))

        verdict = compare(run(original), run(final), args, tolerance(dtype), seed, differentiable, strict)
        worst = max(worst, verdict.max_rel_error)
        if not verdict.ok:
            return Verdict(False, worst, verdict.detail)
    return Verdict(True, worst)
