// Matrix products with few rows, for painnfx::dense (operators.cpp): out (M, N) = a (M, K)
// x b (K, N) (+ bias) where M is a small molecule's atom count. There a BLAS call spends more on
// packing b than on arithmetic (MKL: ~13 us for 3 x 128 x 384 on an AMD EPYC, ~3 us of FMAs).
// Two forms, by b's layout, neither copying b:
//   dot:  b is a Linear weight W (N, K) seen transposed (b's columns contiguous):
//         out[m][n] = a[m] . W[n], vectors along k, one horizontal sum per output;
//   axpy: b's rows contiguous (the backward's products): out[m] = sum_k a[m][k] b[k], vectors
//         along n, the accumulators of a few rows in registers while k runs.
#pragma once

#include <cstdint>
#include <cstring>

#include "cpu_common.h"

namespace {

template <typename T, int BYTES>
struct Vec {
    static constexpr int L = BYTES / sizeof(T);
    typedef T type __attribute__((vector_size(BYTES)));
};

template <typename V, typename T>
inline V vload(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
}

// the sum of a vector's lanes by halving: log2(lanes) extract-and-add steps
template <typename T, int BYTES>
struct Halves {
    typedef T whole __attribute__((vector_size(BYTES)));
    typedef T half __attribute__((vector_size(BYTES / 2)));
    static inline T sum(whole v) {
        half lo, hi;
        std::memcpy(&lo, &v, sizeof lo);
        std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
        return Halves<T, BYTES / 2>::sum(lo + hi);
    }
};

template <typename T>
struct Halves<T, 2 * sizeof(T)> {
    typedef T whole __attribute__((vector_size(2 * sizeof(T))));
    static inline T sum(whole v) { return v[0] + v[1]; }
};

// Rows at a time: AVX-512 (one-register blocks of 64 bytes) has 32 vector registers, so 4 x 4
// accumulators fit; AVX2 and SSE have 16.
constexpr int BLOCK_ROWS = VECTOR_BYTES == 64 ? 4 : 2;

// R rows x nc (<= 4) columns of the dot form
template <typename T, int R>
inline void dot_block(const T* __restrict a, std::int64_t lda, const T* __restrict w, std::int64_t ldw,
                      const T* __restrict bias, int K, T* __restrict out, std::int64_t ldo, int nc) {
    using V = typename Vec<T, VECTOR_BYTES>::type;
    constexpr int L = Vec<T, VECTOR_BYTES>::L;
    constexpr int C = 4;
    V acc[R][C];
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) acc[r][c] = V{};
    const T* __restrict wc[C];
    for (int c = 0; c < C; ++c) wc[c] = w + (c < nc ? c : 0) * ldw;  // a partial block repeats column 0
    int k = 0;
    for (; k + L <= K; k += L) {
        V x[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) x[r] = vload<V>(a + r * lda + k);
#pragma GCC unroll 4
        for (int c = 0; c < C; ++c) {
            const V wv = vload<V>(wc[c] + k);
#pragma GCC unroll 4
            for (int r = 0; r < R; ++r) acc[r][c] += x[r] * wv;
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < nc; ++c) {
            T s = Halves<T, VECTOR_BYTES>::sum(acc[r][c]);
            for (int kk = k; kk < K; ++kk) s += a[r * lda + kk] * w[c * ldw + kk];
            out[r * ldo + c] = s + (bias ? bias[c] : T(0));
        }
}

// R rows, columns [c0, c1) of the dot form: b = w^T, w (N, K) with row stride ldw
template <typename T, int R>
struct DotColumns {
    static void run(const T* a, std::int64_t lda, const T* w, std::int64_t ldw, const T* bias, int K, T* out,
                    std::int64_t ldo, std::int64_t c0, std::int64_t c1) {
        for (std::int64_t c = c0; c < c1; c += 4)
            dot_block<T, R>(a, lda, w + c * ldw, ldw, bias ? bias + c : nullptr, K, out + c, ldo,
                            int(c1 - c < 4 ? c1 - c : 4));
    }
};

// Rows [0, M) in blocks of BLOCK_ROWS, then 2, then 1 (Columns<T, R>::run on each block).
template <template <typename, int> class Columns, typename T>
inline void row_blocks(const T* a, std::int64_t lda, const T* b, std::int64_t ldb, const T* bias, int M, int K,
                       T* out, std::int64_t ldo, std::int64_t c0, std::int64_t c1) {
    int m = 0;
    for (; m + BLOCK_ROWS <= M; m += BLOCK_ROWS)
        Columns<T, BLOCK_ROWS>::run(a + m * lda, lda, b, ldb, bias, K, out + m * ldo, ldo, c0, c1);
    if (BLOCK_ROWS > 2 && m + 2 <= M) {
        Columns<T, 2>::run(a + m * lda, lda, b, ldb, bias, K, out + m * ldo, ldo, c0, c1);
        m += 2;
    }
    for (; m < M; ++m) Columns<T, 1>::run(a + m * lda, lda, b, ldb, bias, K, out + m * ldo, ldo, c0, c1);
}

// The dot form for rows [0, M) and columns [c0, c1): w (N, K) with row stride ldw.
template <typename T>
inline void dot_product(const T* a, std::int64_t lda, const T* w, std::int64_t ldw, const T* bias, int M, int K,
                        T* out, std::int64_t ldo, std::int64_t c0, std::int64_t c1) {
    row_blocks<DotColumns, T>(a, lda, w, ldw, bias, M, K, out, ldo, c0, c1);
}

// R rows x C vectors of columns of the axpy form
template <typename T, int R, int C>
inline void axpy_block(const T* __restrict a, std::int64_t lda, const T* __restrict b, std::int64_t ldb,
                       const T* __restrict bias, int K, T* __restrict out, std::int64_t ldo) {
    using V = typename Vec<T, VECTOR_BYTES>::type;
    constexpr int L = Vec<T, VECTOR_BYTES>::L;
    V acc[R][C];
    for (int c = 0; c < C; ++c) {
        const V b0 = bias ? vload<V>(bias + c * L) : V{};
        for (int r = 0; r < R; ++r) acc[r][c] = b0;
    }
    for (int k = 0; k < K; ++k) {
        V bv[C];
        for (int c = 0; c < C; ++c) bv[c] = vload<V>(b + k * ldb + c * L);
        for (int r = 0; r < R; ++r) {
            const T x = a[r * lda + k];
            for (int c = 0; c < C; ++c) acc[r][c] += x * bv[c];
        }
    }
    for (int r = 0; r < R; ++r)
        for (int c = 0; c < C; ++c) std::memcpy(out + r * ldo + c * L, &acc[r][c], sizeof(V));
}

// R rows, columns [c0, c1) of the axpy form: b (K, N) with row stride ldb
template <typename T, int R>
struct AxpyColumns {
    static void run(const T* a, std::int64_t lda, const T* b, std::int64_t ldb, const T* bias, int K, T* out,
                    std::int64_t ldo, std::int64_t c0, std::int64_t c1) {
        constexpr int L = Vec<T, VECTOR_BYTES>::L;
        std::int64_t c = c0;
        for (; c + 2 * L <= c1; c += 2 * L)
            axpy_block<T, R, 2>(a, lda, b + c, ldb, bias ? bias + c : nullptr, K, out + c, ldo);
        for (; c + L <= c1; c += L)
            axpy_block<T, R, 1>(a, lda, b + c, ldb, bias ? bias + c : nullptr, K, out + c, ldo);
        for (; c < c1; ++c)  // the columns past the last whole vector
            for (int r = 0; r < R; ++r) {
                T s = bias ? bias[c] : T(0);
                for (int k = 0; k < K; ++k) s += a[r * lda + k] * b[k * ldb + c];
                out[r * ldo + c] = s;
            }
    }
};

// The axpy form for rows [0, M) and columns [c0, c1): b (K, N) with row stride ldb.
template <typename T>
inline void axpy_product(const T* a, std::int64_t lda, const T* b, std::int64_t ldb, const T* bias, int M, int K,
                         T* out, std::int64_t ldo, std::int64_t c0, std::int64_t c1) {
    row_blocks<AxpyColumns, T>(a, lda, b, ldb, bias, M, K, out, ldo, c0, c1);
}

}  // namespace
