#!/usr/bin/env python3
"""Hugging Face checkpoints and PEFT LoRA adapter directories written by transformers and PEFT
themselves, for the loaders' tests (tests/golden/interop/<family>/):

  base/    config.json + model.safetensors (float32, save_pretrained)
  lora/    adapter_config.json + adapter_model.safetensors (PEFT save_pretrained), exercising
           rank_pattern, alpha_pattern, rsLoRA, layers_to_transform, fan_in_fan_out and
           modules_to_save
  expected.txt   the inputs and the logits of base + adapter, computed in float64 from the
                 stored float32 weights

Also bert_bare/: a BertModel checkpoint without the "bert." prefix (as sentence-transformers
saves MiniLM).

Run:  .venv-ref/bin/python tools/reference/make_interop_golden.py
"""
import os

import peft
import torch

from make_adapter_golden import OUT, write
from make_model_golden import batch, float64_rope, make_model, randomise, run

DIR = os.path.join(OUT, "interop")

LORA = {
    "bert": dict(r=2, lora_alpha=4, target_modules=["query", "value"], rank_pattern={"value": 3},
                 modules_to_save=["classifier"]),
    "gpt2": dict(r=2, lora_alpha=8, target_modules=["c_attn", "mlp.c_proj"], fan_in_fan_out=True),
    "llama": dict(r=4, lora_alpha=8, use_rslora=True, alpha_pattern={"down_proj": 2.0},
                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
                  layers_to_transform=[1]),
    "vit": dict(r=2, lora_alpha=2, target_modules=["query", "value"], modules_to_save=["classifier"]),
}


def main():
    for i, family in enumerate(LORA):
        gen = torch.Generator().manual_seed(300 + i)
        out = os.path.join(DIR, family)
        model = make_model(family)
        randomise(model, gen)
        model.to(torch.float32).save_pretrained(os.path.join(out, "base"), safe_serialization=True)
        peft_model = peft.get_peft_model(model, peft.LoraConfig(lora_dropout=0.0, **LORA[family]))
        with torch.no_grad():
            for name, p in peft_model.named_parameters():
                if "lora_" in name or "modules_to_save" in name:
                    p.copy_(0.3 * (2 * torch.rand(p.shape, generator=gen, dtype=torch.float64) - 1))
        peft_model.save_pretrained(os.path.join(out, "lora"), safe_serialization=True)
        os.remove(os.path.join(out, "lora", "README.md"))
        # Expected output: reload both directories as a user would, compute in float64.
        base = type(model).from_pretrained(os.path.join(out, "base"), torch_dtype=torch.float64)
        if family == "llama":
            float64_rope(base)
        final = peft.PeftModel.from_pretrained(base, os.path.join(out, "lora")).to(torch.float64)
        inputs = batch(family, gen)
        with torch.no_grad():
            logits, loss = run(final, family, inputs)
        with open(os.path.join(out, "expected.txt"), "w") as f:
            f.write(f"# {family}: base + PEFT LoRA, float64 from float32 files; see tools/reference/make_interop_golden.py\n")
            for key, t in inputs.items():
                write(f, "input." + key, t.reshape(t.shape[0], -1).to(torch.float64))
            write(f, "logits", logits.reshape(-1, logits.shape[-1]))
            write(f, "loss", loss.reshape(1))
    bare = make_model("bert").bert
    randomise(bare, torch.Generator().manual_seed(400))
    bare.to(torch.float32).save_pretrained(os.path.join(DIR, "bert_bare"), safe_serialization=True)


if __name__ == "__main__":
    main()
