// LAMMPS pair style `painnfx`: a painnfx PaiNN in C++, with per-layer ghost exchange.
//
//   plugin load /path/painnfx_lammps_*.so       (the plugin `painnfx lammps plugin` builds)
//   pair_style painnfx model.pfx                (the file `painnfx export` writes)
//   pair_coeff * * Cu Ni                        (the element of each atom type)
//
// Each rank computes the messages into its owned atoms only, over a ghost shell of one cutoff
// (+ skin); after every layer the ghosts' features come from their owners (forward_comm), and in
// the backward their gradients go back (reverse_comm). See docs/lammps.md.
#pragma once

#include "pair.h"

#include <memory>
#include <vector>

#include <ATen/ATen.h>

namespace painnfx {
class PerLayerModel;
}

namespace LAMMPS_NS {

class PairPainnfx : public Pair {
  public:
    explicit PairPainnfx(class LAMMPS*);
    ~PairPainnfx() override;
    void compute(int, int) override;
    void settings(int, char**) override;
    void coeff(int, char**) override;
    void init_style() override;
    double init_one(int, int) override;
    int pack_forward_comm(int, int*, double*, int, int*) override;
    void unpack_forward_comm(int, int, double*) override;
    int pack_reverse_comm(int, int, double*) override;
    void unpack_reverse_comm(int, int*, double*) override;

    // what the exchange between layers reads and writes: (n_all, 3F) and (n_all, 3, F) tensors
    at::Tensor* comm_x = nullptr;
    at::Tensor* comm_mu = nullptr;
    int comm_width = 0;  // values per atom of the exchange under way

  private:
    std::unique_ptr<painnfx::PerLayerModel> model;
    std::vector<int> species_of_type;
    std::vector<std::int64_t> model_row;  // per LAMMPS atom (owned + ghost): its row in the model's tensors  // per type 1..ntypes: the model's element index, -1 for NULL
    bool reported = false;             // the first evaluation prints what each rank computes
    void allocate();
};

}  // namespace LAMMPS_NS
