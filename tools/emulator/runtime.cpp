// The fiber scheduler behind cuda_emu.h: one launch = blocks run one after another, the
// threads of a block as fibers. See cuda_emu.h for the semantics; errors are reported through
// emu_error() with the file:line of the barrier or shuffle involved.
#include <ucontext.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#include <cstdio>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_emu.h"

namespace emu {
thread_local dim3 thread_idx, block_idx, block_dim, grid_dim;

namespace {
enum State { READY, BARRIER, WARP, DONE };

struct Fiber {
    ucontext_t ctx;
    std::unique_ptr<char[]> stack;
    State state = READY;
    const char* file = "";
    int line = 0;
    int kind = 0, param = 0, width = 32;
    unsigned mask = 0;
    std::size_t size = 0;
    unsigned char value[8] = {};
    dim3 tid;
};

struct Launch {
    std::vector<Fiber> fibers;
    ucontext_t scheduler;
    int current = -1;
    const std::function<void()>* body = nullptr;
    std::string error;
};

thread_local Launch* active = nullptr;
thread_local std::string last_error;
constexpr std::size_t STACK = 64 * 1024;

void trampoline() {
    (*active->body)();
    active->fibers[active->current].state = DONE;
}  // returns to uc_link: the scheduler

void yield() {
    Fiber& f = active->fibers[active->current];
    swapcontext(&f.ctx, &active->scheduler);
}

std::string site(const Fiber& f) { return std::string(f.file) + ":" + std::to_string(f.line); }

std::string tid_str(const Fiber& f) {
    return "thread (" + std::to_string(f.tid.x) + "," + std::to_string(f.tid.y) + "," + std::to_string(f.tid.z) + ")";
}

std::string block_str() {
    return "block (" + std::to_string(block_idx.x) + "," + std::to_string(block_idx.y) + "," +
           std::to_string(block_idx.z) + ")";
}

// resolve the warps whose live lanes all wait at a shuffle; false if none could proceed
bool resolve_warps(Launch& L) {
    bool progressed = false;
    const int n = int(L.fibers.size());
    for (int w0 = 0; w0 < n; w0 += 32) {
        const int w1 = std::min(n, w0 + 32);
        int live = 0, waiting = 0;
        const Fiber* first = nullptr;
        for (int k = w0; k < w1; ++k) {
            const Fiber& f = L.fibers[k];
            if (f.state == DONE) continue;
            ++live;
            if (f.state == WARP) {
                ++waiting;
                if (!first) first = &f;
            }
        }
        if (!waiting || waiting != live) continue;
        for (int k = w0; k < w1; ++k) {
            const Fiber& f = L.fibers[k];
            if (f.state == DONE) {
                L.error = "warp shuffle at " + site(*first) + " in " + block_str() + ": lane " +
                          std::to_string(k - w0) + " (" + tid_str(f) + ") has exited";
                return false;
            }
            if (f.line != first->line || std::strcmp(f.file, first->file) || f.kind != first->kind) {
                L.error = "divergent warp shuffles in " + block_str() + ": " + tid_str(*first) + " at " +
                          site(*first) + ", " + tid_str(f) + " at " + site(f);
                return false;
            }
        }
        unsigned char got[32][8];
        for (int k = w0; k < w1; ++k) {
            const Fiber& f = L.fibers[k];
            const int lane = k - w0, width = f.width, base = lane - lane % width;
            int src = lane;
            if (f.kind == 3) src = lane;
            else if (f.kind == 0) src = base + ((f.param % width) + width) % width;
            else if (f.kind == 1) src = lane % width + f.param < width ? lane + f.param : lane;
            else src = base + ((lane % width) ^ f.param);
            if (src >= w1 - w0) src = lane;  // a lane beyond the block: keep own value
            std::memcpy(got[lane], L.fibers[w0 + src].value, 8);
        }
        for (int k = w0; k < w1; ++k) {
            std::memcpy(L.fibers[k].value, got[k - w0], 8);
            L.fibers[k].state = READY;
        }
        progressed = true;
    }
    return progressed;
}

bool run_block(Launch& L, int schedule, std::mt19937& rng) {
    const int n = int(L.fibers.size());
    for (int k = 0; k < n; ++k) {
        Fiber& f = L.fibers[k];
        f.state = READY;
        f.tid = dim3{unsigned(k % block_dim.x), unsigned(k / block_dim.x % block_dim.y),
                     unsigned(k / (block_dim.x * block_dim.y))};
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = f.stack.get();
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &L.scheduler;
        makecontext(&f.ctx, trampoline, 0);
    }
    std::vector<int> order(n);
    for (;;) {
        for (int k = 0; k < n; ++k) order[k] = k;
        if (schedule == 1) std::reverse(order.begin(), order.end());
        if (schedule == 2) std::shuffle(order.begin(), order.end(), rng);
        for (int k : order) {
            if (L.fibers[k].state != READY) continue;
            L.current = k;
            thread_idx = L.fibers[k].tid;
            swapcontext(&L.scheduler, &L.fibers[k].ctx);
        }
        if (!L.error.empty()) return false;
        if (resolve_warps(L)) continue;
        if (!L.error.empty()) return false;
        const Fiber* at = nullptr;
        const Fiber* done = nullptr;
        for (const Fiber& f : L.fibers) {
            if (f.state == DONE) done = &f;
            else if (f.state == WARP) {
                L.error = "warp shuffle at " + site(f) + " in " + block_str() + ": " + tid_str(f) +
                          " waits for lanes that are at a __syncthreads or have exited";
                return false;
            } else if (!at) at = &f;
        }
        if (!at) return true;  // every thread finished
        if (done) {
            L.error = "__syncthreads at " + site(*at) + " in " + block_str() + ": " + tid_str(*done) +
                      " has exited (early return before a barrier) while " + tid_str(*at) + " waits";
            return false;
        }
        for (const Fiber& f : L.fibers) {
            if (f.line != at->line || std::strcmp(f.file, at->file)) {
                L.error = "divergent __syncthreads in " + block_str() + ": " + tid_str(*at) + " at " + site(*at) +
                          ", " + tid_str(f) + " at " + site(f);
                return false;
            }
        }
        for (Fiber& f : L.fibers) f.state = READY;
    }
}
}  // namespace

void syncthreads(const char* file, int line) {
    Fiber& f = active->fibers[active->current];
    f.state = BARRIER;
    f.file = file;
    f.line = line;
    yield();
}

void shuffle(int kind, unsigned mask, void* value, std::size_t size, int param, int width, const char* file,
             int line) {
    Fiber& f = active->fibers[active->current];
    f.state = WARP;
    f.kind = kind;
    f.mask = mask;
    f.param = param;
    f.width = width;
    f.file = file;
    f.line = line;
    f.size = size;
    std::memset(f.value, 0, 8);
    std::memcpy(f.value, value, size);
    yield();
    Fiber& g = active->fibers[active->current];
    std::memcpy(value, g.value, size);
}

// The GPU kernels are compiled with --ftz=true: float32 results below the smallest normal are
// flushed to zero. The emulator does the same with FTZ and DAZ for the duration of a launch (the
// fibers' contexts are made inside it, so they inherit the setting), and restores the caller's
// MXCSR afterwards. On the CPU the flags flush float64 subnormals too (below 2.2e-308), which a
// GPU keeps; no kernel here comes near that range (docs/cuda.md).
struct FlushDenormals {
#if defined(__x86_64__) || defined(__i386__)
    unsigned saved = _mm_getcsr();
    FlushDenormals() { _mm_setcsr(saved | (1u << 15) | (1u << 6)); }
    ~FlushDenormals() { _mm_setcsr(saved); }
#endif
};

int launch(const unsigned* grid, const unsigned* block, int schedule, unsigned seed,
           const std::function<void()>& body) {
    const FlushDenormals flush;
    Launch L;
    L.body = &body;
    const int n = int(block[0] * block[1] * block[2]);
    if (n < 1 || n > 1024) {
        last_error = "block of " + std::to_string(n) + " threads (CUDA allows 1..1024)";
        return 1;
    }
    L.fibers.resize(n);
    for (Fiber& f : L.fibers) f.stack.reset(new char[STACK]);
    grid_dim = dim3{grid[0], grid[1], grid[2]};
    block_dim = dim3{block[0], block[1], block[2]};
    std::mt19937 rng(seed);
    Launch* previous = active;
    active = &L;
    bool ok = true;
    for (unsigned z = 0; ok && z < grid[2]; ++z)
        for (unsigned y = 0; ok && y < grid[1]; ++y)
            for (unsigned x = 0; ok && x < grid[0]; ++x) {
                block_idx = dim3{x, y, z};
                ok = run_block(L, schedule, rng);
            }
    active = previous;
    last_error = L.error;
    return ok ? 0 : 2;
}
}  // namespace emu

extern "C" const char* emu_error() { return emu::last_error.c_str(); }
