// A painnfx PaiNN run layer by layer, in C++, for an MD engine that owns some atoms and sees
// others as ghosts (LAMMPS's pair style painnfx). No Python: the model is read from the file
// `painnfx export` writes (torch.save of plain data: metadata and weight tensors), and the fused
// ops are painnfx's C++ kernels, called through torch's dispatcher.
//
// The engine gives, per evaluation: its owned atoms 0..n_owned-1 and ghost atoms
// n_owned..n_all-1 (element index of each), and edges i <- j between any of them (r = x_j - x_i,
// |r| < cutoff; LAMMPS's pair style hands both directions of each pair it takes, every pair on one
// rank only, so messages go into ghosts too): per layer, the features of the ghosts come from their owners
// (`Exchange::forward`), and the messages into ghosts go to their owners (`Exchange::reverse`);
// the backward exchanges the gradients the same way. The result: per-atom energies of the owned
// atoms and dE/dr per edge, the gradient of the energy of ALL atoms (every rank's owned energies)
// to the edge vectors this engine handed over.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

namespace painnfx {

// What the engine does between the ops: fill the ghost rows of two per-atom tensors from their
// owners' rows (forward), or add the ghost rows into their owners' rows (reverse). Both are
// contiguous, of the model's dtype, one row per model atom (n_all rows).
// Per layer l: forward (x, mu) before the messages (l > 0), reverse (dq, dmu) after them (the
// messages into ghosts); in the backward: forward (dE/dq, dE/dmu) before the message backward,
// reverse (dE/dx, dE/dmu) after it (l > 0). Every rank makes the same calls in the same order.
struct Exchange {
    virtual ~Exchange() = default;
    virtual void forward(at::Tensor& x, at::Tensor& mu) = 0;
    virtual void reverse(at::Tensor& gx, at::Tensor& gmu) = 0;
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
    int exchanges() const { return 2 * layers_ - 1; }  // Exchange calls per evaluation, each way

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
