// Operators registered with torch's dispatcher in C++ (namespace painnfx_native), so that a
// compiled graph calls them with no Python in between: Inductor's C++ wrapper calls them directly,
// its Python wrapper through one OpOverload call. Built against the installed torch's headers
// by native.py; fakes and autograd formulas are registered from Python there.
//
// dense(a, b, bias?) = a @ b (+ bias), what aten::mm / aten::addmm compute. At most
// DOT_MAX_ROWS / AXPY_MAX_ROWS rows (small_products.h: which form b's layout allows) it runs the
// small-row kernels; otherwise, or for any layout or dtype they do not take, ATen's own mm/addmm
// (MKL). Measured per call on an AMD EPYC, 1 thread, from Python (docs/rewriter.md): 3 x 128 x
// 384 fp32 dot 9 us / axpy 6 us against MKL 13 us; at 12 rows the dot form is slower than MKL.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <torch/library.h>

#include <algorithm>
#include <optional>

#include "small_products.h"

namespace {

constexpr std::int64_t DOT_MAX_ROWS = 4, AXPY_MAX_ROWS = 4;
// columns per parallel chunk: at least this many multiply-adds each (a thread's wake-up costs more
// than a smaller share of the arithmetic)
constexpr std::int64_t CHUNK_FMAS = 1 << 17;

enum class Form { blas, dot, axpy };

Form form_of(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
    const auto dtype = a.scalar_type();
    if (a.dim() != 2 || b.dim() != 2 || (dtype != at::kFloat && dtype != at::kDouble) || b.scalar_type() != dtype ||
        !a.device().is_cpu() || !b.device().is_cpu() || a.size(0) == 0 || a.size(1) != b.size(0))
        return Form::blas;
    if (a.size(1) > 1 && a.stride(1) != 1) return Form::blas;
    if (bias && (bias->dim() != 1 || bias->size(0) != b.size(1) || bias->scalar_type() != dtype ||
                 (bias->size(0) > 1 && bias->stride(0) != 1) || !bias->device().is_cpu()))
        return Form::blas;
    const std::int64_t m = a.size(0), k = b.size(0), n = b.size(1);
    if ((k <= 1 || b.stride(0) == 1) && m <= DOT_MAX_ROWS) return Form::dot;
    if ((n <= 1 || b.stride(1) == 1) && m <= AXPY_MAX_ROWS) return Form::axpy;
    return Form::blas;
}

template <typename T>
void run(Form form, const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias, at::Tensor& out) {
    const std::int64_t M = a.size(0), K = a.size(1), N = b.size(1), lda = a.stride(0);
    const T* pa = a.const_data_ptr<T>();
    const T* pb = b.const_data_ptr<T>();
    const T* pbias = bias ? bias->const_data_ptr<T>() : nullptr;
    T* po = out.mutable_data_ptr<T>();
    const std::int64_t ldw = b.stride(1), ldb = b.stride(0);
    const std::int64_t grain = std::max<std::int64_t>(16, CHUNK_FMAS / std::max<std::int64_t>(1, M * K));
    at::parallel_for(0, N, grain, [&](std::int64_t c0, std::int64_t c1) {
        FlushDenormals flush;
        if (form == Form::dot)
            dot_product<T>(pa, lda, pb, ldw, pbias, int(M), int(K), po, N, c0, c1);
        else
            axpy_product<T>(pa, lda, pb, ldb, pbias, int(M), int(K), po, N, c0, c1);
    });
}

at::Tensor dense(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
    const Form form = form_of(a, b, bias);
    if (form == Form::blas) return bias ? at::addmm(*bias, a, b) : at::mm(a, b);
    at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
    if (a.scalar_type() == at::kFloat)
        run<float>(form, a, b, bias, out);
    else
        run<double>(form, a, b, bias, out);
    return out;
}

// which path dense takes for these arguments: 0 BLAS, 1 dot, 2 axpy (what the tests read)
std::int64_t dense_form(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
    return static_cast<std::int64_t>(form_of(a, b, bias));
}

}  // namespace

TORCH_LIBRARY(painnfx_native, m) {
    m.def("dense(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
    m.def("dense_form(Tensor a, Tensor b, Tensor? bias=None) -> int");
}

TORCH_LIBRARY_IMPL(painnfx_native, CPU, m) {
    m.impl("dense", &dense);
    m.impl("dense_form", &dense_form);
}
