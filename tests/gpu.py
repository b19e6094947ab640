"""Where the GPU backends' tests run: CUDA tensors on a GPU, else CPU tensors through Triton's interpreter.

``tests/conftest.py`` sets ``TRITON_INTERPRET=1`` when there is no GPU, so the same tests check
the Triton kernels in CI (small shapes) and, on a GPU machine, the compiled Triton and CUDA C
kernels.
"""
import contextlib
import os
import sys

import numpy as np
import torch

import c2w_fast
import c2w_fast.kernels
from c2w_fast.ops import backend_problem

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# the CUDA C kernels run through CuPy on a GPU only (and only with a CuPy that can compile them)
GPU_BACKENDS = ["triton"] + (["cuda"] if DEVICE == "cuda" and backend_problem("cuda", "cuda") is None else [])


def on_device(array) -> torch.Tensor:
    """A numpy array as a tensor on the test device."""
    return torch.from_numpy(np.ascontiguousarray(array)).to(DEVICE)


def host(result) -> np.ndarray:
    """A tensor (or numpy array) as numpy, for comparisons."""
    return result.cpu().numpy() if isinstance(result, torch.Tensor) else np.asarray(result)


_OURS = tuple(os.path.dirname(m.__file__) + os.sep for m in (c2w_fast, c2w_fast.kernels))
_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


@contextlib.contextmanager
def no_host_round_trips(monkeypatch):
    """Fails on anything c2w_fast does that makes the host wait for the GPU. On a GPU: CUDA's
    sync debug mode (the real check). On CPU, where every tensor is a host tensor, the calls
    that would, made directly from c2w_fast's code: host data made into a tensor
    (``torch.tensor`` / ``torch.as_tensor`` onto a device, ``torch.from_numpy``: on a GPU a
    pageable copy that waits for the stream), reads of tensor values, ``nonzero`` and boolean
    indexing. A plain ``.to(device)`` of a host tensor cannot be told from a device move on CPU."""
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

    def creating(original, needs_device: bool):
        def create(data, *args, **kwargs):
            onto_device = kwargs.get("device") is not None or not needs_device
            if onto_device and not isinstance(data, torch.Tensor) and ours():
                raise AssertionError(f"{original.__name__} of host data")
            return original(data, *args, **kwargs)
        return create

    def reading(name, original):
        def read(self, *args, **kwargs):
            if ours():
                raise AssertionError(f"Tensor.{name} waits for the device")
            return original(self, *args, **kwargs)
        return read

    def indexing(original):
        def getitem(self, index):
            parts = index if isinstance(index, tuple) else (index,)
            if any(isinstance(p, torch.Tensor) and p.dtype == torch.bool for p in parts) and ours():
                raise AssertionError("boolean-mask indexing waits for the device (its size)")
            return original(self, index)
        return getitem

    with monkeypatch.context() as patch:
        for name, needs_device in (("tensor", True), ("as_tensor", True), ("from_numpy", False)):
            patch.setattr(torch, name, creating(getattr(torch, name), needs_device))
        patch.setattr(torch, "nonzero", reading("nonzero", torch.nonzero))
        for name in _READS:
            patch.setattr(torch.Tensor, name, reading(name, getattr(torch.Tensor, name)))
        patch.setattr(torch.Tensor, "__getitem__", indexing(torch.Tensor.__getitem__))
        yield
