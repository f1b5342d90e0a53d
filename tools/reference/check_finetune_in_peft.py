#!/usr/bin/env python3
"""Loads a LoRA classification adapter that `wegeft finetune` wrote into Hugging Face PEFT and
scores it there: the adapter's keys must load with none unexpected or missing, and PEFT's loss
and accuracy on the validation file (tokenized by Hugging Face `tokenizers` from MODEL_DIR's
tokenizer.json) must equal what `wegeft eval` printed.

Usage: python3 tools/reference/check_finetune_in_peft.py MODEL_DIR ADAPTER_DIR VALID_JSONL WEGEFT_EVAL_OUTPUT
"""
import json
import re
import sys

import peft
import tokenizers
import torch
import transformers
from peft.utils import load_peft_weights, set_peft_model_state_dict


def main():
    model_dir, adapter_dir, valid, ours_file = sys.argv[1:5]
    labels = json.load(open(f"{adapter_dir}/labels.json"))
    base = transformers.BertForSequenceClassification.from_pretrained(model_dir, num_labels=len(labels), torch_dtype=torch.float32)
    cfg = peft.LoraConfig.from_pretrained(adapter_dir)
    model = peft.get_peft_model(base, cfg)
    weights = load_peft_weights(adapter_dir)
    result = set_peft_model_state_dict(model, weights)
    missing = [k for k in result.missing_keys if "lora_" in k or "modules_to_save" in k]
    print(f"peft {peft.__version__}, transformers {transformers.__version__}: {len(weights)} tensors; "
          f"unexpected {list(result.unexpected_keys)}; missing adapter keys {missing}")
    assert not result.unexpected_keys and not missing
    print("adapted modules:", len({k.split('.lora_')[0] for k in weights if '.lora_' in k}), "pooler adapted:",
          any("pooler.dense.lora_A" in k for k in weights))
    model.eval()
    tok = tokenizers.Tokenizer.from_file(f"{model_dir}/tokenizer.json")
    tok.no_truncation()
    tok.enable_padding(pad_id=0, pad_token="[PAD]")
    rows = [json.loads(l) for l in open(valid) if l.strip()]
    enc = tok.encode_batch([r["text"] for r in rows])
    ids = torch.tensor([e.ids for e in enc])
    mask = torch.tensor([e.attention_mask for e in enc])
    print("ids", ids.tolist())
    y = torch.tensor([labels.index(str(r["label"])) for r in rows])
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits.double()
    loss = torch.nn.functional.cross_entropy(logits, y).item()
    acc = (logits.argmax(-1) == y).double().mean().item()
    ours = open(ours_file).read()
    m = re.search(r"loss ([0-9.]+), accuracy ([0-9.]+)", ours)
    print(f"PEFT: loss {loss:.6f}, accuracy {acc:.4f}; wegeft eval: loss {m.group(1)}, accuracy {m.group(2)}")
    assert abs(loss - float(m.group(1))) < 2e-5 and abs(acc - float(m.group(2))) < 5e-5  # as printed: 6 and 4 decimals
    print("OK: the wegeft finetune adapter loads in PEFT and scores the same")


if __name__ == "__main__":
    main()
