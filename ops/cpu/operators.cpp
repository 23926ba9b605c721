// The fused ops' CPU kernels registered with torch's dispatcher: the CPU implementation of each
// painnfx:: op that ops/*.py declares (FusedOp: schema, fake, autograd, reference), so eager calls
// (ops/cpu/backend.py), Inductor's C++ and Python wrappers and torch.compile all reach these
// functions, with no Python in between for the compiled ones. Also defined here: dense (small-row
// matrix products, swapped into joint graphs for aten::mm/addmm) and the library's bookkeeping
// (call counts, the floating-point control state).
//
// Built against the installed torch's headers (torch/library.h): the kernels are unboxed, so a
// compiled graph's C++ wrapper calls them with no boxing of arguments. (On torch's stable ABI the
// unit compiled in ~1.5 s instead of ~8 s, but every call went through boxed argument
// conversions and shim calls: 1.4 us more per small-row product and ~5 us per message op, 10-25%
// of a 3-5 atom energy+forces call. Measured, and not kept.)
//
// Argument checks: what each kernel needs to read and write in bounds (shapes, dtypes, devices,
// the radial kernel cases); a failed check is a c10::ValueError, which reaches Python as ValueError
// naming the op and the argument (ops/cpu/backend.py raises it as InputError).
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <initializer_list>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "radial.cuh"
#include "small_products.h"

using at::Tensor;
using TensorList = at::ArrayRef<Tensor>;
using Floats = at::ArrayRef<double>;

// the kernels' entry points (painn_message.cpp, painn_update.cpp: units of this library)
#define PAINNFX_DECLARE(T, S)                                                                                       \
    extern "C" void painn_message_forward_##S(const T*, const std::int64_t*, const std::int64_t*,                   \
                                              const std::int64_t*, const std::int64_t*, const T*, const T*,         \
                                              const T*, const T*, const T*, const T*, int, int, T, T,               \
                                              std::int64_t, int, int, T*, T*, int);                                 \
    extern "C" void painn_message_backward_##S(const T*, const T*, const T*, const std::int64_t*,                  \
                                               const std::int64_t*, const std::int64_t*, const std::int64_t*,       \
                                               const T*, const T*, const T*, const T*, const T*, const T*, int,     \
                                               int, T, T, std::int64_t, int, int, T*, T*, T*, T*, int, int);        \
    extern "C" void radial_filter_forward_##S(const T*, const T*, const T*, const T*, const T*, int, int, T, T,    \
                                              std::int64_t, int, int, T*, int);                                     \
    extern "C" void radial_filter_backward_##S(const T*, const T*, const T*, const T*, const T*, const T*, int,    \
                                               int, T, T, std::int64_t, int, int, T*, T*, int, int);                \
    extern "C" void painn_update_forward_##S(const T*, const T*, const T*, const T*, const T*, const T*, const T*,   \
                                             const T*, const T*, const T*, T, std::int64_t, int, T*, T*, int);       \
    extern "C" void painn_update_backward_##S(const T*, const T*, const T*, const T*, const T*, const T*, const T*,  \
                                              const T*, const T*, const T*, const T*, const T*, T, std::int64_t,    \
                                              int, T*, T*, T*, T*, T*, T*, T*, int);
PAINNFX_DECLARE(float, f32)
PAINNFX_DECLARE(double, f64)
#undef PAINNFX_DECLARE

namespace {

// ---- bookkeeping ---------------------------------------------------------------------------------

// How often each op ran since the library was loaded (relaxed atomic increments: free next to a
// call): the record of what ran in C++, whoever called it (backend.call_counts).
enum Op {
    DENSE,
    PREPARE_EDGES,
    MESSAGE,
    MESSAGE_BACKWARD,
    FILTER,
    FILTER_BACKWARD,
    UPDATE,
    UPDATE_BACKWARD,
    N_OPS
};
std::atomic<std::int64_t> calls[N_OPS];
// the ops' names, in the order of Op (backend.call_counts pairs them with the counts)
const char* const OP_NAMES[N_OPS] = {"dense",         "prepare_edges", "painn_message", "painn_message_backward",
                                     "radial_filter", "radial_filter_backward", "painn_update",
                                     "painn_update_backward"};

void count(Op op) { calls[op].fetch_add(1, std::memory_order_relaxed); }

std::vector<std::int64_t> call_counts() {
    std::vector<std::int64_t> out(N_OPS);
    for (int k = 0; k < N_OPS; ++k) out[k] = calls[k].load(std::memory_order_relaxed);
    return out;
}

std::vector<std::string> counted_ops() { return std::vector<std::string>(OP_NAMES, OP_NAMES + N_OPS); }

// the floating-point control state of the calling thread (MXCSR on x86; 0 elsewhere), and of each of
// `threads` OpenMP threads: the tests check that no kernel call changes either
std::int64_t mxcsr() { return read_mxcsr(); }

std::vector<std::int64_t> pool_mxcsr(std::int64_t threads) {
    std::vector<std::int64_t> out(std::max<std::int64_t>(threads, 1));
#pragma omp parallel num_threads(int(out.size()))
    out[omp_get_thread_num()] = read_mxcsr();
    return out;
}

// ---- tensors -------------------------------------------------------------------------------------

template <typename... Parts>
[[noreturn]] void fail(const char* op, const Parts&... parts) {
    std::ostringstream text;
    text << op << ": ";
    (text << ... << parts);
    TORCH_CHECK_VALUE(false, text.str());
    throw;  // (not reached)
}

std::string shape(at::IntArrayRef sizes) {
    std::ostringstream text;
    text << "(";
    for (std::size_t d = 0; d < sizes.size(); ++d) text << (d ? ", " : "") << sizes[d];
    text << (sizes.size() == 1 ? ",)" : ")");
    return text.str();
}

std::string shape(const Tensor& t) { return shape(t.sizes()); }

// a new contiguous CPU tensor of `like`'s dtype (no initialisation)
Tensor empty_like(const Tensor& like, at::IntArrayRef sizes) { return like.new_empty(sizes); }

// zeros of t's shape and dtype, contiguous (a gradient where there is nothing to differentiate)
Tensor zeros_of(const Tensor& t) { return t.new_zeros(t.sizes()); }

template <typename T>
const T* ptr(const Tensor& t) {
    return t.defined() ? static_cast<const T*>(t.const_data_ptr()) : nullptr;
}

template <typename T>
const T* ptr(const std::optional<Tensor>& t) {
    return t ? static_cast<const T*>(t->const_data_ptr()) : nullptr;
}

template <typename T>
T* out_ptr(const Tensor& t) {
    return t.defined() ? static_cast<T*>(t.mutable_data_ptr()) : nullptr;
}

const std::int64_t* index_ptr(const Tensor& t) { return static_cast<const std::int64_t*>(t.const_data_ptr()); }

// A 2-D tensor's transpose as a new contiguous tensor: the layout the kernels read weights in, by
// cpu_common.h's tiled loop (~1-2 us for a 384 x 20 filter weight; ATen's strided copy ~18 us).
Tensor transposed(const Tensor& t) {
    Tensor out = empty_like(t, {t.size(1), t.size(0)});
    if (t.scalar_type() == at::kFloat)
        transpose_tiles(ptr<float>(t), t.size(0), t.size(1), t.stride(0), t.stride(1), out_ptr<float>(out));
    else
        transpose_tiles(ptr<double>(t), t.size(0), t.size(1), t.stride(0), t.stride(1), out_ptr<double>(out));
    return out;
}

// ---- argument checks -----------------------------------------------------------------------------
//
// The op's contract as its Python declaration states it (ops/checks.py, ops/edges.py, ops/radial):
// the same conditions, in the same words, so a call fails alike whichever kernel it reaches.

bool is_float(const Tensor& t) { return t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble; }

std::string dtype_name(const Tensor& t) {
    switch (t.scalar_type()) {
        case at::kFloat: return "torch.float32";
        case at::kDouble: return "torch.float64";
        case at::kHalf: return "torch.float16";
        case at::kBFloat16: return "torch.bfloat16";
        case at::kLong: return "torch.int64";
        case at::kInt: return "torch.int32";
        case at::kBool: return "torch.bool";
        default: return "dtype code " + std::to_string(int(t.scalar_type()));
    }
}

// the tensors `others` have `ref`'s dtype (when `dtype`) and are on the CPU, as `ref` is
void check_same(const char* op, const char* ref_name, const Tensor& ref,
                std::initializer_list<std::pair<const char*, const Tensor*>> others, bool dtype = true) {
    if (!ref.device().is_cpu()) fail(op, ref_name, " is not on the CPU");
    for (const auto& [name, t] : others) {
        if (dtype && t->scalar_type() != ref.scalar_type())
            fail(op, name, " has dtype ", dtype_name(*t), " but ", ref_name, " has ", dtype_name(ref));
        if (!t->device().is_cpu()) fail(op, name, " is not on the CPU but ", ref_name, " is");
    }
}

void check_shape(const char* op, const char* name, const Tensor& t, at::IntArrayRef sizes) {
    if (!t.sizes().equals(sizes)) fail(op, name, " must have shape ", shape(sizes), ", got ", shape(t));
}

void check_index(const char* op, const char* name, const Tensor& t, std::int64_t size, const char* hint = "") {
    if (t.scalar_type() != at::kLong || t.dim() != 1 || t.size(0) != size)
        fail(op, name, " must be int64 of shape (", size, ",), got ", dtype_name(t), " ", shape(t), hint);
}

// The radial specs as the kernels take them: radial.cuh's cases, by the names ops/radial gives them
// (ops.radial.kernel_cases() reads the same cases from radial.cuh; a test compares the two).
struct Radial {
    int basis, cutoff;
    double c0, c1;
    std::int64_t k;
};

struct RadialCase {
    const char* name;
    int id;
    std::size_t params;  // basis: rows of basis_params; cutoff: constants
};
constexpr RadialCase BASES[] = {{"bessel", PAINNFX_BASIS_BESSEL, 1}, {"gaussian", PAINNFX_BASIS_GAUSSIAN, 2}};
constexpr RadialCase CUTOFFS[] = {{"cosine", PAINNFX_CUTOFF_COSINE, 1}, {"mollifier", PAINNFX_CUTOFF_MOLLIFIER, 2}};

template <std::size_t N>
const RadialCase& find_case(const char* op, const char* kind, const RadialCase (&cases)[N], c10::string_view name) {
    for (const RadialCase& c : cases)
        if (name == c.name) return c;
    std::string known;
    for (const RadialCase& c : cases) known += std::string(known.empty() ? "'" : ", '") + c.name + "'";
    fail(op, "unknown ", kind, " '", name, "'; expected one of [", known, "]");
}

Radial radial(const char* op, const Tensor& basis_params, c10::string_view basis, c10::string_view cutoff,
              Floats cutoff_params) {
    const RadialCase& b = find_case(op, "radial basis", BASES, basis);
    const RadialCase& c = find_case(op, "cutoff function", CUTOFFS, cutoff);
    if (basis_params.dim() != 2 || basis_params.size(0) != std::int64_t(b.params))
        fail(op, "basis_params for '", basis, "' must have shape (", b.params, ", K), got ", shape(basis_params));
    if (cutoff_params.size() != c.params)
        fail(op, "cutoff '", cutoff, "' takes ", c.params, " parameters, got ", cutoff_params.size());
    if (!(cutoff_params[0] > 0)) fail(op, "cutoff radius must be positive, got ", cutoff_params[0]);
    const std::int64_t k = basis_params.size(1);
    if (k > MAX_K) fail(op, "K = ", k, " radial functions exceed the kernel's maximum ", MAX_K);
    return {b.id, c.id, cutoff_params[0], c.params > 1 ? cutoff_params[1] : 0.0, k};
}

// basis_params in the kernels' dtype, contiguous (a model may keep them in another dtype)
Tensor kernel_params(const Tensor& basis_params, const Tensor& like) {
    return basis_params.to(like.scalar_type()).contiguous();
}

void check_filter_weights(const char* op, const Tensor& weight, const Tensor& bias, const Radial& rad,
                          std::int64_t rows) {
    if (weight.dim() != 2 || weight.size(1) != rad.k || (rows >= 0 && weight.size(0) != rows)) {
        if (rows >= 0) fail(op, "weight must have shape (", rows, ", K=", rad.k, "), got ", shape(weight));
        fail(op, "weight must have shape (out, K=", rad.k, "), got ", shape(weight));
    }
    check_shape(op, "bias", bias, {weight.size(0)});
}

void check_message(const char* op, const Tensor& r, const Tensor& idx_i, const Tensor& idx_j,
                   TensorList edges, const Tensor& x, const std::optional<Tensor>& mu,
                   const Tensor& weight, const Tensor& bias, const Tensor& basis_params, const Radial& rad) {
    if (r.dim() != 2 || r.size(1) != 3) fail(op, "r must have shape (E, 3), got ", shape(r));
    if (!is_float(r)) fail(op, "r must be floating point, got ", dtype_name(r));
    const std::int64_t e = r.size(0);
    check_index(op, "idx_i", idx_i, e);
    check_index(op, "idx_j", idx_j, e);
    if (x.dim() != 2 || x.size(1) % 3) fail(op, "x must have shape (N, 3F), got ", shape(x));
    const std::int64_t n = x.size(0), f = x.size(1) / 3;
    if (mu) check_shape(op, "mu", *mu, {n, 3, f});
    check_filter_weights(op, weight, bias, rad, 3 * f);
    check_same(op, "r", r, {{"x", &x}, {"weight", &weight}, {"bias", &bias}});
    if (mu) check_same(op, "r", r, {{"mu", &*mu}});
    check_same(op, "r", r, {{"idx_i", &idx_i}, {"idx_j", &idx_j}, {"basis_params", &basis_params}}, false);
    if (edges.size() != 5) fail(op, "edges must be the 5 tensors prepare_edges returns, got ", edges.size());
    const char* hint = "; pass the result of prepare_edges for this edge list";
    check_index(op, "edges.dst_ptr", edges[0], n + 1, hint);
    check_index(op, "edges.dst_perm", edges[1], e, hint);
    check_index(op, "edges.src_ptr", edges[2], n + 1, hint);
    check_index(op, "edges.src_perm", edges[3], e, hint);
    check_index(op, "edges.reverse", edges[4], e, hint);
    for (const Tensor& t : edges)
        if (!t.device().is_cpu()) fail(op, "edges are not on the CPU but r is");
}

void check_update(const char* op, const Tensor& q, const Tensor& mu, const Tensor& mix_weight, const Tensor& w1,
                  const Tensor& b1, const Tensor& w2, const Tensor& b2) {
    if (q.dim() != 2 || !is_float(q))
        fail(op, "q must be a floating tensor of shape (N, F), got ", dtype_name(q), " ", shape(q));
    const std::int64_t n = q.size(0), f = q.size(1);
    check_shape(op, "mu", mu, {n, 3, f});
    check_shape(op, "mix_weight", mix_weight, {2 * f, f});
    check_shape(op, "w1", w1, {f, 2 * f});
    check_shape(op, "b1", b1, {f});
    check_shape(op, "w2", w2, {3 * f, f});
    check_shape(op, "b2", b2, {3 * f});
    check_same(op, "q", q, {{"mu", &mu}, {"mix_weight", &mix_weight}, {"w1", &w1}, {"b1", &b1}, {"w2", &w2},
                            {"b2", &b2}});
}

// ---- dense: small-row matrix products ------------------------------------------------------------
//
// dense(a, b, bias?) = a @ b (+ bias), what aten::mm / aten::addmm compute. At most DOT_MAX_ROWS /
// AXPY_MAX_ROWS rows (small_products.h: which form b's layout allows) it runs the small-row
// kernels; otherwise, or for any layout or dtype they do not take, ATen's own mm/addmm (MKL).
// Per call on an AMD EPYC, 1 thread, from Python: 3 x 128 x 384 fp32 dot 9 us / axpy 6 us against
// MKL 13 us; in compiled joint graphs 16 rows beat 4 and 8 at H2O, CH4 and benzene, fp32 and fp64,
// and 32 was no better (docs/ops.md, "Small-row products").

std::atomic<std::int64_t> DOT_MAX_ROWS{16};
std::atomic<std::int64_t> AXPY_MAX_ROWS{16};
// columns per parallel chunk: at least this many multiply-adds each (a thread's wake-up costs more
// than a smaller share of the arithmetic)
constexpr std::int64_t CHUNK_FMAS = 1 << 17;

enum class Form { blas, dot, axpy };

Form form_of(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias) {
    const auto dtype = a.scalar_type();
    if (a.dim() != 2 || b.dim() != 2 || !is_float(a) || b.scalar_type() != dtype || !a.device().is_cpu() || !b.device().is_cpu() ||
        a.size(0) == 0 || a.size(1) != b.size(0))
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
void small_product(Form form, const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias, Tensor& out) {
    const std::int64_t M = a.size(0), K = a.size(1), N = b.size(1), lda = a.stride(0);
    const T* pa = ptr<T>(a);
    const T* pb = ptr<T>(b);
    const T* pbias = ptr<T>(bias);
    T* po = out_ptr<T>(out);
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

Tensor dense(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias) {
    count(DENSE);
    const Form form = form_of(a, b, bias);
    if (form == Form::blas) {
        if (a.dim() != 2 || b.dim() != 2 || a.size(1) != b.size(0))
            fail("dense", "a (M, K) @ b (K, N) expected, got ", shape(a), " @ ", shape(b));
        return bias ? bias->addmm(a, b) : a.mm(b);
    }
    Tensor out = empty_like(a, {a.size(0), b.size(1)});
    if (a.scalar_type() == at::kFloat)
        small_product<float>(form, a, b, bias, out);
    else
        small_product<double>(form, a, b, bias, out);
    return out;
}

// the most rows of each form: {dot, axpy}, and setting them (backend.dense_rows_set: for measuring
// the crossover on another CPU in one process)
std::vector<std::int64_t> dense_rows() { return {DOT_MAX_ROWS.load(), AXPY_MAX_ROWS.load()}; }

void set_dense_rows(std::int64_t dot, std::int64_t axpy) {
    DOT_MAX_ROWS.store(dot);
    AXPY_MAX_ROWS.store(axpy);
}

// which path dense takes for these arguments: 0 BLAS, 1 dot, 2 axpy
std::int64_t dense_form(const Tensor& a, const Tensor& b, const std::optional<Tensor>& bias) {
    return static_cast<std::int64_t>(form_of(a, b, bias));
}

// ---- prepare_edges -------------------------------------------------------------------------------

// Stable counting sort of the edges in `perm` by idx: (row pointers (N+1), permutation (E)). Over a
// permutation already sorted by another key, the result is sorted by idx, then by that key.
std::tuple<Tensor, Tensor> order(const Tensor& idx, const std::int64_t* perm, std::int64_t n) {
    const std::int64_t e = idx.size(0);
    Tensor row = idx.new_zeros({n + 1}), out = empty_like(idx, {e});
    std::int64_t* p = out_ptr<std::int64_t>(row);
    std::int64_t* q = out_ptr<std::int64_t>(out);
    const std::int64_t* a = index_ptr(idx);
    for (std::int64_t k = 0; k < e; ++k) ++p[a[k] + 1];
    for (std::int64_t i = 0; i < n; ++i) p[i + 1] += p[i];
    std::vector<std::int64_t> next(p, p + n);
    for (std::int64_t k = 0; k < e; ++k) {
        const std::int64_t edge = perm ? perm[k] : k;
        q[next[a[edge]]++] = edge;
    }
    return {row, out};
}

// reverse[e] of prepare_edges (ops/edges.py states the rule): the edge (j <- i) with r = -r_e, found in
// j's run of the CSR, which is ordered by source atom, then edge index. The k-th edge (i <- j) with
// vector r pairs with the k-th edge (j <- i) with vector -r.
template <typename T>
void reverse_edges(const T* r, const std::int64_t* idx_j, const std::int64_t* dst_ptr, const std::int64_t* dst_perm,
                   std::int64_t n, std::int64_t* rev) {
    auto equal = [r](std::int64_t a, std::int64_t b, T sign) {
        return r[3 * a] == sign * r[3 * b] && r[3 * a + 1] == sign * r[3 * b + 1] && r[3 * a + 2] == sign * r[3 * b + 2];
    };
    // atoms in parallel (each writes only the reverse of its own edges): the searches read r and
    // the CSR at random, ~3x slower than the sorts when the caches are cold, as in a model's call
    at::parallel_for(0, n, 256, [&](std::int64_t first, std::int64_t last) {
        for (std::int64_t i = first; i < last; ++i) {
            std::int64_t run = dst_ptr[i];  // first edge of the current source's run
            for (std::int64_t p = dst_ptr[i]; p < dst_ptr[i + 1]; ++p) {
                const std::int64_t e = dst_perm[p], j = idx_j[e];
                if (idx_j[dst_perm[run]] != j) run = p;
                std::int64_t k = 0;  // earlier edges of this run with the same vector
                for (std::int64_t q = run; q < p; ++q) k += equal(dst_perm[q], e, T(1));
                rev[e] = -1;
                const std::int64_t* begin = dst_perm + dst_ptr[j];
                const std::int64_t* end = dst_perm + dst_ptr[j + 1];
                const std::int64_t* q = std::lower_bound(begin, end, i, [idx_j](std::int64_t edge, std::int64_t atom) {
                    return idx_j[edge] < atom;
                });
                for (; q < end && idx_j[*q] == i; ++q)
                    if (equal(*q, e, T(-1)) && k-- == 0) {
                        rev[e] = *q;
                        break;
                    }
            }
        }
    });
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> prepare_edges(const Tensor& r_in, const Tensor& idx_i_in,
                                                                 const Tensor& idx_j_in, std::int64_t n_atoms) {
    count(PREPARE_EDGES);
    const char* op = "prepare_edges";
    if (r_in.dim() != 2 || r_in.size(1) != 3) fail(op, "r must have shape (E, 3), got ", shape(r_in));
    if (!is_float(r_in)) fail(op, "r must be floating point, got ", dtype_name(r_in));
    if (n_atoms < 0) fail(op, "n_atoms must be >= 0, got ", n_atoms);
    const std::int64_t e = r_in.size(0);
    check_index(op, "idx_i", idx_i_in, e);
    check_index(op, "idx_j", idx_j_in, e);
    check_same(op, "r", r_in, {{"idx_i", &idx_i_in}, {"idx_j", &idx_j_in}}, false);
    const Tensor r = r_in.contiguous(), idx_i = idx_i_in.contiguous(), idx_j = idx_j_in.contiguous();
    // the values a message kernel cannot take (the reference op checks the same)
    const std::int64_t* ii = index_ptr(idx_i);
    const std::int64_t* jj = index_ptr(idx_j);
    auto values = [&](auto zero) {
        using T = decltype(zero);
        const T* pr = ptr<T>(r);
        for (std::int64_t k = 0; k < e; ++k) {
            const T x = pr[3 * k], y = pr[3 * k + 1], z = pr[3 * k + 2];
            if (!(std::isfinite(x) && std::isfinite(y) && std::isfinite(z)))
                fail(op, "edge vectors r contain NaN or inf");
            if (x == T(0) && y == T(0) && z == T(0))
                fail(op, "an edge has zero length (overlapping atoms); its direction is undefined");
            if (ii[k] < 0 || ii[k] >= n_atoms || jj[k] < 0 || jj[k] >= n_atoms)
                fail(op, "edge indices outside 0..", n_atoms - 1);
        }
    };
    if (r.scalar_type() == at::kFloat)
        values(0.0f);
    else
        values(0.0);
    // by destination then source, and by source then destination (counting sorts over each other)
    const Tensor by_src = std::get<1>(order(idx_j, nullptr, n_atoms));
    auto [dst_ptr, dst_perm] = order(idx_i, index_ptr(by_src), n_atoms);
    auto [src_ptr, src_perm] = order(idx_j, index_ptr(dst_perm), n_atoms);
    Tensor rev = empty_like(idx_i, {e});
    if (r.scalar_type() == at::kFloat)
        reverse_edges(ptr<float>(r), jj, index_ptr(dst_ptr), index_ptr(dst_perm), n_atoms, out_ptr<std::int64_t>(rev));
    else
        reverse_edges(ptr<double>(r), jj, index_ptr(dst_ptr), index_ptr(dst_perm), n_atoms, out_ptr<std::int64_t>(rev));
    return std::make_tuple(dst_ptr, dst_perm, src_ptr, src_perm, rev);
}

// ---- painn_message -------------------------------------------------------------------------------

// fixed number of atom or edge chunks whose weight-gradient partials are added in order
constexpr std::int64_t PARTS = 64;

// partial (P, C, K + 1) summed over P in chunk order (deterministic) into weight (C, K) and bias (C,)
template <typename T>
void add_partials(const Tensor& partial, std::int64_t parts, std::int64_t c, std::int64_t k, Tensor& gw,
                  Tensor& gb) {
    const T* p = ptr<T>(partial);
    T* w = out_ptr<T>(gw);
    T* b = out_ptr<T>(gb);
    const std::int64_t row = k + 1;
    for (std::int64_t i = 0; i < c; ++i)
        for (std::int64_t j = 0; j <= k; ++j) {
            T total = p[i * row + j];
            for (std::int64_t q = 1; q < parts; ++q) total += p[(q * c + i) * row + j];
            (j < k ? w[i * k + j] : b[i]) = total;
        }
}

std::tuple<Tensor, Tensor> painn_message(const Tensor& r_in, const Tensor& idx_i, const Tensor& idx_j_in, TensorList edges,
                                         const Tensor& x_in, const std::optional<Tensor>& mu_in, const Tensor& weight, const Tensor& bias_in,
                                         const Tensor& basis_params, c10::string_view basis, c10::string_view cutoff,
                                         Floats cutoff_params, std::int64_t chunk_size) {
    count(MESSAGE);
    const char* op = "painn_message";
    const Radial rad = radial(op, basis_params, basis, cutoff, cutoff_params);
    check_message(op, r_in, idx_i, idx_j_in, edges, x_in, mu_in, weight, bias_in, basis_params, rad);
    const std::int64_t n = x_in.size(0), f = x_in.size(1) / 3, k = rad.k, e = r_in.size(0);
    if (n == 0 || e == 0) return {x_in.new_zeros({n, f}), x_in.new_zeros({n, 3, f})};
    // the kernel writes every atom's row: no zero fill
    Tensor dq = empty_like(x_in, {n, f}), dmu = empty_like(x_in, {n, 3, f});
    const Tensor r = r_in.contiguous(), j = idx_j_in.contiguous(), x = x_in.contiguous();
    const Tensor dp = edges[0].contiguous(), d_perm = edges[1].contiguous(), rev = edges[4].contiguous();
    const Tensor wt = transposed(weight), b = bias_in.contiguous(), p = kernel_params(basis_params, x);
    std::optional<Tensor> mu;
    if (mu_in) mu = mu_in->contiguous();
    const int threads = at::get_num_threads();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(r), index_ptr(dp), index_ptr(d_perm), index_ptr(j), index_ptr(rev), ptr<T>(x), ptr<T>(mu), ptr<T>(wt),
               ptr<T>(b), ptr<T>(p), p.size(0) > 1 ? ptr<T>(p) + k : nullptr, rad.basis, rad.cutoff, T(rad.c0),
               T(rad.c1), n, int(f), int(k), out_ptr<T>(dq), out_ptr<T>(dmu), threads);
    };
    if (x.scalar_type() == at::kFloat)
        run(0.0f, painn_message_forward_f32);
    else
        run(0.0, painn_message_forward_f64);
    return {dq, dmu};
}

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> painn_message_backward(
    Tensor gq_in, const Tensor& gmu_in, const Tensor& r_in, const Tensor& idx_i_in, const Tensor& idx_j, TensorList edges, const Tensor& x_in,
    const std::optional<Tensor>& mu_in, const Tensor& weight, const Tensor& bias_in, const Tensor& basis_params, std::string basis,
    std::string cutoff, Floats cutoff_params, std::int64_t chunk_size, bool weight_grad) {
    count(MESSAGE_BACKWARD);
    const char* op = "painn_message_backward";
    const Radial rad = radial(op, basis_params, basis, cutoff, cutoff_params);
    check_message(op, r_in, idx_i_in, idx_j, edges, x_in, mu_in, weight, bias_in, basis_params, rad);
    const std::int64_t n = x_in.size(0), f = x_in.size(1) / 3, k = rad.k, e = r_in.size(0);
    check_shape(op, "grad_0", gq_in, {n, f});
    check_shape(op, "grad_1", gmu_in, {n, 3, f});
    check_same(op, "the inputs", x_in, {{"grad_0", &gq_in}, {"grad_1", &gmu_in}});
    // an empty tensor where a gradient is not computed (each its own: outputs must not alias)
    auto none = [&] { return empty_like(x_in, {0}); };
    if (n == 0 || e == 0) {
        Tensor gmu = mu_in ? zeros_of(*mu_in) : none();
        if (!weight_grad) return {zeros_of(r_in), zeros_of(x_in), gmu, none(), none()};
        return {zeros_of(r_in), zeros_of(x_in), gmu, zeros_of(weight), zeros_of(bias_in)};
    }
    // the kernel writes every edge's and every atom's row: no zero fill
    Tensor gr = empty_like(r_in, {e, 3}), gx = empty_like(x_in, {n, 3 * f});
    Tensor gmu = mu_in ? empty_like(x_in, {n, 3, f}) : none();
    const std::int64_t parts = std::min(PARTS, n);
    Tensor partial = weight_grad ? empty_like(x_in, {parts, 3 * f, k + 1}) : Tensor();
    const Tensor gq = gq_in.contiguous(), gm = gmu_in.contiguous(), r = r_in.contiguous(), i = idx_i_in.contiguous();
    const Tensor sp = edges[2].contiguous(), s_perm = edges[3].contiguous(), rev = edges[4].contiguous();
    const Tensor x = x_in.contiguous(), wt = transposed(weight), b = bias_in.contiguous();
    const Tensor p = kernel_params(basis_params, x);
    std::optional<Tensor> mu;
    if (mu_in) mu = mu_in->contiguous();
    const int threads = at::get_num_threads();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(gq), ptr<T>(gm), ptr<T>(r), index_ptr(sp), index_ptr(s_perm), index_ptr(i), index_ptr(rev), ptr<T>(x),
               ptr<T>(mu), ptr<T>(wt), ptr<T>(b), ptr<T>(p), p.size(0) > 1 ? ptr<T>(p) + k : nullptr, rad.basis,
               rad.cutoff, T(rad.c0), T(rad.c1), n, int(f), int(k), out_ptr<T>(gr), out_ptr<T>(gx),
               mu ? out_ptr<T>(gmu) : nullptr, weight_grad ? out_ptr<T>(partial) : nullptr, int(parts), threads);
    };
    if (x.scalar_type() == at::kFloat)
        run(0.0f, painn_message_backward_f32);
    else
        run(0.0, painn_message_backward_f64);
    if (!weight_grad) return {gr, gx, gmu, none(), none()};
    Tensor gw = empty_like(x_in, {3 * f, k}), gb = empty_like(x_in, {3 * f});
    if (x.scalar_type() == at::kFloat)
        add_partials<float>(partial, parts, 3 * f, k, gw, gb);
    else
        add_partials<double>(partial, parts, 3 * f, k, gw, gb);
    return {gr, gx, gmu, gw, gb};
}

// ---- radial_filter -------------------------------------------------------------------------------

void check_filter(const char* op, const Tensor& d, const Tensor& weight, const Tensor& bias,
                  const Tensor& basis_params, const Radial& rad) {
    if (d.dim() != 1 || !is_float(d))
        fail(op, "distances must be a floating tensor of shape (E,), got ", dtype_name(d), " ", shape(d));
    check_filter_weights(op, weight, bias, rad, -1);
    check_same(op, "distances", d, {{"weight", &weight}, {"bias", &bias}});
    check_same(op, "distances", d, {{"basis_params", &basis_params}}, false);
}

Tensor radial_filter(const Tensor& d_in, const Tensor& weight, const Tensor& bias_in, const Tensor& basis_params, c10::string_view basis,
                     c10::string_view cutoff, Floats cutoff_params) {
    count(FILTER);
    const char* op = "radial_filter";
    const Radial rad = radial(op, basis_params, basis, cutoff, cutoff_params);
    check_filter(op, d_in, weight, bias_in, basis_params, rad);
    const std::int64_t e = d_in.size(0), c = weight.size(0), k = rad.k;
    Tensor out = empty_like(d_in, {e, c});
    if (e == 0) return out;
    const Tensor d = d_in.contiguous(), wt = transposed(weight), b = bias_in.contiguous(), p = kernel_params(basis_params, d);
    // once per evaluation (one filter for all layers): the distances' values are checked here
    auto finite = [&](auto zero) {
        using T = decltype(zero);
        const T* pd = ptr<T>(d);
        for (std::int64_t i = 0; i < e; ++i)
            if (!std::isfinite(pd[i])) fail(op, "distances contain NaN or inf");
    };
    if (d.scalar_type() == at::kFloat)
        finite(0.0f);
    else
        finite(0.0);
    const int threads = at::get_num_threads();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(d), ptr<T>(wt), ptr<T>(b), ptr<T>(p), p.size(0) > 1 ? ptr<T>(p) + k : nullptr, rad.basis,
               rad.cutoff, T(rad.c0), T(rad.c1), e, int(c), int(k), out_ptr<T>(out), threads);
    };
    if (d.scalar_type() == at::kFloat)
        run(0.0f, radial_filter_forward_f32);
    else
        run(0.0, radial_filter_forward_f64);
    return out;
}

std::tuple<Tensor, Tensor, Tensor> radial_filter_backward(const Tensor& grad_in, const Tensor& d_in, const Tensor& weight, const Tensor& bias_in,
                                                          const Tensor& basis_params, c10::string_view basis, c10::string_view cutoff,
                                                          Floats cutoff_params) {
    count(FILTER_BACKWARD);
    const char* op = "radial_filter_backward";
    const Radial rad = radial(op, basis_params, basis, cutoff, cutoff_params);
    check_filter(op, d_in, weight, bias_in, basis_params, rad);
    const std::int64_t e = d_in.size(0), c = weight.size(0), k = rad.k;
    check_shape(op, "grad_0", grad_in, {e, c});
    check_same(op, "the inputs", d_in, {{"grad_0", &grad_in}});
    Tensor gd = d_in.new_zeros({e});
    if (e == 0) return {gd, zeros_of(weight), zeros_of(bias_in)};
    const std::int64_t parts = std::min(PARTS, e);
    Tensor partial = empty_like(d_in, {parts, c, k + 1});
    const Tensor g = grad_in.contiguous(), d = d_in.contiguous(), wt = transposed(weight), b = bias_in.contiguous();
    const Tensor p = kernel_params(basis_params, d);
    const int threads = at::get_num_threads();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(g), ptr<T>(d), ptr<T>(wt), ptr<T>(b), ptr<T>(p), p.size(0) > 1 ? ptr<T>(p) + k : nullptr,
               rad.basis, rad.cutoff, T(rad.c0), T(rad.c1), e, int(c), int(k), out_ptr<T>(gd), out_ptr<T>(partial),
               int(parts), threads);
    };
    Tensor gw = empty_like(d_in, {c, k}), gb = empty_like(d_in, {c});
    if (d.scalar_type() == at::kFloat) {
        run(0.0f, radial_filter_backward_f32);
        add_partials<float>(partial, parts, c, k, gw, gb);
    } else {
        run(0.0, radial_filter_backward_f64);
        add_partials<double>(partial, parts, c, k, gw, gb);
    }
    return {gd, gw, gb};
}

// ---- painn_update --------------------------------------------------------------------------------

// From this many atoms on the update kernels take their weights transposed (three copies per
// call) for the register-blocked products; below, dot products with the weights as given (measured
// crossover, docs/ops.md).
constexpr std::int64_t UPDATE_TRANSPOSE_ATOMS = 24;

struct UpdateWeights {
    Tensor u, w1, b1, w2, b2, ut, w1t, w2t;  // as given (contiguous), and transposed or undefined
    UpdateWeights(std::int64_t n, const Tensor& mix, const Tensor& w1_, const Tensor& b1_, const Tensor& w2_,
                  const Tensor& b2_)
        : u(mix.contiguous()), w1(w1_.contiguous()), b1(b1_.contiguous()), w2(w2_.contiguous()), b2(b2_.contiguous()) {
        if (n >= UPDATE_TRANSPOSE_ATOMS) {
            ut = transposed(u);
            w1t = transposed(w1);
            w2t = transposed(w2);
        }
    }
};

std::tuple<Tensor, Tensor> painn_update(const Tensor& q_in, const Tensor& mu_in, const Tensor& mix_weight, const Tensor& w1, const Tensor& b1, const Tensor& w2,
                                        const Tensor& b2, double epsilon) {
    count(UPDATE);
    check_update("painn_update", q_in, mu_in, mix_weight, w1, b1, w2, b2);
    const std::int64_t n = q_in.size(0), f = q_in.size(1);
    Tensor q_out = empty_like(q_in, {n, f}), mu_out = empty_like(q_in, {n, 3, f});
    if (n == 0) return {q_out, mu_out};
    const Tensor q = q_in.contiguous(), mu = mu_in.contiguous();
    const UpdateWeights w(n, mix_weight, w1, b1, w2, b2);
    const int threads = at::get_num_threads();
    auto run = [&](auto zero, auto kernel) {
        using T = decltype(zero);
        kernel(ptr<T>(q), ptr<T>(mu), ptr<T>(w.u), ptr<T>(w.w1), ptr<T>(w.b1), ptr<T>(w.w2), ptr<T>(w.b2),
               ptr<T>(w.ut), ptr<T>(w.w1t), ptr<T>(w.w2t), T(epsilon), n, int(f), out_ptr<T>(q_out),
               out_ptr<T>(mu_out), threads);
    };
    if (q.scalar_type() == at::kFloat)
        run(0.0f, painn_update_forward_f32);
    else
        run(0.0, painn_update_forward_f64);
    return {q_out, mu_out};
}

// a^T b for a (R, M) and b (R, N) (weight gradients: sums over atoms as one product)
Tensor at_b(const Tensor& a, const Tensor& b) { return a.t().mm(b); }

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> painn_update_backward(
    Tensor gq_in, const Tensor& gmu_in, const Tensor& q_in, const Tensor& mu_in, const Tensor& mix_weight, const Tensor& w1, const Tensor& b1, const Tensor& w2,
    const Tensor& b2, double epsilon, bool weight_grad) {
    count(UPDATE_BACKWARD);
    const char* op = "painn_update_backward";
    check_update(op, q_in, mu_in, mix_weight, w1, b1, w2, b2);
    const std::int64_t n = q_in.size(0), f = q_in.size(1);
    check_shape(op, "grad_0", gq_in, {n, f});
    check_shape(op, "grad_1", gmu_in, {n, 3, f});
    check_same(op, "the inputs", q_in, {{"grad_0", &gq_in}, {"grad_1", &gmu_in}});
    Tensor gq = empty_like(q_in, {n, f}), gmu = empty_like(q_in, {n, 3, f});
    // the per-atom factors of the weight gradients: dL/d[V, W], dL/dpre, dL/dx, [q, |V|], h
    Tensor gvw, gpre, gx, ctx, h;
    if (weight_grad) {
        gvw = empty_like(q_in, {n, 3, 2 * f});
        gpre = empty_like(q_in, {n, f});
        gx = empty_like(q_in, {n, 3 * f});
        ctx = empty_like(q_in, {n, 2 * f});
        h = empty_like(q_in, {n, f});
    }
    if (n) {
        const Tensor g1 = gq_in.contiguous(), g2 = gmu_in.contiguous(), q = q_in.contiguous(), mu = mu_in.contiguous();
        const UpdateWeights w(n, mix_weight, w1, b1, w2, b2);
        const int threads = at::get_num_threads();
        auto run = [&](auto zero, auto kernel) {
            using T = decltype(zero);
            kernel(ptr<T>(g1), ptr<T>(g2), ptr<T>(q), ptr<T>(mu), ptr<T>(w.u), ptr<T>(w.w1), ptr<T>(w.b1),
                   ptr<T>(w.w2), ptr<T>(w.b2), ptr<T>(w.ut), ptr<T>(w.w1t), ptr<T>(w.w2t), T(epsilon), n, int(f),
                   out_ptr<T>(gq), out_ptr<T>(gmu), out_ptr<T>(gvw), out_ptr<T>(gpre), out_ptr<T>(gx),
                   out_ptr<T>(ctx), out_ptr<T>(h), threads);
        };
        if (q.scalar_type() == at::kFloat)
            run(0.0f, painn_update_backward_f32);
        else
            run(0.0, painn_update_backward_f64);
    }
    auto none = [&] { return empty_like(q_in, {0}); };
    if (!weight_grad) return {gq, gmu, none(), none(), none(), none(), none()};
    // sums over atoms as matrix products (reference.update_weight_gradients)
    const Tensor g_mix = at_b(gvw.reshape({3 * n, 2 * f}), mu_in.reshape({3 * n, f}));
    return {gq, gmu, g_mix, at_b(gpre, ctx), gpre.sum(0), at_b(gx, h), gx.sum(0)};
}

}  // namespace

// The fused ops are declared in Python (ops/fused_op.py, the schemas); these are their CPU kernels.
TORCH_LIBRARY_IMPL(painnfx, CPU, m) {
    m.impl("prepare_edges", &prepare_edges);
    m.impl("painn_message", &painn_message).impl("painn_message_backward", &painn_message_backward);
    m.impl("radial_filter", &radial_filter).impl("radial_filter_backward", &radial_filter_backward);
    m.impl("painn_update", &painn_update).impl("painn_update_backward", &painn_update_backward);
    m.impl("dense", &dense).impl("dense_form", &dense_form);
}

// The library's own ops (their fakes and dense's autograd: ops/cpu/dense.py), the bookkeeping ones
// with a kernel for any dispatch key (they take no tensor).
TORCH_LIBRARY_FRAGMENT(painnfx, m) {
    m.def("dense(Tensor a, Tensor b, Tensor? bias=None) -> Tensor")
        .def("dense_form(Tensor a, Tensor b, Tensor? bias=None) -> int");
    m.def("dense_rows() -> int[]", &dense_rows).def("set_dense_rows(int dot, int axpy) -> ()", &set_dense_rows);
    m.def("cpu_call_counts() -> int[]", &call_counts).def("cpu_counted_ops() -> str[]", &counted_ops);
    m.def("cpu_mxcsr() -> int", &mxcsr).def("cpu_pool_mxcsr(int threads) -> int[]", &pool_mxcsr);
}
