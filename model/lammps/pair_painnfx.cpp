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

#include <mpi.h>

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/from_blob.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <iterator>
#include <sched.h>
#include <unistd.h>

using namespace LAMMPS_NS;

namespace {

template <typename T>
MPI_Datatype mpi_type();
template <>
MPI_Datatype mpi_type<double>() { return MPI_DOUBLE; }
template <>
MPI_Datatype mpi_type<float>() { return MPI_FLOAT; }

// Two per-atom tensors (rows of wa and wb values) as one row of wa + wb values per atom.
template <typename T>
struct Rows {
    T* a;
    T* b;
    std::int64_t wa, wb;
    Rows(at::Tensor& ta, at::Tensor& tb)
        : a(ta.mutable_data_ptr<T>()), b(tb.mutable_data_ptr<T>()),
          wa(ta.numel() / std::max<std::int64_t>(ta.size(0), 1)), wb(tb.numel() / std::max<std::int64_t>(tb.size(0), 1)) {}
    std::int64_t width() const { return wa + wb; }
    T* pack(const std::vector<std::int64_t>& rows, T* buf) const {
        for (const std::int64_t row : rows) {
            buf = std::copy(a + row * wa, a + (row + 1) * wa, buf);
            buf = std::copy(b + row * wb, b + (row + 1) * wb, buf);
        }
        return buf;
    }
    // forward: the rows become the buffer's; reverse: the buffer is added to them
    void unpack(const std::vector<std::int64_t>& rows, const T* buf, bool forward) const {
        for (const std::int64_t row : rows) {
            for (auto [p, n] : {std::pair<T*, std::int64_t>{a + row * wa, wa}, {b + row * wb, wb}}) {
                if (forward) std::copy(buf, buf + n, p);
                else for (std::int64_t c = 0; c < n; ++c) p[c] += buf[c];
                buf += n;
            }
        }
    }
};

// The rows of ghosts between ranks: each rank sends the rows it owns to the ranks that need them
// (forward), and the ghost rows' sums back to their owners (reverse), nothing else (LAMMPS's own
// forward_comm would move every ghost slot: all images, and the skin's atoms that have no pair).
// Incoming blocks are added in rank order: sums do not depend on timing. An exchange is started
// (rows packed and sent) and finished (rows received) apart: the model computes in between.
struct RowExchange : painnfx::Exchange {
    PairPainnfx& pair;
    const PairPainnfx::Plan& plan;
    MPI_Comm world;
    std::vector<std::uint64_t>& buffer;  // the pair's, kept between steps: grown (and zeroed) only when too small
    RowExchange(PairPainnfx& p, MPI_Comm w, std::vector<std::uint64_t>& b) : pair(p), plan(p.plan), world(w), buffer(b) {}

    // what goes out and what comes in. forward: owned rows (send_rows) to the ranks that need
    // them, into their ghost rows (recv_rows); reverse: ghost rows back, added into the owners'
    using Blocks = std::vector<std::vector<std::int64_t>>;
    struct Sides {
        const std::vector<int>& out_ranks;
        const Blocks& out_rows;
        const std::vector<std::int64_t>& out_at;  // shared window: where each outgoing block starts
        const std::vector<int>& in_ranks;
        const Blocks& in_rows;
        const std::vector<std::int64_t>& in_at;
    };
    Sides sides(bool forward) const {
        if (forward)
            return {plan.send_ranks, plan.send_rows, plan.forward_written, plan.recv_ranks, plan.recv_rows,
                    plan.forward_read};
        return {plan.recv_ranks, plan.recv_rows, plan.reverse_written, plan.send_ranks, plan.send_rows,
                plan.reverse_read};
    }

    // the exchange under way
    at::Tensor a, b;
    bool forward = true;
    std::vector<MPI_Request> requests;       // point to point: receives, then sends
    std::vector<std::size_t> offset;         // point to point: blocks in the buffer, incoming then outgoing

    // ranks on one node: write this rank's outgoing blocks into its part of the shared window and
    // publish the exchange's number; the readers take the incoming blocks from the writers' parts
    // once those have published it. Nothing waits on MPI's progress, so the writes go out at once.
    std::uint64_t number = 0;  // shared window: this exchange's (1, 2, ... per pair style)
    template <typename T>
    void start_shared(const Rows<T>& rows, const Sides& side) {
        number = ++pair.exchanges_done;
        // the half this exchange writes was read two exchanges ago: by every rank that has since
        // started the one before this
        for (const int q : plan.partners) pair.wait_for(q, number - 1);
        T* mine = reinterpret_cast<T*>(pair.block(pair.rank, number));
        for (std::size_t k = 0; k < side.out_rows.size(); ++k) rows.pack(side.out_rows[k], mine + side.out_at[k] * rows.width());
        pair.publish(number);
    }
    template <typename T>
    void finish_shared(const Rows<T>& rows, const Sides& side) {
        for (const int q : side.in_ranks) pair.wait_for(q, number);
        MPI_Win_sync(pair.window);
        for (std::size_t k = 0; k < side.in_rows.size(); ++k) {
            const T* theirs = reinterpret_cast<const T*>(pair.block(side.in_ranks[k], number));
            rows.unpack(side.in_rows[k], theirs + side.in_at[k] * rows.width(), forward);
        }
    }

    // across nodes: MPI_Isend / MPI_Irecv with the ranks that own or need the rows
    template <typename T>
    void start_point_to_point(const Rows<T>& rows, const Sides& side) {
        const std::int64_t w = rows.width();
        offset.assign(1, 0);  // into one buffer: what comes in, per rank, then what goes out
        for (const auto& r : side.in_rows) offset.push_back(offset.back() + r.size() * w);
        for (const auto& r : side.out_rows) offset.push_back(offset.back() + r.size() * w);
        const std::size_t words = (offset.back() * sizeof(T) + sizeof(std::uint64_t) - 1) / sizeof(std::uint64_t);
        if (buffer.size() < words) buffer.resize(words);
        T* base = reinterpret_cast<T*>(buffer.data());
        const std::size_t n_in = side.in_rows.size();
        requests.assign(n_in + side.out_rows.size(), MPI_REQUEST_NULL);
        for (std::size_t k = 0; k < n_in; ++k)
            MPI_Irecv(base + offset[k], static_cast<int>(offset[k + 1] - offset[k]), mpi_type<T>(), side.in_ranks[k],
                      7417, world, &requests[k]);
        for (std::size_t k = 0; k < side.out_rows.size(); ++k) {
            T* start = base + offset[n_in + k];
            rows.pack(side.out_rows[k], start);
            MPI_Isend(start, static_cast<int>(offset[n_in + k + 1] - offset[n_in + k]), mpi_type<T>(),
                      side.out_ranks[k], 7417, world, &requests[n_in + k]);
        }
    }
    template <typename T>
    void finish_point_to_point(const Rows<T>& rows, const Sides& side) {
        MPI_Waitall(static_cast<int>(requests.size()), requests.data(), MPI_STATUSES_IGNORE);
        const T* base = reinterpret_cast<const T*>(buffer.data());
        for (std::size_t k = 0; k < side.in_rows.size(); ++k) rows.unpack(side.in_rows[k], base + offset[k], forward);
    }

    template <typename T>
    void step(bool starting) {
        const Rows<T> rows(a, b);
        const Sides side = sides(forward);
        if (pair.shared) starting ? start_shared(rows, side) : finish_shared(rows, side);
        else starting ? start_point_to_point(rows, side) : finish_point_to_point(rows, side);
    }
    void step(bool starting) { a.scalar_type() == at::kDouble ? step<double>(starting) : step<float>(starting); }
    void start(at::Tensor& x, at::Tensor& y, bool fwd) {
        a = x, b = y, forward = fwd;
        step(true);
    }

    std::int64_t boundary() const override { return pair.boundary_rows; }
    void start_forward(at::Tensor& x, at::Tensor& y) override { start(x, y, true); }
    void start_reverse(at::Tensor& x, at::Tensor& y) override { start(x, y, false); }
    void finish() override {
        step(false);
        a.reset(), b.reset();
    }
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
    if (window != MPI_WIN_NULL) MPI_Win_unlock_all(window), MPI_Win_free(&window);
    if (node != MPI_COMM_NULL) MPI_Comm_free(&node);
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
    comm_forward = 2;  // the plan's one LAMMPS exchange: each ghost's owner rank and index there
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
    // pairs with a NULL type are left to other styles of a `pair_style hybrid` (or reported unset)
    for (int i = 1; i <= ntypes; ++i)
        for (int j = i; j <= ntypes; ++j) setflag[i][j] = species_of_type[i] >= 0 && species_of_type[j] >= 0;
}

void PairPainnfx::init_style() {
    if (!model) error->all(FLERR, "pair_style painnfx: no model loaded");
    if (force->newton_pair == 0)
        error->all(FLERR, "pair_style painnfx requires `newton on` (the forces on ghost atoms go back to their owners)");
    if (std::strcmp(update->unit_style, "metal") != 0)
        error->all(FLERR, "pair_style painnfx requires `units metal` (the model works in eV and Angstrom), got units {}",
                   update->unit_style);
    if (!atom->tag_enable) error->all(FLERR, "pair_style painnfx requires atom IDs (atom_modify id yes)");
    rank = comm->me;
    if (node == MPI_COMM_NULL) {  // collective: every rank runs init_style
        MPI_Comm_split_type(world, MPI_COMM_TYPE_SHARED, comm->me, MPI_INFO_NULL, &node);
        int size = 0;
        MPI_Comm_size(node, &size);
        shared = size == comm->nprocs && comm->nprocs > 1 && std::getenv("PAINNFX_LAMMPS_P2P") == nullptr;
    }
    // the order of the axes takes() compares: the most divided axis of the processor grid first
    axes = {2, 1, 0};
    std::stable_sort(axes.begin(), axes.end(), [&](int u, int v) { return comm->procgrid[u] > comm->procgrid[v]; });
    neighbor->add_request(this, NeighConst::REQ_FULL);  // each rank takes half of the pairs it shares: takes()
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

    if (neighbor->ago == 0 || !reported) {  // atoms (and images) change only when the lists are rebuilt
        rows = assign_rows();
        build_plan(rows);
        order_owned_rows();
    }
    // an atom of a NULL type (left to another style of a hybrid) is a row with no edge (hybrid hands
    // this style a list that skips it) whose energy is not counted: it takes no part in the model
    at::Tensor species = at::empty({rows}, at::kLong);
    auto* sp = species.mutable_data_ptr<std::int64_t>();
    for (int i = 0; i < nall; ++i) sp[model_row[i]] = std::max(species_of_type[type[i]], 0);
    // both directions of each pair this rank takes: i <- j and j <- i (LAMMPS indices in atoms_,
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
            if (dx * dx + dy * dy + dz * dz >= cutsq_model || !takes(dx, dy, dz)) continue;
            if (model_row[j] >= nlocal && !in_plan[model_row[j]])
                error->one(FLERR, "pair_style painnfx: atoms moved more than the neighbor skin since the last "
                                  "neighbor list (use `neigh_modify check yes`, the default, or a larger skin)");
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
    RowExchange exchange(*this, world, exchange_buffer);
    try {
        model->evaluate(nlocal, species, idx_i, idx_j, r, true, exchange, e_atom, g_r);
    } catch (const std::exception& e) {
        error->one(FLERR, std::string("pair_style painnfx: ") + e.what());
    }
    pvector[0] = static_cast<double>(nlocal);
    std::int64_t received = 0;
    for (const auto& r : plan.recv_rows) received += static_cast<std::int64_t>(r.size());
    pvector[1] = static_cast<double>(received);
    pvector[2] = static_cast<double>(n_edges);
    pvector[3] = static_cast<double>(model->exchanges());

    const at::Tensor e = e_atom.to(at::kDouble).contiguous();
    const at::Tensor g = g_r.to(at::kDouble).contiguous();
    const double* pe = e.const_data_ptr<double>();
    const double* pg = g.const_data_ptr<double>();
    for (int i = 0; i < nlocal; ++i) {
        if (species_of_type[type[i]] < 0) continue;
        const double e_i = pe[model_row[i]];
        if (eflag_global) eng_vdwl += e_i;
        if (eflag_atom) eatom[i] += e_i;
    }
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
                                 ": owned " + std::to_string(nlocal) + ", ghosts " +
                                 std::to_string(received) + " (of " + std::to_string(atom->nghost) +
                                 " in the shell; the others are images or have no pair here), edges " + std::to_string(n_edges) +
                                 ", exchanges " + std::to_string(model->exchanges()) + ", ghost shell " +
                                 std::to_string(comm->get_comm_cutoff()) + " A, threads " +
                                 std::to_string(at::get_num_threads()) + "; " + model->summary() + "\n";
        if (write(2, line.data(), line.size()) < 0) {}
    }
}

// The rows: owned atoms first, then one row per ghost atom ID that is not owned here (its first
// image: LAMMPS's atom map returns the lowest index of an ID); every image of an atom shares its
// row, features being translation invariant. On one rank every ghost is an image of an owned atom:
// the model runs on exactly the periodic graph, and every edge's reverse is an edge of the list.
std::int64_t PairPainnfx::assign_rows() {
    const int nlocal = atom->nlocal, nall = nlocal + atom->nghost;
    const bool by_id = atom->map_style != Atom::MAP_NONE && atom->tag_enable;
    model_row.resize(nall);
    std::int64_t rows = nlocal;
    for (int i = 0; i < nall; ++i) {
        const int first = i >= nlocal && by_id ? atom->map(atom->tag[i]) : i;
        model_row[i] = i < nlocal ? i : (first >= 0 && first < i ? model_row[first] : rows++);
    }
    return rows;
}

// Whether this rank computes the pair of its owned atom i and an atom j (r = x_j - x_i) of its full
// list: every pair of atoms is listed from both of its atoms (on one rank or two), and exactly one
// side takes it: the one that sees r > 0 lexicographically, axes in the order of `axes` (the
// processor grid's most divided axis first). A rank thus takes the pairs across the upper faces of
// its subdomain along that axis and needs only the ghosts on that side; two ranks take the same
// number of pairs (LAMMPS's newton half list split them 82,028 : 85,972 edges at 4000 Cu atoms).
bool PairPainnfx::takes(double dx, double dy, double dz) const {
    const double d[3] = {dx, dy, dz};
    const double a = d[axes[0]], b = d[axes[1]], c = d[axes[2]];
    return a > 0 || (a == 0 && (b > 0 || (b == 0 && c > 0)));
}

// Which rows this rank needs from which rank: the ghosts its neighbor list pairs with an owned
// atom (lists include the skin: the plan holds until the next rebuild), by owner, found with one
// LAMMPS forward exchange of (owner rank, index there); each owner is then told which of its
// atoms to send (MPI_Alltoall of counts, MPI_Alltoallv of indices). Collective: every rank builds
// it at the same step.
void PairPainnfx::build_plan(std::int64_t rows) {
    const int nlocal = atom->nlocal, nall = nlocal + atom->nghost, nprocs = comm->nprocs;
    owner.assign(2 * static_cast<std::size_t>(nall), -1.0);
    for (int i = 0; i < nlocal; ++i) owner[2 * i] = comm->me, owner[2 * i + 1] = i;
    comm->forward_comm(this, 2);
    std::vector<int> first_atom(rows, -1);  // per ghost row: the LAMMPS index that holds it first
    for (int i = nall - 1; i >= nlocal; --i)
        if (model_row[i] >= nlocal) first_atom[model_row[i]] = i;
    std::vector<char> needed(rows, 0);
    for (int k = 0; k < list->inum; ++k) {
        const int i = list->ilist[k];
        for (int m = 0; m < list->numneigh[i]; ++m) {
            // the pairs this rank takes now, or may take before the next rebuild (atoms move less
            // than the skin relative to each other between rebuilds: takes() cannot turn before)
            const int j = list->firstneigh[i][m] & NEIGHMASK;
            if (atom->x[j][axes[0]] - atom->x[i][axes[0]] > -neighbor->skin) needed[model_row[j]] = 1;
        }
    }
    std::vector<std::vector<std::int64_t>> rows_from(nprocs), index_at(nprocs);
    for (std::int64_t row = nlocal; row < rows; ++row) {
        if (!needed[row]) continue;
        const int i = first_atom[row];
        const int q = static_cast<int>(owner[2 * i]);
        if (q < 0 || q >= nprocs) error->one(FLERR, "pair_style painnfx: ghost atom {} has no owner", i);
        rows_from[q].push_back(row);
        index_at[q].push_back(static_cast<std::int64_t>(owner[2 * i + 1]));
    }
    std::vector<int> counts(nprocs), wanted(nprocs);
    for (int q = 0; q < nprocs; ++q) counts[q] = static_cast<int>(rows_from[q].size());
    MPI_Alltoall(counts.data(), 1, MPI_INT, wanted.data(), 1, MPI_INT, world);
    std::vector<int> sdispl(nprocs + 1, 0), rdispl(nprocs + 1, 0);
    for (int q = 0; q < nprocs; ++q) sdispl[q + 1] = sdispl[q] + counts[q], rdispl[q + 1] = rdispl[q] + wanted[q];
    std::vector<std::int64_t> sendbuf(sdispl[nprocs]), recvbuf(rdispl[nprocs]);
    for (int q = 0; q < nprocs; ++q) std::copy(index_at[q].begin(), index_at[q].end(), sendbuf.begin() + sdispl[q]);
    MPI_Alltoallv(sendbuf.data(), counts.data(), sdispl.data(), MPI_INT64_T, recvbuf.data(), wanted.data(),
                  rdispl.data(), MPI_INT64_T, world);
    plan = {};
    in_plan.assign(needed.begin(), needed.end());
    for (int q = 0; q < nprocs; ++q) {
        if (counts[q]) plan.recv_ranks.push_back(q), plan.recv_rows.push_back(std::move(rows_from[q]));
        if (wanted[q]) {
            plan.send_ranks.push_back(q);
            plan.send_rows.emplace_back(recvbuf.begin() + rdispl[q], recvbuf.begin() + rdispl[q + 1]);
            for (const std::int64_t a : plan.send_rows.back())
                if (a < 0 || a >= nlocal) error->one(FLERR, "pair_style painnfx: rank {} asked for atom {} of {}", q, a,
                                                     nlocal);
        }
    }
    if (!shared) return;
    std::set_union(plan.send_ranks.begin(), plan.send_ranks.end(), plan.recv_ranks.begin(), plan.recv_ranks.end(),
                   std::back_inserter(plan.partners));
    // where each block sits in its writer's part, told to its reader (rows; -1: no block)
    std::vector<std::int64_t> told(2 * nprocs, -1), heard(2 * nprocs, -1);
    std::int64_t forward_rows = 0, reverse_rows = 0;
    for (std::size_t k = 0; k < plan.send_ranks.size(); ++k) {
        plan.forward_written.push_back(forward_rows);
        told[2 * plan.send_ranks[k]] = forward_rows;
        forward_rows += static_cast<std::int64_t>(plan.send_rows[k].size());
    }
    for (std::size_t k = 0; k < plan.recv_ranks.size(); ++k) {
        plan.reverse_written.push_back(reverse_rows);
        told[2 * plan.recv_ranks[k] + 1] = reverse_rows;
        reverse_rows += static_cast<std::int64_t>(plan.recv_rows[k].size());
    }
    MPI_Alltoall(told.data(), 2, MPI_INT64_T, heard.data(), 2, MPI_INT64_T, world);
    for (const int q : plan.recv_ranks) plan.forward_read.push_back(heard[2 * q]);
    for (const int q : plan.send_ranks) plan.reverse_read.push_back(heard[2 * q + 1]);
    // two halves, each for the widest exchange (x and mu: 6F values per row) in float64
    grow_window(2 * static_cast<std::size_t>(std::max(forward_rows, reverse_rows)) * 6 * model->features() *
                sizeof(double));
}

// The owned atoms' model rows: those other ranks hold as ghosts first (the boundary, rows
// 0..boundary_rows-1), then the others in LAMMPS's order, so that the model computes the boundary's
// rows before an exchange and the interior's while it runs. Images of owned atoms follow them.
void PairPainnfx::order_owned_rows() {
    const int nlocal = atom->nlocal;
    std::vector<char> sent(nlocal, 0);
    for (const auto& atoms : plan.send_rows)
        for (const std::int64_t a : atoms) sent[a] = 1;
    std::vector<std::int64_t> row_of(nlocal);
    std::int64_t next = 0;
    for (int i = 0; i < nlocal; ++i)
        if (sent[i]) row_of[i] = next++;
    boundary_rows = next;
    for (int i = 0; i < nlocal; ++i)
        if (!sent[i]) row_of[i] = next++;
    for (auto& row : model_row)
        if (row < nlocal) row = row_of[row];
    for (auto& atoms : plan.send_rows)
        for (auto& a : atoms) a = row_of[a];
}

// (Re)allocates the node-shared window when a rank's part is too small: collective, every rank
// decides the same from the largest need.
void PairPainnfx::grow_window(std::size_t bytes) {
    const std::size_t usable = window == MPI_WIN_NULL ? 0 : 2 * half_bytes(rank);
    unsigned long long need = bytes > usable ? bytes : 0, largest = 0;
    MPI_Allreduce(&need, &largest, 1, MPI_UNSIGNED_LONG_LONG, MPI_MAX, world);
    if (largest == 0 && window != MPI_WIN_NULL) return;
    if (window != MPI_WIN_NULL) MPI_Win_unlock_all(window), MPI_Win_free(&window);
    // halves of a multiple of 64 bytes: every rank's part (they follow each other) and every half
    // starts on a cache line
    window_bytes = HEADER + (std::max<std::size_t>({bytes + bytes / 4, 2 * window_bytes, 128}) + 127) / 128 * 128;
    char* base = nullptr;
    MPI_Win_allocate_shared(static_cast<MPI_Aint>(window_bytes), 1, MPI_INFO_NULL, node, &base, &window);
    MPI_Win_lock_all(MPI_MODE_NOCHECK, window);
    part.assign(comm->nprocs, nullptr);
    part_bytes.assign(comm->nprocs, 0);
    for (int q = 0; q < comm->nprocs; ++q) {
        MPI_Aint size = 0;
        int unit = 0;
        MPI_Win_shared_query(window, q, &size, &unit, &part[q]);
        part_bytes[q] = static_cast<std::size_t>(size);
    }
    counter(rank).store(exchanges_done, std::memory_order_release);
    MPI_Win_sync(window);
    MPI_Barrier(node);  // every counter set before anyone reads one
}

// The window: per rank a part of [its exchange counter, 64 bytes][two halves of rows, used in turn].
std::size_t PairPainnfx::half_bytes(int q) const { return (part_bytes[q] - HEADER) / 128 * 64; }

char* PairPainnfx::block(int q, std::uint64_t number) const {
    return part[q] + HEADER + (number % 2) * half_bytes(q);
}

std::atomic_ref<std::uint64_t> PairPainnfx::counter(int q) const {
    return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(part[q]));
}

// This rank's rows of exchange `number` are written.
void PairPainnfx::publish(std::uint64_t number) {
    MPI_Win_sync(window);
    counter(rank).store(number, std::memory_order_release);
}

// Until rank q has published exchange `number`: spinning, then yielding the core (ranks may
// outnumber cores).
void PairPainnfx::wait_for(int q, std::uint64_t number) const {
    const auto published = counter(q);
    for (int spin = 0; published.load(std::memory_order_acquire) < number; ++spin)
        if (spin >= 256) sched_yield();
}

int PairPainnfx::pack_forward_comm(int n, int* list, double* buf, int, int*) {
    for (int k = 0; k < n; ++k) *buf++ = owner[2 * list[k]], *buf++ = owner[2 * list[k] + 1];
    return 2 * n;
}

void PairPainnfx::unpack_forward_comm(int n, int first, double* buf) {
    for (int k = first; k < first + n; ++k) owner[2 * k] = *buf++, owner[2 * k + 1] = *buf++;
}
