// painn_message forward: one PaiNN interaction's edge work fused into one kernel.
//
// One thread block per destination atom i walks the edges into i in destination-sorted order
// (the CSR of prepare_edges: dst_perm[dst_ptr[i] .. dst_ptr[i+1]]); thread f owns feature
// channel f (blockDim.x >= F). Edges are taken in tiles of TILE: the block computes each
// tile's geometry (u, fc) and basis values phi_k(d) cooperatively into shared memory (two
// barriers per tile, none per edge), then every thread forms its three filter values
// W_s, W_vr, W_vv for channel f from the K basis values and the transposed filter weight
// wt (K, 3F) (neighbouring threads read neighbouring addresses), multiplies with x_j and mu_j
// and accumulates dq_i[f] and dmu_i[:, f] in registers. Each output element is written once:
// no atomics, deterministic, and no (E, 3F) tensor ever exists. The basis and cutoff maths
// come from radial.cuh, switched on the radial specs' kernel ids.
//
// scalar_t is float or double; indices are long long; MAX_K bounds the basis size.

#include "edge_tile.cuh"

template <typename scalar_t>
__device__ void painn_message_forward(
    const scalar_t* __restrict__ r,          // (E, 3) edge vectors, any order
    const long long* __restrict__ dst_ptr,   // (N + 1,) CSR row pointers
    const long long* __restrict__ dst_perm,  // (E,) edges sorted by destination
    const long long* __restrict__ idx_j,     // (E,) source atom of each edge
    const scalar_t* __restrict__ x,          // (N, 3F)
    const scalar_t* __restrict__ mu,         // (N, 3, F) or nullptr (zero)
    const scalar_t* __restrict__ wt,         // (K, 3F) filter weight, transposed
    const scalar_t* __restrict__ bias,       // (3F,)
    const scalar_t* __restrict__ p0,         // (K,) first basis parameter row
    const scalar_t* __restrict__ p1,         // (K,) second row or nullptr
    int basis, int cutoff, scalar_t c0, scalar_t c1, int F, int K,
    scalar_t* __restrict__ dq,               // (N, F)
    scalar_t* __restrict__ dmu)              // (N, 3, F)
{
    const long long i = blockIdx.x;
    const int f = threadIdx.x;
    const int F3 = 3 * F;
    const long long begin = dst_ptr[i], end = dst_ptr[i + 1];
    scalar_t acc_q = 0, acc_0 = 0, acc_1 = 0, acc_2 = 0;
    for_each_filtered_edge<scalar_t>(
        r, dst_perm, idx_j, begin, end, K, p0, p1, basis, cutoff, c0, c1, wt, bias, F,
        [&](long long j, const scalar_t* u, scalar_t fc, scalar_t ws, scalar_t wr, scalar_t wv) {
            const scalar_t* xj = x + j * F3;
            acc_q += fc * ws * xj[f];
            const scalar_t mr = fc * wr * xj[F + f];
            acc_0 += mr * u[0];
            acc_1 += mr * u[1];
            acc_2 += mr * u[2];
            if (mu != nullptr) {
                const scalar_t mv = fc * wv * xj[2 * F + f];
                const scalar_t* muj = mu + j * F3;
                acc_0 += mv * muj[f];
                acc_1 += mv * muj[F + f];
                acc_2 += mv * muj[2 * F + f];
            }
        });
    if (f < F) {
        dq[i * F + f] = acc_q;
        dmu[i * F3 + f] = acc_0;
        dmu[i * F3 + F + f] = acc_1;
        dmu[i * F3 + 2 * F + f] = acc_2;
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                       \
    extern "C" __global__ void painn_message_forward_##SUFFIX(                                      \
        const T* r, const long long* dst_ptr, const long long* dst_perm, const long long* idx_j,     \
        const T* x, const T* mu, const T* wt, const T* bias, const T* p0, const T* p1, int basis,    \
        int cutoff, T c0, T c1, int F, int K, T* dq, T* dmu) {                                       \
        painn_message_forward<T>(r, dst_ptr, dst_perm, idx_j, x, mu, wt, bias, p0, p1, basis,        \
                                 cutoff, c0, c1, F, K, dq, dmu);                                     \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
#undef INSTANTIATE
