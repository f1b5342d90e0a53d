#!/usr/bin/env python3
"""Loads a GGUF LoRA adapter written by `wegeft convert` into llama.cpp (through
llama-cpp-python) on top of the tiny interop Llama, and compares llama.cpp's logits with the
logits Hugging Face + PEFT compute for the same PEFT adapter (tests/golden/interop/llama).

The base model is turned into GGUF here with llama.cpp's gguf package, q/k permuted as
llama.cpp's converter does.

  .venv-ref/bin/pip install gguf llama-cpp-python==0.3.2 diskcache
  .venv-ref/bin/python tools/reference/check_llamacpp_lora.py build/test/wegeft OUT_DIR
"""
import json
import os
import subprocess
import sys

import gguf
import numpy as np
from llama_cpp import Llama
from safetensors.numpy import load_file

from make_adapter_golden import OUT
from make_gguf_golden import gguf_name, permute

tool, out = sys.argv[1], sys.argv[2]
os.makedirs(out, exist_ok=True)
base_dir = os.path.join(OUT, "interop", "llama", "base")
cfg = json.load(open(os.path.join(base_dir, "config.json")))
weights = load_file(os.path.join(base_dir, "model.safetensors"))
base_gguf = os.path.join(out, "base.gguf")
w = gguf.GGUFWriter(base_gguf, "llama")
w.add_context_length(cfg["max_position_embeddings"])
w.add_embedding_length(cfg["hidden_size"])
w.add_block_count(cfg["num_hidden_layers"])
w.add_feed_forward_length(cfg["intermediate_size"])
w.add_head_count(cfg["num_attention_heads"])
w.add_head_count_kv(cfg["num_key_value_heads"])
w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
w.add_rope_freq_base(cfg.get("rope_theta", 10000.0))
w.add_tokenizer_model("llama")
w.add_token_list([f"<t{i}>" for i in range(cfg["vocab_size"])])
w.add_token_scores([0.0] * cfg["vocab_size"])
w.add_token_types([1] * cfg["vocab_size"])
w.add_bos_token_id(1)
w.add_eos_token_id(2)
for name, value in weights.items():
    g = gguf_name(name)
    if "attn_q" in g:
        value = permute(value, cfg["num_attention_heads"])
    if "attn_k" in g:
        value = permute(value, cfg["num_key_value_heads"])
    w.add_tensor(g, value.astype(np.float32))
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()

lora_gguf = os.path.join(out, "lora.gguf")
subprocess.run([tool, "convert", "--adapter", os.path.join(OUT, "interop", "llama", "lora"), "--base", base_dir,
                "--out", lora_gguf], check=True)

expected = {}
lines = open(os.path.join(OUT, "interop", "llama", "expected.txt")).read().split("\n")
for i, line in enumerate(lines):
    parts = line.split()
    if len(parts) == 3 and not line.startswith("#") and parts[1].isdigit():
        expected[parts[0]] = np.array([[float(v) for v in lines[i + 1 + r].split()] for r in range(int(parts[1]))])
ids = expected["input.input_ids"][0].astype(int).tolist()  # sequence 0 has no padding
want = expected["logits"][: len(ids)]

for label, lora in (("without the adapter", None), ("with the adapter", lora_gguf)):
    llm = Llama(model_path=base_gguf, lora_path=lora, logits_all=True, n_ctx=16, n_threads=1, verbose=False)
    llm.eval(ids)
    got = np.array(llm.scores[: len(ids)])
    err = np.abs(got - want).max() / max(1.0, np.abs(want).max())
    print(f"llama.cpp {label}: max relative difference from HF + PEFT logits {err:.3e}")
    if lora is not None:
        sys.exit(0 if err < 1e-3 else 1)
