#!/usr/bin/env python3
"""A safetensors file of every dtype, written by the official `safetensors` library from PyTorch
tensors, plus the float64 values each tensor was converted from (tests/golden/io/dtypes.txt).

The C++ reader must decode every tensor to the values PyTorch stored, and the C++ float -> F16/BF16
encoders must produce the bytes PyTorch produced.

Run (the venv of requirements-models.txt has torch, safetensors):
  .venv-ref/bin/python tools/reference/make_io_golden.py
"""
import os

import torch
from safetensors.torch import save_file

from make_adapter_golden import OUT, write

DIR = os.path.join(OUT, "io")


def main():
    os.makedirs(DIR, exist_ok=True)
    gen = torch.Generator().manual_seed(5)
    source = torch.cat([torch.randn(40, generator=gen, dtype=torch.float64) * 3,
                        torch.tensor([0.0, -0.0, 1e-8, -6e-5, 65504.0, 70000.0, 1 / 3, 2.5, 448.0, 1e-3],
                                     dtype=torch.float64)]).reshape(5, 10)
    ints = torch.tensor([[0, 1, -1, 127, -128], [5, 100, -100, 42, 7]], dtype=torch.int64)
    tensors = {
        "f64": source.clone(), "f32": source.to(torch.float32), "f16": source.to(torch.float16),
        "bf16": source.to(torch.bfloat16), "f8_e4m3": source.clamp(-448, 448).to(torch.float8_e4m3fn),
        "f8_e5m2": source.clamp(-57344, 57344).to(torch.float8_e5m2),
        "i64": ints, "i32": ints.to(torch.int32), "i16": ints.to(torch.int16), "i8": ints.to(torch.int8),
        "u8": ints.abs().to(torch.uint8), "u16": ints.abs().to(torch.uint16),
        "u32": ints.abs().to(torch.uint32), "u64": ints.abs().to(torch.uint64),
        "bool": ints > 0, "scalar": torch.tensor(3.5, dtype=torch.float32),
        "cube": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
    }
    save_file(tensors, os.path.join(DIR, "dtypes.safetensors"), metadata={"format": "pt", "note": "every dtype"})
    with open(os.path.join(DIR, "dtypes.txt"), "w") as f:
        f.write("# the source values and what each stored tensor decodes to; see tools/reference/make_io_golden.py\n")
        write(f, "source", source)
        for name, t in tensors.items():
            v = t.to(torch.float64)
            write(f, name, v.reshape(v.shape[0], -1) if v.dim() >= 2 else v.reshape(1, -1))


if __name__ == "__main__":
    main()
