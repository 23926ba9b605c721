// LAMMPS pair style `painnfx`: a painnfx PaiNN in C++, with per-layer ghost exchange.
//
//   plugin load /path/painnfx_lammps_*.so       (the plugin `painnfx lammps export` builds)
//   pair_style painnfx model.pfx                (the file `painnfx export` writes)
//   pair_coeff * * Cu Ni                        (the element of each atom type)
//
// Each rank computes its owned atoms' features and each pair of atoms on one rank only, over a
// ghost shell of one cutoff (+ skin); between the ops the rows of the ghosts it needs come from
// their owners, and the messages and gradients of those ghosts go back to them, point to point
// (MPI). See docs/lammps.md.
#pragma once

#include "pair.h"

#include <array>
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

    // The exchange plan, rebuilt when LAMMPS rebuilds its neighbor lists: per rank q, the model
    // rows of the ghosts this rank needs from q (`recv_rows`, in q's order) and the owned atoms q
    // needs from this rank (`send_atoms`); every list is sorted by rank.
    struct Plan {
        std::vector<int> recv_ranks, send_ranks;
        std::vector<std::vector<std::int64_t>> recv_rows, send_atoms;
    } plan;

  private:
    std::unique_ptr<painnfx::PerLayerModel> model;
    std::vector<int> species_of_type;     // per type 1..ntypes: the model's element index, -1 for NULL
    std::vector<std::int64_t> model_row;  // per LAMMPS atom (owned + ghost): its row in the model's tensors
    std::array<int, 3> axes{2, 1, 0};      // takes(): the axes in the order it compares them
    std::vector<char> in_plan;            // per model row: exchanged by the plan
    std::vector<double> owner;
    std::vector<std::uint64_t> exchange_buffer;  // what the exchanges send and receive, reused between steps            // per LAMMPS atom: owning rank and its index there (2 values)
    bool reported = false;                // the first evaluation prints what each rank computes
    void allocate();
    std::int64_t assign_rows();
    void build_plan(std::int64_t rows);
    bool takes(double dx, double dy, double dz) const;
};

}  // namespace LAMMPS_NS
