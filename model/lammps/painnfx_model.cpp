// A painnfx PaiNN run layer by layer in C++ (painnfx_model.h says what and why).
//
// Per layer l (x: the context net's output (3F) per atom, mu: vector features (3, F)):
//   x_l = W2 silu(W1 q + b1) + b2   for owned atoms; the first layer's depends on the element only
//   ghost rows of x_l, mu_l         <- their owners (a forward exchange; none before the first layer)
//   dq, dmu = painn_message(the engine's edges, x_l, mu_l)
//   owners' rows of dq, dmu         += their ghosts' (a reverse exchange: the messages into ghosts)
//   q, mu  = painn_update(q + dq, mu + dmu)      for owned atoms
// e_i = scale * MLP(q_i) + shift + atomref(Z_i). The backward runs the same layers in reverse with
// the ops' analytical backwards: the ghost rows of dE/dq, dE/dmu come from their owners before each
// message backward (forward exchange), and the gradients to ghost rows of x_l and mu_l go to their
// owners (reverse exchange) before the owners continue through their context nets. The dense steps
// (context net, update, their backwards) run per part of the owned rows, boundary and interior, so
// that the interior's run while an exchange is under way.
#include "painnfx_model.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/TensorOperators.h>
#include <ATen/ops/cat.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/linear.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/silu.h>
#include <ATen/ops/zeros.h>
#include <c10/util/Exception.h>
#include <dlfcn.h>
#include <torch/csrc/jit/serialization/pickle.h>
#include <torch/library.h>
#include <torch/version.h>

#include <fstream>
#include <iterator>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <sys/stat.h>

namespace painnfx {
namespace {

constexpr const char* FORMAT = "painnfx-pair";
constexpr std::int64_t FORMAT_VERSION = 1;

using at::Tensor;
using c10::IValue;

std::runtime_error fail(const std::string& path, const std::string& why) {
    return std::runtime_error("painnfx model file " + path + ": " + why);
}

// torch's version without a local suffix ("2.13.0+cpu" -> "2.13.0")
std::string base_version(const std::string& v) { return v.substr(0, v.find('+')); }

// The fused ops' schemas are declared by painnfx's Python package; without Python they are
// declared here, from the model file (written from the same declarations), once per process and
// only if nothing declared them yet. Then the C++ library with their CPU kernels is loaded.
void load_ops(const std::string& path, const std::vector<std::string>& schemas, const std::string& library,
              std::int64_t library_bytes) {
    static std::mutex lock;
    static std::unique_ptr<torch::Library> declared;
    static std::string loaded;
    std::lock_guard<std::mutex> guard(lock);
    std::string lib = library;
    if (const char* env = std::getenv("PAINNFX_CPU_LIBRARY"); env && *env) lib = env;
    if (loaded == lib) return;
    if (!loaded.empty())
        throw fail(path, "this process already loaded painnfx's C++ library " + loaded + "; one model file's "
                   "library per process");
    struct stat st {};
    if (stat(lib.c_str(), &st) != 0)
        throw fail(path, "painnfx's C++ library " + lib + " is missing (it is built per machine): run "
                   "`painnfx export` again on this machine, or set PAINNFX_CPU_LIBRARY");
    if (lib == library && st.st_size != library_bytes)
        throw fail(path, "painnfx's C++ library " + lib + " is not the one this file was exported with (" +
                   std::to_string(st.st_size) + " bytes, expected " + std::to_string(library_bytes) +
                   "): run `painnfx export` again");
    auto& dispatcher = c10::Dispatcher::singleton();
    for (const auto& schema : schemas) {
        const std::string name = "painnfx::" + schema.substr(0, schema.find('('));
        if (dispatcher.findSchema({name, ""})) continue;
        if (!declared)
            declared = std::make_unique<torch::Library>(torch::Library::FRAGMENT, "painnfx", std::nullopt, __FILE__,
                                                        __LINE__);
        declared->def(schema.c_str());
    }
    if (!dlopen(lib.c_str(), RTLD_NOW | RTLD_GLOBAL))
        throw fail(path, std::string("cannot load painnfx's C++ library: ") + dlerror());
    loaded = lib;
}

c10::OperatorHandle op(const char* name) {
    return c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
}

std::vector<IValue> call(const c10::OperatorHandle& handle, std::vector<IValue> stack) {
    handle.callBoxed(&stack);
    return stack;
}

Tensor silu_grad(const Tensor& pre) {
    const Tensor s = at::sigmoid(pre);
    return s * (1 + pre * (1 - s));
}

}  // namespace

PerLayerModel::PerLayerModel(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in) throw fail(path, "cannot be opened");
    std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    IValue root;
    try {
        root = torch::jit::pickle_load(bytes);
    } catch (const c10::Error& e) {
        throw fail(path, std::string("not a painnfx model file (unreadable: ") + e.what_without_backtrace() +
                   "); write one with `painnfx export`");
    }
    if (!root.isGenericDict()) throw fail(path, "not a painnfx model file; write one with `painnfx export`");
    const auto dict = root.toGenericDict();
    auto get = [&](const char* key) -> IValue {
        if (!dict.contains(key)) throw fail(path, std::string("has no '") + key + "' (not a painnfx model file?)");
        return dict.at(key);
    };
    if (!get("format").isString() || get("format").toStringRef() != FORMAT)
        throw fail(path, "not a painnfx model file for the pair style (write one with `painnfx export`)");
    const auto version = get("format_version").toInt();
    if (version != FORMAT_VERSION)
        throw fail(path, "format version " + std::to_string(version) + ", this pair style reads " +
                   std::to_string(FORMAT_VERSION) + ": export the model with the painnfx that built this pair style");
    const std::string torch_version = get("torch_version").toStringRef();
    if (base_version(torch_version) != base_version(TORCH_VERSION))
        throw fail(path, "written with torch " + torch_version + ", this pair style is built against torch " +
                   TORCH_VERSION + ": rebuild the pair style or export the model with the same torch");
    std::vector<std::string> schemas;
    for (const auto& s : get("schemas").toListRef()) schemas.push_back(s.toStringRef());
    load_ops(path, schemas, get("cpu_library").toStringRef(), get("cpu_library_bytes").toInt());

    const std::string dtype = get("dtype").toStringRef();
    if (dtype == "float64") dtype_ = at::kDouble;
    else if (dtype == "float32") dtype_ = at::kFloat;
    else throw fail(path, "dtype " + dtype + " (float32 or float64 expected)");
    cutoff_ = get("cutoff").toDouble();
    epsilon_ = get("epsilon").toDouble();
    layers_ = static_cast<int>(get("n_layers").toInt());
    features_ = static_cast<int>(get("n_features").toInt());
    for (const auto& s : get("symbols").toListRef()) symbols_.push_back(s.toStringRef());
    basis_ = get("basis").toStringRef();
    cutoff_fn_ = get("cutoff_fn").toStringRef();
    for (const auto& v : get("cutoff_params").toListRef()) cutoff_params_.push_back(v.toDouble());
    scale_ = get("energy_scale").toDouble();
    const auto weights = get("weights").toGenericDict();
    auto w = [&](const std::string& name) -> Tensor {
        if (!weights.contains(name)) throw fail(path, "has no weight '" + name + "'");
        return weights.at(name).toTensor().to(dtype_).contiguous();
    };
    basis_params_ = w("basis_params");
    embedding_ = w("embedding");
    atom_shift_ = w("atom_shift");
    head_w1_ = w("head.w1"), head_b1_ = w("head.b1"), head_w2_ = w("head.w2"), head_b2_ = w("head.b2");
    for (int l = 0; l < layers_; ++l) {
        const std::string p = "layer" + std::to_string(l) + ".";
        layer_.push_back({w(p + "ctx.w1"), w(p + "ctx.b1"), w(p + "ctx.w2"), w(p + "ctx.b2"), w(p + "filter.w"),
                          w(p + "filter.b"), w(p + "mix.u"), w(p + "mix.w1"), w(p + "mix.b1"), w(p + "mix.w2"),
                          w(p + "mix.b2")});
    }
    if (embedding_.size(0) != static_cast<std::int64_t>(symbols_.size()) || embedding_.size(1) != features_)
        throw fail(path, "embedding and element list disagree");
    c10::InferenceMode guard;
    Tensor pre;
    x0_ = context(layer_.at(0), embedding_, pre);
    summary_ = "painnfx pair: " + dtype + ", " + std::to_string(layers_) + " layers of " + std::to_string(features_) +
               " features, cutoff " + std::to_string(cutoff_) + " A, elements";
    for (const auto& s : symbols_) summary_ += " " + s;
}

Tensor PerLayerModel::context(const Layer& layer, const Tensor& q, Tensor& pre) const {
    pre = at::linear(q, layer.ctx_w1, layer.ctx_b1);
    return at::linear(at::silu(pre), layer.ctx_w2, layer.ctx_b2);
}

void PerLayerModel::evaluate(std::int64_t n, const Tensor& species, const Tensor& idx_i, const Tensor& idx_j,
                             const Tensor& r, bool forces, Exchange& exchange, Tensor& e_atom, Tensor& g_r) {
    c10::InferenceMode guard;
    static const c10::OperatorHandle prepare = op("painnfx::prepare_edges");
    static const c10::OperatorHandle message = op("painnfx::painn_message");
    static const c10::OperatorHandle message_backward = op("painnfx::painn_message_backward");
    static const c10::OperatorHandle update = op("painnfx::painn_update");
    static const c10::OperatorHandle update_backward = op("painnfx::painn_update_backward");
    const std::int64_t n_all = species.size(0), f = features_;
    const auto opts = at::TensorOptions().dtype(dtype_);

    const IValue none;
    const IValue basis(basis_), cutoff(cutoff_fn_), cutoff_params(cutoff_params_);
    std::vector<Tensor> plan;
    for (const auto& t : call(prepare, {r, idx_i, idx_j, n_all})) plan.push_back(t.toTensor());
    const IValue edges{c10::List<Tensor>(plan)};

    // The owned rows in two parts: the boundary [0, nb), rows other ranks hold as ghosts, and the
    // interior [nb, n). Around each exchange the interior's dense steps run while rows travel: the
    // boundary's rows are computed first and sent, or the interior's are computed while the
    // boundary waits for the sums coming back. A part without rows is skipped (one rank: no boundary).
    constexpr int BOUNDARY = 0, INTERIOR = 1;
    const std::int64_t nb = exchange.boundary();
    const std::int64_t first[2] = {0, nb}, count[2] = {nb, n - nb};
    auto part = [&](const Tensor& t, int p) { return t.narrow(0, first[p], count[p]); };
    auto has = [&](int p) { return count[p] > 0; };

    struct Saved { Tensor x, mu, pre[2], q_mid[2], mu_mid[2]; };
    std::vector<Saved> saved(layers_);
    Tensor q[2], mu[2];
    for (const int p : {BOUNDARY, INTERIOR})
        if (has(p)) q[p] = embedding_.index_select(0, part(species, p));
    for (int l = 0; l < layers_; ++l) {
        const Layer& layer = layer_[l];
        Saved& s = saved[l];
        if (l == 0) {
            s.x = x0_.index_select(0, species);  // every atom's, ghosts' too: it depends on the element only
        } else {
            s.x = at::empty({n_all, 3 * f}, opts);
            s.mu = at::empty({n_all, 3, f}, opts);
            for (const int p : {BOUNDARY, INTERIOR}) {
                if (has(p)) {
                    part(s.x, p).copy_(context(layer, q[p], s.pre[p]));
                    part(s.mu, p).copy_(mu[p]);
                }
                if (p == BOUNDARY) exchange.start_forward(s.x, s.mu);
            }
            exchange.finish();
        }
        const auto out = call(message, {r, idx_i, idx_j, edges, s.x, l == 0 ? none : IValue(s.mu), layer.filter_w,
                                        layer.filter_b, basis_params_, basis, cutoff, cutoff_params, 0});
        Tensor dq = out[0].toTensor(), dmu = out[1].toTensor();
        exchange.start_reverse(dq, dmu);  // the messages into ghosts go to their owners
        for (const int p : {INTERIOR, BOUNDARY}) {
            if (p == BOUNDARY) exchange.finish();
            if (!has(p)) continue;
            s.q_mid[p] = q[p] + part(dq, p);
            s.mu_mid[p] = l == 0 ? part(dmu, p).contiguous() : mu[p] + part(dmu, p);
            const auto up = call(update, {s.q_mid[p], s.mu_mid[p], layer.mix, layer.up_w1, layer.up_b1, layer.up_w2,
                                          layer.up_b2, epsilon_});
            q[p] = up[0].toTensor();
            mu[p] = up[1].toTensor();
        }
    }
    Tensor head_pre[2], gq[2], gmu[2];
    std::vector<Tensor> energies;
    for (const int p : {BOUNDARY, INTERIOR}) {
        if (!has(p)) continue;
        head_pre[p] = at::linear(q[p], head_w1_, head_b1_);
        energies.push_back(at::linear(at::silu(head_pre[p]), head_w2_, head_b2_).squeeze(-1));
    }
    const Tensor e = energies.empty() ? at::empty({0}, opts) : at::cat(energies);
    e_atom = e * scale_ + atom_shift_.index_select(0, species.narrow(0, 0, n));
    if (!forces) return;

    for (const int p : {BOUNDARY, INTERIOR}) {
        if (!has(p)) continue;
        gq[p] = (head_w2_ * scale_ * silu_grad(head_pre[p])).mm(head_w1_);  // dE/dq of the readout
        gmu[p] = at::zeros({count[p], 3, f}, opts);
    }
    g_r = at::zeros({r.size(0), 3}, opts);
    for (int l = layers_ - 1; l >= 0; --l) {
        const Layer& layer = layer_[l];
        const Saved& s = saved[l];
        // dE/dq_mid = dE/dq_in (residual) = dE/d(dq) per owned row; the ghosts' rows come from their
        // owners. When every row is owned and interior (one rank), the update's outputs are the rows.
        const bool own_all = n_all == n && !has(BOUNDARY) && has(INTERIOR);
        Tensor gq_all, gmu_all;
        if (!own_all) {
            gq_all = at::empty({n_all, f}, opts), gmu_all = at::empty({n_all, 3, f}, opts);
            gq_all.narrow(0, n, n_all - n).zero_();
            gmu_all.narrow(0, n, n_all - n).zero_();
        }
        for (const int p : {BOUNDARY, INTERIOR}) {
            if (has(p)) {
                const auto up = call(update_backward, {gq[p], gmu[p], s.q_mid[p], s.mu_mid[p], layer.mix, layer.up_w1,
                                                       layer.up_b1, layer.up_w2, layer.up_b2, epsilon_, false});
                gq[p] = up[0].toTensor();
                gmu[p] = up[1].toTensor();
                if (!own_all) {
                    part(gq_all, p).copy_(gq[p]);
                    part(gmu_all, p).copy_(gmu[p]);
                }
            }
            if (p == BOUNDARY && !own_all) exchange.start_forward(gq_all, gmu_all);
        }
        if (own_all) {  // nothing to send: the exchange only keeps every rank's calls in step
            gq_all = gq[INTERIOR], gmu_all = gmu[INTERIOR];
            exchange.start_forward(gq_all, gmu_all);
        }
        exchange.finish();
        const auto back = call(message_backward, {gq_all, gmu_all, r, idx_i, idx_j, edges, s.x,
                                                  l == 0 ? none : IValue(s.mu), layer.filter_w, layer.filter_b,
                                                  basis_params_, basis, cutoff, cutoff_params, 0, false});
        g_r.add_(back[0].toTensor());
        if (l == 0) break;  // x0 depends on the element only, mu0 is zero
        Tensor gx = back[1].toTensor().contiguous(), gmu_in = back[2].toTensor().contiguous();
        exchange.start_reverse(gx, gmu_in);  // the gradients to ghost rows go to their owners
        for (const int p : {INTERIOR, BOUNDARY}) {
            if (p == BOUNDARY) exchange.finish();
            if (!has(p)) continue;
            gmu[p] = gmu[p] + part(gmu_in, p);
            const Tensor gpre = part(gx, p).mm(layer.ctx_w2) * silu_grad(s.pre[p]);
            gq[p] = gq[p] + gpre.mm(layer.ctx_w1);
        }
    }
}

}  // namespace painnfx
