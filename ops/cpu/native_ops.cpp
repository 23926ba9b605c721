// Operators registered with torch's dispatcher in C++ (namespace painnfx_native), so that a
// compiled graph calls them with no Python in between: Inductor's C++ wrapper calls them directly,
// its Python wrapper through one OpOverload call. Built against the installed torch's headers
// by native.py, with painn_message.cpp and painn_update.cpp (whose kernels the fused ops below
// call); fakes and
// autograd formulas are registered from Python there.
//
// prepare_edges, painn_message(_backward), painn_update(_backward): the fused ops of a joint graph
// (rewriter/cpp_ops.py swaps them in where the "cpp" backend would run): the same C++ kernels
// as the ctypes backend (backend.py), with its argument handling written here instead of in
// Python; the radial basis and cutoff come as the kernels' ids and constants (ops.radial).
//
// dense(a, b, bias?) = a @ b (+ bias), what aten::mm / aten::addmm compute. At most
// DOT_MAX_ROWS / AXPY_MAX_ROWS rows (small_products.h: which form b's layout allows) it runs the
// small-row kernels; otherwise, or for any layout or dtype they do not take, ATen's own mm/addmm
// (MKL). Measured per call on an AMD EPYC, 1 thread, from Python (docs/rewriter.md): 3 x 128 x
// 384 fp32 dot 9 us / axpy 6 us against MKL 13 us. From Python the dot form loses to MKL from
// ~5 rows, but in a compiled joint graph (no Python per call) 16 rows beat 4 and 8 at H2O, CH4 and
// benzene, fp32 and fp64, and 32 was no better (docs/ops.md, "Native ops").
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>
#include <ATen/ops/zeros_like.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <optional>
#include <tuple>
#include <vector>

#include "small_products.h"

namespace {

// How often each op ran since the library was loaded (relaxed atomic increments: free next to a
// call): the record of what ran natively, with no profiler (native.call_counts).
enum Op { DENSE, PREPARE_EDGES, MESSAGE, MESSAGE_BACKWARD, UPDATE, UPDATE_BACKWARD, N_OPS };
std::atomic<std::int64_t> calls[N_OPS];

void count(Op op) { calls[op].fetch_add(1, std::memory_order_relaxed); }

std::vector<std::int64_t> call_counts() {
    std::vector<std::int64_t> out(N_OPS);
    for (int k = 0; k < N_OPS; ++k) out[k] = calls[k].load(std::memory_order_relaxed);
    return out;
}

// The most rows each form takes before ATen's product (MKL) does: 16 measured best in compiled
// joint graphs (the header above). set_dense_rows changes them at run time, for measuring the
// crossover on another CPU in one process (native.dense_rows_set).
std::atomic<std::int64_t> DOT_MAX_ROWS{16};
std::atomic<std::int64_t> AXPY_MAX_ROWS{16};
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
    if ((k <= 1 || b.stride(0) == 1) && m <= DOT_MAX_ROWS.load(std::memory_order_relaxed)) return Form::dot;
    if ((n <= 1 || b.stride(1) == 1) && m <= AXPY_MAX_ROWS.load(std::memory_order_relaxed)) return Form::axpy;
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
    count(DENSE);
    const Form form = form_of(a, b, bias);
    if (form == Form::blas) return bias ? at::addmm(*bias, a, b) : at::mm(a, b);
    at::Tensor out = at::empty({a.size(0), b.size(1)}, a.options());
    if (a.scalar_type() == at::kFloat)
        run<float>(form, a, b, bias, out);
    else
        run<double>(form, a, b, bias, out);
    return out;
}

// the most rows of each form: {dot, axpy} (what the tests and reports read)
std::vector<std::int64_t> dense_rows() { return {DOT_MAX_ROWS.load(), AXPY_MAX_ROWS.load()}; }

void set_dense_rows(std::int64_t dot, std::int64_t axpy) {
    DOT_MAX_ROWS.store(dot);
    AXPY_MAX_ROWS.store(axpy);
}

// which path dense takes for these arguments: 0 BLAS, 1 dot, 2 axpy (what the tests read)
std::int64_t dense_form(const at::Tensor& a, const at::Tensor& b, const std::optional<at::Tensor>& bias) {
    return static_cast<std::int64_t>(form_of(a, b, bias));
}

}  // namespace

// ---- the fused message ops of the joint graphs: painn_message.cpp's kernels behind the dispatcher ----

namespace {

// painn_message.cpp's entry points (built into the same library)
#define PAINNFX_DECLARE(T, S)                                                                                      \
    extern "C" void painn_message_forward_##S(const T*, const std::int64_t*, const std::int64_t*,                  \
                                              const std::int64_t*, const T*, const T*, const T*, const T*,         \
                                              const T*, const T*, int, int, T, T, std::int64_t, int, int, T*, T*,  \
                                              int);                                                                \
    extern "C" void painn_message_backward_##S(const T*, const T*, const T*, const std::int64_t*,                 \
                                               const std::int64_t*, const std::int64_t*, const T*, const T*,       \
                                               const T*, const T*, const T*, const T*, int, int, T, T,             \
                                               std::int64_t, int, int, T*, T*, T*, T*, int, int);
PAINNFX_DECLARE(float, f32)
PAINNFX_DECLARE(double, f64)
#undef PAINNFX_DECLARE

// painn_update.cpp's entry points
#define PAINNFX_DECLARE_UPDATE(T, S)                                                                               \
    extern "C" void painn_update_forward_##S(const T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                             const T*, const T*, const T*, T, std::int64_t, int, T*, T*, int);      \
    extern "C" void painn_update_backward_##S(const T*, const T*, const T*, const T*, const T*, const T*, const T*, \
                                              const T*, const T*, const T*, const T*, const T*, T, std::int64_t,   \
                                              int, T*, T*, T*, T*, T*, T*, T*, int);
PAINNFX_DECLARE_UPDATE(float, f32)
PAINNFX_DECLARE_UPDATE(double, f64)
#undef PAINNFX_DECLARE_UPDATE

// fixed number of atom chunks whose weight-gradient partials are added in order (backend.py's PARTS)
constexpr std::int64_t PARTS = 64;

template <typename T>
const T* ptr(const at::Tensor& t) {
    return t.defined() ? t.const_data_ptr<T>() : nullptr;
}

template <typename T>
const T* ptr(const std::optional<at::Tensor>& t) {
    return t ? t->const_data_ptr<T>() : nullptr;
}

// A 2-D tensor's transpose as a new contiguous tensor: the layout the kernels read weights in.
// ATen's t().contiguous() took ~18 us for a 384 x 20 filter weight (a strided copy through
// TensorIterator), 6 of them per call at 5 atoms; cpu_common.h's tiled loop ~1-2 us.
at::Tensor transposed(const at::Tensor& t) {
    at::Tensor out = at::empty({t.size(1), t.size(0)}, t.options());
    if (t.scalar_type() == at::kFloat)
        transpose_tiles(t.const_data_ptr<float>(), t.size(0), t.size(1), t.stride(0), t.stride(1),
                        out.mutable_data_ptr<float>());
    else
        transpose_tiles(t.const_data_ptr<double>(), t.size(0), t.size(1), t.stride(0), t.stride(1),
                        out.mutable_data_ptr<double>());
    return out;
}

void check_floats(const char* op, const at::Tensor& x, std::initializer_list<const at::Tensor*> others) {
    TORCH_CHECK_VALUE(x.device().is_cpu() && (x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble), op,
                      ": CPU float32 or float64 tensors expected, got ", x.scalar_type(), " on ", x.device());
    for (const at::Tensor* t : others)
        TORCH_CHECK_VALUE(t->scalar_type() == x.scalar_type() && t->device().is_cpu(), op, ": all tensors must be ",
                          x.scalar_type(), " on the CPU, got ", t->scalar_type(), " on ", t->device());
}

void check_shape(const char* op, const char* name, const at::Tensor& t, c10::IntArrayRef shape) {
    TORCH_CHECK_VALUE(t.sizes() == shape, op, ": ", name, " must have shape ", shape, ", got ", t.sizes());
}

void check_index(const char* op, const char* name, const at::Tensor& t, std::int64_t size) {
    TORCH_CHECK_VALUE(t.scalar_type() == at::kLong && t.dim() == 1 && t.size(0) == size && t.device().is_cpu(), op,
                      ": ", name, " must be an int64 CPU tensor of shape (", size, ",), got ", t.scalar_type(), " ",
                      t.sizes());
}

// The shapes of a message op's arguments (what ops/checks.py and edges.check_plan check for the
// Python op): a graph calls these with tensors the Python op accepted, but a wrong call must fail
// with a message, never read out of bounds.
void check_message(const char* op, const at::Tensor& r, const at::Tensor& idx_i, const at::Tensor& idx_j,
                   const at::Tensor& dst_ptr, const at::Tensor& dst_perm, const at::Tensor& src_ptr,
                   const at::Tensor& src_perm, const at::Tensor& x, const std::optional<at::Tensor>& mu,
                   const at::Tensor& weight, const at::Tensor& bias, const at::Tensor& basis_params) {
    TORCH_CHECK_VALUE(r.dim() == 2 && r.size(1) == 3, op, ": r must have shape (E, 3), got ", r.sizes());
    TORCH_CHECK_VALUE(x.dim() == 2 && x.size(1) % 3 == 0, op, ": x must have shape (N, 3F), got ", x.sizes());
    const std::int64_t e = r.size(0), n = x.size(0), f = x.size(1) / 3;
    TORCH_CHECK_VALUE(basis_params.dim() == 2 && (basis_params.size(0) == 1 || basis_params.size(0) == 2), op,
                      ": basis_params must have shape (1 or 2, K), got ", basis_params.sizes());
    check_index(op, "idx_i", idx_i, e);
    check_index(op, "idx_j", idx_j, e);
    check_index(op, "dst_ptr", dst_ptr, n + 1);
    check_index(op, "dst_perm", dst_perm, e);
    check_index(op, "src_ptr", src_ptr, n + 1);
    check_index(op, "src_perm", src_perm, e);
    if (mu) check_shape(op, "mu", *mu, {n, 3, f});
    check_shape(op, "weight", weight, {3 * f, basis_params.size(1)});
    check_shape(op, "bias", bias, {3 * f});
}

void check_update(const char* op, const at::Tensor& q, const at::Tensor& mu, const at::Tensor& mix_weight,
                  const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2) {
    TORCH_CHECK_VALUE(q.dim() == 2, op, ": q must have shape (N, F), got ", q.sizes());
    const std::int64_t n = q.size(0), f = q.size(1);
    check_shape(op, "mu", mu, {n, 3, f});
    check_shape(op, "mix_weight", mix_weight, {2 * f, f});
    check_shape(op, "w1", w1, {f, 2 * f});
    check_shape(op, "b1", b1, {f});
    check_shape(op, "w2", w2, {3 * f, f});
    check_shape(op, "b2", b2, {3 * f});
}

// Stable counting sort of edges by atom: (row pointers (N+1), permutation (E)).
std::tuple<at::Tensor, at::Tensor> order(const at::Tensor& idx, std::int64_t n) {
    const std::int64_t e = idx.size(0);
    at::Tensor ptr_t = at::zeros({n + 1}, idx.options()), perm = at::empty({e}, idx.options());
    std::int64_t* p = ptr_t.mutable_data_ptr<std::int64_t>();
    std::int64_t* q = perm.mutable_data_ptr<std::int64_t>();
    const std::int64_t* a = idx.const_data_ptr<std::int64_t>();
    for (std::int64_t k = 0; k < e; ++k) ++p[a[k] + 1];
    for (std::int64_t i = 0; i < n; ++i) p[i + 1] += p[i];
    std::vector<std::int64_t> next(p, p + n);
    for (std::int64_t k = 0; k < e; ++k) q[next[a[k]]++] = k;
    return {ptr_t, perm};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> prepare_edges(const at::Tensor& r_in, const at::Tensor& idx_i_in,
                                                                     const at::Tensor& idx_j_in, std::int64_t n_atoms) {
    count(PREPARE_EDGES);
    const char* op = "prepare_edges";
    TORCH_CHECK_VALUE(r_in.dim() == 2 && r_in.size(1) == 3, op, ": r must have shape (E, 3), got ", r_in.sizes());
    TORCH_CHECK_VALUE(n_atoms >= 0, op, ": n_atoms must be >= 0, got ", n_atoms);
    const std::int64_t e = r_in.size(0);
    for (const at::Tensor* idx : {&idx_i_in, &idx_j_in})
        TORCH_CHECK_VALUE(idx->scalar_type() == at::kLong && idx->dim() == 1 && idx->size(0) == e &&
                              idx->device().is_cpu(),
                          op, ": idx_i and idx_j must be int64 CPU tensors of shape (", e, ",)");
    check_floats(op, r_in, {});
    const at::Tensor r = r_in.contiguous(), idx_i = idx_i_in.contiguous(), idx_j = idx_j_in.contiguous();
    // the values a message kernel cannot take (the reference op checks the same)
    const std::int64_t* ii = idx_i.const_data_ptr<std::int64_t>();
    const std::int64_t* jj = idx_j.const_data_ptr<std::int64_t>();
    auto values = [&](auto zero) {
        using T = decltype(zero);
        const T* pr = r.const_data_ptr<T>();
        for (std::int64_t k = 0; k < e; ++k) {
            const T x = pr[3 * k], y = pr[3 * k + 1], z = pr[3 * k + 2];
            TORCH_CHECK_VALUE(std::isfinite(x) && std::isfinite(y) && std::isfinite(z), op,
                              ": edge vectors r contain NaN or inf");
            TORCH_CHECK_VALUE(x != T(0) || y != T(0) || z != T(0), op,
                              ": an edge has zero length (overlapping atoms); its direction is undefined");
            TORCH_CHECK_VALUE(ii[k] >= 0 && ii[k] < n_atoms && jj[k] >= 0 && jj[k] < n_atoms, op,
                              ": edge indices outside 0..", n_atoms - 1);
        }
    };
    if (r.scalar_type() == at::kFloat)
        values(0.0f);
    else
        values(0.0);
    auto [dst_ptr, dst_perm] = order(idx_i, n_atoms);
    auto [src_ptr, src_perm] = order(idx_j, n_atoms);
    return {dst_ptr, dst_perm, src_ptr, src_perm};
}

std::tuple<at::Tensor, at::Tensor> painn_message(const at::Tensor& r_in, const at::Tensor& idx_i,
                                                 const at::Tensor& idx_j_in, const at::Tensor& dst_ptr,
                                                 const at::Tensor& dst_perm, const at::Tensor& src_ptr,
                                                 const at::Tensor& src_perm, const at::Tensor& x_in, const std::optional<at::Tensor>& mu_in,
                                                 const at::Tensor& weight, const at::Tensor& bias_in,
                                                 const at::Tensor& basis_params, std::int64_t basis,
                                                 std::int64_t cutoff, double c0, double c1) {
    count(MESSAGE);
    check_floats("painn_message", x_in, {&r_in, &weight, &bias_in, &basis_params});
    check_message("painn_message", r_in, idx_i, idx_j_in, dst_ptr, dst_perm, src_ptr, src_perm, x_in, mu_in, weight,
                  bias_in, basis_params);
    const std::int64_t n = x_in.size(0), f = x_in.size(1) / 3, k = basis_params.size(1), e = r_in.size(0);
    if (n == 0 || e == 0) return {at::zeros({n, f}, x_in.options()), at::zeros({n, 3, f}, x_in.options())};
    // the kernel writes every atom's row: no zero fill
    at::Tensor dq = at::empty({n, f}, x_in.options()), dmu = at::empty({n, 3, f}, x_in.options());
    const at::Tensor r = r_in.contiguous(), j = idx_j_in.contiguous(), x = x_in.contiguous();
    const at::Tensor dp = dst_ptr.contiguous(), d_perm = dst_perm.contiguous();
    const at::Tensor wt = transposed(weight), b = bias_in.contiguous(), p = basis_params.contiguous();
    std::optional<at::Tensor> mu;
    if (mu_in) mu = mu_in->contiguous();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(r), dp.const_data_ptr<std::int64_t>(), d_perm.const_data_ptr<std::int64_t>(),
               j.const_data_ptr<std::int64_t>(), ptr<T>(x), ptr<T>(mu), ptr<T>(wt), ptr<T>(b), ptr<T>(p),
               p.size(0) > 1 ? ptr<T>(p) + k : nullptr, int(basis), int(cutoff), T(c0), T(c1), n, int(f), int(k),
               dq.mutable_data_ptr<T>(), dmu.mutable_data_ptr<T>(), at::get_num_threads());
    };
    if (x.scalar_type() == at::kFloat)
        run(0.0f, painn_message_forward_f32);
    else
        run(0.0, painn_message_forward_f64);
    return {dq, dmu};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> painn_message_backward(
    const at::Tensor& gq_in, const at::Tensor& gmu_in, const at::Tensor& r_in, const at::Tensor& idx_i_in,
    const at::Tensor& idx_j, const at::Tensor& dst_ptr, const at::Tensor& dst_perm, const at::Tensor& src_ptr,
    const at::Tensor& src_perm, const at::Tensor& x_in,
    const std::optional<at::Tensor>& mu_in, const at::Tensor& weight, const at::Tensor& bias_in,
    const at::Tensor& basis_params, std::int64_t basis, std::int64_t cutoff, double c0, double c1, bool weight_grad) {
    count(MESSAGE_BACKWARD);
    check_floats("painn_message_backward", x_in, {&gq_in, &gmu_in, &r_in, &weight, &bias_in, &basis_params});
    check_message("painn_message_backward", r_in, idx_i_in, idx_j, dst_ptr, dst_perm, src_ptr, src_perm, x_in, mu_in,
                  weight, bias_in, basis_params);
    check_shape("painn_message_backward", "grad_0", gq_in, {x_in.size(0), x_in.size(1) / 3});
    check_shape("painn_message_backward", "grad_1", gmu_in, {x_in.size(0), 3, x_in.size(1) / 3});
    const std::int64_t n = x_in.size(0), f = x_in.size(1) / 3, k = basis_params.size(1), e = r_in.size(0);
    // an empty tensor where a gradient is not computed (each its own: outputs must not alias)
    auto none = [&] { return at::empty({0}, x_in.options()); };
    if (n == 0 || e == 0) {
        at::Tensor gr = at::zeros_like(r_in, at::MemoryFormat::Contiguous);
        at::Tensor gx = at::zeros_like(x_in, at::MemoryFormat::Contiguous);
        at::Tensor gmu = mu_in ? at::zeros_like(*mu_in, at::MemoryFormat::Contiguous) : none();
        if (!weight_grad) return {gr, gx, gmu, none(), none()};
        return {gr, gx, gmu, at::zeros_like(weight), at::zeros_like(bias_in)};
    }
    // the kernel writes every edge's and every atom's row: no zero fill
    at::Tensor gr = at::empty_like(r_in, at::MemoryFormat::Contiguous), gx = at::empty_like(x_in, at::MemoryFormat::Contiguous);
    at::Tensor gmu = mu_in ? at::empty_like(*mu_in, at::MemoryFormat::Contiguous) : none();
    const std::int64_t parts = std::min(PARTS, n);
    at::Tensor partial = weight_grad ? at::empty({parts, 3 * f, k + 1}, x_in.options()) : at::Tensor();
    const at::Tensor gq = gq_in.contiguous(), gm = gmu_in.contiguous(), r = r_in.contiguous(), i = idx_i_in.contiguous();
    const at::Tensor sp = src_ptr.contiguous(), s_perm = src_perm.contiguous();
    const at::Tensor x = x_in.contiguous(), wt = transposed(weight), b = bias_in.contiguous();
    const at::Tensor p = basis_params.contiguous();
    std::optional<at::Tensor> mu;
    if (mu_in) mu = mu_in->contiguous();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(gq), ptr<T>(gm), ptr<T>(r), sp.const_data_ptr<std::int64_t>(),
               s_perm.const_data_ptr<std::int64_t>(), i.const_data_ptr<std::int64_t>(), ptr<T>(x), ptr<T>(mu),
               ptr<T>(wt), ptr<T>(b), ptr<T>(p), p.size(0) > 1 ? ptr<T>(p) + k : nullptr, int(basis), int(cutoff),
               T(c0), T(c1), n, int(f), int(k), gr.mutable_data_ptr<T>(), gx.mutable_data_ptr<T>(),
               mu ? gmu.mutable_data_ptr<T>() : nullptr, weight_grad ? partial.mutable_data_ptr<T>() : nullptr,
               int(parts), at::get_num_threads());
    };
    if (x.scalar_type() == at::kFloat)
        run(0.0f, painn_message_backward_f32);
    else
        run(0.0, painn_message_backward_f64);
    if (!weight_grad) return {gr, gx, gmu, none(), none()};
    const at::Tensor total = partial.sum(0);  // the partials in chunk order: deterministic
    return {gr, gx, gmu, total.narrow(1, 0, k).clone(), total.select(1, k).clone()};
}

struct UpdateWeights {
    at::Tensor u, w1, b1, w2, b2, ut, w1t, w2t;  // as given (contiguous), and transposed or undefined
    UpdateWeights(std::int64_t n, const at::Tensor& mix, const at::Tensor& w1_, const at::Tensor& b1_,
                  const at::Tensor& w2_, const at::Tensor& b2_)
        : u(mix.contiguous()), w1(w1_.contiguous()), b1(b1_.contiguous()), w2(w2_.contiguous()), b2(b2_.contiguous()) {
        if (n >= update_transpose_atoms()) {
            ut = transposed(u);
            w1t = transposed(w1);
            w2t = transposed(w2);
        }
    }
};

std::tuple<at::Tensor, at::Tensor> painn_update(const at::Tensor& q_in, const at::Tensor& mu_in,
                                                const at::Tensor& mix_weight, const at::Tensor& w1,
                                                const at::Tensor& b1, const at::Tensor& w2, const at::Tensor& b2,
                                                double epsilon) {
    count(UPDATE);
    check_floats("painn_update", q_in, {&mu_in, &mix_weight, &w1, &b1, &w2, &b2});
    check_update("painn_update", q_in, mu_in, mix_weight, w1, b1, w2, b2);
    const std::int64_t n = q_in.size(0), f = q_in.size(1);
    at::Tensor q_out = at::empty({n, f}, q_in.options()), mu_out = at::empty({n, 3, f}, q_in.options());
    if (n == 0) return {q_out, mu_out};
    const at::Tensor q = q_in.contiguous(), mu = mu_in.contiguous();
    const UpdateWeights w(n, mix_weight, w1, b1, w2, b2);
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(q), ptr<T>(mu), ptr<T>(w.u), ptr<T>(w.w1), ptr<T>(w.b1), ptr<T>(w.w2), ptr<T>(w.b2),
               ptr<T>(w.ut), ptr<T>(w.w1t), ptr<T>(w.w2t), T(epsilon), n, int(f), q_out.mutable_data_ptr<T>(),
               mu_out.mutable_data_ptr<T>(), at::get_num_threads());
    };
    if (q.scalar_type() == at::kFloat)
        run(0.0f, painn_update_forward_f32);
    else
        run(0.0, painn_update_forward_f64);
    return {q_out, mu_out};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> painn_update_backward(
    const at::Tensor& gq_in, const at::Tensor& gmu_in, const at::Tensor& q_in, const at::Tensor& mu_in,
    const at::Tensor& mix_weight, const at::Tensor& w1, const at::Tensor& b1, const at::Tensor& w2,
    const at::Tensor& b2, double epsilon, bool weight_grad) {
    count(UPDATE_BACKWARD);
    check_floats("painn_update_backward", q_in, {&gq_in, &gmu_in, &mu_in, &mix_weight, &w1, &b1, &w2, &b2});
    check_update("painn_update_backward", q_in, mu_in, mix_weight, w1, b1, w2, b2);
    check_shape("painn_update_backward", "grad_0", gq_in, q_in.sizes());
    check_shape("painn_update_backward", "grad_1", gmu_in, mu_in.sizes());
    const std::int64_t n = q_in.size(0), f = q_in.size(1);
    const auto opt = q_in.options();
    at::Tensor gq = at::empty({n, f}, opt), gmu = at::empty({n, 3, f}, opt);
    // the per-atom factors of the weight gradients: dL/d[V, W], dL/dpre, dL/dx, [q, |V|], h
    at::Tensor gvw, gpre, gx, ctx, h;
    if (weight_grad) {
        gvw = at::empty({n, 3, 2 * f}, opt);
        gpre = at::empty({n, f}, opt);
        gx = at::empty({n, 3 * f}, opt);
        ctx = at::empty({n, 2 * f}, opt);
        h = at::empty({n, f}, opt);
    }
    if (n) {
        const at::Tensor g1 = gq_in.contiguous(), g2 = gmu_in.contiguous(), q = q_in.contiguous(), mu = mu_in.contiguous();
        const UpdateWeights w(n, mix_weight, w1, b1, w2, b2);
        auto out = [&](auto zero, const at::Tensor& t) {
            using T = decltype(zero);
            return t.defined() ? t.mutable_data_ptr<T>() : nullptr;
        };
        auto run = [&](auto zero, auto kernel) {
            using T = decltype(zero);
            kernel(ptr<T>(g1), ptr<T>(g2), ptr<T>(q), ptr<T>(mu), ptr<T>(w.u), ptr<T>(w.w1), ptr<T>(w.b1),
                   ptr<T>(w.w2), ptr<T>(w.b2), ptr<T>(w.ut), ptr<T>(w.w1t), ptr<T>(w.w2t), T(epsilon), n, int(f),
                   gq.mutable_data_ptr<T>(), gmu.mutable_data_ptr<T>(), out(zero, gvw), out(zero, gpre),
                   out(zero, gx), out(zero, ctx), out(zero, h), at::get_num_threads());
        };
        if (q.scalar_type() == at::kFloat)
            run(0.0f, painn_update_backward_f32);
        else
            run(0.0, painn_update_backward_f64);
    }
    auto none = [&] { return at::empty({0}, opt); };
    if (!weight_grad) return {gq, gmu, none(), none(), none(), none(), none()};
    // sums over atoms as matrix products (reference.update_weight_gradients)
    const at::Tensor g_mix = gvw.reshape({-1, 2 * f}).t().mm(mu_in.reshape({-1, f}));
    return {gq, gmu, g_mix, gpre.t().mm(ctx), gpre.sum(0), gx.t().mm(h), gx.sum(0)};
}

}  // namespace

TORCH_LIBRARY(painnfx_native, m) {
    m.def("call_counts() -> int[]", &call_counts);
    m.def("dense(Tensor a, Tensor b, Tensor? bias=None) -> Tensor");
    m.def("dense_form(Tensor a, Tensor b, Tensor? bias=None) -> int");
    m.def("dense_rows() -> int[]", &dense_rows);
    m.def("set_dense_rows(int dot, int axpy) -> ()", &set_dense_rows);
    m.def("prepare_edges(Tensor r, Tensor idx_i, Tensor idx_j, SymInt n_atoms) -> (Tensor, Tensor, Tensor, Tensor)");
    m.def("painn_message(Tensor r, Tensor idx_i, Tensor idx_j, Tensor dst_ptr, Tensor dst_perm, Tensor src_ptr, "
          "Tensor src_perm, Tensor x, Tensor? mu, Tensor weight, Tensor bias, Tensor basis_params, int basis, int cutoff, float c0, float c1) -> (Tensor, Tensor)");
    m.def("painn_message_backward(Tensor gq, Tensor gmu, Tensor r, Tensor idx_i, Tensor idx_j, Tensor dst_ptr, "
          "Tensor dst_perm, Tensor src_ptr, Tensor src_perm, Tensor x, Tensor? mu, Tensor weight, Tensor bias, Tensor basis_params, int basis, int cutoff, float c0, "
          "float c1, bool weight_grad) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
    m.def("painn_update(Tensor q, Tensor mu, Tensor mix_weight, Tensor w1, Tensor b1, Tensor w2, Tensor b2, "
          "float epsilon) -> (Tensor, Tensor)");
    m.def("painn_update_backward(Tensor grad_0, Tensor grad_1, Tensor q, Tensor mu, Tensor mix_weight, Tensor w1, "
          "Tensor b1, Tensor w2, Tensor b2, float epsilon, bool weight_grad) "
          "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(painnfx_native, CPU, m) {
    m.impl("dense", &dense);
    m.impl("dense_form", &dense_form);
    m.impl("prepare_edges", &prepare_edges);
    m.impl("painn_message", &painn_message);
    m.impl("painn_message_backward", &painn_message_backward);
    m.impl("painn_update", &painn_update);
    m.impl("painn_update_backward", &painn_update_backward);
}
