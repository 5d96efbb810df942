// qtune's CUDA emulator: the entry points of libcuda, libcublas and
// libnvrtc that kernels/cuda calls, implemented on the CPU in one shared
// library. Pointing $QTUNE_CUDA_DRIVER, $QTUNE_CUBLAS and $QTUNE_NVRTC at
// it runs qtune's GPU path, its kernels included, on a machine without a
// GPU: "NVRTC" compiles kernels.cu with the host's C++ compiler and
// prelude.h (CUDA's device language on the CPU) into a shared object, the
// "cubin"; the "driver" loads it and runs each launch block by block.
//
// It checks more than a GPU would at the call: copies and kernel pointer
// arguments must fall inside device allocations (an overrun of an
// allocation's 256-byte-rounded end hits a guard page), launch shapes and
// dynamic shared memory are held to the limits of the compute capability
// it reports (8.0), and threads that can never meet at a barrier are
// reported instead of hanging. Streams run in order at the call (a valid
// schedule of any correct program; races between streams stay hidden).
//
// Test tooling only: it is never part of the qtune binary.

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <deque>
#include <functional>
#include <memory>
#include <map>
#include <mutex>
#include <regex>
#include <set>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

#ifndef QTUNE_CUDAEMU_BUILD
#define QTUNE_CUDAEMU_BUILD "unknown"
#endif

static const char kPrelude[] =
#include "prelude.inc"
    ;

typedef int CUresult;
enum {
    OK = 0,
    INVALID_VALUE = 1,
    OUT_OF_MEMORY = 2,
    NOT_INITIALIZED = 3,
    INVALID_DEVICE = 101,
    INVALID_IMAGE = 200,
    INVALID_HANDLE = 400,
    NOT_FOUND = 500,
    ILLEGAL_ADDRESS = 700,
    LAUNCH_FAILED = 719,
};

static std::mutex mu;
static bool inited;
static size_t totalMem, usedMem, ctxBytes, blasLazy;
static int nDevices = 1, ctxRefs;
static bool blasLoaded, trace;

// QTUNE_CUDAEMU_TRACE=1 prints what changes the device's memory.
#define TRACE(...)                                      \
    do {                                                \
        if (trace) fprintf(stderr, "cudaemu: " __VA_ARGS__); \
    } while (0)

struct Alloc {
    void* base;
    size_t mapped, n, counted;
    bool pinned;
};
static std::map<uintptr_t, Alloc> allocs; // by the address handed out

// The stream machinery (below) used earlier.
static bool asyncMode;
static int asyncLevel; // QTUNE_CUDAEMU_ASYNC: 0 at the call, 1 deferred, 2 deferred with eager non-blocking streams
extern "C" {
static void runEverything();
static int takeSticky();
}

static size_t envSize(const char* name, size_t def) {
    const char* v = getenv(name);
    if (!v || !*v) return def;
    char* end;
    double x = strtod(v, &end);
    std::string u(end);
    double m = 1;
    if (u == "KiB") m = 1024.0;
    else if (u == "MiB") m = 1024.0 * 1024;
    else if (u == "GiB") m = 1024.0 * 1024 * 1024;
    return (size_t)(x * m);
}

static void emuInit() {
    if (inited) return;
    inited = true;
    totalMem = envSize("QTUNE_CUDAEMU_MEM", (size_t)8 << 30);
    ctxBytes = envSize("QTUNE_CUDAEMU_CONTEXT", (size_t)256 << 20);
    blasLazy = envSize("QTUNE_CUDAEMU_BLAS_LAZY", (size_t)64 << 20);
    if (const char* v = getenv("QTUNE_CUDAEMU_DEVICES")) nDevices = atoi(v);
    trace = getenv("QTUNE_CUDAEMU_TRACE") && atoi(getenv("QTUNE_CUDAEMU_TRACE")) > 0;
    asyncLevel = getenv("QTUNE_CUDAEMU_ASYNC") ? atoi(getenv("QTUNE_CUDAEMU_ASYNC")) : 0;
    asyncMode = asyncLevel > 0;
}

static size_t roundUp(size_t n, size_t to) { return (n + to - 1) / to * to; }

// inside says whether [p, p+n) lies in one allocation (device memory, or
// pinned host memory too when pinnedOK).
static bool inside(uintptr_t p, size_t n, bool pinnedOK) {
    auto it = allocs.upper_bound(p);
    if (it == allocs.begin()) return false;
    --it;
    const Alloc& a = it->second;
    if (a.pinned && !pinnedOK) return false;
    return p >= it->first && p - it->first <= a.n && n <= a.n - (p - it->first);
}

static int validPtr(const void* p) {
    std::lock_guard<std::mutex> g(mu);
    return inside((uintptr_t)p, 0, true);
}

static double now() {
    timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// mapGuarded maps n bytes ending (rounded to 256) at a PROT_NONE page,
// populated: the device reports itself integrated (its memory the host's),
// and like a real GPU's, an allocation holds its memory from the start.
static void* mapGuarded(size_t n, Alloc* a) {
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    size_t body = roundUp(n ? n : 1, page);
    void* base = mmap(nullptr, body + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (base == MAP_FAILED) return nullptr;
    mprotect((char*)base + body, page, PROT_NONE);
    a->base = base;
    a->mapped = body + page;
    return (char*)base + (body - roundUp(n ? n : 1, 256));
}

extern "C" {

// ---- the driver -------------------------------------------------------------

CUresult cuInit(unsigned) {
    std::lock_guard<std::mutex> g(mu);
    emuInit();
    return OK;
}
CUresult cuDriverGetVersion(int* v) {
    *v = 12080;
    return OK;
}
CUresult cuDeviceGetCount(int* n) {
    *n = nDevices;
    return inited ? OK : NOT_INITIALIZED;
}
CUresult cuDeviceGet(int* d, int ordinal) {
    if (ordinal < 0 || ordinal >= nDevices) return INVALID_DEVICE;
    *d = ordinal;
    return OK;
}
CUresult cuDeviceGetName(char* name, int n, int) {
    snprintf(name, (size_t)n, "qtune CUDA emulator (CPU)");
    return OK;
}
enum { MAX_SHARED_OPTIN = 166912, MAX_SHARED_DEFAULT = 48 << 10 };
CUresult cuDeviceGetAttribute(int* v, int attr, int) {
    switch (attr) {
    case 16: *v = 4; break;                 // multiprocessors
    case 18: *v = 1; break;                 // integrated: its memory is the host's
    case 75: *v = 8; break;                 // compute capability 8.0
    case 76: *v = 0; break;
    case 97: *v = MAX_SHARED_OPTIN; break;  // shared memory per block, opt-in
    case 8: *v = MAX_SHARED_DEFAULT; break; // shared memory per block
    case 1: *v = 1024; break;               // threads per block
    default: *v = 0;
    }
    return OK;
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) {
    *b = totalMem;
    return OK;
}
CUresult cuDevicePrimaryCtxRetain(void** ctx, int d) {
    std::lock_guard<std::mutex> g(mu);
    if (ctxRefs++ == 0) usedMem += ctxBytes;
    TRACE("context retained (%d), used %zu MiB\n", ctxRefs, usedMem >> 20);
    *ctx = (void*)(uintptr_t)(0x1000 + d);
    return OK;
}
CUresult cuDevicePrimaryCtxRelease_v2(int) {
    std::lock_guard<std::mutex> g(mu);
    if (ctxRefs > 0 && --ctxRefs == 0) { // the context goes, and cuBLAS's kernels with it
        usedMem -= ctxBytes;
        if (blasLoaded) usedMem -= blasLazy;
        blasLoaded = false;
    }
    TRACE("context released (%d), used %zu MiB\n", ctxRefs, usedMem >> 20);
    return OK;
}
CUresult cuCtxSetCurrent(void*) { return OK; }
CUresult cuCtxSynchronize() {
    runEverything();
    return takeSticky();
}
CUresult cuMemGetInfo_v2(size_t* free, size_t* total) {
    std::lock_guard<std::mutex> g(mu);
    *total = totalMem;
    *free = totalMem > usedMem ? totalMem - usedMem : 0;
    return OK;
}

// Device memory is counted as the driver does: an allocation of 2 MiB or
// more in whole 2 MiB pages, smaller ones (rounded to 512 bytes) packed
// together into pages.
static size_t smallBytes;
static size_t countedFor(size_t n) {
    if (n >= ((size_t)2 << 20)) return roundUp(n, (size_t)2 << 20);
    size_t before = roundUp(smallBytes, (size_t)2 << 20);
    return roundUp(smallBytes + roundUp(n, 512), (size_t)2 << 20) - before;
}
CUresult cuMemAlloc_v2(uint64_t* p, size_t n) {
    std::lock_guard<std::mutex> g(mu);
    if (n == 0) return INVALID_VALUE;
    if (n > totalMem) return OUT_OF_MEMORY;
    size_t counted = countedFor(n);
    if (counted > totalMem - std::min(totalMem, usedMem)) return OUT_OF_MEMORY;
    if (n < ((size_t)2 << 20)) smallBytes += roundUp(n, 512);
    Alloc a{};
    void* q = mapGuarded(n, &a);
    if (!q) return OUT_OF_MEMORY;
    a.n = n;
    a.counted = counted;
    usedMem += counted;
    allocs[(uintptr_t)q] = a;
    *p = (uint64_t)(uintptr_t)q;
    TRACE("alloc %zu at %p, used %zu MiB\n", n, q, usedMem >> 20);
    return OK;
}
static CUresult freeAlloc(uintptr_t p, bool pinned) {
    runEverything(); // a free waits for the work that may still use the memory
    std::lock_guard<std::mutex> g(mu);
    auto it = allocs.find(p);
    if (it == allocs.end() || it->second.pinned != pinned) return INVALID_VALUE;
    size_t n = it->second.n;
    if (pinned) {
    } else if (n >= ((size_t)2 << 20)) {
        usedMem -= it->second.counted;
    } else {
        size_t before = roundUp(smallBytes, (size_t)2 << 20);
        smallBytes -= roundUp(n, 512);
        usedMem -= before - roundUp(smallBytes, (size_t)2 << 20);
    }
    TRACE("free %zu at %p, used %zu MiB\n", it->second.n, (void*)p, usedMem >> 20);
    munmap(it->second.base, it->second.mapped);
    allocs.erase(it);
    return OK;
}
CUresult cuMemFree_v2(uint64_t p) { return freeAlloc((uintptr_t)p, false); }
CUresult cuMemHostAlloc(void** p, size_t n, unsigned) {
    std::lock_guard<std::mutex> g(mu);
    if (n == 0) return INVALID_VALUE;
    Alloc a{};
    void* q = mapGuarded(n, &a);
    if (!q) return OUT_OF_MEMORY;
    a.n = n;
    a.pinned = true;
    allocs[(uintptr_t)q] = a;
    *p = q;
    return OK;
}
CUresult cuMemFreeHost(void* p) { return freeAlloc((uintptr_t)p, true); }

// Streams. By default work runs at the call (every stream in order: a
// valid schedule of any correct program). With QTUNE_CUDAEMU_ASYNC=1 it
// is queued per stream and runs only when something needs it: a
// synchronize, an event waited for (cuStreamWaitEvent runs the event's
// stream up to it when the waiting stream gets there), a synchronous copy
// (the legacy default stream's: it waits for the blocking streams), a free.
// Work then runs as late as CUDA allows, so a missing wait shows as wrong
// results (a kernel reading a buffer before its upload), as does a host
// write into pinned memory an upload has not read yet.
struct Stream {
    int flags; // 1: CU_STREAM_NON_BLOCKING
    std::deque<std::function<void()>> q;
    uint64_t enq = 0, done = 0;
};
struct Event {
    double t;
    Stream* s;
    uint64_t seq;
};
static Stream legacyStream{0};
static std::set<Stream*> streams{&legacyStream};
static int stickyError;
static std::recursive_mutex workMu;

static Stream* streamOf(void* h) { return h ? (Stream*)h : &legacyStream; }

// runUpTo runs s's queued work until upto items are done.
static void runUpTo(Stream* s, uint64_t upto) {
    std::lock_guard<std::recursive_mutex> g(workMu);
    while (s->done < upto && !s->q.empty()) {
        auto f = std::move(s->q.front());
        s->q.pop_front();
        f();
        s->done++;
    }
}
static void runAll(Stream* s) { runUpTo(s, UINT64_MAX); }
static void runBlocking() { // what a legacy-stream operation waits for
    for (Stream* s : streams)
        if (!(s->flags & 1)) runAll(s);
}
static void runEverything() {
    for (Stream* s : streams) runAll(s);
}
// With QTUNE_CUDAEMU_ASYNC=2 the non-blocking streams (qtune's Copy queue)
// run their work at once instead, as early as CUDA allows, while the
// others wait: a copy that overwrites what queued kernels have yet to read
// (a missing wait for them) then shows too.
static void submit(void* h, std::function<void()> f) {
    if (!asyncMode) {
        f();
        return;
    }
    std::lock_guard<std::recursive_mutex> g(workMu);
    Stream* s = streamOf(h);
    s->q.push_back(std::move(f));
    s->enq++;
    if (asyncLevel >= 2 && (s->flags & 1)) runAll(s);
}
static int takeSticky() {
    std::lock_guard<std::recursive_mutex> g(workMu);
    int rc = stickyError;
    stickyError = 0;
    return rc;
}

// checkCopy refuses a copy whose device side leaves device memory.
static CUresult checkCopy(const char* what, void* dst, bool dstDev, const void* src, bool srcDev, size_t n) {
    {
        std::lock_guard<std::mutex> g(mu);
        bool ok = (!dstDev || inside((uintptr_t)dst, n, false)) && (!srcDev || inside((uintptr_t)src, n, false));
        if (!ok) {
            fprintf(stderr, "cudaemu: %s of %zu bytes outside device memory (dst %p, src %p)\n", what, n, dst, src);
            return INVALID_VALUE;
        }
    }
    return OK;
}
// The synchronous copies go on the legacy default stream: they wait for
// the blocking streams' work first.
CUresult cuMemcpyHtoD_v2(uint64_t dst, const void* src, size_t n) {
    CUresult rc = checkCopy("cuMemcpyHtoD", (void*)dst, true, src, false, n);
    if (rc) return rc;
    runBlocking();
    memmove((void*)dst, src, n);
    return takeSticky();
}
CUresult cuMemcpyDtoH_v2(void* dst, uint64_t src, size_t n) {
    CUresult rc = checkCopy("cuMemcpyDtoH", dst, false, (void*)src, true, n);
    if (rc) return rc;
    runBlocking();
    memmove(dst, (void*)src, n);
    return takeSticky();
}
static CUresult copyAsync(const char* what, void* dst, bool dstDev, const void* src, bool srcDev, size_t n, void* s) {
    CUresult rc = checkCopy(what, dst, dstDev, src, srcDev, n);
    if (rc == OK) submit(s, [=] { memmove(dst, src, n); });
    return rc;
}
CUresult cuMemcpyHtoDAsync_v2(uint64_t dst, const void* src, size_t n, void* s) {
    return copyAsync("cuMemcpyHtoDAsync", (void*)dst, true, src, false, n, s);
}
CUresult cuMemcpyDtoHAsync_v2(void* dst, uint64_t src, size_t n, void* s) {
    return copyAsync("cuMemcpyDtoHAsync", dst, false, (void*)src, true, n, s);
}
CUresult cuMemcpyDtoDAsync_v2(uint64_t dst, uint64_t src, size_t n, void* s) {
    return copyAsync("cuMemcpyDtoDAsync", (void*)dst, true, (void*)src, true, n, s);
}
CUresult cuMemsetD8Async(uint64_t dst, unsigned char v, size_t n, void* s) {
    {
        std::lock_guard<std::mutex> g(mu);
        if (!inside((uintptr_t)dst, n, false)) return INVALID_VALUE;
    }
    submit(s, [=] { memset((void*)dst, v, n); });
    return OK;
}

CUresult cuStreamCreate(void** s, unsigned flags) {
    Stream* st = new Stream{(int)flags};
    std::lock_guard<std::recursive_mutex> g(workMu);
    streams.insert(st);
    *s = st;
    return OK;
}
CUresult cuStreamDestroy_v2(void* s) {
    if (!s) return INVALID_HANDLE;
    runAll((Stream*)s); // CUDA lets its queued work finish
    std::lock_guard<std::recursive_mutex> g(workMu);
    streams.erase((Stream*)s);
    delete (Stream*)s;
    return takeSticky();
}
CUresult cuStreamSynchronize(void* s) {
    runAll(streamOf(s));
    return takeSticky();
}
CUresult cuStreamWaitEvent(void* s, void* e, unsigned) {
    if (!e) return INVALID_HANDLE;
    Event* ev = (Event*)e;
    Stream* es = ev->s;
    uint64_t seq = ev->seq;
    if (es) submit(s, [=] { runUpTo(es, seq); });
    return OK;
}
CUresult cuEventCreate(void** e, unsigned) {
    *e = new Event{0, nullptr, 0};
    return OK;
}
CUresult cuEventRecord(void* e, void* s) {
    if (!e) return INVALID_HANDLE;
    Event* ev = (Event*)e;
    submit(s, [=] { ev->t = now(); });
    std::lock_guard<std::recursive_mutex> g(workMu);
    ev->s = streamOf(s);
    ev->seq = ev->s->enq;
    return OK;
}
CUresult cuEventSynchronize(void* e) {
    if (!e) return INVALID_HANDLE;
    Event* ev = (Event*)e;
    if (ev->s) runUpTo(ev->s, ev->seq);
    return takeSticky();
}
CUresult cuEventElapsedTime(float* ms, void* a, void* b) {
    if (!a || !b) return INVALID_HANDLE;
    *ms = (float)((((Event*)b)->t - ((Event*)a)->t) * 1e3);
    return OK;
}
CUresult cuEventElapsedTime_v2(float* ms, void* a, void* b) { return cuEventElapsedTime(ms, a, b); }
CUresult cuEventDestroy_v2(void* e) {
    delete (Event*)e;
    return OK;
}

// Modules: the "cubin" is a shared object the emulator's NVRTC built.
typedef void (*EntryFn)(void**);
typedef int (*CheckFn)(void**, int (*)(const void*));
typedef int (*LookupFn)(const char*, EntryFn*, CheckFn*, int*);
typedef int (*LaunchFn)(EntryFn, void**, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned char*, size_t);
struct Module {
    void* dl;
    LookupFn lookup;
    LaunchFn launch;
    size_t counted;
};
struct Function {
    Module* m;
    std::string name;
    EntryFn entry;
    CheckFn check;
    int nargs;
    int maxShared;
};

CUresult cuModuleLoadData(void** mod, const void* image) {
    const unsigned char* e = (const unsigned char*)image;
    if (!e || memcmp(e, "\x7f" "ELF\x02", 5) != 0) return INVALID_IMAGE;
    uint64_t shoff;
    uint16_t shentsize, shnum;
    memcpy(&shoff, e + 0x28, 8);
    memcpy(&shentsize, e + 0x3a, 2);
    memcpy(&shnum, e + 0x3c, 2);
    size_t size = (size_t)shoff + (size_t)shentsize * shnum;
    if (size < 64 || size > ((size_t)1 << 30)) return INVALID_IMAGE;
    const char* tmp = getenv("TMPDIR");
    std::string path = std::string(tmp && *tmp ? tmp : "/tmp") + "/qtune-cudaemu-XXXXXX";
    std::vector<char> p(path.begin(), path.end());
    p.push_back(0);
    int fd = mkstemp(p.data());
    if (fd < 0) return INVALID_IMAGE;
    bool ok = write(fd, e, size) == (ssize_t)size;
    close(fd);
    void* dl = ok ? dlopen(p.data(), RTLD_NOW | RTLD_LOCAL) : nullptr;
    unlink(p.data());
    if (!dl) {
        fprintf(stderr, "cudaemu: cuModuleLoadData: %s\n", dlerror());
        return INVALID_IMAGE;
    }
    auto lookup = (LookupFn)dlsym(dl, "__emu_lookup");
    auto launch = (LaunchFn)dlsym(dl, "__emu_launch");
    if (!lookup || !launch) {
        dlclose(dl);
        return INVALID_IMAGE;
    }
    std::lock_guard<std::mutex> g(mu);
    size_t counted = roundUp(size, (size_t)2 << 20);
    usedMem += counted;
    *mod = new Module{dl, lookup, launch, counted};
    TRACE("module of %zu bytes loaded, used %zu MiB\n", size, usedMem >> 20);
    return OK;
}
CUresult cuModuleUnload(void* mod) {
    Module* m = (Module*)mod;
    if (!m) return INVALID_HANDLE;
    runEverything();
    {
        std::lock_guard<std::mutex> g(mu);
        usedMem -= m->counted;
        TRACE("module unloaded, used %zu MiB\n", usedMem >> 20);
    }
    dlclose(m->dl);
    delete m;
    return OK;
}
CUresult cuModuleGetFunction(void** f, void* mod, const char* name) {
    Module* m = (Module*)mod;
    if (!m) return INVALID_HANDLE;
    EntryFn e;
    CheckFn c;
    int nargs = 0;
    if (!m->lookup(name, &e, &c, &nargs)) return NOT_FOUND;
    *f = new Function{m, name, e, c, nargs, MAX_SHARED_DEFAULT};
    TRACE("kernel %s: %d arguments\n", name, nargs);
    return OK;
}
CUresult cuFuncSetAttribute(void* f, int attr, int v) {
    Function* fn = (Function*)f;
    if (!fn) return INVALID_HANDLE;
    if (attr == 8) { // CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES
        if (v < 0 || v > MAX_SHARED_OPTIN) return INVALID_VALUE;
        fn->maxShared = v;
    }
    return OK;
}

CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz, unsigned shared, void* stream,
                        void** params, void**) {
    Function* fn = (Function*)f;
    if (!fn) return INVALID_HANDLE;
    unsigned long long threads = (unsigned long long)bx * by * bz;
    if (!gx || !gy || !gz || gx > 0x7fffffffu || gy > 65535 || gz > 65535 || !threads || threads > 1024 || bx > 1024 || by > 1024 ||
        bz > 64) {
        fprintf(stderr, "cudaemu: %s: grid (%u,%u,%u) × block (%u,%u,%u) is not a valid launch\n", fn->name.c_str(), gx, gy, gz, bx, by, bz);
        return INVALID_VALUE;
    }
    if ((int)shared > fn->maxShared) {
        fprintf(stderr, "cudaemu: %s: %u bytes of dynamic shared memory, %d allowed (cuFuncSetAttribute raises it up to %d)\n",
                fn->name.c_str(), shared, fn->maxShared, MAX_SHARED_OPTIN);
        return INVALID_VALUE;
    }
    if (!params) return INVALID_VALUE;
    int bad = fn->check(params, validPtr);
    if (bad >= 0) {
        fprintf(stderr, "cudaemu: %s: argument %d (%p) is not device memory\n", fn->name.c_str(), bad, *(void**)params[bad]);
        return ILLEGAL_ADDRESS;
    }
    // CUDA copies the arguments at the launch: so does the emulator (each
    // is read as 8 bytes, the slots qtune passes), for a deferred launch.
    auto vals = std::make_shared<std::vector<uint64_t>>(fn->nargs);
    auto ptrs = std::make_shared<std::vector<void*>>(fn->nargs);
    for (int i = 0; i < fn->nargs; i++) {
        memcpy(&(*vals)[i], params[i], 8);
        (*ptrs)[i] = &(*vals)[i];
    }
    auto run = [=]() -> int {
        for (int i = 0; i < fn->nargs; i++) TRACE("  %s arg %d = %#llx (at %p)\n", fn->name.c_str(), i, (unsigned long long)(*vals)[i], (*ptrs)[i]);
        std::vector<unsigned char> smem(shared);
        int rc = fn->m->launch(fn->entry, ptrs->data(), gx, gy, gz, bx, by, bz, smem.data(), shared);
        if (rc == 1) fprintf(stderr, "cudaemu: %s: threads wait at a barrier the others never reach\n", fn->name.c_str());
        return rc ? LAUNCH_FAILED : OK;
    };
    if (!asyncMode) return run();
    submit(stream, [=] {
        if (int rc = run()) {
            std::lock_guard<std::recursive_mutex> g(workMu);
            if (!stickyError) stickyError = rc;
        }
    });
    return OK;
}

static const struct {
    int code;
    const char *name, *text;
} kErrors[] = {
    {OK, "CUDA_SUCCESS", "no error"},
    {INVALID_VALUE, "CUDA_ERROR_INVALID_VALUE", "invalid argument"},
    {OUT_OF_MEMORY, "CUDA_ERROR_OUT_OF_MEMORY", "out of memory"},
    {NOT_INITIALIZED, "CUDA_ERROR_NOT_INITIALIZED", "initialization error"},
    {100, "CUDA_ERROR_NO_DEVICE", "no CUDA-capable device is detected"},
    {INVALID_DEVICE, "CUDA_ERROR_INVALID_DEVICE", "invalid device ordinal"},
    {INVALID_IMAGE, "CUDA_ERROR_INVALID_IMAGE", "device kernel image is invalid"},
    {INVALID_HANDLE, "CUDA_ERROR_INVALID_HANDLE", "invalid resource handle"},
    {NOT_FOUND, "CUDA_ERROR_NOT_FOUND", "named symbol not found"},
    {ILLEGAL_ADDRESS, "CUDA_ERROR_ILLEGAL_ADDRESS", "an illegal memory access was encountered"},
    {LAUNCH_FAILED, "CUDA_ERROR_LAUNCH_FAILED", "unspecified launch failure"},
};
CUresult cuGetErrorName(int code, const char** s) {
    for (auto& e : kErrors)
        if (e.code == code) {
            *s = e.name;
            return OK;
        }
    return INVALID_VALUE;
}
CUresult cuGetErrorString(int code, const char** s) {
    for (auto& e : kErrors)
        if (e.code == code) {
            *s = e.text;
            return OK;
        }
    return INVALID_VALUE;
}

// ---- cuBLAS -------------------------------------------------------------------

struct Blas {
    void* stream;
};
enum { BLAS_OK = 0, BLAS_NOT_INITIALIZED = 1, BLAS_INVALID_VALUE = 7, BLAS_NOT_SUPPORTED = 15 };

int cublasCreate_v2(void** h) {
    *h = new Blas{nullptr};
    return BLAS_OK;
}
int cublasDestroy_v2(void* h) {
    if (!h) return BLAS_NOT_INITIALIZED;
    delete (Blas*)h;
    return BLAS_OK;
}
int cublasSetStream_v2(void* h, void* s) {
    if (!h) return BLAS_NOT_INITIALIZED;
    ((Blas*)h)->stream = s;
    return BLAS_OK;
}
int cublasGetVersion_v2(void* h, int* v) {
    if (!h) return BLAS_NOT_INITIALIZED;
    *v = 120800;
    return BLAS_OK;
}
int cublasSetWorkspace_v2(void* h, void* ws, size_t n) {
    if (!h) return BLAS_NOT_INITIALIZED;
    std::lock_guard<std::mutex> g(mu);
    return !ws || inside((uintptr_t)ws, n, false) ? BLAS_OK : BLAS_INVALID_VALUE;
}

static float loadAs(const void* p, int type, size_t i) {
    switch (type) {
    case 0:
        return ((const float*)p)[i];
    case 14: { // bfloat16
        uint32_t u = (uint32_t)((const uint16_t*)p)[i] << 16;
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    default: { // 2: half
        uint16_t h = ((const uint16_t*)p)[i];
        uint32_t s = (h >> 15) & 1, e = (h >> 10) & 31, m = h & 1023, u;
        if (e == 0 && m == 0) u = s << 31;
        else if (e == 0) {
            e = 113;
            while (!(m & 1024)) {
                m <<= 1;
                e--;
            }
            u = (s << 31) | (e << 23) | ((m & 1023) << 13);
        } else if (e == 31) u = (s << 31) | (255u << 23) | (m << 13) | (m ? 0x400000u : 0);
        else u = (s << 31) | ((e + 112) << 23) | (m << 13);
        float f;
        memcpy(&f, &u, 4);
        return f;
    }
    }
}

// cublasGemmEx: column-major C (m×n) = alpha·op(A)·op(B) + beta·C with
// FP32, BF16 or F16 inputs, FP32 output and accumulation (a sequential
// sum per element: within K·2⁻²⁴·Σ|ab| of the exact product).
int cublasGemmEx(void* h, int ta, int tb, int m, int n, int k, const float* alpha, const void* A, int at, int lda, const void* B, int bt,
                 int ldb, const float* beta, void* C, int ct, int ldc, int compute, int) {
    if (!h) return BLAS_NOT_INITIALIZED;
    if ((at != 0 && at != 2 && at != 14) || bt != at || ct != 0 || compute != 68) return BLAS_NOT_SUPPORTED;
    if (m < 0 || n < 0 || k < 0 || (ta != 0 && ta != 1) || (tb != 0 && tb != 1) || lda < std::max(1, ta ? k : m) ||
        ldb < std::max(1, tb ? n : k) || ldc < std::max(1, m))
        return BLAS_INVALID_VALUE;
    if (!m || !n) return BLAS_OK;
    size_t es = at == 0 ? 4 : 2;
    size_t aCols = ta ? m : k, bCols = tb ? k : n;
    size_t aBytes = es * ((size_t)lda * (aCols - 1) + (ta ? k : m)), bBytes = es * ((size_t)ldb * (bCols - 1) + (tb ? n : k));
    size_t cBytes = 4 * ((size_t)ldc * (n - 1) + m);
    {
        std::lock_guard<std::mutex> g(mu);
        if ((k && (!inside((uintptr_t)A, aBytes, false) || !inside((uintptr_t)B, bBytes, false))) || !inside((uintptr_t)C, cBytes, false)) {
            fprintf(stderr, "cudaemu: cublasGemmEx: a matrix (m=%d n=%d k=%d, lda=%d ldb=%d ldc=%d) reaches outside device memory\n", m,
                    n, k, lda, ldb, ldc);
            return BLAS_INVALID_VALUE;
        }
        if (!blasLoaded) { // cuBLAS loads its kernels at the first call
            blasLoaded = true;
            usedMem += blasLazy;
            TRACE("cuBLAS's kernels loaded, used %zu MiB\n", usedMem >> 20);
        }
    }
    float al = *alpha, be = *beta; // read at the call, as cuBLAS does with host scalars
    submit(((Blas*)h)->stream, [=] {
        // op(A) as rows of k, op(B)ᵀ as rows of k.
        std::vector<float> a((size_t)m * k), b((size_t)n * k);
        for (int i = 0; i < m; i++)
            for (int p = 0; p < k; p++) a[(size_t)i * k + p] = loadAs(A, at, ta ? (size_t)p + (size_t)i * lda : (size_t)i + (size_t)p * lda);
        for (int j = 0; j < n; j++)
            for (int p = 0; p < k; p++) b[(size_t)j * k + p] = loadAs(B, bt, tb ? (size_t)j + (size_t)p * ldb : (size_t)p + (size_t)j * ldb);
        float* c = (float*)C;
        auto cols = [&](int j0, int j1) {
            for (int j = j0; j < j1; j++)
                for (int i = 0; i < m; i++) {
                    const float *x = &a[(size_t)i * k], *y = &b[(size_t)j * k];
                    float s = 0;
                    for (int p = 0; p < k; p++) s += x[p] * y[p];
                    float* o = c + (size_t)j * ldc + i;
                    *o = be == 0 ? al * s : al * s + be * *o;
                }
        };
        unsigned workers = std::max(1u, std::min(std::thread::hardware_concurrency(), 8u));
        if ((double)m * n * k < 1e6 || workers == 1 || n < 2) {
            cols(0, n);
        } else {
            std::vector<std::thread> ts;
            int per = (n + (int)workers - 1) / (int)workers;
            for (int j0 = 0; j0 < n; j0 += per) ts.emplace_back(cols, j0, std::min(n, j0 + per));
            for (auto& t : ts) t.join();
        }
    });
    return BLAS_OK;
}

// ---- NVRTC ----------------------------------------------------------------------

struct Program {
    std::string src, name, log;
    std::vector<char> image;
};
enum { NVRTC_OK = 0, NVRTC_INVALID_INPUT = 3, NVRTC_INVALID_PROGRAM = 4, NVRTC_COMPILATION = 6 };

int nvrtcVersion(int* major, int* minor) {
    // Major 0: the emulator (its modules are no real NVRTC's); the minor
    // number changes with the prelude, so that a cache of kernels built
    // over an older one is not taken.
    uint32_t h = 2166136261u;
    for (const char* c = kPrelude; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u;
    for (const char* c = QTUNE_CUDAEMU_BUILD; *c; c++) h = (h ^ (unsigned char)*c) * 16777619u; // the glue this file generates
    *major = 0;
    *minor = (int)(h % 1000000);
    return NVRTC_OK;
}
const char* nvrtcGetErrorString(int rc) {
    switch (rc) {
    case NVRTC_OK: return "NVRTC_SUCCESS";
    case NVRTC_INVALID_INPUT: return "NVRTC_ERROR_INVALID_INPUT";
    case NVRTC_INVALID_PROGRAM: return "NVRTC_ERROR_INVALID_PROGRAM";
    case NVRTC_COMPILATION: return "NVRTC_ERROR_COMPILATION";
    }
    return "NVRTC_ERROR_INTERNAL_ERROR";
}
int nvrtcCreateProgram(void** prog, const char* src, const char* name, int, const char* const*, const char* const*) {
    if (!prog || !src) return NVRTC_INVALID_INPUT;
    *prog = new Program{src, name ? name : "kernels.cu", "", {}};
    return NVRTC_OK;
}
int nvrtcDestroyProgram(void** prog) {
    if (!prog || !*prog) return NVRTC_INVALID_PROGRAM;
    delete (Program*)*prog;
    *prog = nullptr;
    return NVRTC_OK;
}

static bool writeFile(const std::string& path, const std::string& s) {
    FILE* f = fopen(path.c_str(), "wb");
    if (!f) return false;
    bool ok = fwrite(s.data(), 1, s.size(), f) == s.size();
    return fclose(f) == 0 && ok;
}
static std::string readFile(const std::string& path) {
    std::string s;
    FILE* f = fopen(path.c_str(), "rb");
    if (!f) return s;
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) s.append(buf, n);
    fclose(f);
    return s;
}

// run runs argv with stdout and stderr into logPath; it returns the exit status.
static int run(const std::vector<std::string>& args, const std::string& logPath) {
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back((char*)a.c_str());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t fa;
    posix_spawn_file_actions_init(&fa);
    posix_spawn_file_actions_addopen(&fa, 1, logPath.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    posix_spawn_file_actions_adddup2(&fa, 1, 2);
    pid_t pid;
    int rc = posix_spawnp(&pid, argv[0], &fa, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&fa);
    if (rc != 0) return -1;
    int st;
    while (waitpid(pid, &st, 0) < 0)
        if (errno != EINTR) return -1;
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

// nvrtcCompileProgram builds the "cubin": the kernels' names come from a
// preprocessing pass (macros make some of them), `extern __shared__`
// arrays become the launch's dynamic shared memory, and a table of entry
// points that unpack kernelParams is appended.
int nvrtcCompileProgram(void* prog, int, const char* const*) {
    Program* p = (Program*)prog;
    if (!p) return NVRTC_INVALID_PROGRAM;
    const char* cxxEnv = getenv("QTUNE_CUDAEMU_CXX");
    std::string cxx = cxxEnv && *cxxEnv ? cxxEnv : "g++";
    const char* tmp = getenv("TMPDIR");
    std::string dirT = std::string(tmp && *tmp ? tmp : "/tmp") + "/qtune-nvrtc-XXXXXX";
    std::vector<char> d(dirT.begin(), dirT.end());
    d.push_back(0);
    if (!mkdtemp(d.data())) {
        p->log = "cudaemu: cannot make a temporary folder";
        return NVRTC_COMPILATION;
    }
    std::string dir = d.data(), log = dir + "/log", src = dir + "/k.cu", pre = dir + "/k.i", out = dir + "/k.cpp", so = dir + "/k.so";
    std::string s = std::regex_replace(p->src, std::regex(R"(__align__\s*\(\s*\d+\s*\))"), "");
    s = std::regex_replace(s, std::regex(R"(extern\s+__shared__\s+([A-Za-z_][\w\s]*?)\s*(\w+)\s*\[\s*\]\s*;)"), "$1* $2 = ($1*)__emu_dyn_smem();");
    int rc = -1;
    if (writeFile(src, s) && writeFile(dir + "/prelude.h", kPrelude)) {
        rc = run({cxx, "-E", "-P", "-x", "c++", "-DQTUNE_CUDA_EMU=1", "-D__global__=QTUNE_EMU_GLOBAL", "-D__launch_bounds__(...)=", src, "-o", pre}, log);
    }
    std::vector<std::string> names;
    if (rc == 0) {
        std::string e = readFile(pre);
        std::regex re(R"(QTUNE_EMU_GLOBAL\s+void\s+(\w+)\s*\()");
        std::set<std::string> seen;
        for (auto it = std::sregex_iterator(e.begin(), e.end(), re); it != std::sregex_iterator(); ++it) {
            std::string n = (*it)[1];
            if (seen.insert(n).second) names.push_back(n);
        }
        std::string t = "#include \"prelude.h\"\n#line 1 \"" + p->name + "\"\n" + s + "\n";
        for (auto& n : names)
            t += "static void __emu_e_" + n + "(void** p) { __emu_invoke(&" + n + ", p); }\nstatic int __emu_c_" + n +
                 "(void** p, int (*v)(const void*)) { return __emu_check(&" + n + ", p, v); }\n";
        t += "extern \"C\" int __emu_lookup(const char* n, __emu_entry_fn* e, int (**c)(void**, int (*)(const void*)), int* nargs) {\n";
        for (auto& n : names)
            t += "  if (!strcmp(n, \"" + n + "\")) { *e = __emu_e_" + n + "; *c = __emu_c_" + n + "; *nargs = __emu_arity(&" + n + "); return 1; }\n";
        t += "  return 0;\n}\n";
        rc = writeFile(out, t) ? run({cxx, "-std=c++17", "-O2", "-fPIC", "-shared", "-ffp-contract=off", "-fno-strict-aliasing",
                                      "-Wno-attributes", "-I", dir, out, "-o", so},
                                     log)
                               : -1;
    }
    p->log = readFile(log);
    if (rc == 0) {
        std::string img = readFile(so);
        p->image.assign(img.begin(), img.end());
    }
    for (const char* f : {"log", "k.cu", "k.i", "k.cpp", "k.so", "prelude.h"}) unlink((dir + "/" + f).c_str());
    rmdir(dir.c_str());
    if (rc != 0 || p->image.empty()) {
        if (p->log.empty()) p->log = "cudaemu: could not run " + cxx;
        return NVRTC_COMPILATION;
    }
    return NVRTC_OK;
}
int nvrtcGetProgramLogSize(void* prog, size_t* n) {
    if (!prog) return NVRTC_INVALID_PROGRAM;
    *n = ((Program*)prog)->log.size() + 1;
    return NVRTC_OK;
}
int nvrtcGetProgramLog(void* prog, char* b) {
    if (!prog) return NVRTC_INVALID_PROGRAM;
    auto& l = ((Program*)prog)->log;
    memcpy(b, l.c_str(), l.size() + 1);
    return NVRTC_OK;
}
int nvrtcGetCUBINSize(void* prog, size_t* n) {
    if (!prog) return NVRTC_INVALID_PROGRAM;
    *n = ((Program*)prog)->image.size();
    return NVRTC_OK;
}
int nvrtcGetCUBIN(void* prog, char* b) {
    if (!prog) return NVRTC_INVALID_PROGRAM;
    auto& im = ((Program*)prog)->image;
    memcpy(b, im.data(), im.size());
    return NVRTC_OK;
}

} // extern "C"
