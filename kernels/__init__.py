"""Device kernels of c2w_fast (installed as ``c2w_fast.kernels``).

Triton kernels (``*.py``) and CUDA C sources (``*.cu``, compiled at run time by NVRTC
through CuPy), each with a thin launcher on tensors. No autograd and no policy here:
backend choice, validation and gradients live in :mod:`c2w_fast.ops`.
"""

import os

import numpy as np
import torch


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``).

    ``@triton.jit`` reads the variable when a kernel module is imported, so set it before the
    first use of a Triton backend.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Host-side integer helpers for launch grids and tiles. ``triton.cdiv`` and
# ``triton.next_power_of_2`` are constexpr functions since Triton 3.4, and each host call
# costs microseconds of argument unwrapping: a fused block's backward computes dozens.
def cdiv(a: int, b: int) -> int:
    """Ceiling of a / b for positive ints."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1)."""
    return 1 << max(n - 1, 0).bit_length()


def host_to_device(values, dtype: torch.dtype, device) -> torch.Tensor:
    """A few host values (launch tables, constants) as a tensor on ``device`` without waiting for
    the GPU: a copy from pageable memory synchronises the stream (the host would wait for all
    queued work), so CUDA copies are staged in pinned memory and issued non-blocking (PyTorch's
    pinned allocator keeps the staging buffer until the copy has run). Not for code captured
    in a CUDA graph: a replay would read the staging buffer after it was recycled."""
    host = torch.as_tensor(np.asarray(values), dtype=dtype)
    device = torch.device(device)
    if device.type != "cuda":
        return host.to(device)
    return host.pin_memory().to(device, non_blocking=True)
