"""Operators registered with torch's dispatcher in C++ (``native_ops.cpp``, namespace
``painnfx_native``): what a compiled graph can call with no Python per call.

The fused ops' "cpp" backend (backend.py) is a ctypes library reached through Python: ~50-100 us
of Python per call, more than a small molecule's arithmetic. The operators here are built against
the installed torch's headers and registered for the CPU dispatch key, so Inductor's C++ wrapper
calls them directly. In the joint graphs (rewriter/cpp_ops.py) ``dense`` (a @ b + bias with
small-row kernels, ATen's mm/addmm beyond) replaces the matrix products, and ``prepare_edges``,
``painn_message``, ``painn_message_backward`` (painn_message.cpp's kernels, compiled into this
library too) replace the fused ops where the "cpp" backend would run them.

Built on first use like the ctypes library (same compiler, ``-march``, OpenMP and disk cache;
the key adds the torch version, whose headers and ABI the library is tied to) and loaded with
``torch.ops.load_library``. Without a compiler, or if the build fails, ``library()`` is None
after one warning and the graphs keep ATen's products. Fakes and autograd formulas are
registered here, so the ops trace, compile, export and differentiate like any torch op
(``torch.library.opcheck`` in the tests).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import torch

from ..build_cache import BuildCache, digest, load_once
from .build import HEADERS, OPERATORS
from .build import SOURCES as KERNEL_SOURCES
from .build import (CpuBuildError, _cpu_identity, compile_units, compiler, compiler_version, link, unit_flags, units,
                    vector_maths)

#: the operators, and the kernels they call (the ctypes library's sources, built in here too)
SOURCES = (OPERATORS, *KERNEL_SOURCES)
NAMESPACE = "painnfx_native"
#: what ``dense_form`` returns: which path ``dense`` takes
FORMS = {0: "blas", 1: "dot", 2: "axpy"}
CACHE = BuildCache("cpu-native")
_state: dict = {}
_lock = threading.Lock()


def wanted() -> bool:
    """Whether compiled graphs are to use the native ops (``PAINNFX_NATIVE``, default 1)."""
    return os.environ.get("PAINNFX_NATIVE", "1") != "0"


def _torch_includes() -> list:
    from torch.utils import cpp_extension

    return [f"-I{p}" for p in cpp_extension.include_paths()] + [
        f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"]


def _torch_links() -> list:
    lib = Path(torch.__file__).parent / "lib"
    return [f"-L{lib}", f"-Wl,-rpath,{lib}"]


def _name(cxx: str) -> str:
    version = compiler_version(cxx)
    key = digest([*(p.read_text() for p in (*SOURCES, *HEADERS)), " ".join(unit_flags()), version, _cpu_identity(),
                  torch.__version__, str(Path(torch.__file__).parent)])
    return f"painnfx_native_{key[:24]}.so"


def cached() -> bool:
    """Whether the library for this machine, compiler, sources and torch is built and intact in the
    cache (nothing is built; False without a compiler)."""
    try:
        return CACHE.lookup(_name(compiler())) is not None
    except (CpuBuildError, OSError, subprocess.SubprocessError):
        return False


def build(use_cache: bool = True, jobs: Optional[int] = None) -> tuple[Path, dict]:
    """(library path, metadata incl. ``build_seconds`` and ``cached``); ``jobs`` as for build.build."""
    cxx = compiler()
    name = _name(cxx)
    if use_cache:
        recorded = CACHE.lookup(name)
        if recorded is not None:
            return CACHE.path(name), dict(recorded, cached=True)

    def compile_to(out: Path) -> dict:
        start = time.perf_counter()
        # the kernels' objects (shared with the ctypes library), then the operators against torch's headers
        objects = compile_units(cxx, units(), "the native ops", jobs)
        objects += compile_units(cxx, [(SOURCES[0], ())], "the native ops", 1, extra=tuple(_torch_includes()))
        link(cxx, objects, out, (*_torch_links(), "-lc10", "-ltorch_cpu", *vector_maths()), "the native ops")
        return {"compiler": cxx, "flags": list(unit_flags()), "build_seconds": round(time.perf_counter() - start, 2)}

    info = CACHE.store(name, compile_to)
    return CACHE.path(name), dict(info, cached=False)


def _build_and_load() -> tuple:
    path, info = build()
    torch.ops.load_library(str(path))
    _register_python_parts()
    return path, info


def library() -> Optional[Path]:
    """The loaded library's path, or None (with one warning) when it cannot be built here."""
    return load_once(_state, _lock, _build_and_load, (CpuBuildError, OSError, RuntimeError, subprocess.SubprocessError),
                     "the native CPU ops are unavailable ({reason}); compiled graphs keep ATen's matrix products "
                     "and call the fused ops through Python")


def available() -> bool:
    return library() is not None


def info() -> dict:
    """Build facts (``build_seconds``, ``cached``, ``flags``) or the reason the library is unavailable."""
    library()
    return dict(_state.get("info", {}))


#: the order of ``call_counts``' entries (native_ops.cpp's enum Op)
COUNTED = ("dense", "prepare_edges", "painn_message", "painn_message_backward", "painn_update",
           "painn_update_backward")


def call_counts() -> dict:
    """{op: calls} of the native ops since the library was loaded ({} when it is not): what ran
    natively, counted in C++ (also calls from Inductor's C++ wrapper, which no Python hook sees).
    Builds nothing: {} until something has loaded the library."""
    if _state.get("product") is None:
        return {}
    return dict(zip(COUNTED, torch.ops.painnfx_native.call_counts()))


def dense_form(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None) -> str:
    """Which path ``dense(a, b, bias)`` takes here: "dot", "axpy" (the small-row kernels) or "blas"."""
    return FORMS[int(torch.ops.painnfx_native.dense_form(a, b, bias))]


def dense_rows() -> dict:
    """{"dot": rows, "axpy": rows}: the most rows ``dense`` runs on each small-row kernel before
    ATen's product takes over (16 each; ``dense_rows_set`` changes them for a block); {} when the
    library is not available."""
    if library() is None:
        return {}
    return dict(zip(("dot", "axpy"), torch.ops.painnfx_native.dense_rows()))


@contextlib.contextmanager
def dense_rows_set(dot: int, axpy: int):
    """``dense_rows`` set to these within the block (for measuring the crossover in one process:
    both paths compute the same product)."""
    before = dense_rows()
    torch.ops.painnfx_native.set_dense_rows(dot, axpy)
    try:
        yield
    finally:
        torch.ops.painnfx_native.set_dense_rows(before["dot"], before["axpy"])


def _register_dense() -> None:
    name = f"{NAMESPACE}::dense"

    @torch.library.register_fake(name)
    def _dense_fake(a, b, bias=None):
        torch._check(a.dim() == 2 and b.dim() == 2, lambda: "dense: a and b must be matrices")
        torch._check(a.shape[1] == b.shape[0], lambda: f"dense: {tuple(a.shape)} @ {tuple(b.shape)}")
        return a.new_empty(a.shape[0], b.shape[1])

    @torch.library.register_fake(f"{NAMESPACE}::dense_form")
    def _form_fake(a, b, bias=None):
        return torch.library.get_ctx().new_dynamic_size()

    def setup_context(ctx, inputs, output):
        a, b, bias = inputs
        ctx.save_for_backward(a, b)
        ctx.has_bias = bias is not None

    def backward(ctx, grad):
        a, b = ctx.saved_tensors
        ga = grad @ b.t() if ctx.needs_input_grad[0] else None
        gb = a.t() @ grad if ctx.needs_input_grad[1] else None
        gbias = grad.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return ga, gb, gbias

    torch.library.register_autograd(name, backward, setup_context=setup_context)


def _register_python_parts() -> None:
    """Fakes and autograd formulas of the C++-defined ops (once per process, after loading)."""
    _register_dense()
    _register_message_ops()
    _register_update_ops()


def _register_message_ops() -> None:
    ns = NAMESPACE

    @torch.library.register_fake(f"{ns}::prepare_edges")
    def _prepare_fake(r, idx_i, idx_j, n_atoms):
        e = r.shape[0]
        return idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e), idx_i.new_empty(n_atoms + 1), idx_i.new_empty(e)

    @torch.library.register_fake(f"{ns}::painn_message")
    def _message_fake(r, idx_i, idx_j, dst_ptr, dst_perm, src_ptr, src_perm, x, mu, weight, bias, basis_params, basis,
                      cutoff, c0, c1):
        n, f = x.shape[0], x.shape[1] // 3
        return x.new_empty(n, f), x.new_empty(n, 3, f)

    @torch.library.register_fake(f"{ns}::painn_message_backward")
    def _backward_fake(gq, gmu, r, idx_i, idx_j, dst_ptr, dst_perm, src_ptr, src_perm, x, mu, weight, bias,
                       basis_params, basis, cutoff, c0, c1, weight_grad):
        return (torch.empty_like(r), torch.empty_like(x), torch.empty_like(mu) if mu is not None else x.new_empty(0),
                torch.empty_like(weight) if weight_grad else x.new_empty(0),
                torch.empty_like(bias) if weight_grad else x.new_empty(0))

    def setup_context(ctx, inputs, output):
        *tensors, basis, cutoff, c0, c1 = inputs
        ctx.save_for_backward(*tensors)
        ctx.radial = (basis, cutoff, c0, c1)

    def backward(ctx, gq, gmu):
        r, idx_i, idx_j, dst_ptr, dst_perm, src_ptr, src_perm, x, mu, weight, bias, basis_params = ctx.saved_tensors
        needs = ctx.needs_input_grad
        weight_grad = needs[9] or needs[10]
        gr, gx, gm, gw, gb = torch.ops.painnfx_native.painn_message_backward(
            gq, gmu, r, idx_i, idx_j, dst_ptr, dst_perm, src_ptr, src_perm, x, mu, weight, bias, basis_params,
            *ctx.radial, weight_grad)
        return (gr, None, None, None, None, None, None, gx, gm if mu is not None else None,
                gw if weight_grad else None, gb if weight_grad else None, None, None, None, None, None)

    torch.library.register_autograd(f"{ns}::painn_message", backward, setup_context=setup_context)


def _register_update_ops() -> None:
    ns = NAMESPACE

    @torch.library.register_fake(f"{ns}::painn_update")
    def _update_fake(q, mu, mix_weight, w1, b1, w2, b2, epsilon):
        return q.new_empty(q.shape), mu.new_empty(mu.shape)

    @torch.library.register_fake(f"{ns}::painn_update_backward")
    def _update_backward_fake(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2, epsilon, weight_grad):
        like = (mix_weight, w1, b1, w2, b2) if weight_grad else (q.new_empty(0),) * 5
        return (q.new_empty(q.shape), mu.new_empty(mu.shape), *(t.new_empty(t.shape) for t in like))

    def setup_context(ctx, inputs, output):
        *tensors, epsilon = inputs
        ctx.save_for_backward(*tensors)
        ctx.epsilon = epsilon

    def backward(ctx, gq, gmu):
        q, mu, mix_weight, w1, b1, w2, b2 = ctx.saved_tensors
        weight_grad = any(ctx.needs_input_grad[2:7])
        grads = torch.ops.painnfx_native.painn_update_backward(gq, gmu, q, mu, mix_weight, w1, b1, w2, b2,
                                                               ctx.epsilon, weight_grad)
        weights = grads[2:] if weight_grad else (None,) * 5
        return (grads[0], grads[1], *weights, None)

    torch.library.register_autograd(f"{ns}::painn_update", backward, setup_context=setup_context)
