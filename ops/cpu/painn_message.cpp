// CPU kernels of the fused ops (painnfx.ops.cpu), compiled on first use by the host C++
// compiler with OpenMP. The per-edge radial maths is radial.cuh, the header the CUDA kernels
// compile too, so the CPU and CUDA kernels cannot drift apart.
//
// * message forward: one range of consecutive destination atoms per thread (the CSR of prepare_edges);
//   the filter rows W = (bias + wt^T phi) fc of a tile of up to 8 edges are one small (8, K) x (K, 3F)
//   product with register-blocked accumulators (filter_tile), used at once and dropped: no (E, 3F) array.
//   Each pair's filter once: where an edge's reverse (prepare_edges' `reverse`) has both atoms in the
//   thread's range, the edge with the smaller index computes the rows for both directions and adds the
//   partner's terms (direction -u) into the other atom's row, which only this thread writes.
// * message backward: one range of source atoms per thread (the CSC), the rows a = bias + wt^T phi and
//   b = wt^T phi' tiled the same way and shared by a pair the same way: dL/dx_j, dL/dmu_j accumulate per
//   atom, dL/dr is written per edge. When the filter weights need gradients, each of P fixed chunks of
//   atoms sums dL/dWf, dL/dbf into its own partial, added in chunk order afterwards, every edge alone
//   (those then do not depend on the thread count). No atomics anywhere.
// * radial filter forward/backward: OpenMP over tiles of consecutive edges through the same
//   filter_tile product (fixed chunks of edges for the weight gradient).
// * subnormals: every thread that runs a kernel (the caller and the OpenMP workers) flushes
//   them for the duration of the call (FlushDenormals) and gets its own state back afterwards.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "cpu_common.h"
#include "radial.cuh"

#if defined(PAINNFX_LIBMVEC)
// glibc's vector maths (libmvec: exp, sin, cos on 2-16 lanes, SSE to AVX-512, within 4 ulp),
// declared the way glibc's own <math.h> does under -ffast-math, which we do not use: a loop under
// `omp simd` that calls them becomes calls of their vector variants (build.py links -lmvec where
// the build finds it; elsewhere the loops below call the scalar functions).
extern "C" {
__attribute__((simd("notinbranch"))) double exp(double) noexcept;
__attribute__((simd("notinbranch"))) float expf(float) noexcept;
}
#endif

namespace {

// phi_k(d) for k < K (and dphi_k/dd where dphi is not null): radial_basis over one edge's row.
// The Gaussian basis (the default) in one loop the compiler vectorises: its K exponentials and
// divisions were a scalar call each (vectorised, the message ops took 5-10% less; docs/ops.md).
template <typename T>
inline void basis_row(int basis, T d, const T* __restrict p0, const T* __restrict p1, int K, T* __restrict phi,
                      T* __restrict dphi) {
    if (basis == PAINNFX_BASIS_GAUSSIAN && p1) {
        if (dphi) {
#pragma omp simd
            for (int k = 0; k < K; ++k) phi[k] = radial_basis<T>(PAINNFX_BASIS_GAUSSIAN, d, p0[k], p1[k], dphi + k);
        } else {
#pragma omp simd
            for (int k = 0; k < K; ++k)
                phi[k] = radial_basis<T>(PAINNFX_BASIS_GAUSSIAN, d, p0[k], p1[k], (T*)nullptr);
        }
        return;
    }
    for (int k = 0; k < K; ++k) phi[k] = radial_basis<T>(basis, d, p0[k], p1 ? p1[k] : T(0), dphi ? dphi + k : nullptr);
}

// The edges of one tile and what their rows need: edge index, distance, cutoff, its slope, direction.
template <typename T>
struct EdgeTile {
    int n = 0;
    std::int64_t e[TILE];
    T d[TILE], fc[TILE], dfc[TILE], u[TILE][3];
    bool paired[TILE];  // the edge leads a pair: its partner's terms are added with it

    void add(std::int64_t edge, T dist, T cut, T dcut, const T* dir, bool pair = false) {
        paired[n] = pair;
        e[n] = edge;
        d[n] = dist;
        fc[n] = cut;
        dfc[n] = dcut;
        u[n][0] = dir[0];
        u[n][1] = dir[1];
        u[n][2] = dir[2];
        ++n;
    }
};

template <typename T>
inline T geometry(const T* r, std::int64_t e, T* u) {
    const T rx = r[3 * e], ry = r[3 * e + 1], rz = r[3 * e + 2];
    const T d = sqrt(rx * rx + ry * ry + rz * rz);
    u[0] = rx / d;
    u[1] = ry / d;
    u[2] = rz / d;
    return d;
}

// Atom ranges, one per thread: consecutive atoms, cut where the row pointers `ptr` pass equal shares
// of the edges, at least RANGE_EDGES edges each (fewer: one range, no thread wakes for a small molecule).
// A range writes only its own atoms' rows, so the two edges of a pair whose atoms both lie in one range
// are that range's alone: the edge with the smaller index computes the pair's filter rows once and
// adds both directions' terms. A pair across two ranges is computed once by each, per edge.
constexpr std::int64_t RANGE_EDGES = 256;

inline std::vector<std::int64_t> atom_ranges(const std::int64_t* ptr, std::int64_t N, int threads) {
    const std::int64_t E = ptr[N];
    const std::int64_t R = std::max<std::int64_t>(1, std::min<std::int64_t>(threads, E / RANGE_EDGES));
    std::vector<std::int64_t> bounds(R + 1, N);
    bounds[0] = 0;
    for (std::int64_t k = 1; k < R; ++k)
        bounds[k] = std::max(bounds[k - 1], std::int64_t(std::lower_bound(ptr, ptr + N + 1, k * E / R) - ptr));
    return bounds;
}

// The ranges of fixed chunks of atoms (P of them, whatever the thread count), for a backward that sums
// weight gradients: each chunk sums its own partial, so the result does not depend on the threads.
inline std::vector<std::int64_t> atom_chunks(std::int64_t N, int P) {
    std::vector<std::int64_t> bounds(P + 1);
    for (int c = 0; c <= P; ++c) bounds[c] = c * N / P;
    return bounds;
}

// One edge's message into its destination's accumulators q (F) and m (3F): source features xs (3F)
// and mus (3F; null in the first layer), the filter row w (3F, before the cutoff), cutoff value fc,
// direction u.
template <typename T>
inline void add_message(const T* __restrict w, T fc, const T* u, const T* __restrict xs, const T* __restrict mus,
                        int F, T* __restrict q, T* __restrict m) {
#pragma omp simd
    for (int f = 0; f < F; ++f) {
        q[f] += fc * w[f] * xs[f];
        const T mr = fc * w[F + f] * xs[F + f];
        m[f] += mr * u[0];
        m[F + f] += mr * u[1];
        m[2 * F + f] += mr * u[2];
    }
    if (mus) {
#pragma omp simd
        for (int f = 0; f < F; ++f) {
            const T mv = fc * w[2 * F + f] * xs[2 * F + f];
            m[f] += mv * mus[f];
            m[F + f] += mv * mus[F + f];
            m[2 * F + f] += mv * mus[2 * F + f];
        }
    }
}

// Whether edge e, between an atom of [lo, hi) and atom `other`, is one of a pair this range computes
// once (e then leads: its partner is skipped), and whether to skip e (its partner leads).
struct Pairing {
    bool paired, skip;
};

inline Pairing pairing(const std::int64_t* rev, std::int64_t e, std::int64_t other, std::int64_t lo, std::int64_t hi,
                       std::int64_t E) {
    const std::int64_t partner = rev ? rev[e] : -1;
    const bool paired = partner >= 0 && partner < E && other >= lo && other < hi;
    return {paired, paired && partner < e};
}

// Fills `tile` from the edges perm[s .. end) of one atom (s moves past every edge looked at) until it
// holds TILE: an edge whose partner leads its pair is skipped, and for the others
// keep(edge, distance, direction, leads a pair) adds what the kernel needs to the tile, or nothing
// (an edge with nothing to contribute).
template <typename T, typename Keep>
inline void gather_tile(EdgeTile<T>& tile, const T* r, const std::int64_t* perm, std::int64_t& s, std::int64_t end,
                        const std::int64_t* rev, const std::int64_t* other, std::int64_t lo, std::int64_t hi,
                        std::int64_t E, Keep&& keep) {
    tile.n = 0;
    for (; s < end && tile.n < TILE; ++s) {
        const std::int64_t e = perm[s];
        const Pairing pair = pairing(rev, e, other[e], lo, hi, E);
        if (pair.skip) continue;
        T u[3];
        const T d = geometry(r, e, u);
        keep(e, d, u, pair.paired);
    }
}

template <typename T>
void message_forward(const T* r, const std::int64_t* dst_ptr, const std::int64_t* dst_perm, const std::int64_t* idx_j,
                     const std::int64_t* rev, const T* x, const T* mu, const T* wt, const T* bias, const T* p0,
                     const T* p1, int basis, int cutoff, T c0, T c1, std::int64_t N, int F, int K, T* dq, T* dmu,
                     int threads) {
    const int F3 = 3 * F;
    const std::int64_t E = dst_ptr[N];
    const std::vector<std::int64_t> bounds = atom_ranges(dst_ptr, N, threads);
    const int R = int(bounds.size()) - 1;
#pragma omp parallel num_threads(R) if (R > 1)
    {
        const FlushDenormals flush;
        std::vector<T> w((std::size_t)TILE * F3), aq(F), am(F3), phi((std::size_t)TILE * K, T(0));
        EdgeTile<T> tile;
#pragma omp for schedule(static, 1)
        for (int range = 0; range < R; ++range) {
            const std::int64_t lo = bounds[range], hi = bounds[range + 1];
            std::fill(dq + lo * F, dq + hi * F, T(0));  // a pair's reverse terms may arrive before the atom's own
            std::fill(dmu + lo * F3, dmu + hi * F3, T(0));
            for (std::int64_t i = lo; i < hi; ++i) {
                T* __restrict q = aq.data();
                T* __restrict m = am.data();
                std::memcpy(q, dq + i * F, sizeof(T) * F);
                std::memcpy(m, dmu + i * F3, sizeof(T) * F3);
                const T* xi = x + i * F3;
                const T* mui = mu ? mu + i * F3 : nullptr;
                std::int64_t s = dst_ptr[i];
                while (s < dst_ptr[i + 1]) {
                    // the edges inside the cutoff
                    gather_tile(tile, r, dst_perm, s, dst_ptr[i + 1], rev, idx_j, lo, hi, E,
                                [&](std::int64_t e, T d, const T* u, bool paired) {
                                    const T fc = cutoff_fn<T>(cutoff, d, c0, c1, (T*)nullptr);
                                    if (fc == T(0)) return;
                                    basis_row(basis, d, p0, p1, K, phi.data() + tile.n * K, (T*)nullptr);
                                    tile.add(e, d, fc, T(0), u, paired);
                                });
                    if (tile.n == 0) break;
                    filter_tile(wt, bias, phi.data(), K, F3, tile.n, w.data());
                    for (int t = 0; t < tile.n; ++t) {
                        const std::int64_t e = tile.e[t], j = idx_j[e];
                        const T* u = tile.u[t];
                        const T* wv = w.data() + (std::int64_t)t * F3;
                        add_message(wv, tile.fc[t], u, x + j * F3, mu ? mu + j * F3 : nullptr, F, q, m);
                        if (!tile.paired[t]) continue;
                        const T back[3] = {-u[0], -u[1], -u[2]};  // the partner (j <- i): same rows, -u
                        if (j == i)  // an atom's edges to two opposite images of itself
                            add_message(wv, tile.fc[t], back, xi, mui, F, q, m);
                        else
                            add_message(wv, tile.fc[t], back, xi, mui, F, dq + j * F, dmu + j * F3);
                    }
                }
                std::memcpy(dq + i * F, q, sizeof(T) * F);
                std::memcpy(dmu + i * F3, m, sizeof(T) * F3);
            }
        }
    }
}

// One edge's backward, from its destination's gradients gqi (F), gmi (3F) and its source's features xs,
// mus (3F): adds dL/dx_s, dL/dmu_s to the accumulators xa, ma and writes dL/dr_e to gre (3), in one
// pass over the features (the dot products with the rows and the direction's gradient are summed in
// the same loop: as three loops over a stored dL/d(row), loads and stores bounded it). av, bv: the rows
// bias + wt^T phi and wt^T phi'. G: also write the edge's dL/d(row) / fc to g (3F), for the weight
// gradients. MU: whether the layer has vector features (a compile-time case: as a run-time test
// inside the `omp simd` loop it kept the loop scalar, and the first layer's backward ran 8.4 ms
// against the others' 3.0 ms, 108-atom Cu cell, fp64, in the graph).
template <typename T, bool MU, bool G>
inline void edge_backward(const T* __restrict gqi, const T* __restrict gmi, const T* __restrict xs,
                          const T* __restrict mus, const T* __restrict av, const T* __restrict bv, T d, T fc, T dfc,
                          const T* u, int F, T* __restrict g, T* __restrict xa, T* __restrict ma, T* gre) {
    T sb = 0, sa = 0, gu0 = 0, gu1 = 0, gu2 = 0;
#pragma omp simd reduction(+ : sb, sa, gu0, gu1, gu2)
    for (int f = 0; f < F; ++f) {
        const T q0 = gmi[f], q1 = gmi[F + f], q2 = gmi[2 * F + f];
        const T tu = u[0] * q0 + u[1] * q1 + u[2] * q2;
        const T sv = MU ? q0 * mus[f] + q1 * mus[F + f] + q2 * mus[2 * F + f] : T(0);
        const T g0 = gqi[f] * xs[f], g1 = tu * xs[F + f], g2 = sv * xs[2 * F + f];
        if (G) {
            g[f] = g0;
            g[F + f] = g1;
            g[2 * F + f] = g2;
        }
        sb += g0 * bv[f] + g1 * bv[F + f] + g2 * bv[2 * F + f];
        sa += g0 * av[f] + g1 * av[F + f] + g2 * av[2 * F + f];
        xa[f] += gqi[f] * av[f] * fc;
        xa[F + f] += tu * av[F + f] * fc;
        xa[2 * F + f] += sv * av[2 * F + f] * fc;
        if (MU) {  // dL/dmu_s (no mu: nothing asks for it)
            const T wx = av[2 * F + f] * fc * xs[2 * F + f];
            ma[f] += q0 * wx;
            ma[F + f] += q1 * wx;
            ma[2 * F + f] += q2 * wx;
        }
        const T vr = av[F + f] * xs[F + f];
        gu0 += q0 * vr;
        gu1 += q1 * vr;
        gu2 += q2 * vr;
    }
    const T gd = fc * sb + dfc * sa;
    gu0 *= fc;
    gu1 *= fc;
    gu2 *= fc;
    const T dot = gu0 * u[0] + gu1 * u[1] + gu2 * u[2];
    gre[0] = gd * u[0] + (gu0 - dot * u[0]) / d;
    gre[1] = gd * u[1] + (gu1 - dot * u[1]) / d;
    gre[2] = gd * u[2] + (gu2 - dot * u[2]) / d;
}

// The backward walks source atoms (the CSC). Without weight gradients: one atom range per thread, pairs
// inside a range computed once (as the forward). With them (partial not null): P fixed chunks of atoms,
// each summing dL/dWf, dL/dbf into its own partial, every edge by itself.
template <typename T, bool MU>
void message_backward(const T* gq, const T* gmu, const T* r, const std::int64_t* src_ptr,
                      const std::int64_t* src_perm, const std::int64_t* idx_i, const std::int64_t* rev, const T* x,
                      const T* mu, const T* wt, const T* bias, const T* p0, const T* p1, int basis, int cutoff, T c0,
                      T c1, std::int64_t N, int F, int K, T* gr, T* gx, T* gmu_in, T* partial, int P, int threads) {
    const int F3 = 3 * F, K1 = K + 1;
    const std::int64_t E = src_ptr[N];
    if (partial) rev = nullptr;
    const std::vector<std::int64_t> bounds = partial ? atom_chunks(N, P) : atom_ranges(src_ptr, N, threads);
    const int R = int(bounds.size()) - 1;
#pragma omp parallel num_threads(std::min(R, threads)) if (R > 1 && threads > 1)
    {
        const FlushDenormals flush;
        std::vector<T> a((std::size_t)TILE * F3), b((std::size_t)TILE * F3), gw(F3), ax(F3), am(F3);
        std::vector<T> phi((std::size_t)TILE * K, T(0)), dphi((std::size_t)TILE * K, T(0));
        EdgeTile<T> tile;
#pragma omp for schedule(dynamic, 1)
        for (int range = 0; range < R; ++range) {
            const std::int64_t lo = bounds[range], hi = bounds[range + 1];
            T* __restrict part = partial ? partial + (std::int64_t)range * F3 * K1 : nullptr;
            if (part) std::fill(part, part + (std::int64_t)F3 * K1, T(0));
            std::fill(gx + lo * F3, gx + hi * F3, T(0));
            if (MU) std::fill(gmu_in + lo * F3, gmu_in + hi * F3, T(0));
            for (std::int64_t j = lo; j < hi; ++j) {
                T* __restrict xa = ax.data();
                T* __restrict ma = am.data();
                std::memcpy(xa, gx + j * F3, sizeof(T) * F3);
                if (MU) std::memcpy(ma, gmu_in + j * F3, sizeof(T) * F3);
                const T* __restrict xj = x + j * F3;
                const T* __restrict muj = MU ? mu + j * F3 : nullptr;
                std::int64_t s = src_ptr[j];
                while (s < src_ptr[j + 1]) {
                    // the edges with a non-zero cutoff or cutoff slope (the others' dL/dr is 0)
                    gather_tile(tile, r, src_perm, s, src_ptr[j + 1], rev, idx_i, lo, hi, E,
                                [&](std::int64_t e, T d, const T* u, bool paired) {
                                    T dfc;
                                    const T fc = cutoff_fn<T>(cutoff, d, c0, c1, &dfc);
                                    if (fc == T(0) && dfc == T(0)) {
                                        std::fill(gr + 3 * e, gr + 3 * e + 3, T(0));
                                        if (paired) std::fill(gr + 3 * rev[e], gr + 3 * rev[e] + 3, T(0));
                                        return;
                                    }
                                    const int row = tile.n * K;
                                    basis_row(basis, d, p0, p1, K, phi.data() + row, dphi.data() + row);
                                    tile.add(e, d, fc, dfc, u, paired);
                                });
                    if (tile.n == 0) break;
                    filter_tile(wt, bias, phi.data(), K, F3, tile.n, a.data());  // a = bias + wt^T phi
                    filter_tile(wt, (const T*)nullptr, dphi.data(), K, F3, tile.n, b.data());  // b = wt^T phi'
                    for (int t = 0; t < tile.n; ++t) {
                        const std::int64_t e = tile.e[t], i = idx_i[e];
                        const T d = tile.d[t], fc = tile.fc[t], dfc = tile.dfc[t];
                        const T* u = tile.u[t];
                        const T* av = a.data() + (std::int64_t)t * F3;
                        const T* bv = b.data() + (std::int64_t)t * F3;
                        if (part) {
                            edge_backward<T, MU, true>(gq + i * F, gmu + i * F3, xj, muj, av, bv, d, fc, dfc, u, F,
                                                       gw.data(), xa, ma, gr + 3 * e);
                            const T* ph = phi.data() + (std::int64_t)t * K;
                            for (int c = 0; c < F3; ++c) {
                                const T gc = gw[c] * fc;
                                T* __restrict prow = part + (std::int64_t)c * K1;
#pragma omp simd
                                for (int k = 0; k < K; ++k) prow[k] += gc * ph[k];
                                prow[K] += gc;
                            }
                            continue;  // (no pairs when weight gradients are summed)
                        }
                        edge_backward<T, MU, false>(gq + i * F, gmu + i * F3, xj, muj, av, bv, d, fc, dfc, u, F,
                                                    nullptr, xa, ma, gr + 3 * e);
                        if (!tile.paired[t]) continue;
                        // the partner (j <- i): the same rows, direction -u, source i, destination j
                        const T back[3] = {-u[0], -u[1], -u[2]};
                        const T* xi = x + i * F3;
                        const T* mui = MU ? mu + i * F3 : nullptr;
                        T* into_x = i == j ? xa : gx + i * F3;
                        T* into_mu = i == j ? ma : (MU ? gmu_in + i * F3 : nullptr);
                        edge_backward<T, MU, false>(gq + j * F, gmu + j * F3, xi, mui, av, bv, d, fc, dfc, back, F,
                                                    nullptr, into_x, into_mu, gr + 3 * rev[e]);
                    }
                }
                std::memcpy(gx + j * F3, xa, sizeof(T) * F3);
                if (MU) std::memcpy(gmu_in + j * F3, ma, sizeof(T) * F3);
            }
        }
    }
}

// The radial filter alone, (E, C) = (phi(d) Wf^T + bf) * fc(d), for a filter that has consumers besides
// the message kernels: consecutive edges inside the cutoff go through filter_tile in tiles of TILE.
template <typename T>
void filter_forward(const T* d, const T* wt, const T* bias, const T* p0, const T* p1, int basis, int cutoff, T c0,
                    T c1, std::int64_t E, int C, int K, T* out, int threads) {
    const std::int64_t tiles = (E + TILE - 1) / TILE;
#pragma omp parallel num_threads(threads)
    {
        const FlushDenormals flush;
        std::vector<T> rows((std::int64_t)TILE * C);
        T phi[TILE * MAX_K], fc[TILE];
        std::int64_t edge[TILE];
#pragma omp for schedule(static)
        for (std::int64_t tile = 0; tile < tiles; ++tile) {
            int n = 0;
            for (std::int64_t e = tile * TILE; e < std::min(E, (tile + 1) * TILE); ++e) {
                const T f = cutoff_fn<T>(cutoff, d[e], c0, c1, (T*)nullptr);
                if (f == T(0)) {
                    std::fill(out + e * C, out + (e + 1) * C, T(0));
                    continue;
                }
                basis_row(basis, d[e], p0, p1, K, phi + n * K, (T*)nullptr);
                fc[n] = f;
                edge[n++] = e;
            }
            if (n == 0) continue;
            filter_tile(wt, bias, phi, K, C, n, rows.data());
            for (int t = 0; t < n; ++t) {
                const T* row = rows.data() + (std::int64_t)t * C;
                T* o = out + edge[t] * C;
                const T f = fc[t];
#pragma omp simd
                for (int c = 0; c < C; ++c) o[c] = row[c] * f;
            }
        }
    }
}

// Its backward: gd[e] = fc g.(Wf phi') + fc' g.(Wf phi + bf), and per chunk of edges the partial
// sums of the weight and bias gradients (rows c: sum_e fc g_c phi_k, then sum_e fc g_c). The rows
// a = bf + Wf phi and b = Wf phi' of a tile come from two filter_tile products.
template <typename T>
void filter_backward(const T* grad, const T* d, const T* wt, const T* bias, const T* p0, const T* p1, int basis,
                     int cutoff, T c0, T c1, std::int64_t E, int C, int K, T* gd, T* partial, int P, int threads) {
    const int K1 = K + 1;
#pragma omp parallel num_threads(threads)
    {
        const FlushDenormals flush;
        std::vector<T> a((std::int64_t)TILE * C), b((std::int64_t)TILE * C);
        T phi[TILE * MAX_K], dphi[TILE * MAX_K], fc[TILE], dfc[TILE];
        std::int64_t edge[TILE];
#pragma omp for schedule(dynamic, 1)
        for (int chunk = 0; chunk < P; ++chunk) {
            T* part = partial ? partial + (std::int64_t)chunk * C * K1 : nullptr;
            if (part) std::fill(part, part + (std::int64_t)C * K1, T(0));
            const std::int64_t last = (chunk + 1) * E / P;
            for (std::int64_t e = chunk * E / P; e < last;) {
                int n = 0;
                for (; e < last && n < TILE; ++e) {
                    T slope;
                    const T f = cutoff_fn<T>(cutoff, d[e], c0, c1, &slope);
                    if (f == T(0) && slope == T(0)) {
                        gd[e] = T(0);
                        continue;
                    }
                    basis_row(basis, d[e], p0, p1, K, phi + n * K, dphi + n * K);
                    fc[n] = f;
                    dfc[n] = slope;
                    edge[n++] = e;
                }
                if (n == 0) continue;
                filter_tile(wt, bias, phi, K, C, n, a.data());
                filter_tile(wt, (const T*)nullptr, dphi, K, C, n, b.data());
                for (int t = 0; t < n; ++t) {
                    const T* g = grad + edge[t] * C;
                    const T* at = a.data() + (std::int64_t)t * C;
                    const T* bt = b.data() + (std::int64_t)t * C;
                    T s1 = 0, s2 = 0;
#pragma omp simd reduction(+ : s1, s2)
                    for (int c = 0; c < C; ++c) {
                        s1 += g[c] * bt[c];
                        s2 += g[c] * at[c];
                    }
                    gd[edge[t]] = fc[t] * s1 + dfc[t] * s2;
                    if (part) {
                        const T* ph = phi + t * K;
                        for (int c = 0; c < C; ++c) {
                            const T gc = g[c] * fc[t];
                            T* prow = part + (std::int64_t)c * K1;
                            for (int k = 0; k < K; ++k) prow[k] += gc * ph[k];
                            prow[K] += gc;
                        }
                    }
                }
            }
        }
    }
}

}  // namespace

#define EXPORT(T, S)                                                                                              \
    extern "C" void painn_message_forward_##S(const T* r, const std::int64_t* dst_ptr, const std::int64_t* dst_perm, \
                                              const std::int64_t* idx_j, const std::int64_t* rev, const T* x,      \
                                              const T* mu, const T* wt, const T* bias, const T* p0, const T* p1,   \
                                              int basis, int cutoff, T c0, T c1, std::int64_t N, int F, int K,     \
                                              T* dq, T* dmu, int threads) {                                        \
        message_forward<T>(r, dst_ptr, dst_perm, idx_j, rev, x, mu, wt, bias, p0, p1, basis, cutoff, c0, c1, N, F, \
                           K, dq, dmu, threads);                                                                   \
    }                                                                                                              \
    extern "C" void painn_message_backward_##S(                                                                    \
        const T* gq, const T* gmu, const T* r, const std::int64_t* src_ptr, const std::int64_t* src_perm,          \
        const std::int64_t* idx_i, const std::int64_t* rev, const T* x, const T* mu, const T* wt, const T* bias,   \
        const T* p0, const T* p1, int basis, int cutoff, T c0, T c1, std::int64_t N, int F, int K, T* gr, T* gx,   \
        T* gmu_in, T* partial, int P, int threads) {                                                               \
        (mu ? message_backward<T, true> : message_backward<T, false>)(gq, gmu, r, src_ptr, src_perm, idx_i, rev, x, \
                                                                      mu, wt, bias, p0, p1, basis, cutoff, c0, c1, N, \
                                                                      F, K, gr, gx, gmu_in, partial, P, threads);    \
    }                                                                                                              \
    extern "C" void radial_filter_forward_##S(const T* d, const T* wt, const T* bias, const T* p0, const T* p1,     \
                                              int basis, int cutoff, T c0, T c1, std::int64_t E, int C, int K,     \
                                              T* out, int threads) {                                               \
        filter_forward<T>(d, wt, bias, p0, p1, basis, cutoff, c0, c1, E, C, K, out, threads);                      \
    }                                                                                                              \
    extern "C" void radial_filter_backward_##S(const T* grad, const T* d, const T* wt, const T* bias, const T* p0,  \
                                               const T* p1, int basis, int cutoff, T c0, T c1, std::int64_t E,      \
                                               int C, int K, T* gd, T* partial, int P, int threads) {              \
        filter_backward<T>(grad, d, wt, bias, p0, p1, basis, cutoff, c0, c1, E, C, K, gd, partial, P, threads);    \
    }

// PAINNFX_EXPORT=32 or 64 compiles one dtype's entry points (the build compiles this file once
// per dtype, in parallel); without it, both
#if !defined(PAINNFX_EXPORT) || PAINNFX_EXPORT == 32
EXPORT(float, f32)
#endif
#if !defined(PAINNFX_EXPORT) || PAINNFX_EXPORT == 64
EXPORT(double, f64)
#endif
