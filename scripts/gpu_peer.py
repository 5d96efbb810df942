"""PyTorch's side of `make test-gpu`: the same shapes as kernels/cuda's
benchmarks, timed with CUDA events on the same GPU in the same run.

PyTorch multiplies a bf16 (or fp32) weight it already holds expanded;
qtune decodes its 4-bit weight first, so the ratio is the price of keeping
weights quantized."""
import torch

def timed(f, n=20):
    f(); torch.cuda.synchronize()
    s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    s.record()
    for _ in range(n):
        f()
    e.record(); e.synchronize()
    return s.elapsed_time(e) / n

torch.backends.cuda.matmul.allow_tf32 = False
dev = "cuda"
print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
M, N, K = 2048, 5632, 2048
for dt in (torch.float32, torch.bfloat16):
    x = torch.randn(M, K, device=dev, dtype=dt)
    w = torch.randn(N, K, device=dev, dtype=dt)
    ms = timed(lambda: torch.nn.functional.linear(x, w))
    print(f"peer matmul {M}x{N}x{K} {str(dt).split('.')[1]}: {ms:.3f} ms, {2*M*N*K/ms/1e9:.1f} TFLOP/s")
N, K = 16384, 8192
x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
ms = timed(lambda: torch.nn.functional.linear(x, w))
print(f"peer matvec {N}x{K} bf16: {ms:.3f} ms, {N*K*2/ms/1e6:.0f} weight GB/s")
a = torch.empty(1 << 30, dtype=torch.uint8, device=dev)
b = torch.empty_like(a)
ms = timed(lambda: b.copy_(a))
print(f"peer device copy 1 GiB: {ms:.3f} ms, {2*(1<<30)/ms/1e6:.0f} GB/s (read+write)")
