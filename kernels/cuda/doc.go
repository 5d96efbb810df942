// Package cuda is qtune's GPU backend for NVIDIA GPUs, loaded at run time
// with purego: no cgo, so the one binary runs with and without a GPU.
//
// It opens the driver (libcuda.so.1), cuBLAS (libcublas.so.13 or .12,
// with cuBLASLt) and NVRTC (libnvrtc.so.13 or .12) wherever they are: the
// loader's own search, $QTUNE_CUDA_LIBS, $CUDA_PATH, /usr/local/cuda, and
// the lib folders of NVIDIA's pip wheels (nvidia/*/lib in any python's
// site-packages on $PATH, $VIRTUAL_ENV, $CONDA_PREFIX, ~/.local). A
// machine without them gets an error wrapping ErrNoCUDA.
//
// A Device owns one GPU's primary context from one goroutine locked to its
// OS thread; every call is handed to it. Device memory is counted against
// Options.MaxVRAM (Alloc refuses past it, ErrVRAM), cuBLAS's workspace
// included; without one, BudgetFromFree takes the GPU's free memory. Asynchronous copies read only page-locked memory (Pinned),
// never the Go heap; kernel arguments are packed into a mapped arena.
//
// The kernels (kernels.cu) are CUDA C compiled by NVRTC at first use for
// the GPU's exact architecture (a cubin, sm_XY) and kept in a cache folder
// keyed by the source's hash, the options, NVRTC's version and the
// architecture. Each mirrors a function of package kernels or quant and is
// tested against it on a GPU: decoding F32, F16, BF16, Q4_0, Q8_0, Q4_K,
// Q6_K and NF4 (bit-identical to quant.DequantizeRange), the matrix-vector
// product of generation decoding in registers, the batched product as a
// decode into a workspace then one cuBLAS GEMM (FP32, or BF16 inputs with
// FP32 accumulation), RMSNorm, RoPE and its tables, SwiGLU, cross-entropy,
// causal grouped-query attention (forward and backward, and decoding's
// with the keys split across blocks), AdamW with clipping's norm, and
// MeZO's perturbation regenerated from its seed (the same z as
// methods/mezo, LoHO's first-order mask cleared from it), and block
// scales applied to a decoded weight (methods/mezo's Scales).
package cuda
