"""The "cpp" backend: the fused ops' CPU kernels (painn_message.cpp, painn_update.cpp), registered with
``painnfx.ops.dispatch`` for the device type "cpu" (torch's dispatcher runs them for CPU
tensors; ``use_backend("reference")`` still selects the reference).

The library is built on first use (build.py). Without a compiler, or if the build fails, the
reference implementation runs, after one warning that says why. Double backward
(``create_graph=True``) runs the differentiable reference backward, as on every backend.
"""

from __future__ import annotations

import ctypes
import threading
from typing import Optional

import torch

from .. import dispatch, reference
from ..message import MESSAGE
from ..radial_filter import RADIAL_FILTER
from ..update import UPDATE
from ..radial import kernel_radial
from ..build_cache import load_once
from .build import CpuBuildError, build, load
from .entry_points import Library

NAME = "cpp"
#: fixed number of edge/atom chunks whose weight-gradient partials are added in order
PARTS = 64
_state: dict = {}
_lock = threading.Lock()
_SCALAR = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double}
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _build_and_load() -> tuple:
    path, info = build()
    return load(path, info), info


def library() -> Optional[Library]:
    """The loaded kernels, or None (with one warning) when they cannot be built here (called per op
    call: after the first, one dict lookup)."""
    return load_once(_state, _lock, _build_and_load, (CpuBuildError, OSError),
                     "the CPU kernels are unavailable ({reason}); the fused ops run their reference implementation")


#: MXCSR flush-to-zero (bit 15) and denormals-are-zero (bit 6): what torch.set_flush_denormal(True) sets
FTZ_DAZ = (1 << 15) | (1 << 6)


def flush_denormal_state() -> Optional[bool]:
    """Whether the calling thread flushes subnormals (x86 MXCSR FTZ and DAZ, what
    ``torch.set_flush_denormal`` sets; torch has no getter); None where unknown (no kernels, other ISA)."""
    lib = library()
    if lib is None:
        return None
    csr = lib.painnfx_mxcsr()
    return None if csr == 0 else (csr & FTZ_DAZ) == FTZ_DAZ


def info() -> dict:
    """Build facts (``build_seconds``, ``cached``, ``flags``) or the reason the kernels are unavailable."""
    library()
    return dict(_state.get("info", {}))


def _ptr(t) -> Optional[int]:
    return None if t is None else t.data_ptr()


def _radial(dtype, basis_params, basis, cutoff, cutoff_params):
    """(params kept alive, [p0, p1 pointers], [basis id, cutoff id, c0, c1] as C values)."""
    params, basis_id, cutoff_id, c0, c1 = kernel_radial("cpu kernels", dtype, basis, basis_params, cutoff,
                                                        cutoff_params)
    scalar = _SCALAR[dtype]
    return params, [_ptr(params[0]), _ptr(params[1]) if params.shape[0] > 1 else None], [
        basis_id, cutoff_id, scalar(c0), scalar(c1)]


def _transpose(w: torch.Tensor) -> torch.Tensor:
    """``w.t().contiguous()`` by the library's tiled loop (cpu_common.h): ATen's strided copy took
    ~90 us for a 384 x 128 update weight, six of them per call from 24 atoms on."""
    out = w.new_empty(w.shape[1], w.shape[0])
    getattr(library(), f"transpose_{_SUFFIX[w.dtype]}")(_ptr(w), w.shape[0], w.shape[1], w.stride(0), w.stride(1),
                                                       _ptr(out))
    return out


def message_forward(r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff, cutoff_params,
                    chunk_size=0):
    lib = library()
    n, f = x.shape[0], x.shape[1] // 3
    params, pp, radial = _radial(x.dtype, basis_params, basis, cutoff, cutoff_params)
    if n == 0 or r.shape[0] == 0:
        return x.new_zeros(n, f), x.new_zeros(n, 3, f)
    dq, dmu = x.new_empty(n, f), x.new_empty(n, 3, f)  # the kernel writes every atom's row (no zero fill)
    r_, j_, x_ = r.contiguous(), idx_j.contiguous(), x.contiguous()
    mu_ = None if mu is None else mu.contiguous()
    wt, b = _transpose(weight), bias.contiguous()
    getattr(lib, f"painn_message_forward_{_SUFFIX[x.dtype]}")(
        _ptr(r_), _ptr(edges[0]), _ptr(edges[1]), _ptr(j_), _ptr(x_), _ptr(mu_), _ptr(wt), _ptr(b), *pp, *radial, n, f,
        params.shape[1], _ptr(dq), _ptr(dmu), torch.get_num_threads())
    return dq, dmu


def message_backward(gq, gmu, r, idx_i, idx_j, edges, x, mu, weight, bias, basis_params, basis, cutoff,
                     cutoff_params, chunk_size=0, weight_grad=True):
    lib = library()
    n, f = x.shape[0], x.shape[1] // 3
    params, pp, radial = _radial(x.dtype, basis_params, basis, cutoff, cutoff_params)
    k = params.shape[1]
    if n == 0 or r.shape[0] == 0:
        zw = (torch.zeros_like(weight), torch.zeros_like(bias)) if weight_grad else (None, None)
        return torch.zeros_like(r), torch.zeros_like(x), None if mu is None else torch.zeros_like(mu), *zw
    # the kernel writes every edge's and every atom's row: contiguous, no zero fill (at 500 atoms the
    # fills of (N, 3F) outputs were ~1.6 ms of a 60 ms call)
    gr, gx = r.new_empty(r.shape), x.new_empty(x.shape)
    gmu_in = mu.new_empty(mu.shape) if mu is not None else None
    parts = min(PARTS, n)
    partial = x.new_empty(parts, 3 * f, k + 1) if weight_grad else None
    tensors = [t.contiguous() for t in (gq, gmu, r, idx_i, x)]
    mu_ = None if mu is None else mu.contiguous()
    wt, b = _transpose(weight), bias.contiguous()
    getattr(lib, f"painn_message_backward_{_SUFFIX[x.dtype]}")(
        *[_ptr(t) for t in tensors[:3]], _ptr(edges[2]), _ptr(edges[3]), _ptr(tensors[3]), _ptr(tensors[4]), _ptr(mu_),
        _ptr(wt), _ptr(b), *pp, *radial, n, f, k, _ptr(gr), _ptr(gx), _ptr(gmu_in), _ptr(partial), parts,
        torch.get_num_threads())
    if not weight_grad:
        return gr, gx, gmu_in, None, None
    total = partial.sum(0)  # the partials in chunk order: deterministic
    return gr, gx, gmu_in, total[:, :k].clone(), total[:, k].clone()


def filter_forward(d, weight, bias, basis_params, basis, cutoff, cutoff_params):
    lib = library()
    params, pp, radial = _radial(d.dtype, basis_params, basis, cutoff, cutoff_params)
    out = d.new_empty(d.shape[0], weight.shape[0])
    if d.shape[0]:
        d_, wt, b = d.contiguous(), _transpose(weight), bias.contiguous()
        getattr(lib, f"radial_filter_forward_{_SUFFIX[d.dtype]}")(
            _ptr(d_), _ptr(wt), _ptr(b), *pp, *radial, d.shape[0], weight.shape[0], params.shape[1], _ptr(out),
            torch.get_num_threads())
    return out


def filter_backward(grad, d, weight, bias, basis_params, basis, cutoff, cutoff_params):
    lib = library()
    params, pp, radial = _radial(d.dtype, basis_params, basis, cutoff, cutoff_params)
    e, c, k = d.shape[0], weight.shape[0], params.shape[1]
    gd = torch.zeros_like(d)
    if e == 0:
        return gd, torch.zeros_like(weight), torch.zeros_like(bias)
    parts = min(PARTS, e)
    partial = d.new_empty(parts, c, k + 1)
    g_, d_, wt, b = grad.contiguous(), d.contiguous(), _transpose(weight), bias.contiguous()
    getattr(lib, f"radial_filter_backward_{_SUFFIX[d.dtype]}")(
        _ptr(g_), _ptr(d_), _ptr(wt), _ptr(b), *pp, *radial, e, c, k, _ptr(gd), _ptr(partial), parts,
        torch.get_num_threads())
    total = partial.sum(0)
    return gd, total[:, :k].clone(), total[:, k].clone()


def _transposed(n: int, weights) -> list:
    """The update weights transposed from as many atoms on as the library says (cpu_common.h: the
    one crossover both libraries use), else None each (the kernels then take them as given)."""
    if "transpose_atoms" not in _state:
        _state["transpose_atoms"] = library().painnfx_update_transpose_atoms()
    if n < _state["transpose_atoms"]:
        return [None, None, None]
    return [_transpose(w) for w in weights]


def update_forward(q, mu, mix_weight, w1, b1, w2, b2, epsilon):
    lib = library()
    n, f = q.shape
    q_out, mu_out = torch.empty_like(q), torch.empty_like(mu)
    if n:
        tensors = [t.contiguous() for t in (q, mu, mix_weight, w1, b1, w2, b2)]
        wt = _transposed(n, (mix_weight, w1, w2))
        getattr(lib, f"painn_update_forward_{_SUFFIX[q.dtype]}")(
            *map(_ptr, tensors), *map(_ptr, wt), _SCALAR[q.dtype](epsilon), n, f, _ptr(q_out), _ptr(mu_out),
            torch.get_num_threads())
    return q_out, mu_out


def update_backward(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon, weight_grad=True):
    """dL/dq, dL/dmu from the kernel; the weight gradients, when asked, as three matrix products
    of the per-atom factors the kernel writes (deterministic BLAS reductions over atoms)."""
    lib = library()
    n, f = q.shape
    gq_in, gmu_in = torch.empty_like(q), torch.empty_like(mu)
    factors = [q.new_empty(n, 3, 2 * f), q.new_empty(n, f), q.new_empty(n, 3 * f), q.new_empty(n, 2 * f),
               q.new_empty(n, f)] if weight_grad else [None] * 5
    if n:
        tensors = [t.contiguous() for t in (gq, gmu, q, mu, mix_weight, w1, b1, w2, b2)]
        wt = _transposed(n, (mix_weight, w1, w2))
        getattr(lib, f"painn_update_backward_{_SUFFIX[q.dtype]}")(
            *map(_ptr, tensors), *map(_ptr, wt), _SCALAR[q.dtype](epsilon), n, f, _ptr(gq_in), _ptr(gmu_in),
            *map(_ptr, factors), torch.get_num_threads())
    if not weight_grad:
        return gq_in, gmu_in, None, None, None, None, None
    return gq_in, gmu_in, *reference.update_weight_gradients(mu, *factors)


def usable(op_name: str, *args) -> bool:
    """The kernels are built (or buildable) here and take this dtype (float32, float64)."""
    dtype = next(a.dtype for a in args if isinstance(a, torch.Tensor) and a.is_floating_point())
    return dtype in _SUFFIX and library() is not None


def register() -> None:
    dispatch.register_backend(NAME, {"cpu"}, priority=1, usable=usable)
    for declared, forward, backward in ((MESSAGE, message_forward, message_backward),
                                        (RADIAL_FILTER, filter_forward, filter_backward),
                                        (UPDATE, update_forward, update_backward)):
        dispatch.implement_op(declared, NAME, forward, backward)
