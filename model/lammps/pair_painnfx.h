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

#include <mpi.h>

#include <array>
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>


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
    // rows of the ghosts this rank needs from q (`recv_rows`, in q's order) and the rows of the
    // owned atoms q needs from this rank (`send_rows`; LAMMPS indices until order_owned_rows());
    // every list is sorted by rank.
    struct Plan {
        std::vector<int> recv_ranks, send_ranks;
        std::vector<std::vector<std::int64_t>> recv_rows, send_rows;
        // with a node-shared window: where each block starts (in rows) in its writer's area, for
        // the blocks this rank writes (per send rank forward, per receive rank in reverse) and
        // reads (per receive rank forward, per send rank in reverse)
        std::vector<std::int64_t> forward_written, reverse_written, forward_read, reverse_read;
        std::vector<int> partners;  // with a shared window: the ranks that read this rank's part
    } plan;

    // All ranks on one node: each writes its outgoing rows into its part of an MPI-3 shared
    // window (two halves, used in turn) and each reads its incoming rows straight from the
    // writers' parts: one copy each way instead of MPI's. A counter at the start of each part
    // says which exchange its writer has written last. Else point to point.
    bool shared = false;
    int rank = 0;
    MPI_Comm node = MPI_COMM_NULL;
    MPI_Win window = MPI_WIN_NULL;
    std::size_t window_bytes = 0;                            // this rank's part
    std::vector<char*> part;                                 // every rank's part
    std::vector<std::size_t> part_bytes;
    std::uint64_t exchanges_done = 0;                        // exchanges started (each way), ever
    static constexpr std::size_t HEADER = 64;                // a part's counter, before its rows
    std::size_t half_bytes(int q) const;                     // the size of each half of rank q's rows
    char* block(int q, std::uint64_t number) const;          // rank q's half for exchange `number`
    std::atomic_ref<std::uint64_t> counter(int q) const;
    void publish(std::uint64_t number);
    void wait_for(int q, std::uint64_t number) const;
    std::int64_t boundary_rows = 0;  // owned rows 0..boundary_rows-1 are other ranks' ghosts: order_owned_rows()

  private:
    std::unique_ptr<painnfx::PerLayerModel> model;
    std::vector<int> species_of_type;     // per type 1..ntypes: the model's element index, -1 for NULL
    std::vector<std::int64_t> model_row;  // per LAMMPS atom (owned + ghost): its row in the model's tensors
    std::int64_t rows = 0;                // the model's rows: owned atoms, then one per ghost atom ID
    std::array<int, 3> axes{2, 1, 0};      // takes(): the axes in the order it compares them
    std::vector<char> in_plan;            // per model row: exchanged by the plan
    std::vector<double> owner;            // per LAMMPS atom: owning rank and its index there (2 values)
    std::vector<std::uint64_t> exchange_buffer;  // what the exchanges send and receive, reused between steps
    bool reported = false;                // the first evaluation prints what each rank computes
    void allocate();
    std::int64_t assign_rows();
    void build_plan(std::int64_t rows);
    void order_owned_rows();
    void grow_window(std::size_t bytes);
    bool takes(double dx, double dy, double dz) const;
};

}  // namespace LAMMPS_NS
