"""``painnfx::dense(a, b, bias?)``: ``a @ b (+ bias)`` with small-row kernels (operators.cpp,
small_products.h), what joint graphs call instead of ``aten::mm``/``addmm`` on the CPU
(rewriter/cpp_ops.py). Up to 16 rows it runs the small-row kernels with ``b`` as given; beyond,
or for a layout or dtype they do not take, ATen's product. Defined in C++; its fake and autograd
formula are registered here once the library is loaded (backend.py).
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch

from . import backend

#: what ``dense_form`` returns: which path ``dense`` takes
FORMS = {0: "blas", 1: "dot", 2: "axpy"}


def available() -> bool:
    """Whether the library that defines ``dense`` is loaded or can be built here."""
    return backend.library() is not None


def dense_form(a: torch.Tensor, b: torch.Tensor, bias: Optional[torch.Tensor] = None) -> str:
    """Which path ``dense(a, b, bias)`` takes here: "dot", "axpy" (the small-row kernels) or "blas"."""
    return FORMS[int(torch.ops.painnfx.dense_form(a, b, bias))]


def dense_rows() -> dict:
    """{"dot": rows, "axpy": rows}: the most rows ``dense`` runs on each small-row kernel before
    ATen's product takes over (16 each; ``dense_rows_set`` changes them for a block); {} when the
    library is not available."""
    if not available():
        return {}
    return dict(zip(("dot", "axpy"), torch.ops.painnfx.dense_rows()))


@contextlib.contextmanager
def dense_rows_set(dot: int, axpy: int):
    """``dense_rows`` set to these within the block (for measuring the crossover on another CPU in
    one process: both paths compute the same product)."""
    before = dense_rows()
    torch.ops.painnfx.set_dense_rows(dot, axpy)
    try:
        yield
    finally:
        torch.ops.painnfx.set_dense_rows(before["dot"], before["axpy"])


def register_python_parts() -> None:
    """``dense``'s fake and autograd formula, and ``dense_form``'s fake (once, after loading)."""
    name = "painnfx::dense"

    @torch.library.register_fake(name)
    def _dense_fake(a, b, bias=None):
        torch._check(a.dim() == 2 and b.dim() == 2, lambda: "dense: a and b must be matrices")
        torch._check(a.shape[1] == b.shape[0], lambda: f"dense: {tuple(a.shape)} @ {tuple(b.shape)}")
        return a.new_empty(a.shape[0], b.shape[1])

    @torch.library.register_fake("painnfx::dense_form")
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
