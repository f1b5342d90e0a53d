#!/usr/bin/env python3
"""GGUF files of a tiny Llama model written with llama.cpp's own gguf package, in F32, F16, BF16,
Q8_0, Q4_0 and Q4_1 (tests/golden/gguf/):

  tiny-<type>.gguf   llama.* metadata, a tokenizer vocabulary, tensors under llama.cpp's names
                     with q/k rows permuted as llama.cpp's HF converter does
  expected.txt       the gguf package's own dequantization of two tensors per file, the inputs,
                     and the Hugging Face model's float64 logits (for the F32 file)

Run:  .venv-ref/bin/pip install gguf && .venv-ref/bin/python tools/reference/make_gguf_golden.py
"""
import os

import gguf
import numpy as np
import torch
import transformers

from make_adapter_golden import OUT, write
from make_model_golden import float64_rope, randomise, run

DIR = os.path.join(OUT, "gguf")
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}
TYPES = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
         "bf16": gguf.GGMLQuantizationType.BF16, "q8_0": gguf.GGMLQuantizationType.Q8_0,
         "q4_0": gguf.GGMLQuantizationType.Q4_0, "q4_1": gguf.GGMLQuantizationType.Q4_1}


def permute(w, n_head):
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf):
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    if hf == "lm_head.weight":
        return "output.weight"
    layer, rest = hf[len("model.layers."):].split(".", 1)
    return f"blk.{layer}.{NAMES[rest[:-len('.weight')]]}.weight"


def main():
    os.makedirs(DIR, exist_ok=True)
    cfg = transformers.LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16,
                                   rms_norm_eps=1e-5, tie_word_embeddings=False)
    model = float64_rope(transformers.LlamaForCausalLM(cfg))
    randomise(model, torch.Generator().manual_seed(500))
    state = {k: v.detach().to(torch.float32).numpy() for k, v in model.state_dict().items()}
    expected = open(os.path.join(DIR, "expected.txt"), "w")
    expected.write("# see tools/reference/make_gguf_golden.py\n")
    for label, qtype in TYPES.items():
        path = os.path.join(DIR, f"tiny-{label}.gguf")
        w = gguf.GGUFWriter(path, "llama")
        w.add_name("tiny-llama")
        w.add_context_length(16)
        w.add_embedding_length(32)
        w.add_block_count(2)
        w.add_feed_forward_length(64)
        w.add_head_count(4)
        w.add_head_count_kv(2)
        w.add_layer_norm_rms_eps(1e-5)
        w.add_rope_freq_base(10000.0)
        w.add_tokenizer_model("llama")
        w.add_token_list([f"tok{i}" for i in range(40)])
        w.add_token_scores([float(-i) for i in range(40)])
        w.add_token_types([1] * 40)
        for hf, value in state.items():
            name = gguf_name(hf)
            if "attn_q" in name:
                value = permute(value, 4)
            if "attn_k" in name:
                value = permute(value, 2)
            if value.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
                w.add_tensor(name, value.astype(np.float32))
                stored = value.astype(np.float32)
            else:
                data = gguf.quants.quantize(value.astype(np.float32), qtype)
                w.add_tensor(name, data, raw_dtype=qtype)
                stored = gguf.quants.dequantize(data, qtype).reshape(value.shape)
            if name in ("blk.0.attn_q.weight", "blk.1.ffn_down.weight"):
                write(expected, f"{label}.{name}", torch.from_numpy(stored.astype(np.float64)))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
    gen = torch.Generator().manual_seed(501)
    ids = torch.randint(0, 40, (2, 7), generator=gen)
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, -3:] = 0
    with torch.no_grad():
        logits, _ = run(model.to(torch.float64), "llama", {"input_ids": ids, "attention_mask": mask,
                                                           "labels": ids.masked_fill(mask == 0, -100)})
    write(expected, "input.input_ids", ids.to(torch.float64))
    write(expected, "input.attention_mask", mask.to(torch.float64))
    write(expected, "logits", logits.reshape(-1, 40))
    expected.close()


if __name__ == "__main__":
    main()
