#!/usr/bin/python3
"""PyTorch peer of benchmarks/model_step.cpp: the same MiniLM-sized BERT encoder (6 layers,
width 384, 12 heads, MLP 1536, sequence 128, batch 32, post-norm, GELU) with PEFT-style LoRA
r = 8 on q and v, a new 2-label classifier on the tanh pooler, cross-entropy, backward and AdamW,
in eager PyTorch as Hugging Face's BertModel computes it. Prints the median step time and the
process's peak resident memory.

  python3 benchmarks/torch/model_step.py [rounds] [threads] [fp32|bf16] [matmul|sdpa]

bf16 runs the step under torch.autocast("cpu", torch.bfloat16) (products in bf16, parameters and
AdamW in fp32), as a PyTorch user trains in bf16 on a CPU; sdpa computes attention with
torch.nn.functional.scaled_dot_product_attention instead of two matmuls and a softmax.
"""
import math
import resource
import statistics
import sys
import time

import torch
import torch.nn.functional as F

rounds = int(sys.argv[1]) if len(sys.argv) > 1 else 5
threads = int(sys.argv[2]) if len(sys.argv) > 2 else 1
precision = sys.argv[3] if len(sys.argv) > 3 else "fp32"
attention = sys.argv[4] if len(sys.argv) > 4 else "matmul"
if precision not in ("fp32", "bf16") or attention not in ("matmul", "sdpa"):
    sys.exit(f"model_step.py: precision must be fp32 or bf16 (got {precision}), attention matmul or sdpa (got {attention})")
torch.set_num_threads(threads)
torch.manual_seed(0)
V, D, L, H, FF, T, B, R = 1000, 384, 6, 12, 1536, 128, 32, 8


class LoraLinear(torch.nn.Module):
    def __init__(self, base):
        super().__init__()
        self.base = base
        self.lora_A = torch.nn.Linear(D, R, bias=False)
        self.lora_B = torch.nn.Linear(R, D, bias=False)
        torch.nn.init.zeros_(self.lora_B.weight)
        self.scaling = 16 / R

    def forward(self, x):
        return self.base(x) + self.lora_B(self.lora_A(x)) * self.scaling


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (torch.nn.Linear(D, D) for _ in range(4))
        self.ln1, self.ln2 = torch.nn.LayerNorm(D, eps=1e-12), torch.nn.LayerNorm(D, eps=1e-12)
        self.up, self.down = torch.nn.Linear(D, FF), torch.nn.Linear(FF, D)

    def forward(self, x):
        def heads(t):
            return t.view(B, T, H, D // H).transpose(1, 2)
        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        if attention == "sdpa":
            a = F.scaled_dot_product_attention(q, k, v)
        else:
            a = (q @ k.transpose(-1, -2) / math.sqrt(D // H)).softmax(-1) @ v
        x = self.ln1(x + self.o(a.transpose(1, 2).reshape(B, T, D)))
        return self.ln2(x + self.down(F.gelu(self.up(x))))


class Model(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.word, self.pos, self.token_type = torch.nn.Embedding(V, D), torch.nn.Embedding(512, D), torch.nn.Embedding(2, D)
        self.ln = torch.nn.LayerNorm(D, eps=1e-12)
        self.layers = torch.nn.ModuleList(Layer() for _ in range(L))
        self.pooler = torch.nn.Linear(D, D)
        self.requires_grad_(False)
        for layer in self.layers:
            layer.q, layer.v = LoraLinear(layer.q), LoraLinear(layer.v)
        self.classifier = torch.nn.Linear(D, 2)

    def forward(self, ids):
        x = self.word(ids) + self.pos(torch.arange(T))[None] + self.token_type(torch.zeros_like(ids))
        x = self.ln(x)
        for layer in self.layers:
            x = layer(x)
        return self.classifier(torch.tanh(self.pooler(x[:, 0])))


model = Model()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
ids = torch.randint(0, V, (B, T))
labels = torch.randint(0, 2, (B,))
times = []
for r in range(rounds + 1):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = F.cross_entropy(model(ids), labels)
    loss.backward()
    opt.step()
    opt.zero_grad()
    if r > 0:
        times.append(time.perf_counter() - t0)
capability = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "n/a"
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
print(f"torch {torch.__version__} model step, {precision}, {attention}, threads {torch.get_num_threads()}, "
      f"CPU capability {capability}: loss {loss.item():.4f}, trainable {trainable}")
print(f"RESULT model step|{1e3 * statistics.median(times):.4f}|{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}")
