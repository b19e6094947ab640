"""The CUDA C kernels of ``kernels/*.cu`` run on the CPU (``cuda_emulator.hpp``), for CI without a GPU.

:func:`launch` stands in for ``c2w_fast.kernels._nvrtc.launch`` (same signature) with CPU
tensors: each ``.cu`` file is compiled once by g++ with the emulator header, and every
argument is checked against the kernel's declared parameter, as the GPU would need it
(a tensor of the pointer's element type, a numpy scalar of the exact integer width), before
it is passed by address as cuLaunchKernel takes it.
"""
from __future__ import annotations

import ctypes
import functools
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch

from c2w_fast.kernels._nvrtc import SOURCE_DIR

GXX = shutil.which("g++")
HEADER = Path(__file__).with_name("cuda_emulator.hpp")
KERNEL = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(\w+)\s*\(([^)]*)\)')
POINTEES = {"unsigned char": torch.uint8, "int": torch.int32, "long long": torch.int64, "float": torch.float32}
SCALARS = {"int": (np.int32, ctypes.c_int32), "long long": (np.int64, ctypes.c_int64),
           "float": (np.float32, ctypes.c_float)}


def kernels_of(filename: str) -> dict[str, list[str]]:
    """name -> C types of its parameters (``const`` dropped, pointers ending in ``*``)."""
    source = (SOURCE_DIR / filename).read_text()
    found = {}
    for name, params in KERNEL.findall(source):
        types = [" ".join(p.replace("*", " * ").split()[:-1]).replace("const ", "").replace(" *", "*")
                 for p in params.split(",")]
        found[name] = types
    return found


@functools.cache
def _library(filename: str) -> ctypes.CDLL:
    with tempfile.TemporaryDirectory(prefix="c2w_cuda_emulator_") as folder:  # a loaded library outlives its file
        wrapper, library = Path(folder) / "kernels.cpp", Path(folder) / "kernels.so"
        wrapper.write_text(f'#include "{HEADER}"\n#include "{SOURCE_DIR / filename}"\n'
                           + "".join(f"C2W_EMULATE({name})\n" for name in kernels_of(filename)))
        command = [GXX, "-std=c++20", "-O1", "-Wall", "-pthread", "-shared", "-fPIC", "-o", str(library), str(wrapper)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode:
            raise RuntimeError(f"g++ could not build the emulated {filename}:\n{result.stderr}")
        return ctypes.CDLL(str(library))


def _argument(value, c_type: str, where: str):
    """``value`` as the ctypes object the kernel's ``c_type`` parameter reads; an AssertionError when
    the GPU would read something else."""
    if c_type.endswith("*"):
        assert isinstance(value, torch.Tensor), f"{where}: a {c_type} needs a tensor, got {type(value).__name__}"
        pointee = POINTEES[c_type[:-1]]
        assert value.dtype == pointee, f"{where}: a {c_type} needs a {pointee} tensor, got {value.dtype}"
        assert value.is_contiguous(), f"{where}: a non-contiguous tensor"
        return ctypes.c_void_p(value.data_ptr())
    numpy_type, ctypes_type = SCALARS[c_type]
    assert type(value) is numpy_type, f"{where}: an {c_type} needs a {numpy_type.__name__}, got {type(value).__name__}"
    return ctypes_type(value)


def launch(filename: str, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, device=None):
    """Run kernel ``name`` of ``filename`` on the CPU (see ``c2w_fast.kernels._nvrtc.launch``)."""
    params = kernels_of(filename)[name]
    assert len(args) == len(params), f"{name} takes {len(params)} arguments, got {len(args)}"
    assert len(grid) <= 3 and len(block) <= 3 and all(n >= 1 for n in (*grid, *block)), (grid, block)
    threads = int(np.prod(block))
    assert threads <= 1024 and block[0] <= 1024 and grid[1:] <= (65535, 65535)[:len(grid) - 1], (grid, block)
    values = [_argument(a, c, f"{name} argument {i}") for i, (a, c) in enumerate(zip(args, params))]
    pointers = (ctypes.c_void_p * len(values))(*[ctypes.cast(ctypes.pointer(v), ctypes.c_void_p) for v in values])
    dims = (ctypes.c_uint * 6)(*(tuple(grid) + (1,) * (3 - len(grid))), *(tuple(block) + (1,) * (3 - len(block))))
    misused = getattr(_library(filename), f"emulate_{name}")(dims, pointers)
    assert misused == 0, f"{name}: a full-mask warp collective ran after some lanes of the warp had returned"
