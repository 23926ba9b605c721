// Per-edge radial maths shared by every kernel: radial bases, cutoff functions and their
// derivatives, one case per spec of painnfx/ops/radial (the ids below are the specs'
// kernel_id; tests/test_radial_specs.py keeps them in step and runs these functions on the
// host against the Python definitions). Compiled by NVRTC and by a host C++ compiler.
#pragma once

#ifndef __CUDACC__
#include <cmath>
#define PAINNFX_HD inline
#define PAINNFX_NAN(T) T(std::nan(""))
using std::cos;
using std::fabs;
using std::exp;
using std::sin;
using std::sqrt;
#else
#define PAINNFX_HD __host__ __device__ __forceinline__
#define PAINNFX_NAN(T) T(nan(""))
#endif

// the largest number of radial functions a kernel holds (shared and stack arrays);
// painnfx.ops.radial.MAX_KERNEL_K is the same number
#ifndef MAX_K
#define MAX_K 64
#endif

#define PAINNFX_BASIS_GAUSSIAN 0
#define PAINNFX_BASIS_BESSEL 1
#define PAINNFX_CUTOFF_COSINE 0
#define PAINNFX_CUTOFF_MOLLIFIER 1

// An id without a case below is an error, never another function: the host refuses it before
// any launch (painnfx.ops.radial.kernel_radial reads these defines), and the functions return
// NaN for it, which the results carry.

// phi_k(d) and, if dphi is not null, dphi_k/dd. p0/p1: the spec's first/second parameter row.
template <typename T>
PAINNFX_HD T radial_basis(int id, T d, T p0, T p1, T* dphi) {
    if (id == PAINNFX_BASIS_GAUSSIAN) {            // exp(-(d - c)^2 / (2 w^2))
        const T diff = d - p0;
        const T inv_w2 = T(1) / (p1 * p1);
        const T phi = exp(T(-0.5) * inv_w2 * diff * diff);
        if (dphi) *dphi = -diff * inv_w2 * phi;
        return phi;
    }
    if (id != PAINNFX_BASIS_BESSEL) {
        if (dphi) *dphi = PAINNFX_NAN(T);
        return PAINNFX_NAN(T);
    }
    // PAINNFX_BASIS_BESSEL: sin(f d) / d (d = 0: divide by 1); small-x series for the derivative
    const T x = p0 * d;
    const T safe = d == T(0) ? T(1) : d;
    const T phi = sin(x) / safe;
    if (dphi) {
        if (fabs(x) < T(0.05)) {
            const T x2 = x * x;
            *dphi = p0 * p0 * p0 * d * (T(-1) / T(3) + x2 * (T(1) / T(30) + x2 * (T(-1) / T(840) + x2 / T(45360))));
        } else {
            *dphi = (p0 * cos(x) - phi) / safe;
        }
    }
    return phi;
}

// fc(d) and, if dfc is not null, dfc/dd. c0 = rc, c1 = the spec's second parameter (eps).
template <typename T>
PAINNFX_HD T cutoff_fn(int id, T d, T c0, T c1, T* dfc) {
    if (id == PAINNFX_CUTOFF_COSINE) {             // 0.5 (cos(pi d / rc) + 1) [d < rc]
        const T k = T(3.14159265358979323846) / c0;
        const bool inside = d < c0;
        if (dfc) *dfc = inside ? T(-0.5) * k * sin(k * d) : T(0);
        return inside ? T(0.5) * (cos(k * d) + T(1)) : T(0);
    }
    if (id != PAINNFX_CUTOFF_MOLLIFIER) {
        if (dfc) *dfc = PAINNFX_NAN(T);
        return PAINNFX_NAN(T);
    }
    // PAINNFX_CUTOFF_MOLLIFIER: exp(1 - 1 / (1 - (d / rc)^2)) [d + eps < rc]
    if (!(d + c1 < c0)) {
        if (dfc) *dfc = T(0);
        return T(0);
    }
    const T x = d / c0;
    const T inv_g = T(1) / (T(1) - x * x);
    const T fc = exp(T(1) - inv_g);
    if (dfc) *dfc = T(-2) / c0 * x * inv_g * inv_g * fc;
    return fc;
}
