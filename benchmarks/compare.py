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


AVX512 = " avx512f " in open("/proc/cpuinfo").read().replace("\n", " ")
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
            print(f"{done.stdout.strip().splitlines()[-1]} [BLIS {how}: '{config.group(1) if config else '?'}' kernels]")
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
    print(header)
    print(torch_header)
    if eigen:
        print(f"column 'eigen/base': the same step with {eigen_backend[len('backend: '):]}")
    print(f"{'variant':<26} {'ours ms':>8} {'ours/base':>9} {'torch ms':>9} {'torch/base':>10} {'speedup':>8} {'FLOP ideal':>10} "
          f"{'eigen/base':>10}  target")
    for name in ours[0]:
        o_ms = statistics.median(r[name][0] for r in ours)
        o_ratio = statistics.median(r[name][1] for r in ours)
        t_ms = statistics.median(r[name][0] for r in torch)
        t_ratio = statistics.median(r[name][1] for r in torch)
        e_ratio = statistics.median(r[name][1] for r in eigen) if eigen else float("nan")
        ideal = ours[0][name][2]
        target = target_for(name)
        mark = "" if target is None else (f"{target:.2f}  ours {'met' if o_ratio <= target else 'MISSED'}, "
                                          f"eigen {'met' if e_ratio <= target else 'MISSED'}")
        print(f"{name:<26} {o_ms:8.2f} {o_ratio:9.3f} {t_ms:9.2f} {t_ratio:10.3f} {t_ms / o_ms:7.2f}x {ideal:10.3f} "
              f"{e_ratio:10.3f}  {mark}")
    model_bin = os.path.join(build, "benchmarks", "bench_model_step_blas")
    if not os.path.exists(model_bin):
        model_bin = os.path.join(build, "benchmarks", "bench_model_step")
    ours_m, torch_m = [], []
    for rep in range(repeats):  # A B A B
        ours_m.append(run([model_bin, "3"], env)[1]["model step"])
        torch_m.append(run(["/usr/bin/python3", os.path.join(here, "torch", "model_step.py"), "3", str(threads)], env)[1]["model step"])
    o_ms, o_mb = statistics.median(r[0] for r in ours_m), max(r[1] for r in ours_m)
    t_ms, t_mb = statistics.median(r[0] for r in torch_m), max(r[1] for r in torch_m)
    print(f"MiniLM-sized model step (6 x 384, seq 128, batch 32, LoRA r=8 on q, v): ours {o_ms:.0f} ms, peak {o_mb:.0f} MiB; "
          f"torch {t_ms:.0f} ms, peak {t_mb:.0f} MiB; speedup {t_ms / o_ms:.2f}x (target 1.5x), memory ratio {o_mb / t_mb:.2f}")
    print()
