// A painnfx PaiNN run layer by layer, in C++, for an MD engine that owns some atoms and sees
// others as ghosts (LAMMPS's pair style painnfx). No Python: the model is read from the file
// `painnfx export` writes (torch.save of plain data: metadata and weight tensors), and the fused
// ops are painnfx's C++ kernels, called through torch's dispatcher.
//
// The engine gives, per evaluation: its owned atoms 0..n_owned-1 and ghost atoms
// n_owned..n_all-1 (element index of each), and edges i <- j between any of them (r = x_j - x_i,
// |r| < cutoff; LAMMPS's pair style hands both directions of each pair it takes, every pair on one
// rank only, so messages go into ghosts too): per layer, the features of the ghosts come from their owners
// (`Exchange::start_forward`), and the messages into ghosts go to their owners (`start_reverse`);
// the backward exchanges the gradients the same way. While rows travel, the rank computes the dense
// steps of its interior atoms (those no other rank sees). The result: per-atom energies of the owned
// atoms and dE/dr per edge, the gradient of the energy of ALL atoms (every rank's owned energies)
// to the edge vectors this engine handed over.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace painnfx {

// What the engine does between the ops, in two halves, so that a rank computes while rows travel.
// start_forward(a, b) sends the rows other ranks hold as ghosts (owned rows 0..boundary()-1, which
// must be final by then); finish() fills this rank's ghost rows from their owners' rows.
// start_reverse(a, b) sends the ghost rows' values to their owners; finish() adds what the other
// ranks sent into owned rows 0..boundary()-1. One exchange at a time; a and b stay alive until
// finish(), and until then the model touches only the rows the exchange neither sends nor
// receives (the interior's). Both are contiguous, of the model's dtype, one row per model atom
// (n_all rows). Per layer l: (x, mu) forward before the messages (l > 0), (dq, dmu) reverse after
// them (the messages into ghosts); in the backward: (dE/dq, dE/dmu) forward before the message
// backward, (dE/dx, dE/dmu) reverse after it (l > 0). Every rank makes the same calls in the same order.
struct Exchange {
    virtual ~Exchange() = default;
    virtual std::int64_t boundary() const = 0;
    virtual void start_forward(at::Tensor& a, at::Tensor& b) = 0;
    virtual void start_reverse(at::Tensor& a, at::Tensor& b) = 0;
    virtual void finish() = 0;
};

class PerLayerModel {
  public:
    // Reads `path`; throws std::runtime_error naming what is wrong (missing file, not a painnfx
    // model file, another format version, torch or painnfx library mismatch).
    explicit PerLayerModel(const std::string& path);

    double cutoff() const { return cutoff_; }
    int layers() const { return layers_; }
    int features() const { return features_; }
    at::ScalarType dtype() const { return dtype_; }
    const std::vector<std::string>& symbols() const { return symbols_; }  // element names it knows
    const std::string& summary() const { return summary_; }
    int exchanges() const { return 2 * layers_ - 1; }  // exchanges per evaluation, each way

    // species: (n_all,) int64 indices into symbols(); idx_i, idx_j: (E,) int64; r: (E, 3) of
    // dtype(). Writes e_atom (n_owned,) and, with `forces`, g_r = dE/dr (E, 3). Not reentrant:
    // one evaluation at a time per object (one per MPI rank).
    void evaluate(std::int64_t n_owned, const at::Tensor& species, const at::Tensor& idx_i, const at::Tensor& idx_j,
                  const at::Tensor& r, bool forces, Exchange& exchange, at::Tensor& e_atom, at::Tensor& g_r);

  private:
    struct Layer {
        at::Tensor ctx_w1, ctx_b1, ctx_w2, ctx_b2;   // context net (first layer: folded into x0)
        at::Tensor filter_w, filter_b;               // this layer's filter rows (3F, K), (3F,)
        at::Tensor mix, up_w1, up_b1, up_w2, up_b2;  // update block
    };
    at::Tensor context(const Layer& layer, const at::Tensor& q, at::Tensor& pre) const;

    double cutoff_ = 0, epsilon_ = 0;
    int layers_ = 0, features_ = 0;
    at::ScalarType dtype_ = at::kDouble;
    std::vector<std::string> symbols_;
    std::vector<Layer> layer_;
    at::Tensor embedding_;       // (elements, F): the embedding rows of the known elements
    at::Tensor x0_;              // (elements, 3F): the first layer's context net of each element
    at::Tensor atom_shift_;      // (elements,): shift + atomref per element
    at::Tensor head_w1_, head_b1_, head_w2_, head_b2_;
    double scale_ = 1;
    at::Tensor basis_params_;
    std::string basis_, cutoff_fn_;
    std::vector<double> cutoff_params_;
    std::string summary_;
};

}  // namespace painnfx
