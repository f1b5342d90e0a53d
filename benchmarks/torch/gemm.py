"""PyTorch's dense product at the shape of benchmarks/gemm.cpp (y = x W^T, 2048 x 768 x 3072), in
fp32 and in bf16 (which current PyTorch runs through oneDNN), median of 11 after 3 warm-ups.

  python benchmarks/torch/gemm.py [threads]
"""
import statistics
import sys
import time

import torch

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
M, K, N = 2048, 768, 3072
x32, w32 = torch.rand(M, K) * 2 - 1, torch.rand(N, K) * 2 - 1
for dtype in (torch.float32, torch.bfloat16):
    x, w = x32.to(dtype), w32.to(dtype)
    times = []
    for i in range(14):
        t0 = time.perf_counter()
        x @ w.T
        if i >= 3:
            times.append(time.perf_counter() - t0)
    gflops = 2 * M * N * K / statistics.median(times) * 1e-9
    name = "fp32" if dtype == torch.float32 else "bf16"
    print(f"gemm {M}x{K}x{N} {name} [torch {torch.__version__}, CPU capability "
          f"{torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} thread(s)]: {gflops:.1f} GFLOP/s")
