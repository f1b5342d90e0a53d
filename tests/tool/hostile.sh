#!/usr/bin/env bash
# Hostile files through the wegeft tool: every input make_hostile writes (and a few made here)
# must give exit 1 and one line on stderr naming the problem, within 20 s and 3 GB of address
# space, and leave no output file or temporary behind.
# Usage: hostile.sh WEGEFT_BINARY MAKE_HOSTILE_BINARY GOLDEN_DIR WORK_DIR. Ends with "N passed, N failed".
set -u
tool=$1 make=$2 golden=$3 work=$4
rm -rf "$work" && mkdir -p "$work"
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }

"$make" "$golden" "$work/in" || { echo "FAILED: make_hostile"; exit 1; }
in=$work/in base=$golden/interop/llama/base lora=$golden/interop/llama/lora

# refuse PATTERN -- ARGS...: exit 1 within 20 s under a 3 GB address-space limit, PATTERN in the
# one line of stderr, no build details, and nothing written under $work/out.
refuse() {
  local pattern=$1
  shift 2
  rm -rf "$work/out" && mkdir -p "$work/out"
  local start=$SECONDS
  (if [ -z "${WEGEFT_NO_ULIMIT:-}" ]; then ulimit -v 3000000; fi; exec timeout 20 "$tool" "$@") >"$work/stdout" 2>"$work/stderr"
  local rc=$? took=$((SECONDS - start))
  if [ "$rc" -ne 1 ]; then fail "wegeft $* exited $rc after ${took}s, wanted 1: $(head -c 300 "$work/stderr")"; return; fi
  if [ "$(wc -l <"$work/stderr")" -ne 1 ]; then fail "wegeft $*: stderr is not one line: $(head -c 300 "$work/stderr")"; return; fi
  if ! grep -q -- "$pattern" "$work/stderr"; then fail "wegeft $*: no '$pattern' in: $(head -c 300 "$work/stderr")"; return; fi
  if grep -q -e '\[check' -e 'include/wegeft' "$work/stderr"; then fail "wegeft $*: build details in: $(cat "$work/stderr")"; return; fi
  if [ -n "$(ls -A "$work/out")" ]; then fail "wegeft $*: left $(ls -A "$work/out")"; return; fi
  pass
}
merge() { refuse "$1" -- merge --base "$2" --adapter "$3" --out "$work/out/merged.safetensors"; }
convert() { refuse "$1" -- convert --adapter "$2" --base "$3" --out "$work/out/adapter.gguf"; }

# 1. Tensors that do not fit their config or the base, on merge and convert (load_adapter, the
# third path, is tested through the API in test_peft.cpp: the tool's load needs a tokenizer).
merge "wegeft_psi.weight' has shape \[3, 16\], the adapter needs \[2, 16\]" "$base" "$in/wegeft-rank"
merge "wegeft_psi.weight' has shape \[2, 15\], the adapter needs \[2, 16\]" "$base" "$in/wegeft-din"
merge "has shape \[2, 4, 4\], the adapter needs \[2, 16\]" "$base" "$in/wegeft-3d"
merge "lora_A.weight' has shape \[3, 16\], the adapter needs \[4, 16\]" "$base" "$in/lora-rank"
merge "has shape \[4, 4, 4\], the adapter needs \[4, 16\]" "$base" "$in/lora-3d"
merge "lora_A.weight' is I32; adapter parameters must be floating point" "$base" "$in/lora-int"
merge "belongs to no adapter parameter" "$base" "$in/lora-stray"
convert "lora_A.weight' has shape \[3, 16\], the adapter needs \[4, 16\]" "$in/lora-rank" "$base"
convert "lora_B.weight' has shape \[15, 4\], the adapter needs \[16, 4\]" "$in/lora-b-shape" "$base"
convert "is I32; adapter parameters must be floating point" "$in/lora-int" "$base"
convert "belongs to no targeted linear" "$in/lora-stray" "$base"

# 2. Nesting 100,000 deep in a used field, an unused field and a safetensors header.
merge "JSON nests deeper than 64 levels" "$base" "$in/deep-config"
merge "JSON nests deeper than 64 levels" "$base" "$in/deep-unused"
refuse "JSON nests deeper than 64 levels" -- inspect "$in/deep-header.safetensors"

# 3. Patterns: bounded time on catastrophic backtracking, bounded size and nesting.
merge "match no 2-D weight" "$base" "$in/redos"
merge "lora_A.weight' has shape \[4, 16\], the adapter needs \[2, 16\]" "$base" "$in/redos-rank"
merge "at most 4096 are accepted" "$base" "$in/parens"
merge "groups nest deeper than 64 levels" "$base" "$in/nested-groups"
# Non-regular files given as weights or config.
mkdir -p "$work/fifo-adapter" && cp "$lora/adapter_config.json" "$work/fifo-adapter/" && mkfifo "$work/fifo-adapter/adapter_model.safetensors"
merge "not a regular file (a FIFO)" "$base" "$work/fifo-adapter"
mkdir -p "$work/fifo-config" && cp "$lora/adapter_model.safetensors" "$work/fifo-config/" && mkfifo "$work/fifo-config/adapter_config.json"
merge "not a regular file (a FIFO)" "$base" "$work/fifo-config"

# 4. Sizes: nothing is allocated before sizes are checked against limits and the file.
refuse "the metadata describes a model of at least" -- generate --model "$in/huge-ne.gguf" --prompt x
refuse "beyond the limit of 8388608 metadata values" -- inspect "$in/big-array.gguf"
refuse "config has a size beyond wegeft's limits" -- generate --model "$in/vocab40" --prompt x
refuse "describes a model of at least" -- generate --model "$in/vocab22" --prompt x
convert "config has a size beyond wegeft's limits" "$lora" "$in/vocab40"

# 5. Finite inputs whose results would be wrong.
merge "gives values that are not finite or do not fit F32" "$base" "$in/alpha-huge"
convert "lora_alpha 0 cannot be expressed" "$in/alpha-zero" "$base"
merge "is not a module name" "$base" "$in/save-path"
merge "is I8; an adapter merges only into floating-point weights" "$in/int-base" "$lora"

# 7. Outputs: a symbolic link or a device is not replaced; a killed write's temporary is cleared.
ln -s "$work/out-target" "$work/link.safetensors"
refuse "is a symbolic link" -- merge --base "$base" --adapter "$lora" --out "$work/link.safetensors"
[ ! -e "$work/out-target" ] && pass || fail "a merge wrote through a symbolic link"
refuse "/dev/null: exists and is not a regular file" -- merge --base "$base" --adapter "$lora" --out /dev/null
mkdir -p "$work/stale"
(exec sleep 0) & dead=$!
wait "$dead"
echo half >"$work/stale/.m.safetensors.wegeft-tmp-$dead-1"
if timeout 20 "$tool" merge --base "$base" --adapter "$lora" --out "$work/stale/m.safetensors" >/dev/null 2>&1 &&
  [ -s "$work/stale/m.safetensors" ] && [ ! -e "$work/stale/.m.safetensors.wegeft-tmp-$dead-1" ]; then
  pass
else
  fail "merge did not clear a dead process's temporary: $(ls -A "$work/stale")"
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
