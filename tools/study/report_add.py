#!/usr/bin/env python3
"""The table of the SmolLM2 two-digit-addition runs (docs/results.md, examples/finetune/add_numbers.sh).

Reads, for each RUN given (an adapter directory written by `wegeft finetune --log RUN.log`),
RUN/finetune.json, RUN.log and RUN.eval: two `wegeft eval --json --exact-match` lines, the test
split's and then the validation split's. Prints a markdown table; with --docs FILE, replaces the
part of FILE between the MARKER markers (default add-sweep) with it.

  tools/study/report_add.py --base BASE.eval RUN... [--docs docs/results.md] [--marker add-sweep]
"""
import argparse
import json
import pathlib
import re


def evals(path):
    lines = [json.loads(l) for l in pathlib.Path(path).read_text().splitlines() if l.startswith('{"data"')]
    if len(lines) != 2:
        raise SystemExit(f"{path}: wanted 2 eval lines (test, valid), found {len(lines)}")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", required=True, help="the base model's eval lines (test, valid)")
    ap.add_argument("--docs")
    ap.add_argument("--marker", default="add-sweep", help="the name in the <!-- begin/end NAME --> markers")
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    rows = []
    bt, bv = evals(a.base)
    rows.append(("base model", "0", "", "", f"{bv['exact_match']:.3f}", f"{bt['exact_match']:.3f} ({bt['exact_matches']} of {bt['examples']})", f"{bt['loss']:.3f}", "", ""))
    for run in a.runs:
        cfg = json.loads(pathlib.Path(run, "finetune.json").read_text())
        log = [json.loads(l) for l in pathlib.Path(run + ".log").read_text().splitlines() if l.strip()]
        start = next(e for e in log if e.get("event") == "start")
        last = [e for e in log if "step" in e][-1]
        t, v = evals(run + ".eval")
        rank = cfg.get("rank") or (64 if cfg["method"] == "wegeft" else 8)
        products = " (bf16 products)" if cfg.get("precision") == "bf16" else ""
        rows.append((f"{cfg['method']} r = {rank}{products}", f"{start['trainable_parameters']:,}", f"{cfg['lr']:g}", str(last["step"]),
                     f"{v['exact_match']:.3f}", f"{t['exact_match']:.3f} ({t['exact_matches']} of {t['examples']})",
                     f"{t['loss']:.3f}", f"{last['train_s'] / last['step']:.2f}", f"{last['peak_gib']:.2f}"))
    head = ("run", "trainable parameters", "learning rate", "steps", "valid exact match", "test exact match",
            "test loss / answer token", "s / step", "peak GiB")
    out = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    table = "\n".join(out)
    print(table)
    if a.docs:
        doc = pathlib.Path(a.docs).read_text()
        marker = re.escape(a.marker)
        new, n = re.subn(rf"(<!-- begin {marker} -->\n).*?(\n<!-- end {marker} -->)", lambda m: m.group(1) + table + m.group(2), doc, flags=re.S)
        if n != 1:
            raise SystemExit(f"{a.docs}: no {a.marker} markers")
        pathlib.Path(a.docs).write_text(new)


if __name__ == "__main__":
    main()
