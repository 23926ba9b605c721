// painn_update forward and backward: PaiNN's update (mixing) block of one layer.
//
// One thread block per atom; the block's threads stride over that atom's features. The atom's
// rows (mu, V and W, [q, |V|], silu(pre), x = [a, b, c]) live in shared memory between the
// steps, one barrier per step, so no per-atom intermediate reaches global memory. Weights are
// read so that neighbouring threads read neighbouring addresses: the forward takes them
// transposed (U^T (F, 2F), W1^T (2F, F), W2^T (F, 3F)), the backward as given (W2 (3F, F),
// W1 (F, 2F), U (2F, F)). The backward recomputes the forward and, when the weights need
// gradients, writes the per-atom factors of those gradients (dL/d[V, W], dL/dpre, dL/dx,
// [q, |V|], h), which the caller reduces with three matrix products. No atomics.
//
// F is bounded by the shared rows: UPDATE_MAX_F(float) = 256, UPDATE_MAX_F(double) = 128
// (ops/cuda/update.py sends larger F to the reference implementation).

template <typename scalar_t>
struct UpdateMaxF {
    static constexpr int value = sizeof(scalar_t) == 4 ? 256 : 128;
};

template <typename scalar_t>
__device__ __forceinline__ scalar_t sigmoid_of(scalar_t x) {
    return scalar_t(1) / (scalar_t(1) + exp(-x));
}

// The forward of atom a into shared rows: vw (3, 2F), ctx (2F) = [q, |V|], pre (F), x (3F).
template <typename scalar_t>
__device__ void update_rows(const scalar_t* __restrict__ q, const scalar_t* __restrict__ mu,
                            const scalar_t* __restrict__ ut, const scalar_t* __restrict__ w1t,
                            const scalar_t* __restrict__ b1, const scalar_t* __restrict__ w2t,
                            const scalar_t* __restrict__ b2, scalar_t eps, int F, long long a,
                            scalar_t* s_mu, scalar_t* s_vw, scalar_t* s_ctx, scalar_t* s_pre, scalar_t* s_x)
{
    const int t = threadIdx.x, B = blockDim.x, F2 = 2 * F, F3 = 3 * F;
    for (int k = t; k < F3; k += B) s_mu[k] = mu[a * F3 + k];
    __syncthreads();
    for (int k = t; k < 3 * F2; k += B) {
        const int c = k / F2, col = k - c * F2;
        scalar_t acc = 0;
        for (int f = 0; f < F; ++f) acc += s_mu[c * F + f] * ut[(long long)f * F2 + col];
        s_vw[k] = acc;
    }
    __syncthreads();
    for (int f = t; f < F; f += B) {
        const scalar_t v0 = s_vw[f], v1 = s_vw[F2 + f], v2 = s_vw[2 * F2 + f];
        s_ctx[f] = q[a * F + f];
        s_ctx[F + f] = sqrt(v0 * v0 + v1 * v1 + v2 * v2 + eps);
    }
    __syncthreads();
    for (int f = t; f < F; f += B) {
        scalar_t acc = b1[f];
        for (int k = 0; k < F2; ++k) acc += s_ctx[k] * w1t[(long long)k * F + f];
        s_pre[f] = acc;
    }
    __syncthreads();
    for (int c = t; c < F3; c += B) {
        scalar_t acc = b2[c];
        for (int k = 0; k < F; ++k) {
            const scalar_t p = s_pre[k];
            acc += p * sigmoid_of(p) * w2t[(long long)k * F3 + c];
        }
        s_x[c] = acc;
    }
    __syncthreads();
}

template <typename scalar_t>
__device__ void painn_update_forward(
    const scalar_t* __restrict__ q,    // (N, F)
    const scalar_t* __restrict__ mu,   // (N, 3, F)
    const scalar_t* __restrict__ ut,   // (F, 2F) U transposed
    const scalar_t* __restrict__ w1t,  // (2F, F)
    const scalar_t* __restrict__ b1,   // (F,)
    const scalar_t* __restrict__ w2t,  // (F, 3F)
    const scalar_t* __restrict__ b2,   // (3F,)
    scalar_t eps, int F,
    scalar_t* __restrict__ q_out,      // (N, F)
    scalar_t* __restrict__ mu_out)     // (N, 3, F)
{
    constexpr int M = UpdateMaxF<scalar_t>::value;
    __shared__ scalar_t s_mu[3 * M], s_vw[6 * M], s_ctx[2 * M], s_pre[M], s_x[3 * M];
    const long long a = blockIdx.x;
    const int F2 = 2 * F, F3 = 3 * F;
    update_rows<scalar_t>(q, mu, ut, w1t, b1, w2t, b2, eps, F, a, s_mu, s_vw, s_ctx, s_pre, s_x);
    for (int f = threadIdx.x; f < F; f += blockDim.x) {
        scalar_t s = 0;
        for (int c = 0; c < 3; ++c) {
            const scalar_t w = s_vw[c * F2 + F + f];
            s += s_vw[c * F2 + f] * w;
            mu_out[a * F3 + c * F + f] = s_mu[c * F + f] + s_x[F + f] * w;
        }
        q_out[a * F + f] = s_ctx[f] + s_x[f] + s_x[2 * F + f] * s;
    }
}

template <typename scalar_t>
__device__ void painn_update_backward(
    const scalar_t* __restrict__ gq,   // (N, F)
    const scalar_t* __restrict__ gmu,  // (N, 3, F)
    const scalar_t* __restrict__ q, const scalar_t* __restrict__ mu,
    const scalar_t* __restrict__ ut, const scalar_t* __restrict__ u,    // U^T (F, 2F), U (2F, F)
    const scalar_t* __restrict__ w1t, const scalar_t* __restrict__ w1,  // (2F, F), (F, 2F)
    const scalar_t* __restrict__ b1,
    const scalar_t* __restrict__ w2t, const scalar_t* __restrict__ w2,  // (F, 3F), (3F, F)
    const scalar_t* __restrict__ b2, scalar_t eps, int F,
    scalar_t* __restrict__ gq_in,      // (N, F)
    scalar_t* __restrict__ gmu_in,     // (N, 3, F)
    scalar_t* __restrict__ gvw_out,    // (N, 3, 2F) or nullptr (no weight gradients)
    scalar_t* __restrict__ gpre_out,   // (N, F)
    scalar_t* __restrict__ gx_out,     // (N, 3F)
    scalar_t* __restrict__ ctx_out,    // (N, 2F)
    scalar_t* __restrict__ h_out)      // (N, F)
{
    constexpr int M = UpdateMaxF<scalar_t>::value;
    __shared__ scalar_t s_mu[3 * M], s_vw[6 * M], s_ctx[2 * M], s_pre[M], s_x[3 * M];
    __shared__ scalar_t s_gvw[6 * M], s_gpre[M], s_gctx[2 * M];
    const long long a = blockIdx.x;
    const int t = threadIdx.x, B = blockDim.x, F2 = 2 * F, F3 = 3 * F;
    update_rows<scalar_t>(q, mu, ut, w1t, b1, w2t, b2, eps, F, a, s_mu, s_vw, s_ctx, s_pre, s_x);
    scalar_t* s_gx = s_mu;  // mu is no longer needed: its rows hold dL/dx = [gq, gmu.W, gq s]
    __syncthreads();
    for (int f = t; f < F; f += B) {
        scalar_t s = 0, gb = 0;
        for (int c = 0; c < 3; ++c) {
            const scalar_t w = s_vw[c * F2 + F + f];
            s += s_vw[c * F2 + f] * w;
            gb += gmu[a * F3 + c * F + f] * w;
        }
        const scalar_t g = gq[a * F + f];
        s_gx[f] = g;
        s_gx[F + f] = gb;
        s_gx[2 * F + f] = g * s;
    }
    __syncthreads();
    for (int f = t; f < F; f += B) {
        scalar_t gh = 0;
        for (int c = 0; c < F3; ++c) gh += s_gx[c] * w2[(long long)c * F + f];
        const scalar_t p = s_pre[f], sg = sigmoid_of(p);
        s_gpre[f] = gh * sg * (scalar_t(1) + p * (scalar_t(1) - sg));
    }
    __syncthreads();
    for (int k = t; k < F2; k += B) {
        scalar_t acc = 0;
        for (int f = 0; f < F; ++f) acc += s_gpre[f] * w1[(long long)f * F2 + k];
        s_gctx[k] = acc;
    }
    __syncthreads();
    for (int k = t; k < 3 * F2; k += B) {
        const int c = k / F2, col = k - c * F2;
        if (col < F) {  // dL/dV = gs W + dL/d|V| V / |V|
            const scalar_t gs = gq[a * F + col] * s_x[2 * F + col];
            s_gvw[k] = gs * s_vw[c * F2 + F + col] + s_gctx[F + col] / s_ctx[F + col] * s_vw[k];
        } else {        // dL/dW = gmu b + gs V
            const int f = col - F;
            const scalar_t gs = gq[a * F + f] * s_x[2 * F + f];
            s_gvw[k] = gmu[a * F3 + c * F + f] * s_x[F + f] + gs * s_vw[c * F2 + f];
        }
    }
    __syncthreads();
    for (int k = t; k < F3; k += B) {
        const int c = k / F, f = k - c * F;
        scalar_t acc = gmu[a * F3 + k];
        for (int j = 0; j < F2; ++j) acc += s_gvw[c * F2 + j] * u[(long long)j * F + f];
        gmu_in[a * F3 + k] = acc;
    }
    for (int f = t; f < F; f += B) gq_in[a * F + f] = gq[a * F + f] + s_gctx[f];
    if (gvw_out != nullptr) {
        for (int k = t; k < 3 * F2; k += B) gvw_out[a * 3 * F2 + k] = s_gvw[k];
        for (int k = t; k < F3; k += B) gx_out[a * F3 + k] = s_gx[k];
        for (int k = t; k < F2; k += B) ctx_out[a * F2 + k] = s_ctx[k];
        for (int f = t; f < F; f += B) {
            const scalar_t p = s_pre[f];
            gpre_out[a * F + f] = s_gpre[f];
            h_out[a * F + f] = p * sigmoid_of(p);
        }
    }
}

#define INSTANTIATE(T, SUFFIX)                                                                        \
    extern "C" __global__ void painn_update_forward_##SUFFIX(                                        \
        const T* q, const T* mu, const T* ut, const T* w1t, const T* b1, const T* w2t, const T* b2,  \
        T eps, int F, T* q_out, T* mu_out) {                                                          \
        painn_update_forward<T>(q, mu, ut, w1t, b1, w2t, b2, eps, F, q_out, mu_out);                  \
    }                                                                                                 \
    extern "C" __global__ void painn_update_backward_##SUFFIX(                                       \
        const T* gq, const T* gmu, const T* q, const T* mu, const T* ut, const T* u, const T* w1t,   \
        const T* w1, const T* b1, const T* w2t, const T* w2, const T* b2, T eps, int F, T* gq_in,    \
        T* gmu_in, T* gvw_out, T* gpre_out, T* gx_out, T* ctx_out, T* h_out) {                        \
        painn_update_backward<T>(gq, gmu, q, mu, ut, u, w1t, w1, b1, w2t, w2, b2, eps, F, gq_in,      \
                                 gmu_in, gvw_out, gpre_out, gx_out, ctx_out, h_out);                  \
    }

INSTANTIATE(float, f32)
INSTANTIATE(double, f64)
#undef INSTANTIATE
