#!/usr/bin/env bash
# examples/03_vit_fashion.cpp end to end on small random IDX files in Fashion-MNIST's layout (the
# study runs it on the real ones): pretrain writes a checkpoint load_hf_model reads, each method's
# finetune writes its log, adapter and scores, the merged model scores as the adapted one, WeGeFT
# writes its patch clusters, and bad input gets one line naming the problem and a non-zero exit.
# Usage: vit_fashion.sh VIT_FASHION WORK_DIR [DEVICE]. With DEVICE cuda (a build/cuda/vit_fashion on
# a GPU machine) the finetunes train on the GPU. Ends with "N passed, N failed".
set -u
vit=$1 work=$2 device=${3:-cpu}
rm -rf "$work" && mkdir -p "$work/data"
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }
check() {  # check NAME CONDITION...
  local name=$1
  shift
  if "$@"; then pass; else fail "$name"; fi
}
be32() { printf "\\$(printf %03o $(($1 >> 24 & 255)))\\$(printf %03o $(($1 >> 16 & 255)))\\$(printf %03o $(($1 >> 8 & 255)))\\$(printf %03o $(($1 & 255)))"; }
idx() {  # idx PART COUNT: random images, labels i mod 10
  local part=$1 n=$2
  { printf '\0\0\010\003'; be32 "$n"; be32 28; be32 28; head -c $((n * 784)) /dev/urandom; } \
    >"$work/data/$part-images-idx3-ubyte"
  { printf '\0\0\010\001'; be32 "$n"; for ((i = 0; i < n; i++)); do printf "\\$(printf %03o $((i % 10)))"; done; } \
    >"$work/data/$part-labels-idx1-ubyte"
}
idx train 600
idx t10k 200

if timeout 300 "$vit" pretrain --data "$work/data" --out "$work/base" --steps 6 --rounds 2 --batch 8 \
  >"$work/pretrain.out" 2>"$work/pretrain.err"; then
  pass
else
  fail "pretrain exited non-zero: $(tail -3 "$work/pretrain.err")"
fi
check "pretrain writes a ViT checkpoint" grep -q '"model_type": "vit"' "$work/base/config.json"
check "pretrain reports its test accuracy" grep -q '"accuracy"' "$work/base/pretrain.json"

num() { sed -n "s/.*\"$2\":\([-0-9.e]*\).*/\1/p" "$1"; }
for m in head lora wegeft; do
  out=$work/$m
  if timeout 300 "$vit" finetune --base "$work/base" --data "$work/data" --method "$m" --rank 4 --lr 1e-2 \
    --steps 8 --batch 8 --train-size 100 --device "$device" --out "$out" >"$out.out" 2>"$out.err"; then
    pass
  else
    fail "$m: finetune exited non-zero: $(tail -3 "$out.err")"
    continue
  fi
  check "$m: test.json has accuracy and macro-F1" grep -q '"accuracy":.*"macro_f1":' "$out/test.json"
  check "$m: log.jsonl starts with the run and has 8 reports" \
    test "$(grep -c '"val_accuracy"' "$out/log.jsonl")" = 8 -a "$(head -1 "$out/log.jsonl" | grep -c '"event":"start"')" = 1
  if [ "$m" = head ]; then
    check "head: head.safetensors written" test -s "$out/head.safetensors"
    continue
  fi
  check "$m: adapter written" test -s "$out/adapter_model.safetensors"
  a=$(num "$out/test.json" loss) b=$(num "$out/test.json" merged_loss)
  check "$m: merged loss $b equals the adapter's $a" \
    awk -v a="$a" -v b="$b" 'BEGIN { d = a - b; if (d < 0) d = -d; exit !(d <= 1e-4 * a) }'
  check "$m: merged accuracy equals the adapter's" \
    test "$(num "$out/test.json" accuracy)" = "$(num "$out/test.json" merged_accuracy)"
done
check "wegeft: clusters of 8 images, one list of 49 patches per block" \
  python3 -c "import json,sys; d=json.load(open(sys.argv[1])); assert len(d['images'])==8; assert all(len(i['clusters'])==4 and all(len(c)==49 and max(c)<4 for c in i['clusters']) for i in d['images'])" \
  "$work/wegeft/clusters.json"

expect_error() {  # expect_error NAME PATTERN ARGS...: exit 1, one line on stderr holding PATTERN
  local name=$1 pattern=$2
  shift 2
  timeout 60 "$vit" "$@" >"$work/$name.out" 2>"$work/$name.err"
  local rc=$?
  if [ "$rc" -ne 1 ]; then fail "$name: exited $rc, wanted 1: $(cat "$work/$name.err")"; return; fi
  if [ "$(wc -l <"$work/$name.err")" -ne 1 ] || ! grep -q -- "$pattern" "$work/$name.err"; then
    fail "$name: wanted one line with '$pattern', got: $(cat "$work/$name.err")"
    return
  fi
  pass
}
mkdir -p "$work/gz" && cp "$work/data/"* "$work/gz/" && gzip -c "$work/data/t10k-images-idx3-ubyte" >"$work/gz/t10k-images-idx3-ubyte"
expect_error gzipped "t10k-images-idx3-ubyte: not an IDX file" finetune --base "$work/base" --data "$work/gz" --method lora --lr 1e-3 --out "$work/x"
mkdir -p "$work/short" && cp "$work/data/"* "$work/short/" && head -c 1000 "$work/data/train-images-idx3-ubyte" >"$work/short/train-images-idx3-ubyte"
expect_error truncated "more values than the file" pretrain --data "$work/short" --out "$work/x"
expect_error method "--method must be head, lora or wegeft" finetune --base "$work/base" --data "$work/data" --method dora --lr 1e-3 --out "$work/x"
expect_error lr "--lr: 'fast' is not a number" finetune --base "$work/base" --data "$work/data" --method lora --lr fast --out "$work/x"
expect_error option "unknown option --epochs" finetune --epochs 2
expect_error base "nothing/config.json: cannot open" finetune --base "$work/nothing" --data "$work/data" --method lora --lr 1e-3 --out "$work/x"
if [ "$device" = cpu ]; then
  expect_error device "--device must be cpu in this build" finetune --base "$work/base" --data "$work/data" --method lora --lr 1e-3 --device cuda --out "$work/x"
else
  expect_error device "--device must be cpu or cuda, got 'tpu'" finetune --base "$work/base" --data "$work/data" --method lora --lr 1e-3 --device tpu --out "$work/x"
  check "cuda: the finetunes trained on the GPU" grep -q "training on " "$work/lora.err"
fi
echo "vit_fashion: $passed passed, $failed failed"
