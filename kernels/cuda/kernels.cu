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
        const u8* s = b + 4;
        int sc, m;
        if (sub < 4) {
            sc = s[sub] & 63;
            m = s[sub + 4] & 63;
        } else {
            sc = (s[sub + 4] & 15) | ((s[sub - 4] >> 6) << 4);
            m = (s[sub + 4] >> 4) | ((s[sub] >> 6) << 4);
        }
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

#define DEQUANT(name, T)                                                                              \
    extern "C" __global__ void dequant_##name##_f32(float* y, const u8* w, i64 n, i64 e0, i64 count) { \
        dequant_body<T, float>(y, w, n, e0, count);                                                    \
    }                                                                                                  \
    extern "C" __global__ void dequant_##name##_bf16(u16* y, const u8* w, i64 n, i64 e0, i64 count) {  \
        dequant_body<T, u16>(y, w, n, e0, count);                                                      \
    }
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

// attn_fwd: kernels.AttentionSeqWindow for one sequence; one block per
// (query t, head h), the scores of keys u ≤ t in dynamic shared memory
// (T floats), then q_t·D floats. out (T, H·D), lse (H, T).
extern "C" __global__ void attn_fwd(float* out, float* lse, const float* q, const float* k, const float* v, int T, int H, int Hkv, int D, int W, float scale) {
    extern __shared__ float sh[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv);
    float* sc = sh;
    float* qs = sh + T;
    const float* qt = q + ((i64)t * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) qs[d] = qt[d];
    __syncthreads();
    int u0 = (W > 0 && t - W + 1 > 0) ? t - W + 1 : 0;
    float m = -__int_as_float(0x7f800000);
    for (int u = u0 + threadIdx.x; u <= t; u += blockDim.x) {
        const float* ku = k + ((i64)u * Hkv + g) * D;
        float s = 0;
        for (int d = 0; d < D; d++) s += qs[d] * ku[d];
        s *= scale;
        sc[u] = s;
        m = fmaxf(m, s);
    }
    m = block_max(m, red);
    float z = 0;
    for (int u = u0 + threadIdx.x; u <= t; u += blockDim.x) z += expf(sc[u] - m);
    z = block_sum(z, red);
    float l = m + logf(z);
    if (threadIdx.x == 0) lse[(i64)h * T + t] = l;
    __syncthreads();
    for (int u = u0 + threadIdx.x; u <= t; u += blockDim.x) sc[u] = expf(sc[u] - l);
    __syncthreads();
    float* o = out + ((i64)t * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0;
        for (int u = u0; u <= t; u++) acc += sc[u] * v[((i64)u * Hkv + g) * D + d];
        o[d] = acc;
    }
}

// The attention backward (kernels.AttentionSeqBackwardWindow) for one
// sequence, in two kernels without atomics:
//
// attn_bwd_dq, one block per (query t, head h): rebuilds p_u and
// dp_u = dO_t·v_u for u ≤ t, Δ = Σ_u p_u·dp_u (written to delta (H, T)),
// ds_u = p_u·(dp_u − Δ)/√D, and dq_t += Σ_u ds_u·k_u.
extern "C" __global__ void attn_bwd_dq(float* dq, float* delta, const float* dout, const float* q, const float* k, const float* v, const float* lse,
                                       int T, int H, int Hkv, int D, int W, float scale) {
    extern __shared__ float sh[];
    __shared__ float red[32];
    int t = blockIdx.x, h = blockIdx.y, g = h / (H / Hkv);
    float* p = sh;              // T: probabilities
    float* ds = sh + T;         // T: score gradients
    float* qs = sh + 2 * T;     // D
    float* dos = qs + D;        // D
    i64 row = ((i64)t * H + h) * D;
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        qs[d] = q[row + d];
        dos[d] = dout[row + d];
    }
    __syncthreads();
    int u0 = (W > 0 && t - W + 1 > 0) ? t - W + 1 : 0;
    float l = lse[(i64)h * T + t], dl = 0;
    for (int u = u0 + threadIdx.x; u <= t; u += blockDim.x) {
        const float* ku = k + ((i64)u * Hkv + g) * D;
        const float* vu = v + ((i64)u * Hkv + g) * D;
        float s = 0, dp = 0;
        for (int d = 0; d < D; d++) {
            s += qs[d] * ku[d];
            dp += dos[d] * vu[d];
        }
        float pu = expf(s * scale - l);
        p[u] = pu;
        ds[u] = dp;
        dl += pu * dp;
    }
    dl = block_sum(dl, red);
    if (threadIdx.x == 0) delta[(i64)h * T + t] = dl;
    for (int u = u0 + threadIdx.x; u <= t; u += blockDim.x) ds[u] = p[u] * (ds[u] - dl) * scale;
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += blockDim.x) {
        float acc = 0;
        for (int u = u0; u <= t; u++) acc += ds[u] * k[((i64)u * Hkv + g) * D + d];
        dq[row + d] += acc;
    }
}

// attn_bwd_dkv, one block per (key u, kv head g): for each query head h
// of the group and each query t that sees u, p and ds as above (Δ from
// attn_bwd_dq), then dk_u += Σ ds·q_t and dv_u += Σ p·dO_t, a chunk of
// blockDim queries at a time (scores by thread, sums by dimension).
extern "C" __global__ void attn_bwd_dkv(float* dk, float* dv, const float* dout, const float* q, const float* k, const float* v, const float* lse,
                                        const float* delta, int T, int H, int Hkv, int D, int W, float scale) {
    extern __shared__ float sh[];
    int u = blockIdx.x, g = blockIdx.y, rep = H / Hkv, nt = blockDim.x;
    float* ku = sh;          // D
    float* vu = ku + D;      // D
    float* ak = vu + D;      // D: dk_u
    float* av = ak + D;      // D: dv_u
    float* pc = av + D;      // nt
    float* dc = pc + nt;     // nt
    i64 kv = ((i64)u * Hkv + g) * D;
    for (int d = threadIdx.x; d < D; d += nt) {
        ku[d] = k[kv + d];
        vu[d] = v[kv + d];
        ak[d] = 0;
        av[d] = 0;
    }
    __syncthreads();
    int tEnd = T - 1;
    if (W > 0 && u + W - 1 < tEnd) tEnd = u + W - 1;
    for (int hh = 0; hh < rep; hh++) {
        int h = g * rep + hh;
        for (int t0 = u; t0 <= tEnd; t0 += nt) {
            int t = t0 + threadIdx.x;
            float pt = 0, dst = 0;
            if (t <= tEnd) {
                const float* qt = q + ((i64)t * H + h) * D;
                const float* ot = dout + ((i64)t * H + h) * D;
                float s = 0, dp = 0;
                for (int d = 0; d < D; d++) {
                    s += qt[d] * ku[d];
                    dp += ot[d] * vu[d];
                }
                pt = expf(s * scale - lse[(i64)h * T + t]);
                dst = pt * (dp - delta[(i64)h * T + t]) * scale;
            }
            pc[threadIdx.x] = pt;
            dc[threadIdx.x] = dst;
            __syncthreads();
            int n = tEnd - t0 + 1 < nt ? tEnd - t0 + 1 : nt;
            for (int d = threadIdx.x; d < D; d += nt) {
                float a1 = 0, a2 = 0;
                for (int i = 0; i < n; i++) {
                    i64 r = ((i64)(t0 + i) * H + h) * D + d;
                    a1 += dc[i] * q[r];
                    a2 += pc[i] * dout[r];
                }
                ak[d] += a1;
                av[d] += a2;
            }
            __syncthreads();
        }
    }
    for (int d = threadIdx.x; d < D; d += nt) {
        dk[kv + d] += ak[d];
        dv[kv + d] += av[d];
    }
}

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

// MeZO's perturbation (methods/mezo/rng.go), regenerated on the device:
// splitmix64's mix, keyed per tensor, Box–Muller in double.
__device__ __forceinline__ u64 mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

// mezo_axpy: w[i] += alpha·z[off+i] for the tensor key k (mezo.Normal);
// w may be 0 to write z itself into out instead.
extern "C" __global__ void mezo_normal(float* out, float* w, u64 key, i64 off, i64 n, float alpha) {
    const u64 gamma = 0x9e3779b97f4a7c15ull;
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) {
        i64 e = off + i;
        u64 a = mix(key + (u64)(e >> 1) * gamma);
        u64 b = mix(a ^ gamma);
        double u1 = (double)((a >> 11) + 1) * (1.0 / 9007199254740992.0);
        double u2 = (double)(b >> 11) * (1.0 / 9007199254740992.0);
        double r = sqrt(-2.0 * log(u1));
        double s, c;
        sincos(2.0 * 3.141592653589793 * u2, &s, &c);
        float z = (float)(r * ((e & 1) ? s : c));
        if (w)
            w[i] += alpha * z;
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

// axpy: y += a·x.
extern "C" __global__ void axpy(float* y, const float* x, float a, i64 n) {
    for (i64 i = blockIdx.x * (i64)blockDim.x + threadIdx.x; i < n; i += (i64)gridDim.x * blockDim.x) y[i] += a * x[i];
}
