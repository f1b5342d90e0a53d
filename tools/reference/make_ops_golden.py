#!/usr/bin/python3
"""Golden tensors for the transformer ops, computed with PyTorch in float64.

Each op is written the way PyTorch / Hugging Face transformers compute it (F.layer_norm, Llama's
RMSNorm, F.gelu, F.silu, Llama's rotate_half RoPE, eager attention with repeat_kv and an additive
mask, F.cross_entropy with ignore_index, Conv2d patch embedding). Gradients come from autograd of
sum(out * dout), so dout is dL/dout.

Run:  /usr/bin/python3 tools/reference/make_ops_golden.py   (needs Debian's python3-torch)
Writes tests/golden/ops.txt.
"""
import math
import os

import torch
import torch.nn.functional as F

from make_adapter_golden import OUT, f64, write

D = torch.float64


def randn(gen, *shape, grad=False):
    return torch.randn(*shape, generator=gen, dtype=D, requires_grad=grad)


def layernorm(f, gen):
    x, w, b = randn(gen, 5, 7, grad=True), randn(gen, 7, grad=True), randn(gen, 7, grad=True)
    g = randn(gen, 5, 7)
    out = F.layer_norm(x, (7,), w, b, eps=1e-5)
    (out * g).sum().backward()
    for k, t in (("x", x), ("w", w), ("b", b), ("dout", g), ("out", out), ("dx", x.grad),
                 ("dw", w.grad), ("db", b.grad)):
        write(f, "layernorm." + k, t)


def rmsnorm(f, gen):
    x, w = randn(gen, 4, 6, grad=True), randn(gen, 6, grad=True)
    g = randn(gen, 4, 6)
    variance = x.pow(2).mean(-1, keepdim=True)
    out = w * (x * torch.rsqrt(variance + 1e-6))
    (out * g).sum().backward()
    for k, t in (("x", x), ("w", w), ("dout", g), ("out", out), ("dx", x.grad), ("dw", w.grad)):
        write(f, "rmsnorm." + k, t)


def activations(f, gen):
    for kind, approx in (("gelu_erf", "none"), ("gelu_tanh", "tanh")):
        x, g = randn(gen, 3, 11, grad=True), randn(gen, 3, 11)
        x.data *= 3
        out = F.gelu(x, approximate=approx)
        (out * g).sum().backward()
        for k, t in (("x", x), ("dout", g), ("out", out), ("dx", x.grad)):
            write(f, f"{kind}.{k}", t)
    gate, up, g = randn(gen, 4, 5, grad=True), randn(gen, 4, 5, grad=True), randn(gen, 4, 5)
    out = F.silu(gate) * up
    (out * g).sum().backward()
    for k, t in (("gate", gate), ("up", up), ("dout", g), ("out", out), ("dgate", gate.grad),
                 ("dup", up.grad)):
        write(f, "swiglu." + k, t)


def rope(f, gen):
    batch, seq, heads, hd, theta = 2, 5, 3, 8, 10000.0
    x, g = randn(gen, batch * seq, heads * hd, grad=True), randn(gen, batch * seq, heads * hd)
    inv_freq = 1.0 / (theta ** (torch.arange(0, hd, 2, dtype=D) / hd))
    freqs = torch.outer(torch.arange(seq, dtype=D), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    cos, sin = emb.cos()[None, :, None, :], emb.sin()[None, :, None, :]  # [1, T, 1, hd]
    xv = x.view(batch, seq, heads, hd)

    def rotate_half(t):
        return torch.cat((-t[..., hd // 2:], t[..., : hd // 2]), dim=-1)

    out = (xv * cos + rotate_half(xv) * sin).reshape(batch * seq, heads * hd)
    (out * g).sum().backward()
    write(f, "rope.config", f64([batch, seq, heads, hd, theta]))
    for k, t in (("x", x), ("dout", g), ("out", out), ("dx", x.grad)):
        write(f, "rope." + k, t)


def attention(f, gen, name, batch, seq, heads, kv_heads, hd, causal, lengths):
    q = randn(gen, batch * seq, heads * hd, grad=True)
    k = randn(gen, batch * seq, kv_heads * hd, grad=True)
    v = randn(gen, batch * seq, kv_heads * hd, grad=True)
    g = randn(gen, batch * seq, heads * hd)
    qh = q.view(batch, seq, heads, hd).transpose(1, 2)
    kh = k.view(batch, seq, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    vh = v.view(batch, seq, kv_heads, hd).transpose(1, 2).repeat_interleave(heads // kv_heads, 1)
    key_mask = torch.zeros(batch, seq, dtype=D)
    for b, n in enumerate(lengths):
        key_mask[b, :n] = 1
    additive = torch.zeros(batch, 1, seq, seq, dtype=D)
    additive = additive.masked_fill(key_mask[:, None, None, :] == 0, float("-inf"))
    if causal:
        additive = additive.masked_fill(torch.ones(seq, seq).triu(1).bool(), float("-inf"))
    scores = qh @ kh.transpose(-1, -2) / math.sqrt(hd) + additive
    out = (scores.softmax(-1) @ vh).transpose(1, 2).reshape(batch * seq, heads * hd)
    (out * g).sum().backward()
    write(f, f"{name}.config", f64([batch, seq, heads, kv_heads, hd, float(causal)]))
    write(f, f"{name}.key_mask", key_mask)
    for key, t in (("q", q), ("k", k), ("v", v), ("dout", g), ("out", out), ("dq", q.grad),
                   ("dk", k.grad), ("dv", v.grad)):
        write(f, f"{name}.{key}", t)


def cross_entropy(f, gen):
    logits = randn(gen, 6, 9, grad=True)
    targets = torch.tensor([3, -100, 0, 8, 5, -100])
    loss = F.cross_entropy(logits, targets, ignore_index=-100)
    loss.backward()
    write(f, "ce.logits", logits)
    write(f, "ce.targets", targets.to(D))
    write(f, "ce.loss", loss.reshape(1))
    write(f, "ce.dlogits", logits.grad)


def patch_embedding(f, gen):
    conv = torch.nn.Conv2d(3, 5, kernel_size=4, stride=4, dtype=D)
    with torch.no_grad():
        conv.weight.copy_(randn(gen, 5, 3, 4, 4))
        conv.bias.copy_(randn(gen, 5))
    images = randn(gen, 2, 3, 8, 12)
    out = conv(images).flatten(2).transpose(1, 2).reshape(-1, 5)  # [B * P, d], row-major patches
    write(f, "patch.images", images.reshape(2, -1))
    write(f, "patch.weight", conv.weight.reshape(5, -1))
    write(f, "patch.bias", conv.bias)
    write(f, "patch.out", out)


def main():
    gen = torch.Generator().manual_seed(7)
    with open(os.path.join(OUT, "ops.txt"), "w") as f:
        f.write("# name rows cols, then the values row by row; see tools/reference/make_ops_golden.py\n")
        layernorm(f, gen)
        rmsnorm(f, gen)
        activations(f, gen)
        rope(f, gen)
        attention(f, gen, "attn_causal_gqa", 2, 5, 4, 2, 3, True, [5, 3])
        attention(f, gen, "attn_bidir_pad", 2, 6, 3, 3, 4, False, [4, 6])
        attention(f, gen, "attn_mqa", 1, 7, 4, 1, 2, True, [7])
        cross_entropy(f, gen)
        patch_embedding(f, gen)


if __name__ == "__main__":
    main()
