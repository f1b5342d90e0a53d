#!/usr/bin/env python3
"""PyTorch peer of benchmarks/cuda/linear_step.cpp: one linear layer's training step on the GPU
(forward, then backward with the input gradient and the adapter's parameter gradients), bf16,
at the same shapes: frozen base, Hugging Face PEFT's LoRA (get_peft_model with its defaults, so
the adapter weights are fp32 as PEFT's autocast_adapter_dtype makes them), and WeGeFT written
as eager PyTorch in both contraction orders (bf16 parameters). Each variant runs `iters` steps per
round between CUDA events; variants alternate; median over rounds of the ratio to the base step.

  python3 benchmarks/torch/linear_step_cuda.py [rounds]
"""
import statistics
import sys

import peft
import torch

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 9
dev = torch.device("cuda")
torch.manual_seed(0)
print(f"torch {torch.__version__}, peft {peft.__version__}, card {torch.cuda.get_device_name()}")


class One(torch.nn.Module):
    def __init__(self, d):
        super().__init__()
        self.proj = torch.nn.Linear(d, d)

    def forward(self, x):
        return self.proj(x)


class WeGeFT(torch.nn.Module):
    def __init__(self, base, r, order):
        super().__init__()
        d = base.in_features
        self.base = base
        self.phi = torch.nn.Parameter(torch.full((r, d), 0.01, device=dev, dtype=torch.bfloat16))
        self.psi = torch.nn.Parameter(
            torch.empty(r, d, device=dev, dtype=torch.bfloat16).uniform_(-d ** -0.5, d ** -0.5))
        self.order, self.scaling = order, 2.0

    def forward(self, x):
        u = x @ self.psi.t()
        if self.order == "input_edit":
            return self.base(x + self.scaling * (u @ self.phi))
        p = self.base.weight @ self.phi.t()
        return self.base(x) + self.scaling * (u @ p.t())


def run(n, d, lora_rank, wegeft_rank, iters):
    base_model = One(d).to(dev, torch.bfloat16)
    base_model.requires_grad_(False)
    x = torch.empty(n, d, device=dev, dtype=torch.bfloat16).uniform_(-1, 1).requires_grad_(True)
    dy = torch.empty(n, d, device=dev, dtype=torch.bfloat16).uniform_(-1, 1)
    lora_model = peft.get_peft_model(
        One(d).to(dev, torch.bfloat16),
        peft.LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, target_modules=["proj"]))
    with torch.no_grad():
        lora_model.base_model.model.proj.lora_B["default"].weight.fill_(0.01)
    lora_dtype = lora_model.base_model.model.proj.lora_A["default"].weight.dtype
    frozen = One(d).to(dev, torch.bfloat16).proj
    frozen.requires_grad_(False)
    base_flops = 4 * n * d * d
    tag = f"N={n} d={d}"
    variants = [(f"frozen base {tag}", base_model, 1.0),
                (f"PEFT LoRA r={lora_rank} {tag}", lora_model,
                 1 + 6 * n * lora_rank * 2 * d / base_flops)]
    for order in ("weight_side", "input_edit"):
        extra = 6 * n * wegeft_rank * 2 * d + (4 * wegeft_rank * d * d if order == "weight_side" else 0)
        variants.append((f"WeGeFT r={wegeft_rank} {order} {tag}", WeGeFT(frozen, wegeft_rank, order),
                         1 + extra / base_flops))

    def steps(f):
        for _ in range(iters):
            x.grad = None
            f(x).backward(dy)

    def timed(f):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        steps(f)
        stop.record()
        stop.synchronize()
        return start.elapsed_time(stop) / iters

    for _, f, _ in variants:
        steps(f)
    torch.cuda.synchronize()
    times = {name: [] for name, _, _ in variants}
    ratios = {name: [] for name, _, _ in variants}
    for rnd in range(rounds):
        order = variants if rnd % 2 == 0 else variants[::-1]
        t = {name: timed(f) for name, f, _ in order}
        for name, _, _ in variants:
            times[name].append(t[name])
            ratios[name].append(t[name] / t[variants[0][0]])
    print(f"(PEFT LoRA adapter weights: {lora_dtype})")
    for name, _, ideal in variants:
        print(f"{name:42s} {statistics.median(times[name]):10.4f} {statistics.median(ratios[name]):12.3f} {ideal:10.3f}")
    for name, _, ideal in variants:
        print(f"RESULT {name}|{statistics.median(times[name]):.5f}|{statistics.median(ratios[name]):.4f}|{ideal:.4f}")
    base_tflops = base_flops / (statistics.median(times[variants[0][0]]) * 1e-3) * 1e-12
    print(f"frozen base step {tag}: {base_tflops:.0f} TFLOP/s\n")


print(f"{'variant':42s} {'ms':>10s} {'ratio':>12s} {'FLOP ideal':>10s}")
run(16384, 4096, 16, 64, 5)
run(2048, 768, 8, 8, 50)
