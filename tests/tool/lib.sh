# Helpers the tool's end-to-end tests source (finetune.sh, finetune_cuda.sh): counters, a run that
# must succeed, an error that must be one line, the first and last training loss of a --log file.
# The sourcing script sets `tool` (the wegeft binary) and `work` (its scratch folder) first.
passed=0 failed=0
pass() { passed=$((passed + 1)); }
fail() { echo "FAILED: $*"; failed=$((failed + 1)); }
run() {  # run NAME ARGS...: must exit 0 within 300 s
  local name=$1
  shift
  if ! timeout 300 "$@" >"$work/$name.out" 2>"$work/$name.err"; then
    fail "$name: $* exited non-zero: $(tail -3 "$work/$name.err")"
    return 1
  fi
  pass
}
# expect_error NAME PATTERN ARGS...: exit 1, one line on stderr holding PATTERN.
expect_error() {
  local name=$1 pattern=$2
  shift 2
  timeout 120 "$tool" "$@" >"$work/$name.out" 2>"$work/$name.err"
  local rc=$?
  if [ "$rc" -ne 1 ]; then fail "$name: exited $rc, wanted 1: $(cat "$work/$name.err")"; return; fi
  if ! grep -q -- "$pattern" "$work/$name.err"; then fail "$name: no '$pattern' in: $(cat "$work/$name.err")"; return; fi
  if [ "$(grep -vc '^wegeft: \(warning\|note\)' "$work/$name.err")" -ne 1 ]; then fail "$name: stderr is not one error line: $(cat "$work/$name.err")"; return; fi
  pass
}
# first and last train_loss of a --log file
losses() { sed -n 's/.*"train_loss":\([^,]*\).*/\1/p' "$1" | sed -n '1p;$p' | tr '\n' ' '; }
