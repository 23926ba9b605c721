// CUDA -> C++ shim for running unchanged .cu kernels on the CPU (painnfx.tools.emulator).
//
// Every GPU thread of a block is a fiber (ucontext) of one OS thread. __syncthreads() is a real
// rendezvous: the scheduler runs each fiber until it waits at a barrier (or a warp shuffle, or
// exits), then checks that all live threads of the block wait at the same barrier (file:line)
// before releasing them; a divergent barrier or an early return before a barrier is an error
// naming the sites. Fibers run between barriers in forward, reverse or random order, so a
// missing barrier that happens to work in one order fails in another. Warp shuffles exchange
// values among the (up to) 32 fibers of a warp. __shared__ variables are function statics
// shared by the fibers of the block being run.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>

using std::cos;
using std::exp;
using std::fabs;
using std::sin;
using std::sqrt;

struct dim3 {
    unsigned x = 1, y = 1, z = 1;
};

namespace emu {
extern thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;
// run body() for every thread of every block; schedule: 0 forward, 1 reverse, 2 random(seed)
int launch(const unsigned* grid, const unsigned* block, int schedule, unsigned seed, const std::function<void()>& body);
void syncthreads(const char* file, int line);
// kind: 0 = shfl (param = source lane), 1 = shfl_down (param = delta), 2 = shfl_xor (param = lane mask),
// 3 = __syncwarp (no exchange)
void shuffle(int kind, unsigned mask, void* value, std::size_t size, int param, int width, const char* file,
             int line);

inline void syncwarp(const char* file, int line) {
    int unused = 0;
    shuffle(3, 0xffffffffu, &unused, sizeof(int), 0, 32, file, line);
}

template <typename T>
T shfl(int kind, unsigned mask, T v, int param, int width, const char* file, int line) {
    static_assert(sizeof(T) <= 8, "shuffle of a type wider than 8 bytes");
    shuffle(kind, mask, &v, sizeof(T), param, width, file, line);
    return v;
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#ifdef EMU_PARSE
#define __global__ __emu_global__
#else
#define __global__
#endif
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static thread_local
#define __syncthreads() emu::syncthreads(__FILE__, __LINE__)
#define __shfl_sync(...) emu::shfl_at(0, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_down_sync(...) emu::shfl_at(1, __FILE__, __LINE__, __VA_ARGS__)
#define __shfl_xor_sync(...) emu::shfl_at(2, __FILE__, __LINE__, __VA_ARGS__)
#define __syncwarp(...) emu::syncwarp(__FILE__, __LINE__)

namespace emu {
template <typename T>
T shfl_at(int kind, const char* file, int line, unsigned mask, T v, int param, int width = 32) {
    return shfl(kind, mask, v, param, width, file, line);
}
}  // namespace emu
