#!/usr/bin/python3
"""Golden trajectories for the optimizers, from torch.optim in float64.

Each case starts from the same parameters and feeds the same 10 gradients (written to the file)
to torch.optim.AdamW / torch.optim.SGD, recording the parameters after every step. Also
torch.nn.utils.clip_grad_norm_ on one gradient vector.

Run:  /usr/bin/python3 tools/reference/make_optim_golden.py   (needs Debian's python3-torch)
Writes tests/golden/optim.txt.
"""
import os

import torch

from make_adapter_golden import OUT, f64, write

D = torch.float64
STEPS, N = 10, 13


def trajectory(f, name, make_opt, p0, grads):
    p = torch.nn.Parameter(p0.clone())
    opt = make_opt([p])
    out = []
    for g in grads:
        p.grad = g.clone()
        opt.step()
        out.append(p.detach().clone())
    write(f, f"{name}.params", torch.stack(out))


def main():
    gen = torch.Generator().manual_seed(3)
    p0 = torch.randn(N, generator=gen, dtype=D)
    grads = [torch.randn(N, generator=gen, dtype=D) * (1 + i) for i in range(STEPS)]
    with open(os.path.join(OUT, "optim.txt"), "w") as f:
        f.write("# name rows cols, then the values row by row; see tools/reference/make_optim_golden.py\n")
        write(f, "p0", p0)
        write(f, "grads", torch.stack(grads))
        write(f, "adamw.config", f64([1e-2, 0.9, 0.95, 1e-8, 0.1]))
        trajectory(f, "adamw", lambda ps: torch.optim.AdamW(ps, lr=1e-2, betas=(0.9, 0.95), eps=1e-8,
                                                            weight_decay=0.1), p0, grads)
        write(f, "sgd_momentum.config", f64([5e-2, 0.9, 0.1, 0.01, 0.0]))
        trajectory(f, "sgd_momentum", lambda ps: torch.optim.SGD(ps, lr=5e-2, momentum=0.9,
                                                                 dampening=0.1, weight_decay=0.01),
                   p0, grads)
        write(f, "sgd_nesterov.config", f64([5e-2, 0.9, 0.0, 0.0, 1.0]))
        trajectory(f, "sgd_nesterov", lambda ps: torch.optim.SGD(ps, lr=5e-2, momentum=0.9,
                                                                 nesterov=True), p0, grads)
        g = torch.nn.Parameter(torch.zeros(N, dtype=D))
        g.grad = grads[3].clone()
        norm = torch.nn.utils.clip_grad_norm_([g], max_norm=0.5)
        write(f, "clip.grad", grads[3])
        write(f, "clip.norm", norm.reshape(1))
        write(f, "clip.clipped", g.grad)


if __name__ == "__main__":
    main()
