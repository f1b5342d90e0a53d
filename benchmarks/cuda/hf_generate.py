#!/usr/bin/env python3
# usage: hf_generate.py PROMPT NEW [smollm2|FILE.gguf]
# (on the GPU machine: torch, transformers and peft; a .gguf file needs the gguf package too)
# The peer of benchmarks/cuda/decode.cpp: transformers' greedy generate() with its key/value
# cache (eager, bf16) on a PEFT LoRA r=8 (all linear, unmerged) model, PROMPT seeded random tokens
# then exactly NEW new ones (min_new_tokens = max_new_tokens, so no end-of-text token stops it).
# One warm-up run, then one timed; prints new tokens per second, the prompt's time included.
import os, sys, time, torch, transformers, peft
from transformers import LlamaConfig, LlamaForCausalLM
from peft import LoraConfig, get_peft_model
prompt, new = int(sys.argv[1]), int(sys.argv[2])
shape = sys.argv[3] if len(sys.argv) > 3 else "smollm2"
torch.manual_seed(0)
if shape.endswith(".gguf"):
    path = os.path.abspath(shape)
    m = LlamaForCausalLM.from_pretrained(os.path.dirname(path), gguf_file=os.path.basename(path),
                                         dtype=torch.bfloat16).to("cuda")
    shape = "real weights of " + shape
elif shape == "smollm2":
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rms_norm_eps=1e-5, rope_theta=100000.0, tie_word_embeddings=True)
    m = LlamaForCausalLM(cfg).to("cuda", torch.bfloat16)
else:
    sys.exit(f"unknown shape {shape} (smollm2, FILE.gguf)")
m = get_peft_model(m, LoraConfig(r=8, lora_alpha=8, target_modules="all-linear")).eval()
x = torch.randint(0, m.config.vocab_size, (1, prompt), device="cuda")
def run():
    with torch.no_grad():
        out = m.generate(input_ids=x, attention_mask=torch.ones_like(x), do_sample=False,
                         max_new_tokens=new, min_new_tokens=new, pad_token_id=0)
    torch.cuda.synchronize()
    return out
run()
t0 = time.perf_counter(); out = run(); dt = time.perf_counter() - t0
assert out.shape[1] == prompt + new, out.shape
print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
      f"on {torch.cuda.get_device_name()}: greedy generate, {shape}, LoRA r=8 unmerged, bf16, "
      f"{prompt} prompt + {new} new tokens: {dt*1e3:.1f} ms, {new/dt:.1f} new tokens/s")
