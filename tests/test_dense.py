"""``painnfx::dense`` (ops/cpu/operators.cpp, ops/cpu/dense.py): a @ b (+ bias) with small-row kernels, against
float64 ``torch.addmm``/``torch.mm``, on hypothesis-drawn shapes and layouts, with the path
that ran asserted (``dense_form``: "dot", "axpy" or "blas"), subnormal inputs, the caller's
floating-point state untouched, and ``torch.library.opcheck``."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import env_skip
from painnfx.ops.cpu import backend
from painnfx.ops.cpu import dense as products


@pytest.fixture(autouse=True)
def _library():
    if not products.available():
        env_skip(f"the C++ library cannot be built here: {backend.info().get('error')}")
TOL = {torch.float64: 1e-12, torch.float32: 2e-5}


def dense(a, b, bias=None):
    return torch.ops.painnfx.dense(a, b, bias)


def _operands(m, k, n, layout, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, k, generator=gen, dtype=torch.float64)
    w = torch.randn(n, k, generator=gen, dtype=torch.float64)
    bias = torch.randn(n, generator=gen, dtype=torch.float64) if with_bias else None
    if layout == "dot":  # a Linear weight seen transposed: the forward's products
        b = w.to(dtype).t()
    elif layout == "axpy":  # rows contiguous: the backward's products
        b = w.t().contiguous().to(dtype)
    else:  # rows of a read with a stride (after the dtype's copy, which would make them contiguous): BLAS
        a = torch.randn(m, 2 * k, generator=gen, dtype=torch.float64).to(dtype)[:, ::2]
        b = w.t().contiguous().to(dtype)
    return a.to(dtype), b, None if bias is None else bias.to(dtype)


def _expected_form(m, k, n, layout):
    """Up to dense_rows() rows (16) the kernels: the dot form where b's columns are contiguous (a transposed weight;
    also any b of one row or one column), the axpy form where its rows are; BLAS otherwise."""
    max_rows = products.dense_rows()
    assert max_rows == {"dot": 16, "axpy": 16}
    if m > max_rows[layout if layout != "strided" else "axpy"] or (layout == "strided" and k > 1):
        return "blas"
    return "dot" if layout == "dot" or k <= 1 or n == 1 else "axpy"


@settings(max_examples=60)
@given(m=st.integers(1, 24), k=st.one_of(st.integers(0, 40), st.just(128)), n=st.integers(1, 70),
       layout=st.sampled_from(["dot", "axpy", "strided"]), dtype=st.sampled_from([torch.float64, torch.float32]),
       with_bias=st.booleans(), seed=st.integers(0, 2**16))
def test_dense_equals_addmm(m, k, n, layout, dtype, with_bias, seed):
    a, b, bias = _operands(m, k, n, layout, dtype, with_bias, seed)
    assert products.dense_form(a, b, bias) == _expected_form(m, k, n, layout)
    got = dense(a, b, bias)
    a64, b64 = a.double(), b.double()
    want = torch.addmm(bias.double(), a64, b64) if bias is not None else a64 @ b64
    assert got.shape == (m, n) and got.dtype == dtype and got.is_contiguous()
    scale = max(1.0, float(want.abs().max()) if want.numel() else 0.0) * max(1, k) ** 0.5
    assert float((got.double() - want).abs().max()) <= TOL[dtype] * scale


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["dot", "axpy"])
def test_the_small_row_kernels_run_at_the_sizes_of_a_small_molecule(layout, dtype):
    """3 and 5 atoms, F = 128: the products of the context network, the readout and the vector
    channels (3 rows an atom: 15 at CH4) take the kernels."""
    for m, n in ((3, 128), (3, 384), (15, 256), (5, 64), (3, 1)):
        a, b, bias = _operands(m, 128, n, layout, dtype, True, n)
        assert products.dense_form(a, b, bias) == ("dot" if n == 1 else layout)
        torch.testing.assert_close(dense(a, b, bias), torch.addmm(bias, a, b), rtol=TOL[dtype], atol=TOL[dtype] * 30)


def test_many_rows_and_other_dtypes_take_atens_product():
    a, b, bias = _operands(40, 16, 8, "dot", torch.float64, True, 0)
    assert products.dense_form(a, b, bias) == "blas"
    torch.testing.assert_close(dense(a, b, bias), torch.addmm(bias, a, b))
    half = torch.randn(2, 3, dtype=torch.bfloat16), torch.randn(3, 4, dtype=torch.bfloat16)
    assert products.dense_form(*half) == "blas"
    torch.testing.assert_close(dense(*half), half[0] @ half[1])
    a, b, _ = _operands(3, 5, 6, "axpy", torch.float64, False, 1)
    bias2d = torch.randn(3, 6, dtype=torch.float64)  # a 2-D bias is addmm's business
    assert products.dense_form(a, b, bias2d) == "blas"
    torch.testing.assert_close(dense(a, b, bias2d), torch.addmm(bias2d, a, b))


def test_the_row_limits_can_be_set_for_a_block():
    a, b, bias = _operands(6, 8, 5, "dot", torch.float64, True, 0)
    before = products.dense_rows()
    with products.dense_rows_set(5, 5):
        assert products.dense_form(a, b, bias) == "blas"
        torch.testing.assert_close(dense(a, b, bias), torch.addmm(bias, a, b))
    assert products.dense_rows() == before and products.dense_form(a, b, bias) == "dot"


def test_empty_inner_dimension_gives_the_bias():
    a, b = torch.zeros(3, 0), torch.zeros(0, 5)
    bias = torch.arange(5.0)
    assert products.dense_form(a, b, bias) == "dot"
    torch.testing.assert_close(dense(a, b, bias), bias.expand(3, 5))
    torch.testing.assert_close(dense(a, b), torch.zeros(3, 5))


@pytest.mark.parametrize("layout", ["dot", "axpy"])
def test_subnormal_inputs_flush_and_leave_the_callers_state(layout):
    """The kernels flush subnormals for the call (no microcode stalls on Intel cores) and restore
    the calling thread's MXCSR: the caller's floating-point state never changes."""
    from painnfx.ops.cpu.backend import flush_denormal_state

    a, b, bias = _operands(3, 64, 48, layout, torch.float32, True, 3)
    tiny = a * 1e-39  # subnormal in float32
    before = flush_denormal_state()
    out = dense(tiny, b, bias)
    assert flush_denormal_state() == before
    torch.testing.assert_close(out, bias.expand(3, 48), atol=1e-30, rtol=0)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match=r"dense: a \(M, K\) @ b \(K, N\) expected, got \(3, 4\) @ \(5, 6\)"):
        dense(torch.zeros(3, 4), torch.zeros(5, 6))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", ["dot", "axpy", "strided"])
def test_opcheck(layout, dtype):
    a, b, bias = _operands(3, 7, 5, layout, dtype, True, 5)
    args = (a.requires_grad_(), b.detach().requires_grad_(), bias.requires_grad_())
    result = torch.library.opcheck(torch.ops.painnfx.dense.default, args, raise_exception=False)
    assert all(v == "SUCCESS" for v in result.values()), result


def test_dense_differentiates_like_addmm():
    a, b, bias = _operands(3, 6, 4, "dot", torch.float64, True, 7)
    torch.autograd.gradcheck(dense, (a.requires_grad_(), b.detach().requires_grad_(), bias.requires_grad_()))


def test_one_node_under_compile_and_export():
    a, b, bias = _operands(3, 6, 4, "dot", torch.float32, True, 9)

    class M(torch.nn.Module):
        def forward(self, a, b, bias):
            return dense(a, b, bias).relu()

    ep = torch.export.export(M(), (a, b, bias))
    assert sum(n.target == torch.ops.painnfx.dense.default for n in ep.graph.nodes) == 1
    torch.testing.assert_close(torch.compile(M(), fullgraph=True)(a, b, bias), torch.addmm(bias, a, b).relu())


def test_the_library_counts_each_call():
    """``backend.call_counts``: what ran in C++, counted there (what `painnfx md` reports)."""
    a, b, bias = _operands(3, 5, 4, "dot", torch.float64, True, 11)
    before = backend.call_counts()
    for _ in range(3):
        dense(a, b, bias)
    after = backend.call_counts()
    assert after["dense"] - before["dense"] == 3
    assert all(after[op] == before[op] for op in after if op != "dense")
