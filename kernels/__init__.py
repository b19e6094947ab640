"""Device kernels of c2w_fast (installed as ``c2w_fast.kernels``).

Triton kernels (``*.py``) and CUDA C sources (``*.cu``, compiled at run time by NVRTC
through CuPy), each with a thin launcher on tensors. No autograd and no policy here:
backend choice, validation and gradients live in :mod:`c2w_fast.ops`.
"""

import os


def interpreting() -> bool:
    """True when Triton runs kernels on the CPU through its interpreter (``TRITON_INTERPRET=1``).

    ``@triton.jit`` reads the variable when a kernel module is imported, so set it before the
    first use of a Triton backend.
    """
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
