"""Bounding box of a (z, y, x) uint8 mask: Triton kernel and CUDA C launcher.

Both write {z0, z1, y0, y1, x0, x1} (last index inclusive) into an int32 buffer with
atomics, one per block (Triton) or per warp (CUDA), and return it half-open.
"""
from __future__ import annotations

import numpy as np
import torch
import triton
import triton.language as tl

from c2w_fast.kernels import _nvrtc, cdiv, host_to_device

_BIG = 2**31 - 1


@triton.jit
def _bounding_box_kernel(mask_ptr, box_ptr, n, ny, nx, BLOCK: tl.constexpr, BIG: tl.constexpr):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offsets < n
    hit = inside & (tl.load(mask_ptr + offsets, mask=inside, other=0) != 0)
    if tl.max(hit.to(tl.int32), axis=0) > 0:
        x = offsets % nx
        y = (offsets // nx) % ny
        z = offsets // (nx * ny)
        tl.atomic_min(box_ptr + 0, tl.min(tl.where(hit, z, BIG), axis=0).to(tl.int32))
        tl.atomic_max(box_ptr + 1, tl.max(tl.where(hit, z, -1), axis=0).to(tl.int32))
        tl.atomic_min(box_ptr + 2, tl.min(tl.where(hit, y, BIG), axis=0).to(tl.int32))
        tl.atomic_max(box_ptr + 3, tl.max(tl.where(hit, y, -1), axis=0).to(tl.int32))
        tl.atomic_min(box_ptr + 4, tl.min(tl.where(hit, x, BIG), axis=0).to(tl.int32))
        tl.atomic_max(box_ptr + 5, tl.max(tl.where(hit, x, -1), axis=0).to(tl.int32))


def _new_box(device: torch.device) -> torch.Tensor:
    return host_to_device([_BIG, -1, _BIG, -1, _BIG, -1], torch.int32, device)


def _half_open(box: torch.Tensor) -> tuple[int, ...]:
    z0, z1, y0, y1, x0, x1 = box.tolist()  # the op's single host sync
    return (z0, z1 + 1, y0, y1 + 1, x0, x1 + 1)


def _check(mask: torch.Tensor) -> None:
    if mask.dtype != torch.uint8 or mask.ndim != 3 or not mask.is_contiguous():
        raise ValueError(f"mask must be a contiguous 3D uint8 tensor, got {mask.dtype} {tuple(mask.shape)}")


def bounding_box_triton(mask: torch.Tensor, block: int = 1024) -> tuple[int, ...]:
    """Half-open (z0, z1, y0, y1, x0, x1) of the nonzero voxels of a contiguous uint8 (z, y, x) mask."""
    _check(mask)
    box = _new_box(mask.device)
    n = mask.numel()
    if n:
        _bounding_box_kernel[(cdiv(n, block),)](mask, box, n, mask.shape[1], mask.shape[2],
                                                       BLOCK=block, BIG=_BIG)
    return _half_open(box)


def bounding_box_cuda(mask: torch.Tensor) -> tuple[int, ...]:
    """The same as :func:`bounding_box_triton`, with the CUDA C kernel of ``bounding_box.cu``."""
    _check(mask)
    box = _new_box(mask.device)
    n = mask.numel()
    if n:
        threads = 256
        blocks = min(cdiv(n, threads * 8), 65535)
        _nvrtc.launch("bounding_box.cu", "bounding_box", (blocks,), (threads,),
                      (mask, np.int64(n), np.int32(mask.shape[1]), np.int32(mask.shape[2]), box), mask.device)
    return _half_open(box)
