// CPU kernels of painnfx::painn_update (PaiNN's update block), compiled with painn_message.cpp.
//
// OpenMP over tiles of up to TILE atoms. Per tile the three products (mu U^T on the tile's 3*TILE
// vector rows, [q, |V|] W1^T, silu(.) W2^T) are dot products with the Linear weights' rows as
// given (dot_rows; no transposed copy per call), and everything elementwise runs on the tile's
// rows while they are in cache: no (N, 3, 2F) or (N, 3F) intermediate is written.
// The backward recomputes the tile's forward and runs the three products the other way
// (register-blocked filter_tile products of cpu_common.h, the weights again as given); when the weights need gradients it also writes the per-atom factors of
// those gradients (dL/d[V, W], dL/dpre, dL/dx and the inputs [q, |V|], h), which the caller
// reduces with three matrix products (deterministic, BLAS). No atomics.
#include <cmath>
#include <cstdint>
#include <vector>

#include "cpu_common.h"

namespace {

// out (rows, C) = in (rows, K) x wt (K, C) (+ bias), in blocks of TILE rows: the weight as given
// when it is (K, C) row-major (the backward's products)
template <typename T>
inline void rows_product(const T* wt, const T* bias, const T* in, int K, int C, int rows, T* out) {
    for (int r0 = 0; r0 < rows; r0 += TILE) {
        const int nt = rows - r0 < TILE ? rows - r0 : TILE;
        filter_tile(wt, bias, in + (std::int64_t)r0 * K, K, C, nt, out + (std::int64_t)r0 * C);
    }
}

// out (rows, C) = in (rows, K) x w^T (+ bias) for a (C, K) row-major weight (a Linear's, as given:
// the forward's products), without transposing it: per output column c, the dot products of w's
// row c (contiguous, read once per tile of TILE rows) with each input row, four columns at a time so
// that each input vector feeds four accumulators. Transposing the weights instead cost three
// strided copies per call (~70 us at F = 128 against ~10 us of arithmetic for a small molecule).
template <typename T>
inline void dot_rows(const T* __restrict w, const T* __restrict bias, const T* __restrict in, int K, int C, int rows,
                     T* __restrict out) {
    for (int r0 = 0; r0 < rows; r0 += TILE) {
        const int nt = rows - r0 < TILE ? rows - r0 : TILE;
        const T* x0 = in + (std::int64_t)r0 * K;
        T* o0 = out + (std::int64_t)r0 * C;
        int c = 0;
        for (; c + 4 <= C; c += 4) {
            const T* wa = w + (std::int64_t)c * K;
            const T* wb = wa + K;
            const T* wc = wb + K;
            const T* wd = wc + K;
            for (int t = 0; t < nt; ++t) {
                const T* x = x0 + (std::int64_t)t * K;
                T sa = 0, sb = 0, sc = 0, sd = 0;
#pragma omp simd reduction(+ : sa, sb, sc, sd)
                for (int k = 0; k < K; ++k) {
                    sa += x[k] * wa[k];
                    sb += x[k] * wb[k];
                    sc += x[k] * wc[k];
                    sd += x[k] * wd[k];
                }
                T* o = o0 + (std::int64_t)t * C + c;
                o[0] = sa + (bias ? bias[c] : T(0));
                o[1] = sb + (bias ? bias[c + 1] : T(0));
                o[2] = sc + (bias ? bias[c + 2] : T(0));
                o[3] = sd + (bias ? bias[c + 3] : T(0));
            }
        }
        for (; c < C; ++c) {
            const T* wa = w + (std::int64_t)c * K;
            for (int t = 0; t < nt; ++t) {
                const T* x = x0 + (std::int64_t)t * K;
                T sa = 0;
#pragma omp simd reduction(+ : sa)
                for (int k = 0; k < K; ++k) sa += x[k] * wa[k];
                o0[(std::int64_t)t * C + c] = sa + (bias ? bias[c] : T(0));
            }
        }
    }
}

// s = sum_c V_c W_c of feature f, from an atom's (3, 2F) rows [V_c, W_c]
template <typename T>
inline T vw_dot(const T* vw, int f, int F) {
    const int F2 = 2 * F;
    return vw[f] * vw[F + f] + vw[F2 + f] * vw[F2 + F + f] + vw[2 * F2 + f] * vw[2 * F2 + F + f];
}

template <typename T>
inline T sigmoid(T x) {
    return T(1) / (T(1) + std::exp(-x));
}

// The forward of one tile of nt atoms starting at atom a0, into the thread's buffers.
template <typename T>
struct UpdateTile {
    std::vector<T> vw, ctx, pre, h, x;
    explicit UpdateTile(int F)
        : vw(3 * TILE * 2 * F), ctx(TILE * 2 * F), pre(TILE * F), h(TILE * F), x(TILE * 3 * F) {}

    // wt: the transposed weights {U^T, W1^T, W2^T} (register-blocked products), or nulls (dot products
    // with the weights as given)
    void forward(const T* q, const T* mu, const T* u, const T* w1, const T* b1, const T* w2, const T* b2,
                 const T* const* wt, T eps, std::int64_t a0, int nt, int F) {
        const int F2 = 2 * F;
        if (wt[0])
            rows_product(wt[0], (const T*)nullptr, mu + a0 * 3 * F, F, F2, 3 * nt, vw.data());
        else
            dot_rows(u, (const T*)nullptr, mu + a0 * 3 * F, F, F2, 3 * nt, vw.data());
        for (int t = 0; t < nt; ++t) {
            const T* qa = q + (a0 + t) * F;
            T* c = ctx.data() + (std::int64_t)t * F2;
            const T* v0 = vw.data() + (std::int64_t)(3 * t) * F2;
#pragma omp simd
            for (int f = 0; f < F; ++f) {
                const T v1 = v0[f], v2 = v0[F2 + f], v3 = v0[2 * F2 + f];
                c[f] = qa[f];
                c[F + f] = std::sqrt(v1 * v1 + v2 * v2 + v3 * v3 + eps);
            }
        }
        if (wt[1])
            filter_tile(wt[1], b1, ctx.data(), F2, F, nt, pre.data());
        else
            dot_rows(w1, b1, ctx.data(), F2, F, nt, pre.data());
        for (int k = 0; k < nt * F; ++k) h[k] = pre[k] * sigmoid(pre[k]);
        if (wt[2])
            filter_tile(wt[2], b2, h.data(), F, 3 * F, nt, x.data());
        else
            dot_rows(w2, b2, h.data(), F, 3 * F, nt, x.data());
    }
};

// The backward's per-thread buffers besides the recomputed forward's.
template <typename T>
struct UpdateBackwardTile : UpdateTile<T> {
    std::vector<T> gx, gh, gctx, gvw, gm;
    explicit UpdateBackwardTile(int F)
        : UpdateTile<T>(F), gx(TILE * 3 * F), gh(TILE * F), gctx(TILE * 2 * F), gvw(3 * TILE * 2 * F), gm(3 * TILE * F) {}
};

// OpenMP over tiles of up to TILE atoms: body(buffers, first atom, atoms in the tile), with one
// Buffers per thread and subnormals flushed on every thread for the duration (cpu_common.h).
template <typename Buffers, typename Body>
void over_tiles(std::int64_t N, int F, int threads, Body body) {
    const std::int64_t tiles = (N + TILE - 1) / TILE;
#pragma omp parallel num_threads(threads) if (tiles > 1)
    {
        FlushDenormals flush;
        Buffers buffers(F);
#pragma omp for schedule(static)
        for (std::int64_t ti = 0; ti < tiles; ++ti) {
            const std::int64_t a0 = ti * TILE;
            body(buffers, a0, (int)(N - a0 < TILE ? N - a0 : TILE));
        }
    }
}

template <typename T>
void update_forward(const T* q, const T* mu, const T* u, const T* w1, const T* b1, const T* w2, const T* b2,
                    const T* const* wt, T eps, std::int64_t N, int F, T* q_out, T* mu_out, int threads) {
    const int F2 = 2 * F;
    over_tiles<UpdateTile<T>>(N, F, threads, [&](UpdateTile<T>& tile, std::int64_t a0, int nt) {
        tile.forward(q, mu, u, w1, b1, w2, b2, wt, eps, a0, nt, F);
        for (int t = 0; t < nt; ++t) {
            const std::int64_t a = a0 + t;
            const T* x = tile.x.data() + (std::int64_t)t * 3 * F;
            const T* vw = tile.vw.data() + (std::int64_t)(3 * t) * F2;
#pragma omp simd
            for (int f = 0; f < F; ++f) q_out[a * F + f] = q[a * F + f] + x[f] + x[2 * F + f] * vw_dot(vw, f, F);
            for (int c = 0; c < 3; ++c) {
                const T* w = vw + (std::int64_t)c * F2 + F;
                const T* m = mu + (a * 3 + c) * F;
                T* o = mu_out + (a * 3 + c) * F;
#pragma omp simd
                for (int f = 0; f < F; ++f) o[f] = m[f] + x[F + f] * w[f];
            }
        }
    });
}

// Per atom (see reference.update_backward): gx = [gq, gmu.W, gq s]; gh = gx W2; gpre = gh silu'(pre);
// gctx = gpre W1; gV = gs W + gctx_V V / |V|, gW = gmu b + gs V; gmu_in = gmu + [gV, gW] U.
// Weight-gradient factors (when gvw_out is not null): gvw_out (N, 3, 2F), gpre_out (N, F), gx_out
// (N, 3F), ctx_out (N, 2F), h_out (N, F).
template <typename T>
void update_backward(const T* gq, const T* gmu, const T* q, const T* mu, const T* u, const T* w1, const T* b1,
                     const T* w2, const T* b2, const T* const* wt, T eps, std::int64_t N, int F,
                     T* gq_in, T* gmu_in, T* gvw_out, T* gpre_out, T* gx_out, T* ctx_out, T* h_out, int threads) {
    const int F2 = 2 * F, F3 = 3 * F;
    over_tiles<UpdateBackwardTile<T>>(N, F, threads, [&](UpdateBackwardTile<T>& tile, std::int64_t a0, int nt) {
        std::vector<T>&gx = tile.gx, &gh = tile.gh, &gctx = tile.gctx, &gvw = tile.gvw, &gm = tile.gm;
        tile.forward(q, mu, u, w1, b1, w2, b2, wt, eps, a0, nt, F);
        for (int t = 0; t < nt; ++t) {
            const std::int64_t a = a0 + t;
            const T* vw = tile.vw.data() + (std::int64_t)(3 * t) * F2;
            const T* ga = gmu + a * 3 * F;
            T* g = gx.data() + (std::int64_t)t * F3;
#pragma omp simd
            for (int f = 0; f < F; ++f) {
                g[f] = gq[a * F + f];
                g[F + f] = ga[f] * vw[F + f] + ga[F + f] * vw[F2 + F + f] + ga[2 * F + f] * vw[2 * F2 + F + f];
                g[2 * F + f] = gq[a * F + f] * vw_dot(vw, f, F);
            }
        }
        filter_tile(w2, (const T*)nullptr, gx.data(), F3, F, nt, gh.data());
        for (int k = 0; k < nt * F; ++k) {
            const T p = tile.pre[k], sg = sigmoid(p);
            gh[k] *= sg * (T(1) + p * (T(1) - sg));  // now dL/dpre
        }
        filter_tile(w1, (const T*)nullptr, gh.data(), F, F2, nt, gctx.data());
        for (int t = 0; t < nt; ++t) {
            const std::int64_t a = a0 + t;
            const T* x = tile.x.data() + (std::int64_t)t * F3;
            const T* vw = tile.vw.data() + (std::int64_t)(3 * t) * F2;
            const T* vn = tile.ctx.data() + (std::int64_t)t * F2 + F;
            const T* gc = gctx.data() + (std::int64_t)t * F2;
            for (int c = 0; c < 3; ++c) {
                const T* v = vw + (std::int64_t)c * F2;
                const T* gm_c = gmu + (a * 3 + c) * F;
                T* out = gvw.data() + (std::int64_t)(3 * t + c) * F2;
#pragma omp simd
                for (int f = 0; f < F; ++f) {
                    const T gs = gq[a * F + f] * x[2 * F + f];
                    out[f] = gs * v[F + f] + gc[F + f] / vn[f] * v[f];
                    out[F + f] = gm_c[f] * x[F + f] + gs * v[f];
                }
            }
#pragma omp simd
            for (int f = 0; f < F; ++f) gq_in[a * F + f] = gq[a * F + f] + gc[f];
        }
        rows_product(u, (const T*)nullptr, gvw.data(), F2, F, 3 * nt, gm.data());
        const std::int64_t n3 = (std::int64_t)3 * nt * F;
        const T* gmu0 = gmu + a0 * 3 * F;
        T* gin0 = gmu_in + a0 * 3 * F;
#pragma omp simd
        for (std::int64_t k = 0; k < n3; ++k) gin0[k] = gmu0[k] + gm[k];
        if (gvw_out) {
            std::memcpy(gvw_out + a0 * 3 * F2, gvw.data(), sizeof(T) * 3 * nt * F2);
            std::memcpy(gpre_out + a0 * F, gh.data(), sizeof(T) * nt * F);
            std::memcpy(gx_out + a0 * F3, gx.data(), sizeof(T) * nt * F3);
            std::memcpy(ctx_out + a0 * F2, tile.ctx.data(), sizeof(T) * nt * F2);
            std::memcpy(h_out + a0 * F, tile.h.data(), sizeof(T) * nt * F);
        }
    });
}

}  // namespace

// ut, w1t, w2t: the transposed weights, or all null (see UpdateTile::forward)
#define EXPORT_UPDATE(T, S)                                                                                        \
    extern "C" void painn_update_forward_##S(const T* q, const T* mu, const T* u, const T* w1, const T* b1,          \
                                             const T* w2, const T* b2, const T* ut, const T* w1t, const T* w2t,     \
                                             T eps, std::int64_t N, int F, T* q_out, T* mu_out, int threads) {     \
        const T* wt[3] = {ut, w1t, w2t};                                                                           \
        update_forward<T>(q, mu, u, w1, b1, w2, b2, wt, eps, N, F, q_out, mu_out, threads);                        \
    }                                                                                                              \
    extern "C" void painn_update_backward_##S(const T* gq, const T* gmu, const T* q, const T* mu, const T* u,      \
                                              const T* w1, const T* b1, const T* w2, const T* b2, const T* ut,     \
                                              const T* w1t, const T* w2t, T eps, std::int64_t N, int F, T* gq_in,  \
                                              T* gmu_in, T* gvw_out, T* gpre_out, T* gx_out, T* ctx_out,           \
                                              T* h_out, int threads) {                                             \
        const T* wt[3] = {ut, w1t, w2t};                                                                           \
        update_backward<T>(gq, gmu, q, mu, u, w1, b1, w2, b2, wt, eps, N, F, gq_in, gmu_in, gvw_out, gpre_out,     \
                           gx_out, ctx_out, h_out, threads);                                                       \
    }

EXPORT_UPDATE(float, f32)
EXPORT_UPDATE(double, f64)
