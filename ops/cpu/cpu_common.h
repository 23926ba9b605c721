// Shared by the CPU kernel sources (painn_message.cpp, painn_update.cpp): the subnormal guard and
// the register-blocked small matrix product every kernel is built on.
#pragma once

#include <omp.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace {


#if defined(__x86_64__) || defined(__i386__)
constexpr unsigned MXCSR_FTZ = 1u << 15, MXCSR_DAZ = 1u << 6;

// Flush-to-zero and denormals-are-zero on this thread while the object lives. Gaussian tails
// and their products fall below the smallest normal float (1.2e-38); on Intel cores every
// operation on such a value takes a microcode assist (the message kernels ran 6x slower). MXCSR
// is per thread, so each thread of each parallel region sets it, and restores the value it
// found: the caller's and the OpenMP pool's floating-point state never change.
struct FlushDenormals {
    unsigned saved;
    FlushDenormals() : saved(_mm_getcsr()) { _mm_setcsr(saved | MXCSR_FTZ | MXCSR_DAZ); }
    ~FlushDenormals() { _mm_setcsr(saved); }
    FlushDenormals(const FlushDenormals&) = delete;
    FlushDenormals& operator=(const FlushDenormals&) = delete;
};

inline unsigned read_mxcsr() { return _mm_getcsr(); }
#else
struct FlushDenormals {};  // other ISAs keep their default (IEEE subnormals)
inline unsigned read_mxcsr() { return 0; }
#endif

// Filter rows of a tile of up to TILE edges at once: out[t][c] = bias[c] + sum_k phi[t][k] wt[k][c]
// (a (TILE, K) x (K, C) product). Per column block of one vector register the TILE x CB
// accumulators stay in registers while k runs, so each weight vector is loaded once per tile
// instead of once per edge, and every FMA reads only a broadcast phi: the loop is FMA-bound, not
// load/store-bound as a per-edge row update (one load and one store of the row per k) is. Columns past the last whole block
// take a scalar loop. bias may be null (zero). A partial tile runs the block of the next
// power of two (R rows), so the last tile of an atom wastes at most half its rows.
constexpr int TILE = 8;
// A column block is one vector register of the instruction set the library is built for, so the
// 8 accumulators of a block fit in the register file with room for the weights and broadcasts:
// AVX-512 has 32 registers, AVX2 and SSE 16 (a 512-bit block on AVX2 needs 16 accumulators).
// Built with PAINNFX_CPU_ARCH=x86-64-v3 (AVX2) on an AMD EPYC, Cu500's graph, 2 threads, best of
// 3 interleaved runs, forward/backward ms: per-edge rows 5.7/14.9 (f32) 10.4/22.4 (f64); 64-byte
// blocks 5.5/14.2, 9.9/21.4; one-register blocks 5.5/13.3, 9.9/20.2.
#if defined(__AVX512F__)
constexpr int VECTOR_BYTES = 64;
#elif defined(__AVX__)
constexpr int VECTOR_BYTES = 32;
#else
constexpr int VECTOR_BYTES = 16;
#endif


// dst (cols, rows) = the transpose of src (rows, cols; strides rs, cs), in 16 x 16 tiles: the
// kernels' transposed weights. ATen's t().contiguous() of such a weight is a strided copy through
// TensorIterator, ~2 ns an element (~90 us for 384 x 128, six per call on the update kernels).
template <typename T>
inline void transpose_tiles(const T* src, std::int64_t rows, std::int64_t cols, std::int64_t rs, std::int64_t cs,
                            T* dst) {
    constexpr std::int64_t TILE = 16;
    for (std::int64_t r0 = 0; r0 < rows; r0 += TILE)
        for (std::int64_t c0 = 0; c0 < cols; c0 += TILE) {
            const std::int64_t r1 = r0 + TILE < rows ? r0 + TILE : rows, c1 = c0 + TILE < cols ? c0 + TILE : cols;
            for (std::int64_t c = c0; c < c1; ++c)
                for (std::int64_t r = r0; r < r1; ++r) dst[c * rows + r] = src[r * rs + c * cs];
        }
}

template <typename T, int R>
inline void filter_block(const T* __restrict wt, const T* __restrict bias, const T* __restrict phi, int K, int C,
                         int nt, T* __restrict out) {
    constexpr int CB = VECTOR_BYTES / sizeof(T);
    const int whole = C - C % CB;
    for (int c0 = 0; c0 < whole; c0 += CB) {
        T acc[R][CB];
#pragma GCC unroll 8
        for (int t = 0; t < R; ++t)
#pragma omp simd
            for (int j = 0; j < CB; ++j) acc[t][j] = bias ? bias[c0 + j] : T(0);
        for (int k = 0; k < K; ++k) {
            const T* __restrict w = wt + (std::int64_t)k * C + c0;
#pragma GCC unroll 8
            for (int t = 0; t < R; ++t) {
                const T p = phi[t * K + k];
#pragma omp simd
                for (int j = 0; j < CB; ++j) acc[t][j] += p * w[j];
            }
        }
        for (int t = 0; t < nt; ++t) std::memcpy(out + (std::int64_t)t * C + c0, acc[t], sizeof(T) * CB);
    }
    for (int c = whole; c < C; ++c) {  // the columns past the last whole block
        for (int t = 0; t < nt; ++t) {
            T a = bias ? bias[c] : T(0);
            for (int k = 0; k < K; ++k) a += phi[t * K + k] * wt[(std::int64_t)k * C + c];
            out[(std::int64_t)t * C + c] = a;
        }
    }
}

template <typename T>
inline void filter_tile(const T* wt, const T* bias, const T* phi, int K, int C, int nt, T* out) {
    if (nt > 4)
        filter_block<T, 8>(wt, bias, phi, K, C, nt, out);
    else if (nt > 2)
        filter_block<T, 4>(wt, bias, phi, K, C, nt, out);
    else if (nt == 2)
        filter_block<T, 2>(wt, bias, phi, K, C, nt, out);
    else
        filter_block<T, 1>(wt, bias, phi, K, C, nt, out);
}

}  // namespace
