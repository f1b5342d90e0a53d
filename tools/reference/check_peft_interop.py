#!/usr/bin/env python3
"""Loads a LoRA adapter written by wegeft with PEFT's PeftModel.from_pretrained into the matching
tiny Hugging Face Llama model and compares its logits with the ones wegeft computed.

  WEGEFT_INTEROP_OUT=/tmp/interop build/test/tests/wegeft_tests "adapters written by wegeft*"
  .venv-ref/bin/python tools/reference/check_peft_interop.py /tmp/interop
"""
import os
import sys

import numpy as np
import peft
import torch
import transformers

from make_adapter_golden import OUT
from make_model_golden import batch, float64_rope

out = sys.argv[1]
adapter = os.path.join(out, "llama-lora")
base = transformers.LlamaForCausalLM.from_pretrained(os.path.join(OUT, "interop", "llama", "base"),
                                                     torch_dtype=torch.float64)
float64_rope(base)
model = peft.PeftModel.from_pretrained(base, adapter).to(torch.float64)
print("PEFT", peft.__version__, "loaded", adapter, "with", sum(1 for n, _ in model.named_parameters() if "lora_" in n),
      "LoRA tensors")
# The inputs wegeft used: the interop golden's input ids and mask.
lines = open(os.path.join(OUT, "interop", "llama", "expected.txt")).read().split("\n")
values = {}
for i, line in enumerate(lines):
    if line and not line.startswith("#") and len(line.split()) == 3 and line.split()[1].isdigit():
        name, rows, cols = line.split()
        values[name] = np.array([[float(v) for v in lines[i + 1 + r].split()] for r in range(int(rows))])
ids = torch.tensor(values["input.input_ids"], dtype=torch.long)
mask = torch.tensor(values["input.attention_mask"], dtype=torch.long)
with torch.no_grad():
    hidden = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    logits = model.get_output_embeddings()(hidden).reshape(-1, base.config.vocab_size)
rows, cols = map(int, open(os.path.join(adapter, "wegeft_logits.txt")).readline().split())
ours = np.loadtxt(os.path.join(adapter, "wegeft_logits.txt"), skiprows=1).reshape(rows, cols)
err = np.abs(logits.numpy() - ours).max() / max(1.0, np.abs(ours).max())
print(f"max relative difference between PEFT's and wegeft's logits: {err:.3e}")
sys.exit(0 if err < 1e-6 else 1)
