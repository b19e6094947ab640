"""Where the GPU backends' tests run: CUDA tensors on a GPU, else CPU tensors through Triton's interpreter.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` when there is no GPU, so the same tests check
the Triton kernels in CI (small shapes) and, on a GPU machine, the compiled Triton and CUDA C
kernels.
"""
import contextlib
import importlib.util
import os
import sys

import numpy as np
import torch

import c2w_fast
import c2w_fast.kernels

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the CUDA C kernels run through CuPy on a GPU only
GPU_BACKENDS = ["triton"] + (["cuda"] if DEVICE == "cuda" and importlib.util.find_spec("cupy") else [])


def on_device(array) -> torch.Tensor:
    """A numpy array as a tensor on the test device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(DEVICE)


def host(result) -> np.ndarray:
    """A tensor (or numpy array) as numpy, for comparisons."""
    return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


_OURS = tuple(os.path.dirname(m.__file__) + os.sep for m in (c2w_fast, c2w_fast.kernels))
_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "cpu", "numpy")


@contextlib.contextmanager
def no_host_round_trips(monkeypatch):
    """Fails on anything c2w_fast does that makes the host wait for the GPU. On a GPU: CUDA's
    sync debug mode. On CPU: the calls that would, made directly from c2w_fast's code — a
    ``torch.tensor`` / ``torch.as_tensor`` of host data onto a device (a pageable copy waits for
    the stream) and reads of tensor values."""
    if DEVICE == "cuda":
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode("default")
        return

    def ours() -> bool:
        return sys._getframe(2).f_code.co_filename.startswith(_OURS)

    def creating(original):
        def create(data, *args, **kwargs):
            if kwargs.get("device") is not None and not isinstance(data, torch.Tensor) and ours():
                raise AssertionError(f"{original.__name__} of host data onto a device")
            return original(data, *args, **kwargs)
        return create

    def reading(name, original):
        def read(self, *args, **kwargs):
            if ours():
                raise AssertionError(f"Tensor.{name} reads a device value back")
            return original(self, *args, **kwargs)
        return read

    with monkeypatch.context() as patch:
        for name in ("tensor", "as_tensor"):
            patch.setattr(torch, name, creating(getattr(torch, name)))
        for name in _READS:
            patch.setattr(torch.Tensor, name, reading(name, getattr(torch.Tensor, name)))
        yield
