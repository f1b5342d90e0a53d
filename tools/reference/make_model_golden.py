#!/usr/bin/env python3
"""Whole-model golden files from Hugging Face transformers and PEFT, in float64.

For each family (bert, gpt2, llama, vit) a tiny randomly initialised Hugging Face model
(BertForSequenceClassification, GPT2LMHeadModel, LlamaForCausalLM, ViTForImageClassification)
runs one batch, and autograd gives the gradients of its loss with respect to
  - LoRA parameters on every linear of every block, attached with PEFT's LoraConfig
    (plus the new classification head for bert and vit, as PEFT's modules_to_save);
  - WeGeFT generators shared per module role across depth, implemented here by replacing each
    targeted linear's weight with the generated W + s (W Phi^T) Psi.
The files hold every base tensor under its Hugging Face name (GPT-2's Conv1D weights transposed
to [out, in], conv and class-token tensors flattened to 2-D), the inputs, the logits, the loss and
every gradient.

Only float32 shortcuts are removed so the comparison can be made at float64 precision: Llama's
RMSNorm and attention softmax upcast to float32, its RoPE cache is built in float32 and its
logits are cast to float32; here they stay in float64 (the logits and the shifted loss are taken
from the final hidden state with the model's own lm_head).

Run:  python3 -m venv --system-site-packages .venv-ref
      .venv-ref/bin/pip install -r tools/reference/requirements-models.txt
      .venv-ref/bin/python tools/reference/make_model_golden.py
Writes tests/golden/model_<family>.txt.
"""
import os

import torch
import torch.nn.functional as F

from make_adapter_golden import OUT, f64, write

torch.set_default_dtype(torch.float64)
import transformers  # noqa: E402
from transformers.models.llama import modeling_llama  # noqa: E402
import peft  # noqa: E402

D = torch.float64
BATCH, SEQ = 2, 6
LORA_R, LORA_ALPHA, WEGEFT_R, WEGEFT_ALPHA = 2, 4.0, 2, 4.0

_softmax = F.softmax
torch.nn.functional.softmax = lambda x, dim=None, dtype=None, **kw: _softmax(x, dim=dim)


def rmsnorm_float64(self, hidden_states):
    variance = hidden_states.pow(2).mean(-1, keepdim=True)
    return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))


modeling_llama.LlamaRMSNorm.forward = rmsnorm_float64

ROLES = {
    "bert": {"attention.self.query": "q", "attention.self.key": "k", "attention.self.value": "v",
             "attention.output.dense": "o", "intermediate.dense": "up", "output.dense": "down"},
    "vit": {"attention.attention.query": "q", "attention.attention.key": "k",
            "attention.attention.value": "v", "attention.output.dense": "o",
            "intermediate.dense": "up", "output.dense": "down"},
    "gpt2": {"attn.c_attn": "qkv", "attn.c_proj": "o", "mlp.c_fc": "up", "mlp.c_proj": "down"},
    "llama": {"self_attn.q_proj": "q", "self_attn.k_proj": "k", "self_attn.v_proj": "v",
              "self_attn.o_proj": "o", "mlp.gate_proj": "gate", "mlp.up_proj": "up",
              "mlp.down_proj": "down"},
}
BLOCK = {"bert": "bert.encoder.layer.", "vit": "vit.encoder.layer.", "gpt2": "transformer.h.",
         "llama": "model.layers."}
CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


def make_model(family):
    common = dict(hidden_size=12, num_hidden_layers=2, num_attention_heads=3, intermediate_size=20,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if family == "bert":
        cfg = transformers.BertConfig(vocab_size=11, max_position_embeddings=16, num_labels=3, **common)
        return transformers.BertForSequenceClassification(cfg)
    if family == "vit":
        cfg = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, num_labels=3, **common)
        return transformers.ViTForImageClassification(cfg)
    if family == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=11, n_positions=16, n_embd=12, n_layer=2, n_head=3,
                                      n_inner=20, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        return transformers.GPT2LMHeadModel(cfg)
    cfg = transformers.LlamaConfig(vocab_size=11, hidden_size=16, intermediate_size=20,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=16, rms_norm_eps=1e-6,
                                   tie_word_embeddings=False)
    return float64_rope(transformers.LlamaForCausalLM(cfg))


def float64_rope(model):
    """Rebuilds a Llama model's RoPE caches in float64 (Hugging Face builds them in float32)."""
    for layer in model.model.layers:
        rot = layer.self_attn.rotary_emb
        rot.inv_freq = 1.0 / (rot.base ** (torch.arange(0, rot.dim, 2, dtype=D) / rot.dim))
        rot._set_cos_sin_cache(seq_len=16, device=rot.inv_freq.device, dtype=D)
    return model


def randomise(model, gen):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("norm" in name.lower() or "ln_" in name) and name.endswith("weight"):
                p.copy_(1 + 0.1 * (2 * torch.rand(p.shape, generator=gen) - 1))
            elif name.endswith("bias"):
                p.copy_(0.05 * (2 * torch.rand(p.shape, generator=gen) - 1))
            else:
                p.copy_(0.2 * (2 * torch.rand(p.shape, generator=gen) - 1))


def base_tensors(model, family):
    out = {}
    for name, p in model.named_parameters():
        if name.startswith("classifier."):
            continue  # the new head is trainable: its values come with each run
        t = p.detach()
        if family == "gpt2" and name.endswith(".weight") and any(c in name for c in CONV1D):
            t = t.t()
        out[name] = t.reshape(t.shape[0], -1) if t.dim() > 2 else (t if t.dim() == 2 else t.reshape(1, -1))
        if family == "vit" and name.endswith(("cls_token", "position_embeddings")):
            out[name] = t.reshape(-1, t.shape[-1])
    return out


def batch(family, gen):
    ids = torch.randint(0, 11, (BATCH, SEQ), generator=gen)
    mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    mask[1, -2:] = 0
    if family == "vit":
        return {"pixel_values": 2 * torch.rand(BATCH, 3, 8, 8, generator=gen) - 1,
                "labels": torch.tensor([1, 2])}
    if family == "bert":
        return {"input_ids": ids, "attention_mask": mask, "labels": torch.tensor([1, 2])}
    labels = ids.masked_fill(mask == 0, -100)
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def run(model, family, inputs):
    """(logits, loss) with Hugging Face's loss; llama's without its float32 cast of the logits."""
    if family != "llama":
        out = model(**inputs)
        return out.logits, out.loss
    args = {k: v for k, v in inputs.items() if k != "labels"}
    hidden = model(**args, output_hidden_states=True).hidden_states[-1]
    logits = model.get_output_embeddings()(hidden)
    labels = inputs["labels"]
    loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1))
    return logits, loss


def write_inputs(f, inputs):
    for key, t in inputs.items():
        write(f, "input." + key, t.reshape(t.shape[0], -1).to(D))


def lora_run(f, family, base_state, inputs, gen):
    model = make_model(family)
    model.load_state_dict(base_state)
    targets = list(ROLES[family])
    cfg = peft.LoraConfig(r=LORA_R, lora_alpha=LORA_ALPHA, lora_dropout=0.0, target_modules=targets,
                          fan_in_fan_out=family == "gpt2",
                          modules_to_save=["classifier"] if family in ("bert", "vit") else None)
    model = peft.get_peft_model(model, cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(0.3 * (2 * torch.rand(p.shape, generator=gen) - 1))
    logits, loss = run(model, family, inputs)
    loss.backward()
    write(f, "lora.logits", logits.reshape(-1, logits.shape[-1]))
    write(f, "lora.loss", loss.reshape(1))
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        short = name.replace("base_model.model.", "").replace(".default", "")
        short = short.replace("classifier.modules_to_save.", "classifier.")
        write(f, "lora.value." + short, p.reshape(p.shape[0], -1) if p.dim() > 1 else p.reshape(1, -1))
        write(f, "lora.grad." + short, p.grad.reshape(p.shape[0], -1) if p.dim() > 1 else p.grad.reshape(1, -1))


def wegeft_run(f, family, base_state, inputs, gen):
    model = make_model(family)
    model.load_state_dict(base_state)
    for p in model.parameters():
        p.requires_grad_(False)
    if family in ("bert", "vit"):
        model.classifier.weight.requires_grad_(True)
        model.classifier.bias.requires_grad_(True)
    scale = WEGEFT_ALPHA / WEGEFT_R
    generators = {}
    for name, module in model.named_modules():
        suffix = next((s for s in ROLES[family] if name.endswith(s) and name.startswith(BLOCK[family])), None)
        if suffix is None:
            continue
        role = ROLES[family][suffix]
        conv1d = family == "gpt2"
        d_in = module.weight.shape[0] if conv1d else module.weight.shape[1]
        if role not in generators:
            phi = (0.3 * (2 * torch.rand(WEGEFT_R, d_in, generator=gen) - 1)).requires_grad_(True)
            psi = (0.3 * (2 * torch.rand(WEGEFT_R, d_in, generator=gen) - 1)).requires_grad_(True)
            generators[role] = (name, phi, psi)
        _, phi, psi = generators[role]

        def forward(x, module=module, phi=phi, psi=psi, conv1d=conv1d):
            w = module.weight.t() if conv1d else module.weight
            return F.linear(x, w + scale * (w @ phi.t()) @ psi, module.bias)

        module.forward = forward
    logits, loss = run(model, family, inputs)
    loss.backward()
    write(f, "wegeft.logits", logits.reshape(-1, logits.shape[-1]))
    write(f, "wegeft.loss", loss.reshape(1))
    for role, (owner, phi, psi) in generators.items():
        write(f, f"wegeft.value.{owner}.wegeft_phi.weight", phi)
        write(f, f"wegeft.value.{owner}.wegeft_psi.weight", psi)
        write(f, f"wegeft.grad.{owner}.wegeft_phi.weight", phi.grad)
        write(f, f"wegeft.grad.{owner}.wegeft_psi.weight", psi.grad)
    if family in ("bert", "vit"):
        write(f, "wegeft.value.classifier.weight", model.classifier.weight)
        write(f, "wegeft.value.classifier.bias", model.classifier.bias.reshape(1, -1))
        write(f, "wegeft.grad.classifier.weight", model.classifier.weight.grad)
        write(f, "wegeft.grad.classifier.bias", model.classifier.bias.grad.reshape(1, -1))


def main():
    for i, family in enumerate(("bert", "gpt2", "llama", "vit")):
        gen = torch.Generator().manual_seed(100 + i)
        model = make_model(family)
        randomise(model, gen)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        inputs = batch(family, gen)
        with open(os.path.join(OUT, f"model_{family}.txt"), "w") as f:
            f.write(f"# tiny {family} from transformers {transformers.__version__} and peft "
                    f"{peft.__version__}; see tools/reference/make_model_golden.py\n")
            for name, t in base_tensors(model, family).items():
                write(f, "base." + name, t)
            write_inputs(f, inputs)
            lora_run(f, family, state, inputs, gen)
            wegeft_run(f, family, state, inputs, gen)


if __name__ == "__main__":
    main()
