#!/usr/bin/python3
"""Golden tensors for the adapter tests, computed with PyTorch in float64.

LoRA follows Hugging Face PEFT's LoraLayer: y = base(x) + lora_B(lora_A(dropout(x))) * scaling,
scaling = alpha / r (alpha / sqrt(r) with rsLoRA). WeGeFT follows the authors' formulation of a
generated weight: W' = W + s (W Phi^T) Psi, y = linear(x, W', b), with (Phi, Psi) shared by a
group of layers whose d_out differs. Gradients come from autograd of loss = sum(y * G), so G is
dL/dy. Dropout is off (p = 0) in these cases.

Also writes an independent Python Philox4x32-10 stream and dropout mask for the RNG tests.

Run:  /usr/bin/python3 tools/reference/make_adapter_golden.py   (needs Debian's python3-torch)
Writes tests/golden/adapters.txt and tests/golden/rng.txt.
"""
import math
import os

import torch

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "golden")


def write(f, name, t):
    t = t.detach().to(torch.float64)
    if t.dim() == 1:
        t = t.reshape(1, -1)
    f.write(f"{name} {t.shape[0]} {t.shape[1]}\n")
    for row in t.tolist():
        f.write(" ".join(repr(float(v)) for v in row) + "\n")


def lora_case(f, name, gen, n, d_in, d_out, r, alpha, rslora, bias):
    base = torch.nn.Linear(d_in, d_out, bias=bias, dtype=torch.float64)
    lora_A = torch.nn.Linear(d_in, r, bias=False, dtype=torch.float64)
    lora_B = torch.nn.Linear(r, d_out, bias=False, dtype=torch.float64)
    with torch.no_grad():
        base.weight.copy_(torch.randn(d_out, d_in, generator=gen, dtype=torch.float64))
        if bias:
            base.bias.copy_(torch.randn(d_out, generator=gen, dtype=torch.float64))
        lora_A.weight.copy_(torch.randn(r, d_in, generator=gen, dtype=torch.float64))
        lora_B.weight.copy_(torch.randn(d_out, r, generator=gen, dtype=torch.float64))
    base.weight.requires_grad_(False)
    if bias:
        base.bias.requires_grad_(False)
    scaling = alpha / math.sqrt(r) if rslora else alpha / r
    x = torch.randn(n, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    g = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
    dropout = torch.nn.Identity()
    y = base(x) + lora_B(lora_A(dropout(x))) * scaling
    (y * g).sum().backward()
    write(f, f"{name}.config", f64([r, alpha, float(rslora), float(bias)]))
    write(f, f"{name}.W", base.weight)
    if bias:
        write(f, f"{name}.b", base.bias)
    write(f, f"{name}.A", lora_A.weight)
    write(f, f"{name}.B", lora_B.weight)
    write(f, f"{name}.x", x)
    write(f, f"{name}.dy", g)
    write(f, f"{name}.y", y)
    write(f, f"{name}.dx", x.grad)
    write(f, f"{name}.dA", lora_A.weight.grad)
    write(f, f"{name}.dB", lora_B.weight.grad)


def wegeft_case(f, name, gen, n, d_in, d_outs, r, alpha):
    phi = torch.randn(r, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    psi = torch.randn(r, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
    scaling = alpha / r
    write(f, f"{name}.config", f64([r, alpha, float(len(d_outs))]))
    write(f, f"{name}.phi", phi)
    write(f, f"{name}.psi", psi)
    for i, d_out in enumerate(d_outs):
        w = torch.randn(d_out, d_in, generator=gen, dtype=torch.float64)
        b = torch.randn(d_out, generator=gen, dtype=torch.float64)
        x = torch.randn(n, d_in, generator=gen, dtype=torch.float64, requires_grad=True)
        g = torch.randn(n, d_out, generator=gen, dtype=torch.float64)
        delta = scaling * (w @ phi.t()) @ psi
        y = torch.nn.functional.linear(x, w + delta, b)
        (y * g).sum().backward()
        for key, t in (("W", w), ("b", b), ("x", x), ("dy", g), ("y", y), ("dx", x.grad)):
            write(f, f"{name}.{i}.{key}", t)
    write(f, f"{name}.dphi", phi.grad)
    write(f, f"{name}.dpsi", psi.grad)


def f64(values):
    return torch.tensor(values, dtype=torch.float64)


MASK32 = 0xFFFFFFFF


def philox4x32_10(ctr, key):
    ctr = list(ctr)
    key = list(key)
    for _ in range(10):
        p0 = 0xD2511F53 * ctr[0]
        p1 = 0xCD9E8D57 * ctr[2]
        ctr = [((p1 >> 32) ^ ctr[1] ^ key[0]) & MASK32, p1 & MASK32,
               ((p0 >> 32) ^ ctr[3] ^ key[1]) & MASK32, p0 & MASK32]
        key = [(key[0] + 0x9E3779B9) & MASK32, (key[1] + 0xBB67AE85) & MASK32]
    return ctr


def rng_golden(f):
    # Random123's published known-answer vectors check this Python implementation first.
    assert philox4x32_10([0, 0, 0, 0], [0, 0]) == [0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8]
    assert philox4x32_10([MASK32] * 4, [MASK32] * 2) == [0x408F276D, 0x41C83B0E, 0xA20BC7C6,
                                                        0x6D5451FD]
    seed, stream = 0x0123456789ABCDEF, 7
    words = []
    for block in range(5):
        words += philox4x32_10([block & MASK32, block >> 32, stream & MASK32, stream >> 32],
                               [seed & MASK32, seed >> 32])
    write(f, "stream.seed_stream_words", f64([float(seed >> 32), float(seed & MASK32),
                                                       float(stream), float(len(words))]))
    write(f, "stream.words", f64([float(w) for w in words]))
    # uniform() takes two words (low first) and keeps the top 53 bits of the 64-bit value
    uniforms = []
    for i in range(0, len(words) - 1, 2):
        v = words[i] | (words[i + 1] << 32)
        uniforms.append((v >> 11) * 2.0 ** -53)
    write(f, "stream.uniform", f64(uniforms))
    # dropout mask: element i kept when word i of stream 0 under mask_seed >= p * 2^32
    mask_seed, p, n = 0xFEEDFACECAFEBEEF, 0.3, 37
    threshold = int(math.ldexp(p, 32))
    mask = []
    for i in range(n):
        block, k = divmod(i, 4)
        word = philox4x32_10([block & MASK32, block >> 32, 0, 0],
                             [mask_seed & MASK32, mask_seed >> 32])[k]
        mask.append(1.0 if word >= threshold else 0.0)
    write(f, "mask.seed_p", f64([float(mask_seed >> 32), float(mask_seed & MASK32), p]))
    write(f, "mask.keep", f64(mask))


def main():
    os.makedirs(OUT, exist_ok=True)
    gen = torch.Generator().manual_seed(20251126)
    with open(os.path.join(OUT, "adapters.txt"), "w") as f:
        f.write("# name rows cols, then the values row by row; see tools/reference/"
                "make_adapter_golden.py\n")
        lora_case(f, "lora_r1", gen, n=5, d_in=7, d_out=3, r=1, alpha=2.0, rslora=False, bias=True)
        lora_case(f, "lora_rslora", gen, n=9, d_in=12, d_out=17, r=4, alpha=16.0, rslora=True,
                  bias=True)
        lora_case(f, "lora_nobias", gen, n=3, d_in=16, d_out=8, r=8, alpha=8.0, rslora=False,
                  bias=False)
        wegeft_case(f, "wegeft_group", gen, n=7, d_in=11, d_outs=[11, 5, 19], r=3, alpha=6.0)
        wegeft_case(f, "wegeft_r1", gen, n=5, d_in=6, d_outs=[4], r=1, alpha=1.0)
        wegeft_case(f, "wegeft_wide", gen, n=2, d_in=13, d_outs=[9, 23], r=5, alpha=10.0)
    with open(os.path.join(OUT, "rng.txt"), "w") as f:
        f.write("# Philox4x32-10 stream and dropout mask from an independent Python implementation;"
                " see tools/reference/make_adapter_golden.py\n")
        rng_golden(f)


if __name__ == "__main__":
    main()
