// qtune's CUDA kernels. NVRTC compiles this file at first use for the
// GPU's architecture (no headers: the few types and conversions it needs
// are spelled here). Each kernel mirrors a function of package kernels or
// quant and is tested against it; the Go wrappers in ops.go say which.
//
// Products that feed an addition are written with __fmul_rn/__fadd_rn
// where the Go reference rounds them separately, so that dequantization is
// bit-identical to quant.DequantizeRange (NVRTC would otherwise contract
// them into FMAs).

typedef unsigned char u8;
typedef signed char i8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

// ggml's type ids (quant.Type), and qtune's NF4.
#define T_F32 0
#define T_F16 1
#define T_Q4_0 2
#define T_Q8_0 8
#define T_Q4_K 12
#define T_Q6_K 14
#define T_BF16 30
#define T_NF4 4096

__device__ __forceinline__ float h2f(u16 h) {
#ifdef QTUNE_CUDA_EMU // the CPU emulator's build (internal/cudaemu)
    return __emu_h2f(h);
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

__device__ __forceinline__ float bf2f(u16 h) { return __uint_as_float(((u32)h) << 16); }

// f2bf rounds to nearest even (NaN stays NaN).
__device__ __forceinline__ u16 f2bf(float f) {
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)((u >> 16) | 0x40);
    u += 0x7fffu + ((u >> 16) & 1u);
    return (u16)(u >> 16);
}

__device__ __forceinline__ u16 ld16(const u8* p) { return (u16)(p[0] | (p[1] << 8)); }
__device__ __forceinline__ float ldf32(const u8* p) {
    return __uint_as_float((u32)p[0] | ((u32)p[1] << 8) | ((u32)p[2] << 16) | ((u32)p[3] << 24));
}

__constant__ float nf4_table[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f};

// q4k_scale_min unpacks sub-block sub's 6-bit scale and min of a Q4_K
// block from its 12 packed bytes s.
__device__ __forceinline__ void q4k_scale_min(const u8* s, int sub, int& sc, int& m) {
    if (sub < 4) {
        sc = s[sub] & 63;
        m = s[sub + 4] & 63;
    } else {
        sc = (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4);
        m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
    }
}

// wval is element e of a tensor of n elements of type T stored at w
// (quant.DequantizeRange of one element).
template <int T>
__device__ __forceinline__ float wval(const u8* __restrict__ w, i64 e, i64 n) {
    if (T == T_F32) {
        return ((const float*)w)[e];
    } else if (T == T_F16) {
        return h2f(((const u16*)w)[e]);
    } else if (T == T_BF16) {
        return bf2f(((const u16*)w)[e]);
    } else if (T == T_Q4_0) {
        const u8* b = w + (e >> 5) * 18;
        int j = (int)(e & 31);
        int q = j < 16 ? (b[2 + j] & 15) : (b[2 + j - 16] >> 4);
        return __fmul_rn((float)(q - 8), h2f(ld16(b)));
    } else if (T == T_Q8_0) {
        const u8* b = w + (e >> 5) * 34;
        return __fmul_rn((float)(i8)b[2 + (e & 31)], h2f(ld16(b)));
    } else if (T == T_Q4_K) {
        const u8* b = w + (e >> 8) * 144;
        int r = (int)(e & 255), sub = r >> 5, l = r & 31, g = sub >> 1;
        int sc, m;
        q4k_scale_min(b + 4, sub, sc, m);
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        u8 qb = b[16 + 32 * g + l];
        int q = (sub & 1) ? (qb >> 4) : (qb & 15);
        return __fsub_rn(__fmul_rn(__fmul_rn(d, (float)sc), (float)q), __fmul_rn(dmin, (float)m));
    } else if (T == T_Q6_K) {
        const u8* b = w + (e >> 8) * 210;
        int r = (int)(e & 255), half = r >> 7, rr = r & 127, qq = rr >> 5, l = rr & 31;
        const u8* ql = b + 64 * half;
        u8 h = b[128 + 32 * half + l];
        int lo = (qq & 1) ? ql[l + 32] : ql[l];
        lo = (qq & 2) ? (lo >> 4) : (lo & 15);
        int q = (lo | (((h >> (2 * qq)) & 3) << 4)) - 32;
        float ds = __fmul_rn(h2f(ld16(b + 208)), (float)(i8)b[192 + 8 * half + (l >> 4) + 2 * qq]);
        return __fmul_rn(ds, (float)q);
    } else if (T == T_NF4) {
        i64 blocks = n >> 6, groups = (blocks + 255) >> 8;
        i64 blk = e >> 6;
        int j = (int)(e & 63);
        i64 codes = n >> 1, c2o = codes + blocks, muo = c2o + 4 * groups;
        float c2 = ldf32(w + c2o + 4 * (blk >> 8)), mu = ldf32(w + muo);
        float s = __fadd_rn(__fmul_rn(__fdiv_rn((float)(i8)w[codes + blk], 127.0f), c2), mu);
        if (!(s > 0.0f)) s = 0.0f;
        u8 qb = w[blk * 32 + (j & 31)];
        int c = j < 32 ? (qb & 15) : (qb >> 4);
        return __fmul_rn(nf4_table[c], s);
    }
    return 0.0f;
}

__device__ __forceinline__ void store(float* p, float v) { *p = v; }
__device__ __forceinline__ void store(u16* p, float v) { *p = f2bf(v); }

// dequant writes elements [e0, e0+count) of the n-element tensor w into y.
template <int T, typename O>
__device__ void dequant_body(O* __restrict__ y, const u8* __restrict__ w, i64 n, i64 e0, i64 count) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < count; i += (i64)gridDim.x * blockDim.x)
        store(y + i, wval<T>(w, e0 + i, n));
}

// DEQUANT_KERNELS makes kernel_name_f32 and kernel_name_bf16 of body.
#define DEQUANT_KERNELS(kernel, body, name, T)                                                          \
    extern "C" __global__ void kernel##_##name##_f32(float* y, const u8* w, i64 n, i64 e0, i64 count) { \
        body<T, float>(y, w, n, e0, count);                                                             \
    }                                                                                                   \
    extern "C" __global__ void kernel##_##name##_bf16(u16* y, const u8* w, i64 n, i64 e0, i64 count) {  \
        body<T, u16>(y, w, n, e0, count);                                                               \
    }
#define DEQUANT(name, T) DEQUANT_KERNELS(dequant, dequant_body, name, T)
DEQUANT(f32, T_F32)
DEQUANT(f16, T_F16)
DEQUANT(bf16, T_BF16)
DEQUANT(q4_0, T_Q4_0)
DEQUANT(q8_0, T_Q8_0)
DEQUANT(q4_k, T_Q4_K)
DEQUANT(q6_k, T_Q6_K)
DEQUANT(nf4, T_NF4)

// to_bf16 rounds n floats to bfloat16.
extern "C" __global__ void to_bf16(u16* y, const float* x, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) y[i] = f2bf(x[i]);
}

__device__ __forceinline__ float warp_sum(float s) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    return s;
}

// matvec: y (M, N) = x (M, K) · Wᵀ for M ≤ 4 rows (generation), W (N, K)
// of type T decoded in registers: one warp per output row, lane l taking
// elements l, l+32, … (each weight byte read once, x read coalesced).
template <int T>
__device__ void matvec_body(float* __restrict__ y, const float* __restrict__ x, const u8* __restrict__ w, int M, int N, int K) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    i64 n = (i64)N * K, base = (i64)row * K;
    float s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (int k = lane; k < K; k += 32) {
        float v = wval<T>(w, base + k, n);
        s0 += v * x[k];
        if (M > 1) s1 += v * x[K + k];
        if (M > 2) s2 += v * x[2 * K + k];
        if (M > 3) s3 += v * x[3 * K + k];
    }
    s0 = warp_sum(s0);
    if (M > 1) s1 = warp_sum(s1);
    if (M > 2) s2 = warp_sum(s2);
    if (M > 3) s3 = warp_sum(s3);
    if (lane == 0) {
        y[row] = s0;
        if (M > 1) y[N + row] = s1;
        if (M > 2) y[2 * N + row] = s2;
        if (M > 3) y[3 * N + row] = s3;
    }
}

#define MATVEC(name, T) \
    extern "C" __global__ void matvec_##name(float* y, const float* x, const u8* w, int M, int N, int K) { matvec_body<T>(y, x, w, M, N, K); }
MATVEC(f32, T_F32)
MATVEC(f16, T_F16)
MATVEC(bf16, T_BF16)
MATVEC(q4_0, T_Q4_0)
MATVEC(q8_0, T_Q8_0)
MATVEC(q4_k, T_Q4_K)
MATVEC(q6_k, T_Q6_K)
MATVEC(nf4, T_NF4)

// Quantized matrix-vector products by whole blocks, in the manner of
// llama.cpp's mmvq (with float activations): one warp per output row, each
// lane taking a piece of a block (Q4_0, Q8_0: 8 of its 32 elements; NF4:
// 16 of 64; Q4_K, Q6_K: 16 of 256) whose bytes it loads once and whose
// scales it decodes once, consecutive lanes on consecutive pieces, so a
// warp reads a contiguous run of blocks. Each element is wval<T>'s value
// (the same roundings), so the product differs from matvec's only in its
// summation order. Rows must be whole blocks (ops.go checks).
template <int T> struct MVQ;
template <> struct MVQ<T_Q4_0> { enum { BLOCK = 32, BYTES = 18, PIECES = 4 }; };
template <> struct MVQ<T_Q8_0> { enum { BLOCK = 32, BYTES = 34, PIECES = 4 }; };
template <> struct MVQ<T_NF4> { enum { BLOCK = 64, BYTES = 0, PIECES = 4 }; };
template <> struct MVQ<T_Q4_K> { enum { BLOCK = 256, BYTES = 144, PIECES = 16 }; };
template <> struct MVQ<T_Q6_K> { enum { BLOCK = 256, BYTES = 210, PIECES = 16 }; };

// MVSink adds v·x[m][k0+e] to s[m] for the M ≤ 4 activation rows.
struct MVSink {
    float* s;
    const float* __restrict__ x;
    int k0, M, K;
    __device__ __forceinline__ void put(float v, int e) {
        int k = k0 + e;
        s[0] += v * x[k];
        if (M > 1) s[1] += v * x[K + k];
        if (M > 2) s[2] += v * x[2 * K + k];
        if (M > 3) s[3] += v * x[3 * K + k];
    }
};

// mvq_piece decodes piece p of block blk of the n-element tensor w, giving
// each value and its element's index in the block to sink.put.
template <int T, class S>
__device__ __forceinline__ void mvq_piece(S& sink, const u8* __restrict__ w, i64 n, i64 blk, int p) {
    if (T == T_Q4_0) {
        const u8* b = w + blk * 18;
        float d = h2f(ld16(b));
        const u8* q = b + 2 + 4 * p;
#pragma unroll
        for (int i = 0; i < 4; i++) {
            int c = q[i];
            sink.put(__fmul_rn((float)((c & 15) - 8), d), 4 * p + i);
            sink.put(__fmul_rn((float)((c >> 4) - 8), d), 16 + 4 * p + i);
        }
    } else if (T == T_Q8_0) {
        const u8* b = w + blk * 34;
        float d = h2f(ld16(b));
        const u8* q = b + 2 + 8 * p;
#pragma unroll
        for (int i = 0; i < 8; i++) sink.put(__fmul_rn((float)(i8)q[i], d), 8 * p + i);
    } else if (T == T_NF4) {
        i64 blocks = n >> 6, groups = (blocks + 255) >> 8;
        i64 codes = n >> 1, c2o = codes + blocks, muo = c2o + 4 * groups;
        float c2 = ldf32(w + c2o + 4 * (blk >> 8)), mu = ldf32(w + muo);
        float sc = __fadd_rn(__fmul_rn(__fdiv_rn((float)(i8)w[codes + blk], 127.0f), c2), mu);
        if (!(sc > 0.0f)) sc = 0.0f;
        const u8* q = w + blk * 32 + 8 * p;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int c = q[i];
            sink.put(__fmul_rn(nf4_table[c & 15], sc), 8 * p + i);
            sink.put(__fmul_rn(nf4_table[c >> 4], sc), 32 + 8 * p + i);
        }
    } else if (T == T_Q4_K) {
        const u8* b = w + blk * 144;
        int g = p >> 2, h = p & 3;
        const u8* sb = b + 4;
        float d = h2f(ld16(b)), dmin = h2f(ld16(b + 2));
        float dl[2], ml[2];
#pragma unroll
        for (int j = 0; j < 2; j++) {
            int sc, m;
            q4k_scale_min(sb, 2 * g + j, sc, m);
            dl[j] = __fmul_rn(d, (float)sc);
            ml[j] = __fmul_rn(dmin, (float)m);
        }
        const u8* q = b + 16 + 32 * g + 8 * h;
#pragma unroll
        for (int i = 0; i < 8; i++) {
            int c = q[i];
            sink.put(__fsub_rn(__fmul_rn(dl[0], (float)(c & 15)), ml[0]), 64 * g + 8 * h + i);
            sink.put(__fsub_rn(__fmul_rn(dl[1], (float)(c >> 4)), ml[1]), 64 * g + 32 + 8 * h + i);
        }
    } else if (T == T_Q6_K) {
        const u8* b = w + blk * 210;
        int half = p >> 3, l0 = 4 * (p & 7);
        const u8* ql = b + 64 * half;
        const u8* qh = b + 128 + 32 * half;
        float d = h2f(ld16(b + 208));
#pragma unroll
        for (int qq = 0; qq < 4; qq++) {
            float ds = __fmul_rn(d, (float)(i8)b[192 + 8 * half + (l0 >> 4) + 2 * qq]);
#pragma unroll
            for (int i = 0; i < 4; i++) {
                int l = l0 + i;
                int lo = (qq & 1) ? ql[l + 32] : ql[l];
                lo = (qq & 2) ? (lo >> 4) : (lo & 15);
                int q = (lo | (((qh[l] >> (2 * qq)) & 3) << 4)) - 32;
                sink.put(__fmul_rn(ds, (float)q), 128 * half + 32 * qq + l);
            }
        }
    }
}

template <int T>
__device__ void matvecq_body(float* __restrict__ y, const float* __restrict__ x, const u8* __restrict__ w, int M, int N, int K) {
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5), lane = threadIdx.x & 31;
    if (row >= N) return;
    const int PIECES = MVQ<T>::PIECES, BLOCK = MVQ<T>::BLOCK;
    i64 n = (i64)N * K;
    int nb = K / BLOCK, np = nb * PIECES;
    i64 b0 = (i64)row * nb;
    float s[4] = {0, 0, 0, 0};
    for (int pc = lane; pc < np; pc += 32) {
        int j = pc / PIECES;
        MVSink sink{s, x, j * BLOCK, M, K};
        mvq_piece<T>(sink, w, n, b0 + j, pc - j * PIECES);
    }
    s[0] = warp_sum(s[0]);
    if (M > 1) s[1] = warp_sum(s[1]);
    if (M > 2) s[2] = warp_sum(s[2]);
    if (M > 3) s[3] = warp_sum(s[3]);
    if (lane == 0) {
        y[row] = s[0];
        if (M > 1) y[N + row] = s[1];
        if (M > 2) y[2 * N + row] = s[2];
        if (M > 3) y[3 * N + row] = s[3];
    }
}

#define MATVECQ(name, T) \
    extern "C" __global__ void matvecq_##name(float* y, const float* x, const u8* w, int M, int N, int K) { matvecq_body<T>(y, x, w, M, N, K); }
MATVECQ(q4_0, T_Q4_0)
MATVECQ(q8_0, T_Q8_0)
MATVECQ(q4_k, T_Q4_K)
MATVECQ(q6_k, T_Q6_K)
MATVECQ(nf4, T_NF4)

// dequantq is dequant for ranges of whole blocks of the block-wise types,
// a thread per piece (mvq_piece), the values written where dequant writes
// them, bit for bit.
template <class O>
struct DQSink {
    O* __restrict__ y;
    __device__ __forceinline__ void put(float v, int e) { store(y + e, v); }
};

template <int T, typename O>
__device__ void dequantq_body(O* __restrict__ y, const u8* __restrict__ w, i64 n, i64 e0, i64 count) {
    const int PIECES = MVQ<T>::PIECES, BLOCK = MVQ<T>::BLOCK;
    i64 np = count / BLOCK * PIECES, b0 = e0 / BLOCK;
    for (i64 pc = blockIdx.x * (i64)blockDim.x + threadIdx.x; pc < np; pc += (i64)gridDim.x * blockDim.x) {
        i64 j = pc / PIECES;
        DQSink<O> sink{y + j * BLOCK};
        mvq_piece<T>(sink, w, n, b0 + j, (int)(pc - j * PIECES));
    }
}

#define DEQUANTQ(name, T) DEQUANT_KERNELS(dequantq, dequantq_body, name, T)
DEQUANTQ(q4_0, T_Q4_0)
DEQUANTQ(q8_0, T_Q8_0)
DEQUANTQ(q4_k, T_Q4_K)
DEQUANTQ(q6_k, T_Q6_K)
DEQUANTQ(nf4, T_NF4)

// block_sum reduces v over the block (blockDim.x a multiple of 32, ≤ 1024);
// every thread gets the sum. red is __shared__ float[32].
__device__ float block_sum(float v, float* red) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : 0.0f;
    return warp_sum(v);
}

__device__ float block_max(float v, float* red) {
    int lane = threadIdx.x & 31, wid = threadIdx.x >> 5, nw = blockDim.x >> 5;
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    __syncthreads();
    if (lane == 0) red[wid] = v;
    __syncthreads();
    v = lane < nw ? red[lane] : -__int_as_float(0x7f800000);
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// rmsnorm: kernels.RMSNorm per row, one block per row.
extern "C" __global__ void rmsnorm_fwd(float* out, const float* x, const float* w, int n, float eps) {
    __shared__ float red[32];
    const float* xr = x + (i64)blockIdx.x * n;
    float* o = out + (i64)blockIdx.x * n;
    float ss = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
    ss = block_sum(ss, red);
    float r = (float)(1.0 / sqrt((double)ss / n + (double)eps));
    for (int i = threadIdx.x; i < n; i += blockDim.x) o[i] = __fmul_rn(xr[i], r) * w[i];
}

// rmsnorm_bwd: kernels.RMSNormBackward per row; dw (may be 0) gathers
// over rows with atomics.
extern "C" __global__ void rmsnorm_bwd(float* dx, float* dw, const float* dy, const float* x, const float* w, int n, float eps) {
    __shared__ float red[32];
    i64 off = (i64)blockIdx.x * n;
    const float *xr = x + off, *dyr = dy + off;
    float ss = 0, sd = 0;
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        ss += xr[i] * xr[i];
        sd += dyr[i] * w[i] * xr[i];
    }
    ss = block_sum(ss, red);
    sd = block_sum(sd, red);
    float r = (float)(1.0 / sqrt((double)ss / n + (double)eps));
    float c = (float)((double)r * r * r / n * sd);
    for (int i = threadIdx.x; i < n; i += blockDim.x) {
        dx[off + i] += r * w[i] * dyr[i] - xr[i] * c;
        if (dw) atomicAdd(dw + i, dyr[i] * xr[i] * r);
    }
}

// rope: kernels.Rope (sign 1) or RopeBack (sign −1) on rows of `heads`
// head vectors of D, row r rotated by table row r % period (cos, sin:
// period × half; period is T for B sequences of T rows).
extern "C" __global__ void rope(float* v, const float* cs, const float* sn, int rows, int heads, int D, int half, int neox, float sign, int period) {
    i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x, total = (i64)rows * heads * half;
    if (i >= total) return;
    int j = (int)(i % half);
    i64 rh = i / half;
    int t = (int)((rh / heads) % period);
    float* h = v + rh * D;
    float c = cs[(i64)t * half + j], s = sign * sn[(i64)t * half + j];
    int ia = neox ? j : 2 * j, ib = neox ? j + half : 2 * j + 1;
    float a = h[ia], b = h[ib];
    h[ia] = a * c - b * s;
    h[ib] = b * c + a * s;
}

__device__ __forceinline__ float sigm(float g) { return 1.0f / (1.0f + expf(-g)); }

// swiglu: kernels.SwiGLU.
extern "C" __global__ void swiglu_fwd(float* out, const float* g, const float* u, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float gv = g[i];
        out[i] = gv * sigm(gv) * u[i];
    }
}

// swiglu_bwd: kernels.SwiGLUBackward.
extern "C" __global__ void swiglu_bwd(float* dg, float* du, const float* dy, const float* g, const float* u, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        float gv = g[i], s = sigm(gv), d = dy[i];
        du[i] += d * gv * s;
        dg[i] += d * u[i] * s * (1.0f + gv * (1.0f - s));
    }
}

// geglu_fwd: kernels.GeGLU (Gemma's feed-forward), gelu_tanh in double as
// the Go loop computes it.
__device__ __forceinline__ double gelu_th(double g) { return tanh(0.7978845608028654 * (g + 0.044715 * g * g * g)); }
extern "C" __global__ void geglu_fwd(float* out, const float* g, const float* u, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double gv = g[i];
        out[i] = (float)(0.5 * gv * (1 + gelu_th(gv))) * u[i];
    }
}

// geglu_bwd: kernels.GeGLUBackward.
extern "C" __global__ void geglu_bwd(float* dg, float* du, const float* dy, const float* g, const float* u, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double gv = g[i], th = gelu_th(gv), d = dy[i];
        du[i] += (float)(d * 0.5 * gv * (1 + th));
        dg[i] += (float)(d * (double)u[i] * (0.5 * (1 + th) + 0.5 * gv * (1 - th * th) * 0.7978845608028654 * (1 + 3 * 0.044715 * gv * gv)));
    }
}

// add_rows: y[r·n + i] += b[i] for rows r (a projection's bias).
extern "C" __global__ void add_rows(float* y, const float* b, i64 rows, int n) {
    i64 total = rows * n;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < total; i += (i64)gridDim.x * blockDim.x) y[i] += b[i % n];
}

// xent: kernels.CrossEntropy per row (one block per row): loss[row] =
// lse − logits[target], dlogits += scale·(softmax − onehot) when dlogits
// is not 0 (= when overwrite, and then dlogits may be logits itself: each
// element is read and written by one thread after the row's reductions);
// a negative target skips the row (loss 0, no gradient; overwritten rows
// get zeros).
extern "C" __global__ void xent(float* dlogits, float* loss, const float* logits, const int* targets, int V, float scale, int overwrite) {
    __shared__ float red[32];
    int row = blockIdx.x, tg = targets[row];
    const float* l = logits + (i64)row * V;
    float* d = dlogits ? dlogits + (i64)row * V : 0;
    if (tg < 0) {
        if (threadIdx.x == 0) loss[row] = 0;
        if (d && overwrite)
            for (int i = threadIdx.x; i < V; i += blockDim.x) d[i] = 0;
        return;
    }
    float ltg = l[tg];
    float m = -__int_as_float(0x7f800000);
    for (int i = threadIdx.x; i < V; i += blockDim.x) m = fmaxf(m, l[i]);
    m = block_max(m, red);
    float s = 0;
    for (int i = threadIdx.x; i < V; i += blockDim.x) s += expf(l[i] - m);
    s = block_sum(s, red);
    float lse = m + logf(s);
    if (threadIdx.x == 0) loss[row] = lse - ltg;
    if (d) {
        for (int i = threadIdx.x; i < V; i += blockDim.x) {
            float gi = scale * expf(l[i] - lse) - (i == tg ? scale : 0.0f);
            d[i] = overwrite ? gi : d[i] + gi;
        }
    }
}

// Attention, FlashAttention-2's tiling on the CUDA cores in fp32
// (kernels.AttentionSeqWindow and AttentionSeqBackwardWindow, several
// sequences per launch). A block takes a tile of TL query rows (or, for
// dk/dv, key rows) of one head and one sequence and walks the tiles of the
// other side through shared memory, so each key and value row is read once
// per TL queries and no T×T matrix exists; the softmax is the online one
// (running max and sum per row). Each row has TPR = ATT_NT/TL threads:
// they share its scores (TL/TPR each, reduced by warp shuffles) and its
// output dimensions (DM/TPR each, in registers). DM is the head size
// rounded up to 64, 128 or 256; shared rows are padded to D+1 floats so
// that the rows a warp reads fall in different banks.
#define ATT_NT 128
#define NEG_INF (-__int_as_float(0x7f800000))

__device__ __forceinline__ int imin(int a, int b) { return a < b ? a : b; }
__device__ __forceinline__ int imax(int a, int b) { return a > b ? a : b; }

// att_sees: whether a query at position qp attends to the key at kp
// (causal, and within the last W positions when W > 0).
__device__ __forceinline__ bool att_sees(int qp, int kp, int W) { return kp <= qp && (W <= 0 || kp > qp - W); }

template <int TPR>
__device__ __forceinline__ float row_max(float v) {
#pragma unroll
    for (int o = 1; o < TPR; o <<= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <int TPR>
__device__ __forceinline__ float row_sum(float v) {
#pragma unroll
    for (int o = 1; o < TPR; o <<= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

// att_load copies rows r0..r0+TL−1 of head hd of a (rows, heads, D) tensor
// into sh (row stride D+1); rows from n on are zeros.
__device__ __forceinline__ void att_load(float* sh, const float* x, int r0, int TL, int n, int heads, int hd, int D) {
    for (int i = threadIdx.x; i < TL * D; i += blockDim.x) {
        int r = i / D, d = i - r * D;
        sh[r * (D + 1) + d] = r0 + r < n ? x[((i64)(r0 + r) * heads + hd) * D + d] : 0.0f;
    }
}

// att_dots gives the backward's two products of a thread's N tile rows
// (ln, ln+TPR, …; shared, stride D+1) with a row's two vectors: s[i] = a·A
// and dp[i] = b·B (q and dO against k and v, or k and v against q and dO).
template <int N, int TPR>
__device__ __forceinline__ void att_dots(float* s, float* dp, const float* a, const float* b, const float* A, const float* B, int ln, int D) {
#pragma unroll
    for (int i = 0; i < N; i++) s[i] = dp[i] = 0;
    for (int d = 0; d < D; d++) {
        float ad = a[d], bd = b[d];
#pragma unroll
        for (int i = 0; i < N; i++) {
            int x = (ln + TPR * i) * (D + 1) + d;
            s[i] += ad * A[x];
            dp[i] += bd * B[x];
        }
    }
}

// attn_fwd: out (B, Tq, H·D) and lse (B, H, Tq) of queries q (B, Tq, H·D)
// over keys and values (B, Tk, Hkv·D); query row i sits at position
// Tk−Tq+i (Tq = Tk in training; fewer queries over a KV cache when
// decoding). Grid (⌈Tq/TL⌉, H, B).
template <int DM, int TL>
__device__ __forceinline__ void attn_fwd_body(float* out, float* lse, const float* q, const float* k, const float* v,
                                              int Tq, int Tk, int H, int Hkv, int D, int W, float scale) {
    const int TPR = ATT_NT / TL, KPT = TL / TPR, DPT = DM / TPR, ld = D + 1;
    extern __shared__ float sh[];
    float* Qs = sh;
    float* Ks = Qs + TL * ld;
    float* Vs = Ks + TL * ld;
    float* Ps = Vs + TL * ld; // TL × (TL+1)
    int h = blockIdx.y, g = h / (H / Hkv), b = blockIdx.z, t0 = blockIdx.x * TL, q0 = Tk - Tq;
    q += (i64)b * Tq * H * D;
    out += (i64)b * Tq * H * D;
    lse += (i64)b * H * Tq;
    k += (i64)b * Tk * Hkv * D;
    v += (i64)b * Tk * Hkv * D;
    int r = threadIdx.x / TPR, ln = threadIdx.x % TPR, qp = q0 + t0 + r;
    bool live = t0 + r < Tq;
    att_load(Qs, q, t0, TL, Tq, H, h, D);
    float o[DPT];
#pragma unroll
    for (int j = 0; j < DPT; j++) o[j] = 0;
    float m = NEG_INF, l = 0;
    int last = q0 + imin(t0 + TL, Tq) - 1; // the last key any row sees
    int first = W > 0 ? imax(0, q0 + t0 - W + 1) : 0;
    for (int k0 = first; k0 <= last; k0 += TL) {
        __syncthreads(); // the previous tile is read
        att_load(Ks, k, k0, TL, Tk, Hkv, g, D);
        att_load(Vs, v, k0, TL, Tk, Hkv, g, D);
        __syncthreads();
        float s[KPT];
#pragma unroll
        for (int i = 0; i < KPT; i++) s[i] = 0;
        for (int d = 0; live && d < D; d++) { // rows past Tq (most of a decoding tile) skip the products
            float qd = Qs[r * ld + d];
#pragma unroll
            for (int i = 0; i < KPT; i++) s[i] += qd * Ks[(ln + TPR * i) * ld + d];
        }
        float mx = NEG_INF;
#pragma unroll
        for (int i = 0; i < KPT; i++) {
            int kp = k0 + ln + TPR * i;
            s[i] = live && kp < Tk && att_sees(qp, kp, W) ? s[i] * scale : NEG_INF;
            mx = fmaxf(mx, s[i]);
        }
        float mn = fmaxf(m, row_max<TPR>(mx));
        float alpha = mn == NEG_INF ? 1.0f : expf(m - mn), ps = 0;
#pragma unroll
        for (int i = 0; i < KPT; i++) {
            float p = s[i] == NEG_INF ? 0.0f : expf(s[i] - mn);
            Ps[r * (TL + 1) + ln + TPR * i] = p;
            ps += p;
        }
        l = l * alpha + row_sum<TPR>(ps);
        m = mn;
        __syncwarp(); // a row's threads share one warp
#pragma unroll
        for (int j = 0; j < DPT; j++) {
            int d = ln + TPR * j;
            if (live && d < D) {
                float a = 0;
                for (int c = 0; c < TL; c++) a += Ps[r * (TL + 1) + c] * Vs[c * ld + d];
                o[j] = o[j] * alpha + a;
            }
        }
    }
    if (!live) return;
    float* ot = out + ((i64)(t0 + r) * H + h) * D;
#pragma unroll
    for (int j = 0; j < DPT; j++) {
        int d = ln + TPR * j;
        if (d < D) ot[d] = o[j] / l;
    }
    if (ln == 0) lse[(i64)h * Tq + t0 + r] = m + logf(l);
}

// attn_dec: decoding's attention split over the keys (flash-decoding):
// one query, the newest of Tk cached positions, of head h = blockIdx.y;
// split s = blockIdx.x of S takes an equal share of the keys the query
// sees, a warp per key at a time (its lanes over the head's dimensions,
// so each key and value row is read coalesced), an online softmax per
// warp, the block's four warps merged. part (H, S, D+2) gets the split's
// unnormalised output, its running max and sum; attn_dec_combine merges
// the splits. A long cache then keeps every SM busy where attn_fwd's one
// tile per head walks it alone.
#define DEC_NT 128
template <int DM>
__device__ __forceinline__ void attn_dec_body(float* part, const float* q, const float* k, const float* v, int Tk, int H, int Hkv,
                                              int D, int W, float scale) {
    const int DPL = DM / 32, NW = DEC_NT / 32;
    __shared__ float red[NW][DM + 2];
    int s = blockIdx.x, S = gridDim.x, h = blockIdx.y, g = h / (H / Hkv);
    int lane = threadIdx.x & 31, w = threadIdx.x >> 5;
    int first = W > 0 ? imax(0, Tk - W) : 0, per = (Tk - first + S - 1) / S;
    int k0 = first + s * per, k1 = imin(Tk, k0 + per);
    float qr[DPL], o[DPL];
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        int d = lane + 32 * j;
        qr[j] = d < D ? q[h * D + d] : 0.0f;
        o[j] = 0;
    }
    float m = NEG_INF, l = 0;
    for (int kp = k0 + w; kp < k1; kp += NW) {
        const float* kr = k + ((i64)kp * Hkv + g) * D;
        const float* vr = v + ((i64)kp * Hkv + g) * D;
        float sc = 0;
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            int d = lane + 32 * j;
            if (d < D) sc += qr[j] * kr[d];
        }
        sc = warp_sum(sc) * scale;
        float mn = fmaxf(m, sc), alpha = expf(m - mn), p = expf(sc - mn);
        l = l * alpha + p;
#pragma unroll
        for (int j = 0; j < DPL; j++) {
            int d = lane + 32 * j;
            if (d < D) o[j] = o[j] * alpha + p * vr[d];
        }
        m = mn;
    }
#pragma unroll
    for (int j = 0; j < DPL; j++) red[w][lane + 32 * j] = o[j];
    if (lane == 0) red[w][DM] = m, red[w][DM + 1] = l;
    __syncthreads();
    if (w != 0) return;
    float M = NEG_INF;
    for (int i = 0; i < NW; i++) M = fmaxf(M, red[i][DM]);
    float* out = part + ((i64)h * S + s) * (D + 2);
    float L = 0;
    for (int i = 0; i < NW; i++) L += M == NEG_INF ? 0.0f : red[i][DM + 1] * expf(red[i][DM] - M);
#pragma unroll
    for (int j = 0; j < DPL; j++) {
        int d = lane + 32 * j;
        float a = 0;
        for (int i = 0; M != NEG_INF && i < NW; i++) a += red[i][d] * expf(red[i][DM] - M);
        if (d < D) out[d] = a;
    }
    if (lane == 0) out[D] = M, out[D + 1] = L;
}
#define ATTN_DEC(DM)                                                                                                 \
    extern "C" __global__ void __launch_bounds__(DEC_NT) attn_dec_##DM(float* part, const float* q, const float* k, \
                                                                       const float* v, int Tk, int H, int Hkv, int D, \
                                                                       int W, float scale) {                          \
        attn_dec_body<DM>(part, q, k, v, Tk, H, Hkv, D, W, scale);                                                   \
    }
ATTN_DEC(64)
ATTN_DEC(128)
ATTN_DEC(256)

// attn_dec_combine: out (H·D) and lse (H) of attn_dec's S splits, a warp
// per head: the splits' outputs and sums rescaled to their common max.
extern "C" __global__ void attn_dec_combine(float* out, float* lse, const float* part, int S, int H, int D) {
    int h = blockIdx.x, lane = threadIdx.x;
    const float* ph = part + (i64)h * S * (D + 2);
    float M = NEG_INF;
    for (int s = 0; s < S; s++) M = fmaxf(M, ph[s * (D + 2) + D]);
    float L = 0;
    for (int s = 0; s < S; s++) {
        float ms = ph[s * (D + 2) + D];
        if (ms != NEG_INF) L += ph[s * (D + 2) + D + 1] * expf(ms - M);
    }
    for (int d = lane; d < D; d += 32) {
        float a = 0;
        for (int s = 0; s < S; s++) {
            float ms = ph[s * (D + 2) + D];
            if (ms != NEG_INF) a += ph[s * (D + 2) + d] * expf(ms - M);
        }
        out[h * D + d] = a / L;
    }
    if (lane == 0) lse[h] = M + logf(L);
}

// attn_delta: Δ (B, H, T) = Σ_d dO·O per query row and head, the softmax
// backward's row term (= Σ_u p_u·(dO·v_u)); one warp per row of (B·T·H).
extern "C" __global__ void attn_delta(float* delta, const float* dout, const float* out, int T, int H, int D, i64 rows) {
    i64 row = blockIdx.x * (i64)(blockDim.x >> 5) + (threadIdx.x >> 5);
    if (row >= rows) return; // whole warps leave together
    const float* a = dout + row * D;
    const float* o = out + row * D;
    float s = 0;
    for (int d = threadIdx.x & 31; d < D; d += 32) s += a[d] * o[d];
    s = warp_sum(s);
    if ((threadIdx.x & 31) == 0) {
        i64 b = row / ((i64)T * H), t = row / H % T, h = row % H;
        delta[(b * H + h) * T + t] = s;
    }
}

// attn_dq: dq += Σ_u ds_u·k_u for a tile of queries of head h, with
// p_u = exp(q·k_u·scale − lse), ds_u = p_u·(dO·v_u − Δ)·scale. Grid
// (⌈T/TL⌉, H, B).
template <int DM, int TL>
__device__ __forceinline__ void attn_dq_body(float* dq, const float* dout, const float* q, const float* k, const float* v,
                                             const float* lse, const float* delta, int T, int H, int Hkv, int D, int W, float scale) {
    const int TPR = ATT_NT / TL, KPT = TL / TPR, DPT = DM / TPR, ld = D + 1;
    extern __shared__ float sh[];
    float* Qs = sh;
    float* Os = Qs + TL * ld; // dO
    float* Ks = Os + TL * ld;
    float* Vs = Ks + TL * ld;
    float* Ss = Vs + TL * ld; // TL × (TL+1): ds
    int h = blockIdx.y, g = h / (H / Hkv), b = blockIdx.z, t0 = blockIdx.x * TL;
    i64 qo = (i64)b * T * H * D, ko = (i64)b * T * Hkv * D;
    lse += (i64)b * H * T + (i64)h * T;
    delta += (i64)b * H * T + (i64)h * T;
    int r = threadIdx.x / TPR, ln = threadIdx.x % TPR, qp = t0 + r;
    bool live = qp < T;
    att_load(Qs, q + qo, t0, TL, T, H, h, D);
    att_load(Os, dout + qo, t0, TL, T, H, h, D);
    float lr = live ? lse[qp] : 0, dr = live ? delta[qp] : 0;
    float acc[DPT];
#pragma unroll
    for (int j = 0; j < DPT; j++) acc[j] = 0;
    int last = imin(t0 + TL, T) - 1;
    int first = W > 0 ? imax(0, t0 - W + 1) : 0;
    for (int k0 = first; k0 <= last; k0 += TL) {
        __syncthreads();
        att_load(Ks, k + ko, k0, TL, T, Hkv, g, D);
        att_load(Vs, v + ko, k0, TL, T, Hkv, g, D);
        __syncthreads();
        float s[KPT], dp[KPT];
        att_dots<KPT, TPR>(s, dp, Qs + r * ld, Os + r * ld, Ks, Vs, ln, D);
#pragma unroll
        for (int i = 0; i < KPT; i++) {
            int kp = k0 + ln + TPR * i;
            float p = live && kp < T && att_sees(qp, kp, W) ? expf(s[i] * scale - lr) : 0.0f;
            Ss[r * (TL + 1) + ln + TPR * i] = p * (dp[i] - dr) * scale;
        }
        __syncwarp();
#pragma unroll
        for (int j = 0; j < DPT; j++) {
            int d = ln + TPR * j;
            if (d < D) {
                float a = 0;
                for (int c = 0; c < TL; c++) a += Ss[r * (TL + 1) + c] * Ks[c * ld + d];
                acc[j] += a;
            }
        }
    }
    if (!live) return;
    float* o = dq + qo + ((i64)qp * H + h) * D;
#pragma unroll
    for (int j = 0; j < DPT; j++) {
        int d = ln + TPR * j;
        if (d < D) o[d] += acc[j];
    }
}

// attn_dkv: dk_u += Σ_t ds_t·q_t and dv_u += Σ_t p_t·dO_t for a tile of
// keys of kv head g, over every query head of its group and every query
// tile that sees it: each block owns its keys, so no atomics. Grid
// (⌈T/TL⌉, Hkv, B).
template <int DM, int TL>
__device__ __forceinline__ void attn_dkv_body(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v,
                                              const float* lse, const float* delta, int T, int H, int Hkv, int D, int W, float scale) {
    const int TPR = ATT_NT / TL, QPT = TL / TPR, DPT = DM / TPR, ld = D + 1;
    extern __shared__ float sh[];
    float* Ks = sh;
    float* Vs = Ks + TL * ld;
    float* Qs = Vs + TL * ld;
    float* Os = Qs + TL * ld;       // dO
    float* Ps = Os + TL * ld;       // TL × (TL+1): p by key row
    float* Ds = Ps + TL * (TL + 1); // TL × (TL+1): ds by key row
    float* ls = Ds + TL * (TL + 1); // TL: the query tile's lse
    float* dls = ls + TL;           // TL: its Δ
    int g = blockIdx.y, b = blockIdx.z, u0 = blockIdx.x * TL, rep = H / Hkv;
    i64 qo = (i64)b * T * H * D, ko = (i64)b * T * Hkv * D;
    int c = threadIdx.x / TPR, ln = threadIdx.x % TPR, kp = u0 + c;
    bool live = kp < T;
    att_load(Ks, k + ko, u0, TL, T, Hkv, g, D);
    att_load(Vs, v + ko, u0, TL, T, Hkv, g, D);
    float ak[DPT], av[DPT];
#pragma unroll
    for (int j = 0; j < DPT; j++) ak[j] = av[j] = 0;
    int last = T - 1; // the last query that sees a key of the tile
    if (W > 0) last = imin(last, u0 + TL - 1 + W - 1);
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        const float* lh = lse + (i64)b * H * T + (i64)h * T;
        const float* dh = delta + (i64)b * H * T + (i64)h * T;
        for (int t0 = u0; t0 <= last; t0 += TL) {
            __syncthreads();
            att_load(Qs, q + qo, t0, TL, T, H, h, D);
            att_load(Os, dout + qo, t0, TL, T, H, h, D);
            if (threadIdx.x < TL) {
                int t = t0 + threadIdx.x;
                ls[threadIdx.x] = t < T ? lh[t] : 0;
                dls[threadIdx.x] = t < T ? dh[t] : 0;
            }
            __syncthreads();
            float s[QPT], dp[QPT];
            att_dots<QPT, TPR>(s, dp, Ks + c * ld, Vs + c * ld, Qs, Os, ln, D);
#pragma unroll
            for (int i = 0; i < QPT; i++) {
                int rr = ln + TPR * i, t = t0 + rr;
                float p = live && t < T && att_sees(t, kp, W) ? expf(s[i] * scale - ls[rr]) : 0.0f;
                Ps[c * (TL + 1) + rr] = p;
                Ds[c * (TL + 1) + rr] = p * (dp[i] - dls[rr]) * scale;
            }
            __syncwarp();
#pragma unroll
            for (int j = 0; j < DPT; j++) {
                int d = ln + TPR * j;
                if (d < D) {
                    float a1 = 0, a2 = 0;
                    for (int rr = 0; rr < TL; rr++) {
                        a1 += Ds[c * (TL + 1) + rr] * Qs[rr * ld + d];
                        a2 += Ps[c * (TL + 1) + rr] * Os[rr * ld + d];
                    }
                    ak[j] += a1;
                    av[j] += a2;
                }
            }
        }
    }
    if (!live) return;
    i64 x = ko + ((i64)kp * Hkv + g) * D;
#pragma unroll
    for (int j = 0; j < DPT; j++) {
        int d = ln + TPR * j;
        if (d < D) {
            dk[x + d] += ak[j];
            dv[x + d] += av[j];
        }
    }
}

// The instances ops.go picks from: DM the head size rounded up, TL 32
// rows per tile (16 for DM 256, and for DM 128 where the GPU's shared
// memory per block is short).
#define ATTN(DM, TL)                                                                                                              \
    extern "C" __global__ void __launch_bounds__(ATT_NT) attn_fwd_##DM##_##TL(float* out, float* lse, const float* q,             \
                                                                             const float* k, const float* v, int Tq, int Tk,     \
                                                                             int H, int Hkv, int D, int W, float scale) {        \
        attn_fwd_body<DM, TL>(out, lse, q, k, v, Tq, Tk, H, Hkv, D, W, scale);                                                    \
    }                                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_NT) attn_dq_##DM##_##TL(float* dq, const float* dout, const float* q,        \
                                                                            const float* k, const float* v, const float* lse,     \
                                                                            const float* delta, int T, int H, int Hkv, int D,     \
                                                                            int W, float scale) {                                 \
        attn_dq_body<DM, TL>(dq, dout, q, k, v, lse, delta, T, H, Hkv, D, W, scale);                                              \
    }                                                                                                                             \
    extern "C" __global__ void __launch_bounds__(ATT_NT) attn_dkv_##DM##_##TL(float* dk, float* dv, const float* dout,            \
                                                                             const float* q, const float* k, const float* v,      \
                                                                             const float* lse, const float* delta, int T, int H,  \
                                                                             int Hkv, int D, int W, float scale) {                \
        attn_dkv_body<DM, TL>(dk, dv, dout, q, k, v, lse, delta, T, H, Hkv, D, W, scale);                                         \
    }
ATTN(64, 32)
ATTN(128, 32)
ATTN(128, 16)
ATTN(256, 16)

// adamw: one optim.AdamW step of n parameters, in double as the Go loop.
extern "C" __global__ void adamw(float* w, const float* g, float* m, float* v, i64 n, double b1, double b2, double eps, double step, double sqrtbc2, double decay) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double gi = g[i];
        double mi = b1 * (double)m[i] + (1 - b1) * gi;
        double vi = b2 * (double)v[i] + (1 - b2) * gi * gi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        double wi = (double)w[i] * decay;
        w[i] = (float)(wi - step * mi / (sqrt(vi) / sqrtbc2 + eps));
    }
}

// sumsq: part[blockIdx.x] = Σ x[i]² in double over the block's grid-stride
// share of x's n values (blockDim.x = 256): gradient clipping's norm.
extern "C" __global__ void sumsq(double* part, const float* x, i64 n) {
    __shared__ double red[256];
    double s = 0;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        double v = x[i];
        s += v * v;
    }
    red[threadIdx.x] = s;
    __syncthreads();
    for (int o = blockDim.x / 2; o > 0; o >>= 1) {
        if ((int)threadIdx.x < o) red[threadIdx.x] += red[threadIdx.x + o];
        __syncthreads();
    }
    if (threadIdx.x == 0) part[blockIdx.x] = red[0];
}

// MeZO's perturbation (methods/mezo/rng.go), regenerated on the device:
// splitmix64's mix, keyed per tensor, Box–Muller in double.
__device__ __forceinline__ u64 mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// mezo_normal: w[i] = a·w[i] + alpha·z[off+i] for the tensor key k
// (mezo.Normal), with z cleared at the entries of a mask that keeps the
// share ratio of them (methods/loho's InMask(mkey, off+i, ratio); ratio ≤ 0:
// no mask); w may be 0 to write z itself into out instead.
extern "C" __global__ void mezo_normal(float* out, float* w, u64 key, i64 off, i64 n, float alpha, float a, u64 mkey, double ratio) {
    const u64 gamma = 0x9e3779b97f4a7c15ull;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 e = off + i;
        float z = 0;
        if (!(ratio > 0 && (double)(mix(mkey + (u64)e * gamma) >> 11) * (1.0 / 9007199254740992.0) < ratio)) {
            u64 ka = mix(key + (u64)(e >> 1) * gamma);
            u64 kb = mix(ka ^ gamma);
            double u1 = (double)((ka >> 11) + 1) * (1.0 / 9007199254740992.0);
            double u2 = (double)(kb >> 11) * (1.0 / 9007199254740992.0);
            double r = sqrt(-2.0 * log(u1));
            double s, c;
            sincos(2.0 * 3.141592653589793 * u2, &s, &c);
            z = (float)(r * ((e & 1) ? s : c));
        }
        if (w)
            w[i] = a * w[i] + alpha * z;
        else
            out[i] = z;
    }
}

// LoRA dropout's mask (methods/lora): the i-th draw of Go's math/rand/v2
// rand.New(rand.NewPCG(seed, id)).Uint32() for element i, regenerated on
// the device. PCG-DXSM on a 128-bit LCG state; a thread jumps ahead to its
// chunk's first element (O(log i) steps) and then steps through it.
struct u128 {
    u64 hi, lo;
};
__device__ __forceinline__ u128 mul128(u128 a, u128 b) {
    u128 r;
    r.lo = a.lo * b.lo;
    r.hi = __umul64hi(a.lo, b.lo) + a.hi * b.lo + a.lo * b.hi;
    return r;
}
__device__ __forceinline__ u128 add128(u128 a, u128 b) {
    u128 r;
    r.lo = a.lo + b.lo;
    r.hi = a.hi + b.hi + (r.lo < a.lo ? 1 : 0);
    return r;
}
#define PCG_MUL u128{2549297995355413924ull, 4865540595714422341ull}
#define PCG_INC u128{6364136223846793005ull, 1442695040888963407ull}
// pcg_advance: the state n steps after s.
__device__ u128 pcg_advance(u128 s, u64 n) {
    u128 am = {0, 1}, ap = {0, 0}, cm = PCG_MUL, cp = PCG_INC;
    while (n) {
        if (n & 1) {
            am = mul128(am, cm);
            ap = add128(mul128(ap, cm), cp);
        }
        cp = mul128(add128(cm, u128{0, 1}), cp);
        cm = mul128(cm, cm);
        n >>= 1;
    }
    return add128(mul128(am, s), ap);
}
__device__ __forceinline__ u32 pcg_u32(u128 st) {
    u64 hi = st.hi;
    hi ^= hi >> 32;
    hi *= 0xda942042e4dd58b5ull;
    hi ^= hi >> 48;
    hi *= (st.lo | 1);
    return (u32)(hi >> 32);
}

// dropout: out[i] = x[i]·keep where draw i ≥ th, else 0 (out may be x);
// 64 consecutive elements per thread.
extern "C" __global__ void dropout(float* out, const float* x, i64 n, u64 seed, u64 id, u32 th, float keep) {
    const i64 per = 64;
    for (i64 c = blockIdx.x * (i64)blockDim.x + threadIdx.x; c * per < n; c += (i64)gridDim.x * blockDim.x) {
        i64 i0 = c * per, i1 = i0 + per < n ? i0 + per : n;
        u128 st = pcg_advance(u128{seed, id}, (u64)i0);
        for (i64 i = i0; i < i1; i++) {
            st = add128(mul128(st, PCG_MUL), PCG_INC);
            out[i] = pcg_u32(st) >= th ? x[i] * keep : 0.0f;
        }
    }
}

// A sparse delta S (Out, In) in CSR form (methods/loho's and loreml's
// Sparse): rowptr (Out+1), cols and val (nnz).
//
// csr_fwd: y (M, Out) += x (M, In)·Sᵀ, one thread per output element.
extern "C" __global__ void csr_fwd(float* y, const float* x, const int* rowptr, const int* cols, const float* val, i64 M, int In, int Out) {
    i64 total = M * Out;
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        i64 m = t / Out;
        int o = (int)(t % Out);
        const float* xr = x + m * In;
        float acc = 0;
        for (int k = rowptr[o]; k < rowptr[o + 1]; k++) acc += val[k] * xr[cols[k]];
        y[t] += acc;
    }
}

// csr_sddmm: grad[k] += Σ_m dy[m, o]·x[m, cols[k]] for entry k of row o
// (the sampled product: no dense gradient), one thread per entry.
extern "C" __global__ void csr_sddmm(float* grad, const float* dy, const float* x, const int* rowptr, const int* cols, i64 M, int In, int Out,
                                     i64 nnz) {
    for (i64 k = blockIdx.x * (i64)blockDim.x + threadIdx.x; k < nnz; k += (i64)gridDim.x * blockDim.x) {
        int lo = 0, hi = Out; // the row: the last o with rowptr[o] ≤ k
        while (hi - lo > 1) {
            int mid = (lo + hi) >> 1;
            if (rowptr[mid] <= k)
                lo = mid;
            else
                hi = mid;
        }
        int c = cols[k];
        float acc = 0;
        for (i64 m = 0; m < M; m++) acc += dy[m * Out + lo] * x[m * In + c];
        grad[k] += acc;
    }
}

// csc_dx: dx (M, In) += dy (M, Out)·S, S read by columns: colptr (In+1),
// rowidx (nnz) the row of each, perm (nnz) its position in val; one
// thread per input element, rows in ascending order.
extern "C" __global__ void csc_dx(float* dx, const float* dy, const int* colptr, const int* rowidx, const int* perm, const float* val, i64 M, int In,
                                  int Out) {
    i64 total = M * In;
    for (i64 t = blockIdx.x * (i64)blockDim.x + threadIdx.x; t < total; t += (i64)gridDim.x * blockDim.x) {
        i64 m = t / In;
        int i = (int)(t % In);
        const float* dyr = dy + m * Out;
        float acc = 0;
        for (int j = colptr[i]; j < colptr[i + 1]; j++) acc += dyr[rowidx[j]] * val[perm[j]];
        dx[t] += acc;
    }
}

// scal: x *= a.
extern "C" __global__ void scal(float* x, float a, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] *= a;
}

// rope_table: the rotation tables of positions p0..p0+T−1 (nn.Rope.Row):
// cos and sin (T, half) of (p·scale)·freq[j] in double, rounded to float,
// times mscale when it is neither 0 nor 1.
extern "C" __global__ void rope_table(float* cs, float* sn, const double* freq, int half, i64 p0, int T, double scale, float mscale) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < (i64)T * half; i += (i64)gridDim.x * blockDim.x) {
        i64 p = p0 + i / half;
        double s, c;
        sincos((double)p * scale * freq[i % half], &s, &c);
        float cf = (float)c, sf = (float)s;
        if (mscale != 1.0f && mscale != 0.0f) cf *= mscale, sf *= mscale;
        cs[i] = cf;
        sn[i] = sf;
    }
}

// scal_blocks: x[i] *= r[i / block] (methods/mezo's Scales: a decoded
// weight times each quantization block's multiplier).
extern "C" __global__ void scal_blocks(float* x, const float* r, i64 n, int block) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) x[i] *= r[i / block];
}

// axpy: y += a·x.
extern "C" __global__ void axpy(float* y, const float* x, float a, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) y[i] += a * x[i];
}
