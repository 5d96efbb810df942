// The CUDA C device language on the CPU: what the emulator's "NVRTC"
// includes before kernels.cu when it compiles the kernels with the host's
// C++ compiler into a shared object (the emulator's "cubin").
//
// Every block runs on the launching thread, one block after another; its
// threads are coroutines (ucontext) switched at __syncthreads and at the
// warp primitives, so barriers, shuffles and shared memory behave as on a
// GPU. What it cannot show: timing, the memory model between blocks that
// run at once, and the GPU's own rounding of expf/logf (glibc's here).

#define QTUNE_CUDA_EMU 1

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <ucontext.h>

#include <type_traits>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __restrict__ __restrict
#define __constant__
#define __shared__ static
#define __launch_bounds__(...)

// Threads switch with a few instructions on x86-64 (the callee-saved
// registers and the stack pointer: every switch is a call to __emu_swap),
// with ucontext elsewhere (it also saves the signal mask: a system call).
#if defined(__x86_64__)
#define EMU_FAST_SWITCH 1
extern "C" void __emu_swap(void** save, void* to);
asm(R"(
    .text
    .globl __emu_swap
    .hidden __emu_swap
    .type __emu_swap, @function
__emu_swap:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size __emu_swap, .-__emu_swap
)");
#else
#define EMU_FAST_SWITCH 0
#endif

struct uint3 {
    unsigned x, y, z;
};
typedef uint3 dim3;

// One emulated thread.
struct EmuThread {
#if EMU_FAST_SWITCH
    void* sp;
#else
    ucontext_t ctx;
#endif
    uint3 tid;
    int lane, warp;
    bool done;
};

struct EmuWarp {
    unsigned long long slot[32];
    int alive, arrived;
    unsigned gen;
};

// The running block.
struct EmuBlock {
    int alive, arrived;
    unsigned gen;
    unsigned long long progress; // arrivals and exits: a pass without any is a deadlock
    EmuWarp warp[32];
#if EMU_FAST_SWITCH
    void* sched;
#else
    ucontext_t sched;
#endif
};

static EmuThread* __emu_cur;
static EmuBlock __emu_blk;
static uint3 __emu_blockIdx, __emu_blockDim, __emu_gridDim;
static unsigned char* __emu_smem;

#define threadIdx (__emu_cur->tid)
#define blockIdx __emu_blockIdx
#define blockDim __emu_blockDim
#define gridDim __emu_gridDim
#define warpSize 32

static inline void* __emu_dyn_smem() { return __emu_smem; }

#if EMU_FAST_SWITCH
static inline void __emu_yield() { __emu_swap(&__emu_cur->sp, __emu_blk.sched); }
#else
static inline void __emu_yield() { swapcontext(&__emu_cur->ctx, &__emu_blk.sched); }
#endif

static inline void __syncthreads() {
    EmuBlock& b = __emu_blk;
    unsigned g = b.gen;
    b.progress++;
    if (++b.arrived >= b.alive) {
        b.arrived = 0;
        b.gen++;
        return;
    }
    while (b.gen == g) __emu_yield();
}

static inline void __emu_warp_barrier() {
    EmuWarp& w = __emu_blk.warp[__emu_cur->warp];
    unsigned g = w.gen;
    __emu_blk.progress++;
    if (++w.arrived >= w.alive) {
        w.arrived = 0;
        w.gen++;
        return;
    }
    while (w.gen == g) __emu_yield();
}

static inline void __syncwarp(unsigned = 0xffffffffu) { __emu_warp_barrier(); }

// exchange publishes v and returns lane src's value.
template <class T>
static inline T __emu_exchange(T v, int src) {
    static_assert(sizeof(T) <= 8, "shuffle of a value over 8 bytes");
    EmuWarp& w = __emu_blk.warp[__emu_cur->warp];
    unsigned long long bits = 0;
    memcpy(&bits, &v, sizeof(T));
    w.slot[__emu_cur->lane] = bits;
    __emu_warp_barrier();
    T r;
    bits = w.slot[src & 31];
    memcpy(&r, &bits, sizeof(T));
    __emu_warp_barrier();
    return r;
}

template <class T>
static inline T __shfl_sync(unsigned, T v, int src, int width = 32) {
    int lane = __emu_cur->lane;
    return __emu_exchange(v, (lane / width) * width + (src % width));
}
template <class T>
static inline T __shfl_xor_sync(unsigned, T v, int mask, int width = 32) {
    int lane = __emu_cur->lane, src = lane ^ mask;
    if (src / width != lane / width) src = lane;
    return __emu_exchange(v, src);
}
template <class T>
static inline T __shfl_down_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = __emu_cur->lane;
    int src = (lane % width) + (int)delta < width ? lane + (int)delta : lane;
    return __emu_exchange(v, src);
}
template <class T>
static inline T __shfl_up_sync(unsigned, T v, unsigned delta, int width = 32) {
    int lane = __emu_cur->lane;
    int src = (lane % width) >= (int)delta ? lane - (int)delta : lane;
    return __emu_exchange(v, src);
}

static inline unsigned __ballot_sync(unsigned mask, int pred) {
    EmuWarp& w = __emu_blk.warp[__emu_cur->warp];
    w.slot[__emu_cur->lane] = pred ? 1 : 0;
    __emu_warp_barrier();
    unsigned r = 0;
    for (int l = 0; l < 32; l++)
        if (w.slot[l] == 1) r |= 1u << l;
    __emu_warp_barrier();
    return r & mask;
}
static inline int __any_sync(unsigned mask, int pred) { return __ballot_sync(mask, pred) != 0; }
static inline int __all_sync(unsigned mask, int pred) { return __ballot_sync(mask, !pred) == 0; }

// Atomics: one block runs at a time on one thread, so plain updates.
template <class T>
static inline T atomicAdd(T* p, T v) {
    T o = *p;
    *p = o + v;
    return o;
}
template <class T>
static inline T atomicMax(T* p, T v) {
    T o = *p;
    if (v > o) *p = v;
    return o;
}
template <class T>
static inline T atomicMin(T* p, T v) {
    T o = *p;
    if (v < o) *p = v;
    return o;
}
template <class T>
static inline T atomicExch(T* p, T v) {
    T o = *p;
    *p = v;
    return o;
}
template <class T>
static inline T atomicCAS(T* p, T cmp, T v) {
    T o = *p;
    if (o == cmp) *p = v;
    return o;
}

// Intrinsics: the _rn forms are the IEEE operations the host does with
// contraction off (the compile passes -ffp-contract=off).
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
static inline float __frcp_rn(float a) { return 1.0f / a; }
static inline float __fsqrt_rn(float a) { return sqrtf(a); }
static inline double __dmul_rn(double a, double b) { return a * b; }
static inline double __dadd_rn(double a, double b) { return a + b; }
// __expf and __logf are glibc's own (expf, logf).
static inline float __fdividef(float a, float b) { return a / b; }
static inline float rsqrtf(float a) { return 1.0f / sqrtf(a); }
static inline double rsqrt(double a) { return 1.0 / sqrt(a); }
static inline float __saturatef(float a) { return a < 0 ? 0 : (a > 1 ? 1 : a); }
static inline float __uint_as_float(unsigned u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}
static inline unsigned __float_as_uint(float f) {
    unsigned u;
    memcpy(&u, &f, 4);
    return u;
}
static inline float __int_as_float(int i) {
    float f;
    memcpy(&f, &i, 4);
    return f;
}
static inline int __float_as_int(float f) {
    int i;
    memcpy(&i, &f, 4);
    return i;
}
static inline long long __double_as_longlong(double d) {
    long long i;
    memcpy(&i, &d, 8);
    return i;
}
static inline double __longlong_as_double(long long i) {
    double d;
    memcpy(&d, &i, 8);
    return d;
}
// half → float (the PTX cvt.f32.f16 of the GPU build).
static inline float __emu_h2f(unsigned short h) {
    unsigned s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023, u;
    if (e == 0) {
        if (m == 0) {
            u = s << 31;
        } else {
            e = 127 - 15 + 1;
            while (!(m & 1024)) {
                m <<= 1;
                e--;
            }
            m &= 1023;
            u = (s << 31) | (e << 23) | (m << 13);
        }
    } else if (e == 31) {
        u = (s << 31) | (255u << 23) | (m << 13) | (m ? 0x400000u : 0);
    } else {
        u = (s << 31) | ((e - 15 + 127) << 23) | (m << 13);
    }
    return __uint_as_float(u);
}
static inline unsigned long long __umul64hi(unsigned long long a, unsigned long long b) {
    return (unsigned long long)(((unsigned __int128)a * b) >> 64);
}
static inline long long __mul64hi(long long a, long long b) { return (long long)(((__int128)a * b) >> 64); }
template <class T>
static inline T __ldg(const T* p) {
    return *p;
}
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }
static inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
static inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
static inline long long min(long long a, long long b) { return a < b ? a : b; }
static inline long long max(long long a, long long b) { return a > b ? a : b; }
static inline float min(float a, float b) { return fminf(a, b); }
static inline float max(float a, float b) { return fmaxf(a, b); }

// ---- launching ------------------------------------------------------------

// A kernel's entry reads its arguments from CUDA's void** kernelParams.
template <class... A, size_t... I>
static inline void __emu_invoke(void (*f)(A...), void** p, std::index_sequence<I...>) {
    f(*(std::remove_cv_t<std::remove_reference_t<A>>*)p[I]...);
}
template <class... A>
static inline void __emu_invoke(void (*f)(A...), void** p) {
    __emu_invoke(f, p, std::index_sequence_for<A...>{});
}

// __emu_check returns the index of the first pointer argument that
// valid() rejects, or -1.
template <class... A, size_t... I>
static inline int __emu_check_args(void (*)(A...), void** p, int (*valid)(const void*), std::index_sequence<I...>) {
    int bad = -1;
    auto one = [&](auto* arg, size_t i) {
        using T = std::remove_cv_t<std::remove_pointer_t<decltype(arg)>>;
        if constexpr (std::is_pointer_v<T>) {
            if (bad < 0 && *arg && !valid((const void*)*arg)) bad = (int)i;
        }
    };
    (one((std::remove_cv_t<std::remove_reference_t<A>>*)p[I], I), ...);
    return bad;
}

template <class... A>
static inline int __emu_check(void (*f)(A...), void** p, int (*valid)(const void*)) {
    return __emu_check_args(f, p, valid, std::index_sequence_for<A...>{});
}

template <class... A>
static inline int __emu_arity(void (*)(A...)) {
    return (int)sizeof...(A);
}

typedef void (*__emu_entry_fn)(void**);

static __emu_entry_fn __emu_entry;
static void** __emu_params;

static void __emu_trampoline() {
    __emu_entry(__emu_params);
    EmuThread* t = __emu_cur;
    t->done = true;
    EmuBlock& b = __emu_blk;
    b.progress++;
    b.alive--;
    if (b.arrived > 0 && b.arrived >= b.alive) {
        b.arrived = 0;
        b.gen++;
    }
    EmuWarp& w = b.warp[t->warp];
    w.alive--;
    if (w.arrived > 0 && w.arrived >= w.alive) {
        w.arrived = 0;
        w.gen++;
    }
#if EMU_FAST_SWITCH
    __emu_swap(&t->sp, b.sched); // never resumed
    __builtin_trap();
#endif
}

enum { EMU_MAX_THREADS = 1024, EMU_STACK = 64 << 10 };
static EmuThread __emu_threads[EMU_MAX_THREADS];
static char* __emu_stacks;

// __emu_launch runs the grid; it returns 0, or 1 for a deadlock (threads
// waiting at barriers none of the others will reach), 2 when the stacks
// cannot be had.
extern "C" int __emu_launch(__emu_entry_fn entry, void** params, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                            unsigned bz, unsigned char* smem, size_t smemBytes) {
    if (!__emu_stacks) { // each thread's stack sits above a PROT_NONE page
        void* m = mmap(nullptr, (size_t)EMU_MAX_THREADS * EMU_STACK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) return 2;
        __emu_stacks = (char*)m;
        for (int i = 0; i < EMU_MAX_THREADS; i++) mprotect(__emu_stacks + (size_t)i * EMU_STACK, 4096, PROT_NONE);
    }
    __emu_entry = entry;
    __emu_params = params;
    __emu_smem = smem;
    __emu_gridDim = uint3{gx, gy, gz};
    __emu_blockDim = uint3{bx, by, bz};
    int n = (int)(bx * by * bz);
    for (unsigned z = 0; z < gz; z++)
        for (unsigned y = 0; y < gy; y++)
            for (unsigned x = 0; x < gx; x++) {
                __emu_blockIdx = uint3{x, y, z};
                if (smemBytes) memset(smem, 0xff, smemBytes); // NaNs: shared memory starts undefined
                EmuBlock& b = __emu_blk;
                b.alive = n;
                b.arrived = 0;
                b.gen = 0;
                b.progress = 0;
                for (int w = 0; w < (n + 31) / 32; w++) {
                    b.warp[w].alive = (w + 1) * 32 <= n ? 32 : n - w * 32;
                    b.warp[w].arrived = 0;
                    b.warp[w].gen = 0;
                }
                for (int i = 0; i < n; i++) {
                    EmuThread& t = __emu_threads[i];
                    t.tid = uint3{(unsigned)i % bx, (unsigned)(i / bx) % by, (unsigned)(i / (bx * by))};
                    t.lane = i & 31;
                    t.warp = i >> 5;
                    t.done = false;
#if EMU_FAST_SWITCH
                    // __emu_swap's frame: six registers, then the address it
                    // returns to; the trampoline starts as if called.
                    void** sp = (void**)(__emu_stacks + (size_t)(i + 1) * EMU_STACK - 64);
                    for (int r = 0; r < 6; r++) sp[r] = nullptr;
                    sp[6] = (void*)__emu_trampoline;
                    sp[7] = nullptr;
                    t.sp = sp;
#else
                    getcontext(&t.ctx);
                    t.ctx.uc_stack.ss_sp = __emu_stacks + (size_t)i * EMU_STACK;
                    t.ctx.uc_stack.ss_size = EMU_STACK;
                    t.ctx.uc_link = &b.sched;
                    makecontext(&t.ctx, __emu_trampoline, 0);
#endif
                }
                while (b.alive > 0) {
                    unsigned long long before = b.progress;
                    for (int i = 0; i < n; i++) {
                        if (__emu_threads[i].done) continue;
                        __emu_cur = &__emu_threads[i];
#if EMU_FAST_SWITCH
                        __emu_swap(&b.sched, __emu_threads[i].sp);
#else
                        swapcontext(&b.sched, &__emu_threads[i].ctx);
#endif
                    }
                    if (b.alive > 0 && b.progress == before) return 1;
                }
            }
    return 0;
}
