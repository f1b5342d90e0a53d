#!/usr/bin/env python3
"""A PEFT LoRA adapter with target_modules="all-linear" on the bert interop base (a
BertForSequenceClassification), as PEFT itself writes it: PEFT adapts every nn.Linear except the
output layer, so bert.pooler.dense too, and (task_type SEQ_CLS) lists ["classifier", "score"] in
modules_to_save although only the classifier exists.

Writes tests/golden/interop/bert/lora_all_linear/ and lora_all_linear_expected.txt (inputs and the
logits of base + adapter, float64 from the float32 files).

Run (needs torch, transformers and peft):  python3 tools/reference/make_all_linear_golden.py [OUT_ROOT]
"""
import os
import sys

import peft
import torch
import transformers

from make_adapter_golden import OUT
from make_dora_golden import save_and_score


def main():
    root = os.path.join(OUT, "interop", "bert")
    dest = sys.argv[1] if len(sys.argv) > 1 else root
    gen = torch.Generator().manual_seed(900)
    base = transformers.BertForSequenceClassification.from_pretrained(os.path.join(root, "base"), torch_dtype=torch.float32)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules="all-linear", task_type="SEQ_CLS", lora_dropout=0.0)
    model = peft.get_peft_model(base, cfg)
    adapted = sorted({n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n})
    print("adapted:", adapted)
    assert any("pooler.dense" in n for n in adapted), "PEFT did not adapt the pooler"
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
    save_and_score(model, dest, "lora_all_linear", "lora_all_linear_expected.txt", gen,
                   f"# bert: base + PEFT LoRA all-linear (peft {peft.__version__}), float64 from float32 files; "
                   "see tools/reference/make_all_linear_golden.py\n")


if __name__ == "__main__":
    main()
