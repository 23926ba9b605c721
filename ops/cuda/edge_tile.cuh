// Shared by the node kernels (forward over the CSR, backward over the CSC): per-edge geometry,
// the cooperative load of one tile of edges into shared memory, each channel's filter values,
// and the walk over one atom's edges that joins them (for_each_filtered_edge).
#pragma once

#include "radial.cuh"

#ifndef TILE
#define TILE 32  // edges per shared-memory tile of the node kernels
#endif

template <typename T>
__device__ __forceinline__ T edge_length(const T* __restrict__ r, long long e, T* u) {
    const T rx = r[3 * e], ry = r[3 * e + 1], rz = r[3 * e + 2];
    const T d = sqrt(rx * rx + ry * ry + rz * rz);
    if (u) {
        u[0] = rx / d;
        u[1] = ry / d;
        u[2] = rz / d;
    }
    return d;
}

// edges perm[t0 .. t0 + n): s_geo[4t..4t+3] = (u, fc), s_other[t] = other[e], s_phi[t K + k] = phi_k(d)
template <typename T>
__device__ __forceinline__ void load_edge_tile(
    const T* __restrict__ r, const long long* __restrict__ perm, const long long* __restrict__ other, long long t0,
    int n, int K, const T* __restrict__ p0, const T* __restrict__ p1, int basis, int cutoff, T c0, T c1, T* s_geo,
    long long* s_other, T* s_phi)
{
    for (int t = threadIdx.x; t < n; t += blockDim.x) {
        const long long e = perm[t0 + t];
        const T d = edge_length<T>(r, e, s_geo + 4 * t);
        s_geo[4 * t + 3] = cutoff_fn<T>(cutoff, d, c0, c1, (T*)nullptr);
        s_other[t] = other[e];
    }
    for (int q = threadIdx.x; q < n * K; q += blockDim.x) {
        const int t = q / K, k = q - t * K;
        const T d = edge_length<T>(r, perm[t0 + t], (T*)nullptr);
        s_phi[t * K + k] = radial_basis<T>(basis, d, p0[k], p1 ? p1[k] : T(0), (T*)nullptr);
    }
}

// channel f's three filter values (W_s, W_vr, W_vv) of one edge, before the cutoff factor:
// bias + sum_k wt[k, c] phi_k for c = f, F + f, 2F + f (neighbouring threads, neighbouring addresses)
template <typename T>
__device__ __forceinline__ void filter_values(const T* __restrict__ wt, const T* __restrict__ bias, const T* phi,
                                              int K, int F, int f, T& ws, T& wr, T& wv) {
    const int F3 = 3 * F;
    ws = bias[f];
    wr = bias[F + f];
    wv = bias[2 * F + f];
    for (int k = 0; k < K; ++k) {
        const T* row = wt + (long long)k * F3;
        ws += row[f] * phi[k];
        wr += row[F + f] * phi[k];
        wv += row[2 * F + f] * phi[k];
    }
}

// The walk of one block over the edges perm[begin .. end) of its atom, TILE at a time: the block
// loads each tile into shared memory (load_edge_tile, between two barriers: the previous tile is
// consumed, this one is complete), then thread f < F calls body(other atom, u, fc, W_s, W_vr, W_vv)
// for channel f of each edge inside the cutoff (fc != 0), in edge order. Every thread of the block
// calls it (the barriers); a kernel calls it once.
template <typename T, typename Body>
__device__ __forceinline__ void for_each_filtered_edge(
    const T* __restrict__ r, const long long* __restrict__ perm, const long long* __restrict__ other, long long begin,
    long long end, int K, const T* __restrict__ p0, const T* __restrict__ p1, int basis, int cutoff, T c0, T c1,
    const T* __restrict__ wt, const T* __restrict__ bias, int F, Body&& body)
{
    __shared__ T s_phi[TILE * MAX_K];
    __shared__ T s_geo[TILE * 4];  // u0, u1, u2, fc
    __shared__ long long s_other[TILE];
    const int f = threadIdx.x;
    for (long long t0 = begin; t0 < end; t0 += TILE) {
        const int n = end - t0 < TILE ? int(end - t0) : TILE;
        __syncthreads();
        load_edge_tile<T>(r, perm, other, t0, n, K, p0, p1, basis, cutoff, c0, c1, s_geo, s_other, s_phi);
        __syncthreads();
        if (f >= F) continue;
        for (int t = 0; t < n; ++t) {
            const T fc = s_geo[4 * t + 3];
            if (fc == T(0)) continue;
            T ws, wr, wv;
            filter_values<T>(wt, bias, s_phi + t * K, K, F, f, ws, wr, wv);
            body(s_other[t], s_geo + 4 * t, fc, ws, wr, wv);
        }
    }
}
