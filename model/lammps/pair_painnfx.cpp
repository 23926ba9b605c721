// LAMMPS pair style `painnfx` (pair_painnfx.h says how it is used, docs/lammps.md how it works).
#include "pair_painnfx.h"

#include "atom.h"
#include "comm.h"
#include "error.h"
#include "force.h"
#include "memory.h"
#include "neigh_list.h"
#include "neighbor.h"
#include "update.h"

#include "painnfx_model.h"

#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>
#include <unistd.h>

using namespace LAMMPS_NS;

namespace {

// values exchanged per atom and layer: x (3F) and mu (3 x F)
int per_atom(const painnfx::PerLayerModel& model) { return 6 * model.features(); }

// Rows of the exchange: LAMMPS's atom k is the model's row rows[k]. A ghost folded onto an owned
// atom (a periodic image of it) shares the owned atom's row: forward, nothing is written to it
// (the owner's row is the truth); in reverse it sends nothing (its gradient is already there).
template <typename T>
void pack_rows(const at::Tensor& a, const at::Tensor& b, int n, const int* list, int first, double* buf,
               const std::vector<std::int64_t>& row_of, std::int64_t n_owned, bool skip_folded) {
    const std::int64_t wa = a.size(1), wb = b.size(1);
    const T* pa = a.const_data_ptr<T>();
    const T* pb = b.const_data_ptr<T>();
    for (int k = 0; k < n; ++k) {
        const std::int64_t atom = list ? list[k] : first + k;
        const std::int64_t row = row_of[atom];
        if (skip_folded && row < n_owned) {
            buf = std::fill_n(buf, wa + wb, 0.0);
            continue;
        }
        buf = std::copy(pa + row * wa, pa + (row + 1) * wa, buf);
        buf = std::copy(pb + row * wb, pb + (row + 1) * wb, buf);
    }
}

template <typename T>
void unpack_rows(at::Tensor& a, at::Tensor& b, int n, const int* list, int first, const double* buf,
                 const std::vector<std::int64_t>& row_of, std::int64_t n_owned, bool add) {
    const std::int64_t wa = a.size(1), wb = b.size(1);
    T* pa = a.mutable_data_ptr<T>();
    T* pb = b.mutable_data_ptr<T>();
    for (int k = 0; k < n; ++k) {
        const std::int64_t atom = list ? list[k] : first + k;
        const std::int64_t row = row_of[atom];
        if (!add && row < n_owned) {
            buf += wa + wb;
            continue;
        }
        for (auto [p, w] : {std::pair<T*, std::int64_t>{pa + row * wa, wa}, {pb + row * wb, wb}}) {
            if (add)
                for (std::int64_t c = 0; c < w; ++c) p[c] += static_cast<T>(*buf++);
            else
                std::copy(buf, buf + w, p), buf += w;
        }
    }
}

// per-atom rows between ranks: features and messages, and their gradients in the backward
struct LammpsExchange : painnfx::Exchange {
    PairPainnfx* pair;
    Comm* comm;
    bool active;  // false on one rank when every ghost is an image of an owned atom: nothing to move
    LammpsExchange(PairPainnfx* p, Comm* c, bool a) : pair(p), comm(c), active(a) {}
    void run(at::Tensor& a, at::Tensor& b, bool forward) {
        if (!active) return;
        at::Tensor flat_a = a.view({a.size(0), -1}), flat_b = b.view({b.size(0), -1});  // one row per atom
        pair->comm_x = &flat_a;
        pair->comm_mu = &flat_b;
        pair->comm_width = static_cast<int>(flat_a.size(1) + flat_b.size(1));
        if (forward) comm->forward_comm(pair, pair->comm_width);
        else comm->reverse_comm(pair, pair->comm_width);
        pair->comm_x = pair->comm_mu = nullptr;
    }
    void forward(at::Tensor& a, at::Tensor& b) override { run(a, b, true); }
    void reverse(at::Tensor& a, at::Tensor& b) override { run(a, b, false); }
};

}  // namespace

PairPainnfx::PairPainnfx(LAMMPS* lmp) : Pair(lmp) {
    single_enable = 0;
    restartinfo = 0;
    one_coeff = 1;
    manybody_flag = 1;
    centroidstressflag = CENTROID_NOTAVAIL;
    no_virial_fdotr_compute = 0;
    // counters, summed over ranks by `compute pair painnfx`: owned atoms whose features were
    // computed (per layer), ghost atoms whose features were received (per exchange), edges
    // computed (per layer), exchanges per evaluation (each way)
    nextra = 4;
    pvector = new double[nextra]();
}

PairPainnfx::~PairPainnfx() {
    delete[] pvector;
    if (allocated) {
        memory->destroy(setflag);
        memory->destroy(cutsq);
    }
}

void PairPainnfx::allocate() {
    allocated = 1;
    const int n = atom->ntypes + 1;
    memory->create(setflag, n, n, "pair:setflag");
    memory->create(cutsq, n, n, "pair:cutsq");
    for (int i = 0; i < n; ++i)
        for (int j = 0; j < n; ++j) setflag[i][j] = 0;
}

void PairPainnfx::settings(int narg, char** arg) {
    if (narg != 1) error->all(FLERR, "Illegal pair_style painnfx command: expected `pair_style painnfx MODEL_FILE`");
    try {
        model = std::make_unique<painnfx::PerLayerModel>(arg[0]);
    } catch (const std::exception& e) {
        error->all(FLERR, std::string(e.what()));
    }
    comm_forward = comm_reverse = per_atom(*model);
}

void PairPainnfx::coeff(int narg, char** arg) {
    if (!model) error->all(FLERR, "pair_style painnfx: pair_coeff before pair_style");
    if (!allocated) allocate();
    const int ntypes = atom->ntypes;
    if (narg != 2 + ntypes || std::strcmp(arg[0], "*") != 0 || std::strcmp(arg[1], "*") != 0)
        error->all(FLERR, "pair_coeff for painnfx: expected `pair_coeff * * E1 ... E{}` (one element per atom type)",
                   ntypes);
    const auto& symbols = model->symbols();
    species_of_type.assign(ntypes + 1, -1);
    for (int t = 1; t <= ntypes; ++t) {
        const std::string name = arg[1 + t];
        if (name == "NULL") continue;
        int found = -1;
        for (std::size_t s = 0; s < symbols.size(); ++s)
            if (symbols[s] == name) found = static_cast<int>(s);
        if (found < 0) {
            std::string known;
            for (const auto& s : symbols) known += " " + s;
            error->all(FLERR, "pair_coeff for painnfx: element {} (atom type {}) is not in the model; it knows:{}", name,
                       t, known);
        }
        species_of_type[t] = found;
    }
    for (int i = 1; i <= ntypes; ++i)
        for (int j = i; j <= ntypes; ++j) setflag[i][j] = 1;
}

void PairPainnfx::init_style() {
    if (!model) error->all(FLERR, "pair_style painnfx: no model loaded");
    if (force->newton_pair == 0)
        error->all(FLERR, "pair_style painnfx requires `newton on` (the forces on ghost atoms go back to their owners)");
    if (std::strcmp(update->unit_style, "metal") != 0)
        error->all(FLERR, "pair_style painnfx requires `units metal` (the model works in eV and Angstrom), got units {}",
                   update->unit_style);
    neighbor->add_request(this);  // half list, newton on: every pair on one rank only
}

double PairPainnfx::init_one(int, int) { return model->cutoff(); }

void PairPainnfx::compute(int eflag, int vflag) {
    ev_init(eflag, vflag);
    double** x = atom->x;
    double** f = atom->f;
    const int* type = atom->type;
    const int nlocal = atom->nlocal;
    const int nall = nlocal + atom->nghost;
    const double cut = model->cutoff(), cutsq_model = cut * cut;

    // the model's rows: owned atoms first, then the ghosts that are not images of an owned atom;
    // a ghost that is (same atom ID) shares its owned atom's row: on one rank the model then runs
    // on exactly the periodic graph, and every edge's reverse is an edge of the list
    model_row.resize(nall);
    std::int64_t rows = nlocal;
    const bool fold = atom->map_style != Atom::MAP_NONE && atom->tag_enable;
    for (int i = 0; i < nall; ++i) {
        int owned = -1;
        if (i >= nlocal && fold) owned = atom->map(atom->tag[i]);
        model_row[i] = i < nlocal ? i : (owned >= 0 && owned < nlocal ? owned : rows++);
    }
    at::Tensor species = at::empty({rows}, at::kLong);
    auto* sp = species.mutable_data_ptr<std::int64_t>();
    for (int i = 0; i < nall; ++i) {
        const int s = species_of_type[type[i]];
        if (s < 0) error->one(FLERR, "pair_style painnfx: atom type {} is mapped to NULL but has atoms", type[i]);
        sp[model_row[i]] = s;
    }
    // both directions of each pair of the half list: i <- j and j <- i (LAMMPS indices in atoms_,
    // model rows in idx_i, idx_j; the messages into ghosts go to their owners)
    std::vector<std::int64_t> atoms_, rows_i, rows_j;
    std::vector<double> rr;
    const int inum = list->inum;
    for (int k = 0; k < inum; ++k) {
        const int i = list->ilist[k];
        const int* jlist = list->firstneigh[i];
        for (int m = 0; m < list->numneigh[i]; ++m) {
            const int j = jlist[m] & NEIGHMASK;
            const double dx = x[j][0] - x[i][0], dy = x[j][1] - x[i][1], dz = x[j][2] - x[i][2];
            if (dx * dx + dy * dy + dz * dz >= cutsq_model) continue;
            atoms_.insert(atoms_.end(), {i, j, j, i});
            rows_i.insert(rows_i.end(), {model_row[i], model_row[j]});
            rows_j.insert(rows_j.end(), {model_row[j], model_row[i]});
            rr.insert(rr.end(), {dx, dy, dz, -dx, -dy, -dz});
        }
    }
    const std::int64_t n_edges = static_cast<std::int64_t>(rows_i.size());
    const at::Tensor idx_i = at::from_blob(rows_i.data(), {n_edges}, at::kLong).clone();
    const at::Tensor idx_j = at::from_blob(rows_j.data(), {n_edges}, at::kLong).clone();
    const at::Tensor r = at::from_blob(rr.data(), {n_edges, 3}, at::kDouble).to(model->dtype());

    at::Tensor e_atom, g_r;
    painnfx::Counters counters;
    LammpsExchange exchange(this, comm, comm->nprocs > 1 || rows > nlocal);
    try {
        model->evaluate(nlocal, species, idx_i, idx_j, r, true, exchange, e_atom, g_r, counters);
    } catch (const std::exception& e) {
        error->one(FLERR, std::string("pair_style painnfx: ") + e.what());
    }
    pvector[0] = static_cast<double>(counters.owned);
    pvector[1] = static_cast<double>(counters.ghosts);
    pvector[2] = static_cast<double>(counters.edges);
    pvector[3] = static_cast<double>(counters.exchanges);

    const at::Tensor e = e_atom.to(at::kDouble).contiguous();
    const at::Tensor g = g_r.to(at::kDouble).contiguous();
    const double* pe = e.const_data_ptr<double>();
    const double* pg = g.const_data_ptr<double>();
    if (eflag_global)
        for (int i = 0; i < nlocal; ++i) eng_vdwl += pe[i];
    if (eflag_atom)
        for (int i = 0; i < nlocal; ++i) eatom[i] += pe[i];
    const bool tally = vflag_atom || (vflag_global && !vflag_fdotr);
    for (std::int64_t k = 0; k < n_edges; ++k) {
        const std::int64_t i = atoms_[2 * k], j = atoms_[2 * k + 1];
        const double gx = pg[3 * k], gy = pg[3 * k + 1], gz = pg[3 * k + 2];
        // E depends on r = x_j - x_i: the force on i is +dE/dr, on j -dE/dr
        f[i][0] += gx, f[i][1] += gy, f[i][2] += gz;
        f[j][0] -= gx, f[j][1] -= gy, f[j][2] -= gz;
        if (tally)
            ev_tally_xyz(static_cast<int>(i), static_cast<int>(j), nlocal, 1, 0.0, 0.0, gx, gy, gz, -rr[3 * k],
                         -rr[3 * k + 1], -rr[3 * k + 2]);
    }
    if (vflag_fdotr) virial_fdotr_compute();

    if (!reported) {
        reported = true;
        // one write per rank (atomic on a pipe), on stderr: never inside the thermo output
        const std::string line = "painnfx pair rank " + std::to_string(comm->me) + "/" + std::to_string(comm->nprocs) +
                                 ": owned " + std::to_string(counters.owned) + ", ghosts " +
                                 std::to_string(counters.ghosts) + " (of " + std::to_string(atom->nghost) +
                                 " in the shell; the others are images of owned atoms), edges " + std::to_string(counters.edges) +
                                 ", exchanges " + std::to_string(counters.exchanges) + ", ghost shell " +
                                 std::to_string(comm->get_comm_cutoff()) + " A; " + model->summary() + "\n";
        if (write(2, line.data(), line.size()) < 0) {}
    }
}

int PairPainnfx::pack_forward_comm(int n, int* list, double* buf, int, int*) {
    if (comm_x->scalar_type() == at::kDouble)
        pack_rows<double>(*comm_x, *comm_mu, n, list, 0, buf, model_row, atom->nlocal, false);
    else
        pack_rows<float>(*comm_x, *comm_mu, n, list, 0, buf, model_row, atom->nlocal, false);
    return n * comm_width;
}

void PairPainnfx::unpack_forward_comm(int n, int first, double* buf) {
    if (comm_x->scalar_type() == at::kDouble)
        unpack_rows<double>(*comm_x, *comm_mu, n, nullptr, first, buf, model_row, atom->nlocal, false);
    else
        unpack_rows<float>(*comm_x, *comm_mu, n, nullptr, first, buf, model_row, atom->nlocal, false);
}

int PairPainnfx::pack_reverse_comm(int n, int first, double* buf) {
    if (comm_x->scalar_type() == at::kDouble)
        pack_rows<double>(*comm_x, *comm_mu, n, nullptr, first, buf, model_row, atom->nlocal, true);
    else
        pack_rows<float>(*comm_x, *comm_mu, n, nullptr, first, buf, model_row, atom->nlocal, true);
    return n * comm_width;
}

void PairPainnfx::unpack_reverse_comm(int n, int* list, double* buf) {
    if (comm_x->scalar_type() == at::kDouble)
        unpack_rows<double>(*comm_x, *comm_mu, n, list, 0, buf, model_row, atom->nlocal, true);
    else
        unpack_rows<float>(*comm_x, *comm_mu, n, list, 0, buf, model_row, atom->nlocal, true);
}
