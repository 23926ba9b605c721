// painn_message backward, atomic-free and deterministic (math: docs/ops.md):
//
//   painn_message_backward_nodes   one block per SOURCE atom j, walking the edges out of j in
//       source-sorted order (the CSC of prepare_edges); thread f accumulates dL/dx_j and dL/dmu_j
//       for channel f in registers and writes them once:
//           dL/dxs_j  += gq_i Ws,   dL/dxvr_j += (u . gmu_i) Wvr,   dL/dxvv_j += (gmu_i . mu_j) Wvv
//           dL/dmu_j  += gmu_i Wvv xvv_j
//   painn_message_backward_edges   one warp per pair of edges (i <- j, r), (j <- i, -r) (the
//       `reverse` of prepare_edges; an edge without one alone): the pair's filter rows a and b
//       once, the lanes split the features, and each edge's sums over F are reduced with warp
//       shuffles:
//           dL/dd = fc sum_f gW_f (Wf phi')_f + fc' sum_f gW_f (Wf phi + bf)_f,   gW = [gq_i, t, s] * x_j
//           dL/du = sum_f gmu_i[:, f] Wvr_f xvr_j,f
//           dL/dr = dL/dd u + (dL/du - (dL/du . u) u) / d
//   painn_message_backward_weights + painn_message_reduce_partials   (training only) dL/dWf and
//       dL/dbf by a two-stage reduction: P blocks each sum their own contiguous edge range into
//       a partial (P, 3F, K+1) (thread per (row, k), column K is the bias), then one thread per
//       (row, k) adds the P partials in a fixed order. Deterministic, no atomics.
//
// Geometry and basis values come from radial.cuh, recomputed per tile (nodes) or per warp
// (edges); wt is the filter weight transposed (K, 3F).

#include "edge_tile.cuh"

#define EDGE_WARPS 4
#define FULL_MASK 0xffffffffu

template <typename T>
__device__ void painn_message_backward_nodes(
    const T* __restrict__ r, const long long* __restrict__ src_ptr, const long long* __restrict__ src_perm,
    const long long* __restrict__ idx_i, const T* __restrict__ x, const T* __restrict__ mu,
    const T* __restrict__ gq, const T* __restrict__ gmu, const T* __restrict__ wt, const T* __restrict__ bias,
    const T* __restrict__ p0, const T* __restrict__ p1, int basis, int cutoff, T c0, T c1, int F, int K,
    T* __restrict__ gx, T* __restrict__ gmu_in)
{
    const long long j = blockIdx.x;
    const int f = threadIdx.x;
    const int F3 = 3 * F;
    const long long begin = src_ptr[j], end = src_ptr[j + 1];
    T xs = 0, xvv = 0, m0 = 0, m1 = 0, m2 = 0;
    if (f < F) {
        xs = x[j * F3 + f];
        xvv = x[j * F3 + 2 * F + f];
        if (mu != nullptr) {
            m0 = mu[j * F3 + f];
            m1 = mu[j * F3 + F + f];
            m2 = mu[j * F3 + 2 * F + f];
        }
    }
    (void)xs;
    T g_s = 0, g_vr = 0, g_vv = 0, g_m0 = 0, g_m1 = 0, g_m2 = 0;
    for_each_filtered_edge<T>(
        r, src_perm, idx_i, begin, end, K, p0, p1, basis, cutoff, c0, c1, wt, bias, F,
        [&](long long i, const T* u, T fc, T ws, T wr, T wv) {
            ws *= fc;
            wr *= fc;
            wv *= fc;
            const T q0 = gmu[i * F3 + f], q1 = gmu[i * F3 + F + f], q2 = gmu[i * F3 + 2 * F + f];
            g_s += gq[i * F + f] * ws;
            g_vr += (u[0] * q0 + u[1] * q1 + u[2] * q2) * wr;
            if (mu != nullptr) {
                g_vv += (q0 * m0 + q1 * m1 + q2 * m2) * wv;
                const T wx = wv * xvv;
                g_m0 += q0 * wx;
                g_m1 += q1 * wx;
                g_m2 += q2 * wx;
            }
        });
    if (f < F) {
        gx[j * F3 + f] = g_s;
        gx[j * F3 + F + f] = g_vr;
        gx[j * F3 + 2 * F + f] = g_vv;
        if (mu != nullptr) {
            gmu_in[j * F3 + f] = g_m0;
            gmu_in[j * F3 + F + f] = g_m1;
            gmu_in[j * F3 + 2 * F + f] = g_m2;
        }
    }
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(FULL_MASK, v, o);
    return v;
}

// One direction's part of painn_message_backward_edges, channel f: edge (i <- j) with direction u,
// the filter rows a (= W phi + bias) and b (= W phi') of the pair, added into dL/dd and dL/du.
template <typename T>
__device__ __forceinline__ void edge_terms(
    long long i, long long j, const T* u, int f, int F, const T* __restrict__ x, const T* __restrict__ mu,
    const T* __restrict__ gq, const T* __restrict__ gmu, T fc, T dfc, T as, T ar, T av, T bs, T br, T bv, T& gd,
    T& gu0, T& gu1, T& gu2)
{
    const int F3 = 3 * F;
    const T q0 = gmu[i * F3 + f], q1 = gmu[i * F3 + F + f], q2 = gmu[i * F3 + 2 * F + f];
    const T t = u[0] * q0 + u[1] * q1 + u[2] * q2;
    T s = 0;
    if (mu != nullptr) s = q0 * mu[j * F3 + f] + q1 * mu[j * F3 + F + f] + q2 * mu[j * F3 + 2 * F + f];
    const T xvr = x[j * F3 + F + f];
    const T ws = gq[i * F + f] * x[j * F3 + f], wr = t * xvr, wv = s * x[j * F3 + 2 * F + f];
    gd += fc * (ws * bs + wr * br + wv * bv) + dfc * (ws * as + wr * ar + wv * av);
    const T vr = ar * fc * xvr;
    gu0 += q0 * vr;
    gu1 += q1 * vr;
    gu2 += q2 * vr;
}

// dL/dr of one edge, direction u, from the warp's per-lane sums (lane 0 writes)
template <typename T>
__device__ __forceinline__ void write_edge_gradient(T gd, T gu0, T gu1, T gu2, const T* u, T d, int lane,
                                                    T* __restrict__ out) {
    gd = warp_sum<T>(gd);
    gu0 = warp_sum<T>(gu0);
    gu1 = warp_sum<T>(gu1);
    gu2 = warp_sum<T>(gu2);
    if (lane == 0) {
        const T dot = gu0 * u[0] + gu1 * u[1] + gu2 * u[2];
        out[0] = gd * u[0] + (gu0 - dot * u[0]) / d;
        out[1] = gd * u[1] + (gu1 - dot * u[1]) / d;
        out[2] = gd * u[2] + (gu2 - dot * u[2]) / d;
    }
}

// One warp per pair: edge e, and its reverse e' = reverse[e] (j <- i, -r_e) when there is one. The
// warp of the edge with the smaller index computes the pair's rows a, b once and both edges' dL/dr
// (the partner with direction -u, the two atoms' roles swapped); the other warp leaves at once.
// An edge without a reverse (-1) is computed alone. Each dL/dr row is written by one warp.
template <typename T>
__device__ void painn_message_backward_edges(
    const T* __restrict__ r, const long long* __restrict__ idx_i, const long long* __restrict__ idx_j,
    const long long* __restrict__ reverse, const T* __restrict__ x, const T* __restrict__ mu,
    const T* __restrict__ gq, const T* __restrict__ gmu, const T* __restrict__ wt, const T* __restrict__ bias,
    const T* __restrict__ p0, const T* __restrict__ p1, int basis, int cutoff, T c0, T c1, int F, int K,
    long long E, T* __restrict__ gr)
{
    __shared__ T s_phi[EDGE_WARPS * MAX_K];
    __shared__ T s_dphi[EDGE_WARPS * MAX_K];
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const long long e = (long long)blockIdx.x * EDGE_WARPS + warp;
    if (e >= E) return;                      // a whole warp leaves together; no block barrier follows
    const long long partner = reverse[e];
    if (partner >= 0 && partner < e) return; // the partner's warp computes this edge
    const int F3 = 3 * F;
    T u[3];
    const T d = edge_length<T>(r, e, u);
    const T back[3] = {-u[0], -u[1], -u[2]};  // the partner's direction
    T dfc;
    const T fc = cutoff_fn<T>(cutoff, d, c0, c1, &dfc);
    T* phi = s_phi + warp * MAX_K;
    T* dphi = s_dphi + warp * MAX_K;
    for (int k = lane; k < K; k += 32) phi[k] = radial_basis<T>(basis, d, p0[k], p1 ? p1[k] : T(0), dphi + k);
    __syncwarp();
    const long long i = idx_i[e], j = idx_j[e];
    T gd = 0, gu0 = 0, gu1 = 0, gu2 = 0, pd = 0, pu0 = 0, pu1 = 0, pu2 = 0;
    if (fc != T(0) || dfc != T(0)) {
        for (int f = lane; f < F; f += 32) {
            T as = bias[f], ar = bias[F + f], av = bias[2 * F + f], bs = 0, br = 0, bv = 0;
            for (int k = 0; k < K; ++k) {
                const T* row = wt + (long long)k * F3;
                as += row[f] * phi[k];
                ar += row[F + f] * phi[k];
                av += row[2 * F + f] * phi[k];
                bs += row[f] * dphi[k];
                br += row[F + f] * dphi[k];
                bv += row[2 * F + f] * dphi[k];
            }
            edge_terms<T>(i, j, u, f, F, x, mu, gq, gmu, fc, dfc, as, ar, av, bs, br, bv, gd, gu0, gu1, gu2);
            if (partner >= 0)
                edge_terms<T>(j, i, back, f, F, x, mu, gq, gmu, fc, dfc, as, ar, av, bs, br, bv, pd, pu0, pu1, pu2);
        }
    }
    write_edge_gradient<T>(gd, gu0, gu1, gu2, u, d, lane, gr + 3 * e);
    if (partner >= 0) write_edge_gradient<T>(pd, pu0, pu1, pu2, back, d, lane, gr + 3 * partner);
}

// stage 1: block p sums edges [p E / P, (p + 1) E / P) for the (row, k) pairs of blockIdx.y
template <typename T>
__device__ void painn_message_backward_weights(
    const T* __restrict__ r, const long long* __restrict__ idx_i, const long long* __restrict__ idx_j,
    const T* __restrict__ x, const T* __restrict__ mu, const T* __restrict__ gq, const T* __restrict__ gmu,
    const T* __restrict__ p0, const T* __restrict__ p1, int basis, int cutoff, T c0, T c1, int F, int K,
    long long E, T* __restrict__ partial)    // (P, 3F, K + 1)
{
    const int F3 = 3 * F, K1 = K + 1;
    const long long pair = (long long)blockIdx.y * blockDim.x + threadIdx.x;
    if (pair >= (long long)F3 * K1) return;  // no barriers in this kernel
    const int row = int(pair / K1), k = int(pair - (long long)row * K1);
    const int part = row / F, f = row - part * F;
    const long long P = gridDim.x, p = blockIdx.x;
    const long long e0 = p * E / P, e1 = (p + 1) * E / P;
    T acc = 0;
    for (long long e = e0; e < e1; ++e) {
        T u[3];
        const T d = edge_length<T>(r, e, u);
        const T fc = cutoff_fn<T>(cutoff, d, c0, c1, (T*)nullptr);
        if (fc == T(0)) continue;
        const long long i = idx_i[e], j = idx_j[e];
        T g;
        if (part == 0) {
            g = gq[i * F + f];
        } else {
            const T q0 = gmu[i * F3 + f], q1 = gmu[i * F3 + F + f], q2 = gmu[i * F3 + 2 * F + f];
            if (part == 1) g = u[0] * q0 + u[1] * q1 + u[2] * q2;
            else g = mu == nullptr ? T(0) : q0 * mu[j * F3 + f] + q1 * mu[j * F3 + F + f] + q2 * mu[j * F3 + 2 * F + f];
        }
        const T phi = k < K ? radial_basis<T>(basis, d, p0[k], p1 ? p1[k] : T(0), (T*)nullptr) : T(1);
        acc += g * x[j * F3 + row] * fc * phi;
    }
    partial[(p * F3 + row) * K1 + k] = acc;
}

// stage 2: one thread per (row, k) adds the P partials in order
template <typename T>
__device__ void painn_message_reduce_partials(const T* __restrict__ partial, int P, int F, int K,
                                              T* __restrict__ gw, T* __restrict__ gb)
{
    const int F3 = 3 * F, K1 = K + 1;
    const long long pair = (long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (pair >= (long long)F3 * K1) return;
    T acc = 0;
    for (int p = 0; p < P; ++p) acc += partial[(long long)p * F3 * K1 + pair];
    const int row = int(pair / K1), k = int(pair - (long long)row * K1);
    if (k < K) gw[(long long)row * K + k] = acc;
    else gb[row] = acc;
}

#define INSTANTIATE(T, S)                                                                                     \
    extern "C" __global__ void painn_message_backward_nodes_##S(                                             \
        const T* r, const long long* src_ptr, const long long* src_perm, const long long* idx_i, const T* x,  \
        const T* mu, const T* gq, const T* gmu, const T* wt, const T* bias, const T* p0, const T* p1,        \
        int basis, int cutoff, T c0, T c1, int F, int K, T* gx, T* gmu_in) {                                 \
        painn_message_backward_nodes<T>(r, src_ptr, src_perm, idx_i, x, mu, gq, gmu, wt, bias, p0, p1, basis, \
                                        cutoff, c0, c1, F, K, gx, gmu_in);                                    \
    }                                                                                                         \
    extern "C" __global__ void painn_message_backward_edges_##S(                                             \
        const T* r, const long long* idx_i, const long long* idx_j, const long long* reverse, const T* x,     \
        const T* mu, const T* gq, const T* gmu, const T* wt, const T* bias, const T* p0, const T* p1,        \
        int basis, int cutoff, T c0, T c1, int F, int K, long long E, T* gr) {                               \
        painn_message_backward_edges<T>(r, idx_i, idx_j, reverse, x, mu, gq, gmu, wt, bias, p0, p1, basis,    \
                                        cutoff, c0, c1, F, K, E, gr);                                         \
    }                                                                                                         \
    extern "C" __global__ void painn_message_backward_weights_##S(                                           \
        const T* r, const long long* idx_i, const long long* idx_j, const T* x, const T* mu, const T* gq,     \
        const T* gmu, const T* p0, const T* p1, int basis, int cutoff, T c0, T c1, int F, int K, long long E, \
        T* partial) {                                                                                         \
        painn_message_backward_weights<T>(r, idx_i, idx_j, x, mu, gq, gmu, p0, p1, basis, cutoff, c0, c1, F,  \
                                          K, E, partial);                                                     \
    }                                                                                                         \
    extern "C" __global__ void painn_message_reduce_partials_##S(const T* partial, int P, int F, int K, T* gw, \
                                                                 T* gb) {                                     \
        painn_message_reduce_partials<T>(partial, P, F, K, gw, gb);                                           \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
#undef INSTANTIATE
