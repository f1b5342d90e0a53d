#!/usr/bin/env python3
# usage: peft_bert_step.py BATCH TOKENS [minilm|bert-base|vit-base] [--compile]
# (on the GPU machine: torch, transformers and peft)
# PyTorch eager + PEFT LoRA r=8 (all linear, BERT's pooler included; the new 4-label classifier in
# modules_to_save) training step of a BertForSequenceClassification (or ViTForImageClassification),
# bf16, AdamW, clipping at 1; prints tokens/s and peak memory. Shapes as
# benchmarks/cuda/classifier_step.cpp's (random weights): all-MiniLM-L6-v2's (6 x 384, 12 heads,
# MLP 1536), BERT-base's (12 x 768, 12 heads, MLP 3072) or ViT-B/16's (BERT-base's blocks over
# 224 x 224 images in patches of 16: 197 tokens; TOKENS is not read). Token ids (images: uniform
# noise) and labels are seeded random draws; no padding.
# --compile runs the model under torch.compile (its default mode; the warm-up steps compile).
import sys, time, torch, transformers, peft
from transformers import BertConfig, BertForSequenceClassification, ViTConfig, ViTForImageClassification
from peft import LoraConfig, get_peft_model
compiled = "--compile" in sys.argv
argv = [a for a in sys.argv if a != "--compile"]
shape = argv[3] if len(argv) > 3 else "minilm"
if shape not in ("minilm", "bert-base", "vit-base"):
    sys.exit(f"unknown shape {shape} (minilm, bert-base, vit-base)")
base, vit = shape != "minilm", shape == "vit-base"
sizes = dict(hidden_size=768 if base else 384, num_hidden_layers=12 if base else 6,
             num_attention_heads=12, intermediate_size=3072 if base else 1536, num_labels=4,
             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
torch.manual_seed(0)
b, t = int(argv[1]), int(argv[2])
if vit:
    cfg = ViTConfig(image_size=224, patch_size=16, num_channels=3, **sizes)
    m = ViTForImageClassification(cfg).to("cuda", torch.bfloat16)
    # every linear of the blocks by its full name (the new head is trained whole)
    blocks = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Linear) and n != "classifier"]
    lora = LoraConfig(r=8, lora_alpha=8, modules_to_save=["classifier"], target_modules=blocks)
    t = (224 // 16) ** 2 + 1
    inputs = dict(pixel_values=(torch.rand(b, 3, 224, 224, device="cuda") * 2 - 1).to(torch.bfloat16))
else:
    cfg = BertConfig(vocab_size=30522, max_position_embeddings=512, **sizes)
    m = BertForSequenceClassification(cfg).to("cuda", torch.bfloat16)
    lora = LoraConfig(r=8, lora_alpha=8, target_modules="all-linear", task_type="SEQ_CLS")
    inputs = dict(input_ids=torch.randint(0, cfg.vocab_size, (b, t), device="cuda"))
m = get_peft_model(m, lora)
params = [p for p in m.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=1e-4)
y = torch.randint(0, 4, (b,), device="cuda")
fwd = torch.compile(m) if compiled else m
def step():
    loss = fwd(**inputs, labels=y).loss
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step(); opt.zero_grad(set_to_none=True)
for _ in range(3): step()
torch.cuda.synchronize(); t0 = time.perf_counter(); n = 10
for _ in range(n): step()
torch.cuda.synchronize(); dt = (time.perf_counter() - t0) / n
print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__} "
      f"attn {m.config._attn_implementation}{' torch.compile' if compiled else ' eager'}: LoRA r=8 "
      f"classifier step {b}x{t} ({shape} shape): {dt*1e3:.2f} ms, {b*t/dt:.0f} tok/s, "
      f"peak {torch.cuda.max_memory_allocated()/2**30:.2f} GiB")
