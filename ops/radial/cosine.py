r"""Cosine cutoff (Behler)  fc(d) = 0.5 (cos(pi d / rc) + 1) [d < rc],
fc'(d) = -0.5 (pi / rc) sin(pi d / rc) [d < rc].  Parameters: (rc,).

Model spelling (schnetpack's CosineCutoff): 0.5 * (cos(d * pi / rc) + 1) * (d < rc).float();
after normalisation d * pi / rc is d * k with the folded constant k = pi / rc.
"""

from __future__ import annotations

import math

import torch

from .spec import CutoffSpec, buffers, scalar


def values(d, params, derivative):
    (rc,) = params
    inside = (d < rc).to(d.dtype)
    arg = d * (math.pi / rc)
    fc = 0.5 * (torch.cos(arg) + 1.0) * inside
    return fc, (-0.5 * (math.pi / rc) * torch.sin(arg) * inside if derivative else None)


def unfused(d, params):
    (rc,) = params
    return 0.5 * (torch.cos(d * math.pi / rc) + 1.0) * (d < rc).to(d.dtype)


def pattern(v):
    d = v.Var("d")
    mask = v.any_of(v.cast(v.lt(d, v.Const("rc"))), v.lt(d, v.Const("rc")))
    return v.mul(v.mul(v.add(v.cos(v.mul(d, v.Const("k"))), 1.0), 0.5), mask)


def read(m):
    """The cosine's period must agree with the mask's radius: k = pi / rc."""
    rc, k = scalar(m["rc"]), scalar(m["k"])
    if rc is None or k is None or not rc > 0 or not math.isclose(k, math.pi / rc, rel_tol=1e-6):
        return None
    return (rc,)


def from_module(module):
    got = buffers(module, "CosineCutoff", ("cutoff",))
    return None if got is None else (float(got[0].reshape(-1)[0]),)


SPEC = CutoffSpec(name="cosine", kernel_id=0, param_names=("rc",), values=values, unfused=unfused,
                  pattern=pattern, read=read, from_module=from_module,
                  formula="0.5 (cos(pi d / rc) + 1) [d < rc]")
