"""Where the GPU backends' tests run: CUDA tensors on a GPU, else CPU tensors through Triton's interpreter.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` when there is no GPU, so the same tests check
the Triton kernels in CI (small shapes) and, on a GPU machine, the compiled Triton and CUDA C
kernels.
"""
import importlib.util

import numpy as np
import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the CUDA C kernels run through CuPy on a GPU only
GPU_BACKENDS = ["triton"] + (["cuda"] if DEVICE == "cuda" and importlib.util.find_spec("cupy") else [])


def on_device(array) -> torch.Tensor:
    """A numpy array as a tensor on the test device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(DEVICE)


def host(result) -> np.ndarray:
    """A tensor (or numpy array) as numpy, for comparisons."""
    return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)
