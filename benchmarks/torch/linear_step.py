#!/usr/bin/python3
"""PyTorch peer of benchmarks/linear_step.cpp: one frozen linear layer's training step
(forward, then backward with the input gradient and the adapter's parameter gradients) at
N = 2048, d_in = d_out = 768, float32, alone, with PEFT-style LoRA, and with WeGeFT in both
contraction orders, as eager PyTorch code a PEFT user runs. Median over rounds of the per-round
ratio to the frozen base step, variants alternating.

  /usr/bin/python3 benchmarks/torch/linear_step.py [rounds] [threads]
"""
import statistics
import sys
import time

import torch

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 15
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)
N, D = 2048, 768

base = torch.nn.Linear(D, D)
base.requires_grad_(False)
x = torch.empty(N, D).uniform_(-1, 1).requires_grad_(True)
dy = torch.empty(N, D).uniform_(-1, 1)


class Lora(torch.nn.Module):
    """Hugging Face PEFT's LoraLayer forward: base(x) + lora_B(lora_A(dropout(x))) * scaling."""

    def __init__(self, r):
        super().__init__()
        self.lora_A = torch.nn.Linear(D, r, bias=False)
        self.lora_B = torch.nn.Linear(r, D, bias=False)
        torch.nn.init.constant_(self.lora_B.weight, 0.01)
        self.dropout = torch.nn.Identity()
        self.scaling = 2.0

    def forward(self, x):
        return base(x) + self.lora_B(self.lora_A(self.dropout(x))) * self.scaling


class WeGeFT(torch.nn.Module):
    def __init__(self, r, order):
        super().__init__()
        self.phi = torch.nn.Parameter(torch.full((r, D), 0.01))
        self.psi = torch.nn.Parameter(torch.empty(r, D).uniform_(-D ** -0.5, D ** -0.5))
        self.order, self.scaling = order, 2.0

    def forward(self, x):
        u = x @ self.psi.t()
        if self.order == "input_edit":
            return base(x + self.scaling * (u @ self.phi))
        p = base.weight @ self.phi.t()
        return base(x) + self.scaling * (u @ p.t())


variants = [("frozen base", lambda: base(x), 1.0)]
for r in (8, 16, 64):
    lora = Lora(r)
    variants.append((f"LoRA r={r}", lora, 1 + 3 * N * r * 2 * D / (2 * N * D * D)))
    for order, macs in (("weight_side", 3 * N * r * 2 * D + 2 * r * D * D), ("input_edit", 6 * N * r * D)):
        variants.append((f"WeGeFT r={r} {order}", WeGeFT(r, order), 1 + macs / (2 * N * D * D)))


def step(f):
    x.grad = None
    y = f() if not isinstance(f, torch.nn.Module) else f(x)
    y.backward(dy)


times = {name: [] for name, _, _ in variants}
ratios = {name: [] for name, _, _ in variants}
for f in (v[1] for v in variants):
    step(f)
for rnd in range(rounds):
    order = variants if rnd % 2 == 0 else variants[::-1]
    t = {}
    for name, f, _ in order:
        t0 = time.perf_counter()
        step(f)
        t[name] = time.perf_counter() - t0
    for name in t:
        times[name].append(t[name])
        ratios[name].append(t[name] / t["frozen base"])
print(f"torch {torch.__version__} linear-layer training step, float32, N = {N}, d = {D}, threads {torch.get_num_threads()}")
for name, _, ideal in variants:
    print(f"RESULT {name}|{1e3 * statistics.median(times[name]):.4f}|{statistics.median(ratios[name]):.4f}|{ideal:.4f}")
