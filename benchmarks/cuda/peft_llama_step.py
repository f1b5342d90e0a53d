#!/usr/bin/env python3
# usage: peft_llama_step.py BATCH TOKENS [smollm2|llama-block|FILE.gguf] [--compile]
# (on the GPU machine: torch, transformers and peft; a .gguf file needs the gguf package too)
# PyTorch eager + PEFT LoRA r=8 (all linear) training step, bf16, AdamW, clipping at 1; prints
# tokens/s. Shapes as benchmarks/cuda/model_step.cpp's (random weights: the timing does not depend
# on them): SmolLM2-135M's, or one Llama block of d = 2048 (16 heads, MLP 5632) between a 256-word
# embedding and tied head; or a llama GGUF file: that model's real weights, dequantized by
# transformers' GGUF loader and cast to bf16. Token ids are seeded random draws from the vocabulary.
# --compile runs the model under torch.compile (its default mode; the warm-up steps compile).
import os, sys, time, torch, transformers, peft
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
compiled = "--compile" in sys.argv
argv = [a for a in sys.argv if a != "--compile"]
shape = argv[3] if len(argv) > 3 else "smollm2"
if shape == "smollm2":
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
elif shape == "llama-block":
    cfg = LlamaConfig(vocab_size=256, hidden_size=2048, intermediate_size=5632, num_hidden_layers=1,
                      num_attention_heads=16, num_key_value_heads=16, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)
elif not shape.endswith(".gguf"):
    sys.exit(f"unknown shape {shape} (smollm2, llama-block, FILE.gguf)")
torch.manual_seed(0)
if shape.endswith(".gguf"):
    path = os.path.abspath(shape)
    m = LlamaForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                         dtype=torch.bfloat16).to("cuda")
    cfg = m.config
    shape = "real weights of " + shape
else:
    m = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=8, target_modules="all-linear"))
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
b, t = int(argv[1]), int(argv[2])
x = torch.randint(0, cfg.vocab_size, (b, t), device="cuda")
fwd = torch.compile(m) if compiled else m
def step():
    loss = fwd(input_ids=x, labels=x).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
torch.cuda.synchronize(); t0 = time.perf_counter(); n = 10
for _ in range(n): step()
torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / n
print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
      f"attn {m.config._attn_implementation}{' torch.compile' if compiled else ' eager'}: LoRA r=8 step {b}x{t} ({shape}): {dt*1e3:.1f} ms, {b*t/dt:.0f} tok/s, "
      f"peak {torch.cuda.max_memory_allocated()/2**30:.2f} GiB")
