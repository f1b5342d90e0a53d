#!/usr/bin/env bash
# `wegeft finetune / eval / generate --device cuda` end to end on a GPU machine, on the tiny Llama
# and BERT that tests/tool/make_tiny_model.cpp writes (`wegeft_make_tiny_model llama
# tests/golden/text/bpe_llama3_small.json DIR`, `wegeft_make_tiny_model bert MiniLM's vocab.txt
# DIR`): training loss falls; a run stopped and resumed on the GPU, and one resumed on the CPU,
# score as the straight run does; eval on the GPU scores as the CPU does to bf16's precision, and
# its exact-match verdicts equal comparing the GPU's own generate output with the completion; a
# classifier trained on the GPU scores on the CPU as on the GPU, and so does one on the tiny Llama
# (its last token under the head); eval --merge on the GPU scores as
# the adapter does; refusals name the problem. Given a tiny GPT-2 (`wegeft_make_tiny_model gpt2
# tests/golden/text/bpe_llama3_small.json DIR`), its LoRA and WeGeFT runs on the GPU follow the
# same runs on the CPU and its GPU eval scores as the CPU's.
# Usage: finetune_cuda.sh WEGEFT TINY_LLAMA_DIR TINY_BERT_DIR WORK_DIR [TINY_GPT2_DIR]. Ends with
# "N passed, N failed".
set -u
tool=$1 llama=$2 bert=$3 work=$4 gpt2=${5:-}
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/lib.sh"
json_field() { sed -n "s/.*\"$2\":\([^,}]*\).*/\1/p" "$1"; }
# close A B TOL: |A - B| <= TOL * |A|
close() { awk -v a="$1" -v b="$2" -v t="$3" 'BEGIN { d = a - b; if (d < 0) d = -d; m = a < 0 ? -a : a; exit !(a != "" && d <= t * m) }'; }

mkdir -p "$work/pc" "$work/em"
for i in $(seq 1 20); do echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: blue\"}"; done >"$work/pc/train.jsonl"
head -n 4 "$work/pc/train.jsonl" >"$work/pc/valid.jsonl"
for i in 3 5; do
  echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: blue\"}"
  echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: red\"}"
  echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A\"}"
done >"$work/em/test.jsonl"
common=(--model "$llama" --data "$work/pc" --rank 4 --iters 30 --batch-size 4 --lr 1e-2 --mask-prompt
  --report-every 1 --eval-every 10)

for method in lora wegeft; do
  out=$work/$method
  # Straight through on the GPU: the loss falls; the adapter and the training state are written.
  run "${method}_straight" "$tool" finetune "${common[@]}" --method "$method" --device cuda \
    --out "$out-straight" --log "$out-straight.log" || continue
  read -r first last <<<"$(losses "$out-straight.log")"
  awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.9 * a) }' && pass ||
    fail "${method}_straight: training loss did not fall by a tenth ($first -> $last)"
  for f in adapter_model.safetensors training_state.safetensors; do
    [ -s "$out-straight/$f" ] && pass || fail "${method}_straight: no $f"
  done
  # Stopped at step 15, resumed on the GPU, and (a second copy) resumed on the CPU.
  run "${method}_stop" "$tool" finetune "${common[@]}" --method "$method" --device cuda --stop-at 15 \
    --out "$out-gpu" || continue
  cp -r "$out-gpu" "$out-cpu"
  run "${method}_resume_gpu" "$tool" finetune "${common[@]}" --method "$method" --device cuda --resume \
    --out "$out-gpu" --log "$out-gpu.log"
  run "${method}_resume_cpu" "$tool" finetune "${common[@]}" --method "$method" --threads 1 --resume \
    --out "$out-cpu" --log "$out-cpu.log"
  grep -q '"step":16,' "$out-gpu.log" && pass || fail "${method}_resume_gpu: the resumed log does not start at step 16"
  # Every run scored the same way (on the CPU, fp32): the resumed runs land where the straight one did.
  for run_name in straight gpu cpu; do
    run "${method}_score_$run_name" "$tool" eval --model "$llama" --adapter "$out-$run_name" --data "$work/pc" \
      --split valid --json --threads 1
  done
  s=$(json_field "$work/${method}_score_straight.out" loss)
  g=$(json_field "$work/${method}_score_gpu.out" loss)
  c=$(json_field "$work/${method}_score_cpu.out" loss)
  echo "$method: valid loss straight $s, stopped + resumed on the GPU $g, on the CPU $c"
  close "$s" "$g" 0.05 && pass || fail "${method}_resume_gpu: loss $g against the straight run's $s"
  close "$s" "$c" 0.10 && pass || fail "${method}_resume_cpu: loss $c against the straight run's $s"
  # eval on the GPU against eval on the CPU, same adapter.
  run "${method}_eval_gpu" "$tool" eval --model "$llama" --adapter "$out-straight" --data "$work/pc" --split valid \
    --json --device cuda
  e=$(json_field "$work/${method}_eval_gpu.out" loss)
  echo "$method: valid loss on the CPU $s, on the GPU (bf16) $e"
  close "$s" "$e" 0.03 && pass || fail "${method}_eval_gpu: GPU loss $e against the CPU's $s"
done

# Exact match on the GPU: each verdict equals comparing the GPU's generate output with the
# completion; the CPU's count is printed beside it.
if [ -s "$work/lora-straight/adapter_model.safetensors" ] &&
  run em_gpu "$tool" eval --model "$llama" --adapter "$work/lora-straight" --data "$work/em" --device cuda \
    --predictions "$work/em/pred-gpu.jsonl" &&
  run em_cpu "$tool" eval --model "$llama" --adapter "$work/lora-straight" --data "$work/em" --threads 1 \
    --exact-match; then
  n=0 agree=0 right=0
  while IFS= read -r line; do
    n=$((n + 1))
    prompt=$(sed 's/.*"prompt": "\([^"]*\)".*/\1/' <<<"$line")
    completion=$(sed 's/.*"completion": "\([^"]*\)".*/\1/' <<<"$line")
    generated=$(timeout 60 "$tool" generate --model "$llama" --adapter "$work/lora-straight" --raw --device cuda \
      --prompt "$prompt" --max-tokens 8)
    verdict=$(sed -n "${n}p" "$work/em/pred-gpu.jsonl" | sed 's/.*"exact_match":\([a-z]*\).*/\1/')
    want=false
    [ "$generated" = "$completion" ] && want=true
    [ "$verdict" = "$want" ] && agree=$((agree + 1))
    [ "$verdict" = true ] && right=$((right + 1))
  done <"$work/em/test.jsonl"
  echo "exact match: GPU $(grep -o 'exact match .*' "$work/em_gpu.out"); CPU $(grep -o 'exact match .*' "$work/em_cpu.out")"
  [ "$agree" = "$n" ] && pass || fail "em_gpu: eval agrees with generate on $agree of $n examples"
  [ "$right" -gt 0 ] && [ "$right" -lt "$n" ] && pass || fail "em_gpu: $right of $n verdicts true"
  cpu_text=$("$tool" generate --model "$llama" --adapter "$work/lora-straight" --raw --threads 1 \
    --prompt "Q: colour of the sky 3?" --max-tokens 8)
  gpu_text=$("$tool" generate --model "$llama" --adapter "$work/lora-straight" --raw --device cuda \
    --prompt "Q: colour of the sky 3?" --max-tokens 8)
  echo "generate: CPU '$cpu_text', GPU '$gpu_text'"
  [ "$cpu_text" = "$gpu_text" ] && pass || fail "generate: the GPU's '$gpu_text' is not the CPU's '$cpu_text'"
fi

# Classification on the tiny BERT: the loss falls; the GPU's and the CPU's eval of the adapter
# agree; a run stopped on the GPU finishes on the CPU where the straight run did.
mkdir -p "$work/cls"
for i in $(seq 1 24); do
  echo "{\"text\": \"the cat sat on the warm mat number $i\", \"label\": \"cat\"}"
  echo "{\"text\": \"stocks fell sharply on the market in week $i\", \"label\": \"market\"}"
done >"$work/cls/train.jsonl"
printf '%s\n' '{"text": "a cat on a mat", "label": "cat"}' '{"text": "the market fell", "label": "market"}' \
  '{"text": "the cat sat", "label": "cat"}' '{"text": "stocks fell in week 3", "label": "market"}' >"$work/cls/valid.jsonl"
cls_common=(--model "$bert" --data "$work/cls" --rank 4 --iters 30 --batch-size 8 --lr 5e-3 --report-every 1)
for method in wegeft lora head; do
  out=$work/cls-$method
  run "cls_${method}_gpu" "$tool" finetune "${cls_common[@]}" --method "$method" --device cuda \
    --out "$out" --log "$out.log" || continue
  # The same run on the CPU: the GPU's training losses follow it (the tiny random encoder learns
  # slowly, so the losses fall by little in 30 steps on either backend).
  run "cls_${method}_cpu" "$tool" finetune "${cls_common[@]}" --method "$method" --threads 1 \
    --out "$out-cpu" --log "$out-cpu.log" || continue
  read -r first last <<<"$(losses "$out.log")"
  read -r cpu_first cpu_last <<<"$(losses "$out-cpu.log")"
  echo "cls $method: training loss on the GPU $first -> $last, on the CPU $cpu_first -> $cpu_last"
  [ "$method" = head ] || { awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' && pass ||
    fail "cls_${method}_gpu: training loss did not fall ($first -> $last)"; }
  close "$cpu_last" "$last" 0.01 && pass || fail "cls_${method}_gpu: last loss $last against the CPU's $cpu_last"
  run "cls_${method}_eval_gpu" "$tool" eval --model "$bert" --adapter "$out" --data "$work/cls" --split valid \
    --json --device cuda
  run "cls_${method}_eval_cpu" "$tool" eval --model "$bert" --adapter "$out" --data "$work/cls" --split valid \
    --json --threads 1
  lg=$(json_field "$work/cls_${method}_eval_gpu.out" loss) lc=$(json_field "$work/cls_${method}_eval_cpu.out" loss)
  ag=$(json_field "$work/cls_${method}_eval_gpu.out" accuracy) ac=$(json_field "$work/cls_${method}_eval_cpu.out" accuracy)
  echo "cls $method: valid loss GPU $lg, CPU $lc; accuracy GPU $ag, CPU $ac"
  close "$lc" "$lg" 0.05 && pass || fail "cls_${method}_eval_gpu: loss $lg against the CPU's $lc"
  [ -n "$ag" ] && [ "$ag" = "$ac" ] && pass || fail "cls_${method}_eval_gpu: accuracy $ag against the CPU's $ac"
done
run cls_stop "$tool" finetune "${cls_common[@]}" --method lora --device cuda --stop-at 15 --out "$work/cls-resumed" &&
  run cls_resume_cpu "$tool" finetune "${cls_common[@]}" --method lora --threads 1 --resume --out "$work/cls-resumed" &&
  run cls_resumed_eval "$tool" eval --model "$bert" --adapter "$work/cls-resumed" --data "$work/cls" --split valid \
    --json --threads 1 && {
  r=$(json_field "$work/cls_resumed_eval.out" loss) s=$(json_field "$work/cls_lora_eval_cpu.out" loss)
  echo "cls lora: valid loss straight on the GPU $s, stopped on the GPU and resumed on the CPU $r"
  close "$s" "$r" 0.10 && pass || fail "cls_resume_cpu: loss $r against the straight run's $s"
}

# Classification on the tiny Llama (the last token's state under a new head): the GPU's training
# losses follow the CPU's, and the GPU's eval of the adapter agrees with the CPU's.
for method in lora wegeft; do
  out=$work/llama-cls-$method
  lc_common=(--model "$llama" --data "$work/cls" --task classification --rank 4 --iters 30 --batch-size 8 --lr 1e-3
    --report-every 1 --method "$method")
  run "llama_cls_${method}_gpu" "$tool" finetune "${lc_common[@]}" --device cuda --out "$out" --log "$out.log" &&
    run "llama_cls_${method}_cpu" "$tool" finetune "${lc_common[@]}" --threads 1 --out "$out-cpu" \
      --log "$out-cpu.log" || continue
  read -r first last <<<"$(losses "$out.log")"
  read -r cpu_first cpu_last <<<"$(losses "$out-cpu.log")"
  echo "llama cls $method: training loss on the GPU $first -> $last, on the CPU $cpu_first -> $cpu_last"
  awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a) }' && pass ||
    fail "llama_cls_${method}_gpu: training loss did not fall ($first -> $last)"
  close "$cpu_last" "$last" 0.03 && pass || fail "llama_cls_${method}_gpu: last loss $last against the CPU's $cpu_last"
  run "llama_cls_${method}_eval_gpu" "$tool" eval --model "$llama" --adapter "$out" --data "$work/cls" \
    --split valid --json --device cuda &&
    run "llama_cls_${method}_eval_cpu" "$tool" eval --model "$llama" --adapter "$out" --data "$work/cls" \
      --split valid --json --threads 1 || continue
  lg=$(json_field "$work/llama_cls_${method}_eval_gpu.out" loss) lc=$(json_field "$work/llama_cls_${method}_eval_cpu.out" loss)
  ag=$(json_field "$work/llama_cls_${method}_eval_gpu.out" accuracy) ac=$(json_field "$work/llama_cls_${method}_eval_cpu.out" accuracy)
  echo "llama cls $method: valid loss GPU $lg, CPU $lc; accuracy GPU $ag, CPU $ac"
  close "$lc" "$lg" 0.05 && pass || fail "llama_cls_${method}_eval_gpu: loss $lg against the CPU's $lc"
  [ -n "$ag" ] && [ "$ag" = "$ac" ] && pass || fail "llama_cls_${method}_eval_gpu: accuracy $ag against the CPU's $ac"
done

# eval --merge on the GPU: the merged weights score as the adapter does, on the GPU and the CPU.
for pair in "llama lora-straight pc" "bert cls-lora cls"; do
  read -r which adapter data <<<"$pair"
  model=$llama
  [ "$which" = bert ] && model=$bert
  [ -s "$work/$adapter/adapter_model.safetensors" ] || continue
  run "merged_gpu_$which" "$tool" eval --model "$model" --adapter "$work/$adapter" --data "$work/$data" \
    --split valid --json --merge --device cuda &&
    run "merged_cpu_$which" "$tool" eval --model "$model" --adapter "$work/$adapter" --data "$work/$data" \
      --split valid --json --merge --threads 1 &&
    run "adapted_gpu_$which" "$tool" eval --model "$model" --adapter "$work/$adapter" --data "$work/$data" \
      --split valid --json --device cuda || continue
  mg=$(json_field "$work/merged_gpu_$which.out" loss) mc=$(json_field "$work/merged_cpu_$which.out" loss)
  ag=$(json_field "$work/adapted_gpu_$which.out" loss)
  echo "$which $adapter: valid loss merged on the GPU $mg, merged on the CPU $mc, adapted on the GPU $ag"
  grep -q '"merged":true' "$work/merged_gpu_$which.out" && pass || fail "merged_gpu_$which: not marked merged"
  close "$mc" "$mg" 0.03 && pass || fail "merged_gpu_$which: loss $mg against the CPU's merged $mc"
  close "$ag" "$mg" 0.03 && pass || fail "merged_gpu_$which: loss $mg against the adapted $ag"
done
# GPT-2 (LayerNorm, learned positions, fused q/k/v, GELU) on the GPU against the CPU.
if [ -n "$gpt2" ]; then
  for method in lora wegeft; do
    out=$work/gpt2-$method
    g2=(--model "$gpt2" --data "$work/pc" --rank 4 --iters 30 --batch-size 4 --lr 1e-2 --mask-prompt
      --report-every 1 --method "$method")
    run "gpt2_${method}_gpu" "$tool" finetune "${g2[@]}" --device cuda --out "$out" --log "$out.log" &&
      run "gpt2_${method}_cpu" "$tool" finetune "${g2[@]}" --threads 1 --out "$out-cpu" --log "$out-cpu.log" ||
      continue
    read -r first last <<<"$(losses "$out.log")"
    read -r cpu_first cpu_last <<<"$(losses "$out-cpu.log")"
    echo "gpt2 $method: training loss on the GPU $first -> $last, on the CPU $cpu_first -> $cpu_last"
    awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < 0.9 * a) }' && pass ||
      fail "gpt2_${method}_gpu: training loss did not fall by a tenth ($first -> $last)"
    close "$cpu_last" "$last" 0.02 && pass || fail "gpt2_${method}_gpu: last loss $last against the CPU's $cpu_last"
    run "gpt2_${method}_eval_gpu" "$tool" eval --model "$gpt2" --adapter "$out" --data "$work/pc" --split valid \
      --json --device cuda &&
      run "gpt2_${method}_eval_cpu" "$tool" eval --model "$gpt2" --adapter "$out" --data "$work/pc" --split valid \
        --json --threads 1 || continue
    lg=$(json_field "$work/gpt2_${method}_eval_gpu.out" loss) lc=$(json_field "$work/gpt2_${method}_eval_cpu.out" loss)
    echo "gpt2 $method: valid loss on the CPU $lc, on the GPU (bf16) $lg"
    close "$lc" "$lg" 0.03 && pass || fail "gpt2_${method}_eval_gpu: GPU loss $lg against the CPU's $lc"
  done
fi
expect_error device_name "--device must be cpu or cuda" generate --model "$llama" --prompt hi --device gpu

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
