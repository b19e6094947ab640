"""Run-time compilation of this folder's CUDA C sources with NVRTC (through CuPy).

Each ``.cu`` file is compiled once per process and device, for that device's own
architecture, and launched on PyTorch's current stream so it orders with torch work.
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

SOURCE_DIR = Path(__file__).resolve().parent
NVRTC_OPTIONS = ("-std=c++17",)


@functools.cache
def _module(filename: str, device_index: int):
    """``filename``'s module for one device (the index is the cache key: CuPy compiles and loads a module at
    its first ``get_function``, on the device current then, so each device needs its own)."""
    import cupy

    return cupy.RawModule(code=(SOURCE_DIR / filename).read_text(), options=NVRTC_OPTIONS)


def launch(filename: str, name: str, grid: tuple[int, ...], block: tuple[int, ...], args: tuple, device: torch.device):
    """Launch ``name`` from ``filename`` on the current torch stream of ``device``.

    Tensor arguments are passed as raw device pointers; Python ints and floats must
    already be wrapped in the numpy scalar type the kernel signature expects.
    """
    import cupy

    index = device.index if device.index is not None else torch.cuda.current_device()
    raw = tuple(a.data_ptr() if isinstance(a, torch.Tensor) else a for a in args)
    with cupy.cuda.Device(index), cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        _module(filename, index).get_function(name)(grid, block, raw)
