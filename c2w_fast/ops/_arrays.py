"""Array plumbing shared by the ops: numpy, torch and cupy in, one device out.

Conversions are zero-copy where the memory allows it (numpy <-> CPU torch, cupy <->
CUDA torch via DLPack), so ops accept whatever array the caller holds.
"""
from __future__ import annotations

import numbers

import numpy as np
import torch


def is_int(value) -> bool:
    """An integer argument (Python or numpy), not a bool: ``True`` would pass for 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def real_number(value) -> float:
    """``value`` as a float: a real number (Python, numpy, or a 0-d array or tensor), not a bool or a
    string, which ``float()`` would take for 1.0 or parse (a TypeError names what came)."""
    if getattr(value, "ndim", None) == 0 and hasattr(value, "item"):
        value = value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(f"expected a real number, got {value!r}")
    return float(value)


def is_cupy(array) -> bool:
    return type(array).__module__.split(".")[0] == "cupy"


def device_of(array) -> torch.device:
    """The torch device of a numpy/torch/cupy array (a CuPy array's with its GPU's index)."""
    if isinstance(array, torch.Tensor):
        return array.device
    if is_cupy(array):
        return torch.device("cuda", array.device.id)
    if isinstance(array, np.ndarray) or np.isscalar(array):
        return torch.device("cpu")
    raise TypeError(f"expected a numpy array, torch tensor or cupy array, got {type(array).__name__}")


def check_same_device(pred, gt) -> None:
    """A ValueError for a pair on two devices (a GPU and the CPU, or two GPUs)."""
    if device_of(pred) != device_of(gt):
        raise ValueError(f"pred and gt must be on the same device, got {device_of(pred)} and {device_of(gt)}")


def as_tensor(array) -> torch.Tensor:
    """A torch view of ``array`` (no copy for numpy, CPU/CUDA torch and cupy inputs, except for the
    numpy arrays torch cannot view: read-only, with negative strides (``a[::-1]``) or big-endian)."""
    if isinstance(array, torch.Tensor):
        return array
    if is_cupy(array):
        return torch.from_dlpack(array)
    if isinstance(array, np.ndarray):
        if not array.dtype.isnative:
            return torch.from_numpy(array.astype(array.dtype.newbyteorder("=")))
        viewable = array.flags.writeable and all(stride >= 0 for stride in array.strides)
        return torch.from_numpy(array if viewable else array.copy())
    raise TypeError(f"expected a numpy array, torch tensor or cupy array, got {type(array).__name__}")


def as_numpy(array) -> np.ndarray:
    """A numpy array with the values of ``array``; copies only from a GPU."""
    if isinstance(array, np.ndarray):
        return array
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    if is_cupy(array):
        return array.get()
    raise TypeError(f"expected a numpy array, torch tensor or cupy array, got {type(array).__name__}")


def as_mask(array, name: str) -> np.ndarray | torch.Tensor:
    """``array`` as a boolean mask of the same kind (numpy stays numpy, tensors stay tensors):
    nonzero is foreground. A TypeError for a complex (or otherwise non-numeric) array; a
    ValueError for a float array holding NaN/inf or fractional values (probabilities, which
    nonzero would count as foreground wherever they are above 0: threshold them first)."""
    if is_cupy(array):
        array = as_tensor(array)
    if isinstance(array, torch.Tensor):
        if array.dtype == torch.bool:
            return array
        if array.is_complex():
            raise TypeError(f"{name} must be a boolean or numeric mask, got dtype {array.dtype}")
        if array.is_floating_point():
            _check_float_mask(array, name)
        return array != 0
    try:
        array = np.asarray(array)
    except ValueError as exc:  # e.g. a list of masks of different shapes
        raise ValueError(f"{name} cannot be read as one array ({exc}); a batch holds masks of one shape") from None
    if array.dtype == bool:
        return array
    if not (np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise TypeError(f"{name} must be a boolean or numeric mask, got dtype {array.dtype}")
    if np.issubdtype(array.dtype, np.floating):
        _check_float_mask(array, name)
    return array != 0


def _check_float_mask(array, name: str) -> None:
    """The ValueErrors of :func:`as_mask` for a float mask (numpy or torch) with NaN/inf or fractional
    values; one reduction (one host sync on a GPU) when there are none."""
    xp = torch if isinstance(array, torch.Tensor) else np
    finite = xp.isfinite(array)
    not_whole = array != xp.round(array)  # NaN too
    if not (~finite | not_whole).any():
        return
    if not finite.all():
        raise ValueError(f"{name} must be a mask without NaN/inf values")
    raise ValueError(f"{name} holds fractional values (e.g. {float(array[not_whole][0]):g}), as a probability "
                     f"map does: threshold it first (e.g. {name} > 0.5); a mask is bool, or numbers whose "
                     "nonzero ones are foreground")
