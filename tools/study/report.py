#!/usr/bin/env python3
"""Tables and plots of a scripts/study run, from the files the runs wrote (nothing typed by hand).

  report.py STUDY_DIR                  writes STUDY_DIR/report/{results.md, *.png} and prints the table
  report.py STUDY_DIR --docs FILE [--marker NAME]
                                       also puts the table between FILE's "<!-- begin NAME -->" and
                                       "<!-- end NAME -->" lines (NAME: study) and the plot beside FILE
                                       in results/ (loss_curves.png, or NAME-loss_curves.png)
  report.py --table RUN_DIR...         prints one row per run directory (scripts/demo)
  report.py --best-lr METHOD_DIR LR..  prints the learning rate of the sweep (seed 0) with the
                                       highest final validation score (ties: lower loss)

Each run directory STUDY_DIR/<method>/lr<lr>-seed<seed>/ holds log.jsonl (wegeft finetune --log),
test.json (wegeft eval --json) and seconds (wall time of the finetune command). A classification
run is scored by accuracy and macro-F1 and chosen by the log's final validation accuracy; a run
with valid.json (`wegeft eval --json --exact-match` on the validation split) by greedy exact match,
and chosen by the validation split's.
"""
import json
import math
import os
import re
import shutil
import statistics
import sys


def read_log(path):
    start, reports = None, []
    with open(path) as f:
        for line in f:
            rec = json.loads(line)
            if rec.get("event") == "start":
                start = rec
            else:
                reports.append(rec)
    return start, reports


def final_val(reports):
    vals = [r for r in reports if "val_accuracy" in r]
    return vals[-1] if vals else None


def validation(rdir, reports):
    """The run's final validation score and loss: {"val_accuracy", "val_loss"}."""
    path = os.path.join(rdir, "valid.json")
    if os.path.exists(path):
        with open(path) as f:
            v = json.load(f)
        return {"val_accuracy": v["exact_match"], "val_loss": v["loss"]}
    return final_val(reports)


def best_lr(method_dir, lrs):
    scored = []
    for lr in lrs:
        rdir = os.path.join(method_dir, f"lr{lr}-seed0")
        _, reports = read_log(os.path.join(rdir, "log.jsonl"))
        v = validation(rdir, reports)
        scored.append((-v["val_accuracy"], v["val_loss"], float(lr), lr))
    return min(scored)[3]


RUN = re.compile(r"lr(?P<lr>[^-]+(?:-\d+)?)-seed(?P<seed>\d+)$")


def load_run(rdir):
    """The figures of one finished run directory."""
    start, reports = read_log(os.path.join(rdir, "log.jsonl"))
    with open(os.path.join(rdir, "test.json")) as f:
        test = json.load(f)
    last = reports[-1]
    if "exact_match" in test:
        test["accuracy"] = test["exact_match"]
    merged_path = os.path.join(rdir, "merged.json")  # scripts/study: eval --merge on the test split
    if os.path.exists(merged_path):
        with open(merged_path) as f:
            m = json.load(f)
        test["merged_accuracy"] = m.get("exact_match", m.get("accuracy"))
    return {
        "start": start,
        "reports": reports,
        "test": test,
        "val": validation(rdir, reports),
        "s_per_step": last["train_s"] / last["step"],
        "peak_gib": max(r["peak_gib"] for r in reports),
    }


def table(run_dirs):
    print(f"{'run':<14} {'trainable':>10} {'lr':>8} {'steps':>6} {'test acc':>9} {'macro-F1':>9} "
          f"{'merged acc':>10} {'s/step':>7} {'peak GiB':>9}")
    for rdir in run_dirs:
        r = load_run(rdir)
        merged = r["test"].get("merged_accuracy")
        merged = f"{merged:>10.4f}" if merged is not None else f"{'-':>10}"
        print(f"{os.path.basename(rdir.rstrip('/')):<14} {r['start']['trainable_parameters']:>10,} "
              f"{r['start']['lr']:>8.1e} {r['reports'][-1]['step']:>6} {r['test']['accuracy']:>9.4f} "
              f"{r['test']['macro_f1']:>9.4f} {merged} {r['s_per_step']:>7.3f} {r['peak_gib']:>9.2f}")


def collect(study):
    """{method: {lr: {seed: run}}} for every finished run."""
    out = {}
    for method in sorted(os.listdir(study)):
        mdir = os.path.join(study, method)
        if not os.path.isdir(mdir) or method == "report":
            continue
        for run in os.listdir(mdir):
            m = RUN.match(run)
            rdir = os.path.join(mdir, run)
            if not m or not os.path.exists(os.path.join(rdir, "test.json")):
                continue
            out.setdefault(method, {}).setdefault(m["lr"], {})[int(m["seed"])] = load_run(rdir)
    return out


ORDER = ["head", "lora-r8", "lora-r16", "wegeft-r8", "wegeft-r16", "wegeft-r64"]


def sort_key(method):
    return (ORDER.index(method) if method in ORDER else len(ORDER), method)


def mean_std(xs):
    if len(xs) == 1:
        return f"{xs[0]:.4f}"
    return f"{statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}"


def report(study, docs=None, marker="study"):
    runs = collect(study)
    exact = any("exact_match" in r["test"] for m in runs.values() for l in m.values() for r in l.values())
    merged = any("merged_accuracy" in r["test"] for m in runs.values() for l in m.values() for r in l.values())
    outdir = os.path.join(study, "report")
    os.makedirs(outdir, exist_ok=True)
    machine = open(os.path.join(study, "machine.txt")).read().strip() if os.path.exists(
        os.path.join(study, "machine.txt")) else "unknown machine"
    lines = [f"Machine: {machine}", ""]
    if exact:
        lines += ["| method | trainable parameters | learning rate | seeds | valid exact match | test exact match "
                  "| test loss / answer token " + ("| merged model's test exact match " if merged else "") +
                  "| s / step | peak memory (GiB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|" if merged else "")]
        base = [os.path.join(study, f"base-{split}.json") for split in ("valid", "test")]
        if all(os.path.exists(f) for f in base):
            bv, bt = (json.load(open(f)) for f in base)
            lines.append(f"| base model | 0 | | | {bv['exact_match']:.4f} | {bt['exact_match']:.4f} "
                         f"| {bt['loss']:.3f} | | |" + (" |" if merged else ""))
    elif merged:
        lines += ["| method | trainable parameters | learning rate | seeds | test accuracy | test macro-F1 "
                  "| merged model's test accuracy | s / step | peak memory (GiB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    else:
        lines += ["| method | trainable parameters | learning rate | seeds | test accuracy | test macro-F1 "
                  "| s / step | peak memory (GiB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
    best = {}
    for method in sorted(runs, key=sort_key):
        lr_file = os.path.join(study, method, "best_lr")
        lr = open(lr_file).read().strip() if os.path.exists(lr_file) else None
        if lr not in runs[method]:
            continue
        best[method] = lr
        seeds = runs[method][lr]
        rs = [seeds[s] for s in sorted(seeds)]
        start = rs[0]["start"]
        if exact:
            scores = (f"| {mean_std([r['val']['val_accuracy'] for r in rs])} "
                      f"| {mean_std([r['test']['exact_match'] for r in rs])} "
                      f"| {statistics.mean(r['test']['loss'] for r in rs):.3f} ")
        else:
            scores = (f"| {mean_std([r['test']['accuracy'] for r in rs])} "
                      f"| {mean_std([r['test']['macro_f1'] for r in rs])} ")
        if merged:
            m = [r["test"]["merged_accuracy"] for r in rs if "merged_accuracy" in r["test"]]
            scores += f"| {mean_std(m) if m else 'no adapter'} "
        lines.append(
            f"| {method} | {start['trainable_parameters']:,} | {lr} | {len(rs)} " + scores +
            f"| {statistics.mean(r['s_per_step'] for r in rs):.3f} "
            f"| {max(r['peak_gib'] for r in rs):.2f} |")
    threads = {r["start"]["threads"] for m in runs.values() for l in m.values() for r in l.values()}
    backends = {r["start"]["backend"] for m in runs.values() for l in m.values() for r in l.values()}
    lines += ["", f"Threads: {', '.join(map(str, sorted(threads)))}; backend: {'; '.join(sorted(backends))}."]
    if exact:
        lines += ["Exact match: greedy decoding's answer equals the target and stops (EOS or a newline), on "
                  "the validation (200) and test (500) splits; mean ± sample standard deviation over the "
                  "seeds. Test loss: mean cross-entropy per answer token, mean over seeds. s / step: training "
                  "steps only (validation and saving left out), mean over seeds.", ""]
        what = "validation exact match / loss"
    else:
        lines += ["Trainable parameters include the classification head. s / step: training steps only "
                  "(validation and saving left out), mean over seeds. Accuracy and macro-F1: mean ± "
                  "sample standard deviation over the seeds, on the test split." +
                  (" Merged: the same model with every adapter merged into its weights." if merged else ""),
                  ""]
        what = "final validation accuracy / loss"
    # The sweep: the validation score / loss per learning rate (seed 0).
    lines += [f"Learning-rate sweep (seed 0, {what}; chosen: **bold**):", ""]
    lrs_all = sorted({lr for m in runs.values() for lr in m}, key=float)
    lines += ["| method | " + " | ".join(lrs_all) + " |", "|---|" + "---:|" * len(lrs_all)]
    for method in sorted(runs, key=sort_key):
        cells = []
        for lr in lrs_all:
            r = runs[method].get(lr, {}).get(0)
            if r is None:
                cells.append("")
                continue
            c = f"{r['val']['val_accuracy']:.4f} / {r['val']['val_loss']:.4f}"
            cells.append(f"**{c}**" if best.get(method) == lr else c)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    text = "\n".join(lines) + "\n"
    with open(os.path.join(outdir, "results.md"), "w") as f:
        f.write(text)
    print(text)
    plot(runs, best, outdir)
    if docs:
        png = "loss_curves.png" if marker == "study" else f"{marker}-loss_curves.png"
        with open(docs) as f:
            page = f.read()
        begin, end = f"<!-- begin {marker} -->\n", f"<!-- end {marker} -->"
        if begin not in page or end not in page:
            sys.exit(f"{docs}: no '{begin.strip()}' ... '{end}' lines")
        i, j = page.index(begin) + len(begin), page.index(end)
        with open(docs + ".tmp", "w") as f:
            f.write(page[:i] + text + f"\n![loss curves](results/{png})\n\n" + page[j:])
        os.replace(docs + ".tmp", docs)
        pngdir = os.path.join(os.path.dirname(docs), "results")
        os.makedirs(pngdir, exist_ok=True)
        shutil.copyfile(os.path.join(outdir, "loss_curves.png"), os.path.join(pngdir, png))


def plot(runs, best, outdir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for method in sorted(best, key=sort_key):
        r = runs[method][best[method]][min(runs[method][best[method]])]
        steps = [x["step"] for x in r["reports"] if "train_loss" in x and not math.isnan(x["train_loss"])]
        losses = [x["train_loss"] for x in r["reports"] if "train_loss" in x and not math.isnan(x["train_loss"])]
        vsteps = [x["step"] for x in r["reports"] if "val_loss" in x]
        vlosses = [x["val_loss"] for x in r["reports"] if "val_loss" in x]
        line, = axes[0].plot(steps, losses, label=method, alpha=0.8)
        axes[1].plot(vsteps, vlosses, marker="o", color=line.get_color(), label=method)
    axes[0].set_title("training loss (per report window), best rate, first seed")
    axes[1].set_title("validation loss")
    for ax in axes:
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("cross-entropy")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(os.path.join(outdir, "loss_curves.png"), dpi=110)
    plt.close(fig)


def main():
    if len(sys.argv) >= 3 and sys.argv[1] == "--table":
        table(sys.argv[2:])
    elif len(sys.argv) >= 3 and sys.argv[1] == "--best-lr":
        print(best_lr(sys.argv[2], sys.argv[3:]))
    elif len(sys.argv) == 2:
        report(sys.argv[1])
    elif len(sys.argv) == 4 and sys.argv[2] == "--docs":
        report(sys.argv[1], sys.argv[3])
    elif len(sys.argv) == 6 and sys.argv[2] == "--docs" and sys.argv[4] == "--marker":
        report(sys.argv[1], sys.argv[3], sys.argv[5])
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
