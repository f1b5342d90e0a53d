#!/usr/bin/env python3
"""DoRA golden data from Hugging Face PEFT itself (LoraConfig(use_dora=True)), in float64.

Layer cases (tests/golden/dora.txt): a torch.nn.Linear wrapped by peft.get_peft_model with
use_dora=True; lora_A, lora_B and the magnitude vector set to random values; y, and the
gradients of loss = sum(y * G) with respect to x, lora_A, lora_B and the magnitude, from autograd
through PEFT's own forward (which treats the norm ||W + s B A|| as a constant, as the DoRA paper's
section 4.3 does); the initial magnitude PEFT computes; and the weight of merge_and_unload().

Interop directory (tests/golden/interop/bert/dora/): PEFT save_pretrained of a DoRA adapter on the
bert interop base (query and value, rank_pattern, the classifier in modules_to_save) and
expected.txt with its logits, computed in float64 from the stored float32 files.

Run (needs torch, transformers and peft):  python3 tools/reference/make_dora_golden.py
"""
import math
import os

import peft
import torch
import transformers

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden")
D = torch.float64


def write(f, name, t):
    t = t.detach().to(D)
    if t.dim() == 1:
        t = t.reshape(1, -1)
    f.write(f"{name} {t.shape[0]} {t.shape[1]}\n")
    for row in t.tolist():
        f.write(" ".join(repr(float(v)) for v in row) + "\n")


class Net(torch.nn.Module):
    def __init__(self, d_in, d_out, bias):
        super().__init__()
        self.lin = torch.nn.Linear(d_in, d_out, bias=bias, dtype=D)

    def forward(self, x):
        return self.lin(x)


def layer_case(f, name, gen, n, d_in, d_out, r, alpha, rslora, bias):
    net = Net(d_in, d_out, bias)
    with torch.no_grad():
        net.lin.weight.copy_(torch.randn(d_out, d_in, generator=gen, dtype=D))
        if bias:
            net.lin.bias.copy_(torch.randn(d_out, generator=gen, dtype=D))
    w = net.lin.weight.detach().clone()
    b = net.lin.bias.detach().clone() if bias else None
    cfg = peft.LoraConfig(r=r, lora_alpha=alpha, use_rslora=rslora, lora_dropout=0.0, target_modules=["lin"],
                          use_dora=True)
    model = peft.get_peft_model(net, cfg).to(D)
    layer = model.base_model.model.lin
    mag = layer.lora_magnitude_vector["default"]
    mag_param = mag.weight if hasattr(mag, "weight") else mag
    m_init = mag_param.detach().clone()
    lora_A = layer.lora_A["default"].weight
    lora_B = layer.lora_B["default"].weight
    with torch.no_grad():
        lora_A.copy_(torch.randn(r, d_in, generator=gen, dtype=D))
        lora_B.copy_(torch.randn(d_out, r, generator=gen, dtype=D))
        mag_param.copy_(m_init * (1 + 0.5 * (2 * torch.rand(d_out, generator=gen, dtype=D) - 1)))
    x = torch.randn(n, d_in, generator=gen, dtype=D, requires_grad=True)
    g = torch.randn(n, d_out, generator=gen, dtype=D)
    model.train()
    y = model(x)
    (y * g).sum().backward()
    write(f, f"{name}.config", torch.tensor([r, alpha, float(rslora), float(bias)], dtype=D))
    write(f, f"{name}.W", w)
    if bias:
        write(f, f"{name}.b", b)
    write(f, f"{name}.m_init", m_init)
    write(f, f"{name}.A", lora_A)
    write(f, f"{name}.B", lora_B)
    write(f, f"{name}.m", mag_param)
    write(f, f"{name}.x", x)
    write(f, f"{name}.dy", g)
    write(f, f"{name}.y", y)
    write(f, f"{name}.dx", x.grad)
    write(f, f"{name}.dA", lora_A.grad)
    write(f, f"{name}.dB", lora_B.grad)
    write(f, f"{name}.dm", mag_param.grad)
    merged = model.merge_and_unload()
    write(f, f"{name}.W_merged", merged.lin.weight)


def layers():
    gen = torch.Generator().manual_seed(2024)
    with open(os.path.join(OUT, "dora.txt"), "w") as f:
        f.write(f"# DoRA through peft {peft.__version__} (torch {torch.__version__}); see tools/reference/make_dora_golden.py\n")
        layer_case(f, "dora_bias", gen, n=7, d_in=13, d_out=11, r=3, alpha=6.0, rslora=False, bias=True)
        layer_case(f, "dora_rs", gen, n=5, d_in=9, d_out=14, r=4, alpha=3.0, rslora=True, bias=False)


def interop():
    gen = torch.Generator().manual_seed(700)
    root = os.path.join(OUT, "interop", "bert")
    base = transformers.BertForSequenceClassification.from_pretrained(os.path.join(root, "base"), torch_dtype=torch.float32)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["query", "value"], rank_pattern={"value": 3},
                          modules_to_save=["classifier"], lora_dropout=0.0, use_dora=True)
    model = peft.get_peft_model(base, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_magnitude_vector" in name:
                p.mul_(1 + 0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
            elif "lora_" in name or "modules_to_save" in name:
                p.copy_(0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
    save_and_score(model, root, "dora", "dora_expected.txt", gen,
                   f"# bert: base + PEFT DoRA (peft {peft.__version__}), float64 from float32 files; "
                   "see tools/reference/make_dora_golden.py\n")


def save_and_score(model, root, name, expected, gen, header):
    """Saves the PEFT model to root/name, reloads it on the float64 base as a user would, and writes
    two padded input rows and their logits to root/expected."""
    out = os.path.join(root, name)
    model.save_pretrained(out, safe_serialization=True)
    readme = os.path.join(out, "README.md")
    if os.path.exists(readme):
        os.remove(readme)
    fresh = transformers.BertForSequenceClassification.from_pretrained(os.path.join(OUT, "interop", "bert", "base"), torch_dtype=D)
    final = peft.PeftModel.from_pretrained(fresh, out).to(D)
    final.eval()
    ids = torch.randint(0, 11, (2, 6), generator=gen)
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[1, -2:] = 0
    with torch.no_grad():
        logits = final(input_ids=ids, attention_mask=mask).logits
    with open(os.path.join(root, expected), "w") as f:
        f.write(header)
        write(f, "input.input_ids", ids.to(D))
        write(f, "input.attention_mask", mask.to(D))
        write(f, "logits", logits)


if __name__ == "__main__":
    layers()
    interop()
