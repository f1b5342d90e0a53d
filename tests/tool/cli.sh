#!/usr/bin/env bash
# The wegeft tool as a person meets it: every command's --help, one-line errors without build
# paths, non-regular files refused at once, and messages that name what PATH was taken for.
# Usage: cli.sh WEGEFT_BINARY GOLDEN_DIR WORK_DIR. Ends with "N passed, N failed".
set -u
tool=$1 golden=$2 work=$3
rm -rf "$work" && mkdir -p "$work"
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }

# expect CODE PATTERN -- ARGS...: exit status CODE within 20 s, PATTERN in the combined output,
# and on failure exactly one line on stderr with no "[check" suffix and no source path.
expect() {
  local code=$1 pattern=$2
  shift 3
  timeout 20 "$tool" "$@" >"$work/out" 2>"$work/err"
  local rc=$?
  if [ "$rc" -ne "$code" ]; then fail "wegeft $* exited $rc, wanted $code: $(cat "$work/err")"; return; fi
  if ! grep -q -- "$pattern" "$work/out" "$work/err"; then fail "wegeft $*: no '$pattern' in: $(cat "$work/out" "$work/err")"; return; fi
  if [ "$code" -ne 0 ]; then
    if [ "$(wc -l <"$work/err")" -ne 1 ]; then fail "wegeft $*: stderr is not one line: $(cat "$work/err")"; return; fi
    if grep -q -e '\[check' -e 'include/wegeft' "$work/err"; then fail "wegeft $*: build details in: $(cat "$work/err")"; return; fi
  fi
  pass
}

expect 0 "usage: wegeft <command>" -- --help
expect 0 "usage: wegeft inspect PATH" -- inspect --help
expect 0 "usage: wegeft merge --base" -- merge --help
expect 0 "usage: wegeft convert --adapter" -- convert -h
expect 2 "unknown option" -- merge --bogus x
expect 1 "match no 2-D weight\|missing tensor\|the adapter needs" -- merge --base "$golden/interop/gpt2/base" \
  --adapter "$golden/interop/bert/lora" --out "$work/never.safetensors"
[ -e "$work/never.safetensors" ] && fail "a failed merge left its output" || pass

mkfifo "$work/fifo"
expect 1 "not a regular file" -- inspect "$work/fifo"
mkdir -p "$work/empty"
expect 1 "neither an adapter" -- inspect "$work/empty"
printf 'GGUF\003\000\000\000garbage' >"$work/broken.gguf"
expect 1 "as GGUF" -- inspect "$work/broken.gguf"
printf 'not a model' >"$work/broken.safetensors"
expect 1 "as safetensors" -- inspect "$work/broken.safetensors"
expect 1 "no such file" -- inspect "$work/missing"
mkdir -p "$work/adapter" && cp "$golden/interop/bert/dora/"* "$work/adapter/"
expect 0 "LORA adapter (dora)" -- inspect "$work/adapter"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
