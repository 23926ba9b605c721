// painn_message forward: one PaiNN interaction's edge work fused into one kernel.
//
// Edges are sorted by destination atom i (CSR: row_ptr[i] .. row_ptr[i+1]); one thread block
// handles one destination atom, its threads own feature channels f. For each incoming edge
// the block computes d, u, phi_k(d) and fc(d) once into shared memory, then every thread
// forms its three filter values W_s, W_vr, W_vv for channel f (a K-term dot product with the
// filter weight rows f, F+f, 2F+f), multiplies with x_j and mu_j and accumulates dq_i[f] and
// dmu_i[:, f] in registers. Each output element is written once: no atomics, deterministic,
// and no (E, 3F) tensor ever exists.
//
// scalar_t is float or double; MAX_K bounds the basis size held in shared memory. The basis and
// cutoff maths come from radial.cuh, switched on the radial specs' kernel ids.

#include "radial.cuh"

#ifndef MAX_K
#define MAX_K 64
#endif

template <typename scalar_t>
__device__ void painn_message_forward(
    const scalar_t* __restrict__ r,        // (E, 3), edges sorted by idx_i
    const long* __restrict__ row_ptr,      // (N + 1,)
    const long* __restrict__ idx_j,        // (E,)
    const scalar_t* __restrict__ x,        // (N, 3F)
    const scalar_t* __restrict__ mu,       // (N, 3, F) or nullptr (zero)
    const scalar_t* __restrict__ weight,   // (3F, K)
    const scalar_t* __restrict__ bias,     // (3F,)
    const scalar_t* __restrict__ p0,       // (K,) offsets | freqs
    const scalar_t* __restrict__ p1,       // (K,) widths  | unused
    int basis, int cutoff, scalar_t c0, scalar_t c1, int F, int K,   // spec ids (radial.cuh) + cutoff params
    scalar_t* __restrict__ dq,             // (N, F)
    scalar_t* __restrict__ dmu)            // (N, 3, F)
{
    __shared__ scalar_t phi[MAX_K];
    __shared__ scalar_t geo[5];           // d, u0, u1, u2, fc
    const long i = blockIdx.x;
    for (int f0 = 0; f0 < F; f0 += blockDim.x) {
        const int f = f0 + threadIdx.x;
        scalar_t acc_q = 0, acc_0 = 0, acc_1 = 0, acc_2 = 0;
        for (long e = row_ptr[i]; e < row_ptr[i + 1]; ++e) {
            __syncthreads();
            if (threadIdx.x == 0) {
                scalar_t rx = r[3 * e], ry = r[3 * e + 1], rz = r[3 * e + 2];
                scalar_t d = sqrt(rx * rx + ry * ry + rz * rz);
                geo[0] = d;
                geo[1] = rx / d;
                geo[2] = ry / d;
                geo[3] = rz / d;
                geo[4] = cutoff_fn<scalar_t>(cutoff, d, c0, c1, nullptr);
            }
            __syncthreads();
            for (int k = threadIdx.x; k < K; k += blockDim.x)
                phi[k] = radial_basis<scalar_t>(basis, geo[0], p0[k], p1 ? p1[k] : scalar_t(0), nullptr);
            __syncthreads();
            const scalar_t fc = geo[4];
            if (f >= F || fc == scalar_t(0)) continue;
            scalar_t ws = bias[f], wr = bias[F + f], wv = bias[2 * F + f];
            for (int k = 0; k < K; ++k) {
                ws += weight[f * K + k] * phi[k];
                wr += weight[(F + f) * K + k] * phi[k];
                wv += weight[(2 * F + f) * K + k] * phi[k];
            }
            const long j = idx_j[e];
            const scalar_t* xj = x + j * 3 * F;
            acc_q += fc * ws * xj[f];
            const scalar_t mr = fc * wr * xj[F + f];
            acc_0 += mr * geo[1];
            acc_1 += mr * geo[2];
            acc_2 += mr * geo[3];
            if (mu != nullptr) {
                const scalar_t mv = fc * wv * xj[2 * F + f];
                const scalar_t* muj = mu + j * 3 * F;
                acc_0 += mv * muj[f];
                acc_1 += mv * muj[F + f];
                acc_2 += mv * muj[2 * F + f];
            }
        }
        if (f < F) {
            dq[i * F + f] = acc_q;
            dmu[i * 3 * F + f] = acc_0;
            dmu[i * 3 * F + F + f] = acc_1;
            dmu[i * 3 * F + 2 * F + f] = acc_2;
        }
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                     \
    extern "C" __global__ void painn_message_forward_##SUFFIX(                                    \
        const T* r, const long* row_ptr, const long* idx_j, const T* x, const T* mu,               \
        const T* weight, const T* bias, const T* p0, const T* p1, int basis, int cutoff, T c0,    \
        T c1, int F, int K, T* dq, T* dmu) {                                                       \
        painn_message_forward<T>(r, row_ptr, idx_j, x, mu, weight, bias, p0, p1, basis, cutoff,    \
                                 c0, c1, F, K, dq, dmu);                                           \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
