"""PyTorch peer of benchmarks/smollm2_step.cpp: the real SmolLM2-135M-Instruct loaded by
transformers from the same GGUF file (dequantized to fp32), PEFT LoRA r = 8 (alpha 16) on every
linear ("all-linear"), a batch of 8 x 256 random tokens with the next-token loss, backward and
AdamW. Prints the median step time, tokens per second and the process's peak resident memory.

  python benchmarks/torch/smollm2_step.py GGUF [rounds] [threads] [fp32|bf16]

bf16 runs the step under torch.autocast("cpu", torch.bfloat16), parameters and AdamW in fp32.
Attention is transformers' default (SDPA).
"""
import os
import resource
import statistics
import sys
import time

import torch
import transformers
import peft

path = sys.argv[1]
rounds = int(sys.argv[2]) if len(sys.argv) > 2 else 3
threads = int(sys.argv[3]) if len(sys.argv) > 3 else 1
precision = sys.argv[4] if len(sys.argv) > 4 else "fp32"
if precision not in ("fp32", "bf16"):
    sys.exit(f"smollm2_step.py: precision must be fp32 or bf16, got {precision}")
torch.set_num_threads(threads)
torch.manual_seed(0)
transformers.logging.set_verbosity_error()
model = transformers.AutoModelForCausalLM.from_pretrained(
    os.path.dirname(os.path.abspath(path)), gguf_file=os.path.basename(path), torch_dtype=torch.float32)
model = peft.get_peft_model(model, peft.LoraConfig(r=8, lora_alpha=16, target_modules="all-linear", lora_dropout=0.0))
model.train()
opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
B, T = 8, 256
ids = torch.randint(0, model.config.vocab_size, (B, T))
times = []
for r in range(rounds + 1):
    t0 = time.perf_counter()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    opt.step()
    opt.zero_grad()
    if r > 0:
        times.append(time.perf_counter() - t0)
trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
s = statistics.median(times)
print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} SmolLM2-135M step, "
      f"LoRA r 8 all-linear, {precision}, attention {model.config._attn_implementation}, threads {torch.get_num_threads()}, "
      f"CPU capability {torch.backends.cpu.get_cpu_capability()}: loss {loss.item():.4f}, trainable {trainable}")
print(f"RESULT smollm2 step|{1e3 * s:.4f}|{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.1f}|{B * T / s:.1f}")
