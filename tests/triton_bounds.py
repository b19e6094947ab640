"""Out-of-bounds checks for Triton kernels run by the interpreter: what compute-sanitizer's
memcheck does on a GPU, for the CI that has none.

Every load, store and atomic a kernel performs with its mask on must lie inside one of the
tensors passed to that launch. An access outside them returns the right answer in the
interpreter (the stores are masked, the stray loads discarded), so only this check sees it; on
a GPU the same access reads another allocation or faults with an illegal address.

The check hooks the interpreter's memory operations (``triton.runtime.interpreter``); a Triton
whose interpreter lacks them makes :func:`hooks_problem` say which, and the tests run unchecked.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import numpy as np
import torch

_BUILDER_HOOKS = ("create_masked_load", "create_masked_store", "create_atomic_rmw", "create_atomic_cas")


@dataclass
class Violation:
    kernel: str
    access: str
    count: int
    first_address: int


@dataclass
class _Launch:
    """The current launch's kernel name and the merged [start, end) byte ranges of its tensor arguments."""
    kernel: str = ""
    starts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))
    ends: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint64))


def _interpreter():
    from triton.runtime import interpreter
    return interpreter


def hooks_problem() -> str | None:
    """Why the interpreter cannot be checked here (None: it can)."""
    try:
        interpreter = _interpreter()
    except ImportError as exc:
        return f"Triton's interpreter does not import ({exc})"
    missing = [f"GridExecutor.{name}" for name in ("_init_args_hst", "__call__")
               if not hasattr(interpreter.GridExecutor, name)]
    missing += [f"InterpreterBuilder.{name}" for name in _BUILDER_HOOKS
                if not hasattr(interpreter.InterpreterBuilder, name)]
    return f"this Triton's interpreter has no {', '.join(missing)}" if missing else None


def _byte_range(tensor: torch.Tensor) -> tuple[int, int] | None:
    """[first byte, one past the last byte) of the elements ``tensor`` views (None when empty)."""
    if tensor.numel() == 0:
        return None
    last = sum((size - 1) * stride for size, stride in zip(tensor.shape, tensor.stride()))
    return tensor.data_ptr(), tensor.data_ptr() + (last + 1) * tensor.element_size()


def _merged(ranges: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """Sorted, non-overlapping ranges covering ``ranges`` (views of one tensor overlap)."""
    merged: list[list[int]] = []
    for start, end in sorted(ranges):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    array = np.array(merged, dtype=np.uint64).reshape(-1, 2)
    return array[:, 0].copy(), array[:, 1].copy()


def _tensors(value):
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (tuple, list)):
        for item in value:
            yield from _tensors(item)


class BoundsChecker:
    """Records the masked-in accesses of every interpreted launch that fall outside its tensor arguments."""

    def __init__(self):
        self.violations: list[Violation] = []
        self._launch = _Launch()

    def _check(self, access: str, pointers, mask, item_bytes: int) -> None:
        addresses = np.asarray(pointers.data, dtype=np.uint64)
        if mask is not None:
            addresses = addresses[np.broadcast_to(np.asarray(mask.data, dtype=bool), addresses.shape)]
        addresses = addresses.ravel()
        if addresses.size == 0:
            return
        launch = self._launch
        index = np.searchsorted(launch.starts, addresses, side="right").astype(np.int64) - 1
        inside = index >= 0
        inside[inside] = addresses[inside] + np.uint64(item_bytes) <= launch.ends[index[inside]]
        if not inside.all():
            outside = addresses[~inside]
            self.violations.append(Violation(launch.kernel, access, int(outside.size), int(outside[0])))

    @contextlib.contextmanager
    def installed(self):
        """Every launch in the block checked (hooks removed after it)."""
        interpreter = _interpreter()
        executor, builder = interpreter.GridExecutor, interpreter.InterpreterBuilder
        init_args, call = executor._init_args_hst, executor.__call__
        hooked = {name: getattr(builder, name) for name in _BUILDER_HOOKS}
        checker = self

        def element_bytes(handle) -> int:
            return np.dtype(interpreter._get_np_dtype(handle.get_element_ty())).itemsize

        def init_args_hooked(self, args_dev, kwargs):
            args, kwargs_hst = init_args(self, args_dev, kwargs)
            ranges = [r for t in _tensors([*args, *kwargs_hst.values()]) if (r := _byte_range(t))]
            checker._launch.starts, checker._launch.ends = _merged(ranges)
            return args, kwargs_hst

        def call_hooked(self, *args, **kwargs):
            checker._launch.kernel = getattr(self.fn, "__name__", str(self.fn))
            return call(self, *args, **kwargs)

        def load(self, ptrs, mask, other, *rest):
            checker._check("load", ptrs, mask, element_bytes(ptrs))
            return hooked["create_masked_load"](self, ptrs, mask, other, *rest)

        def store(self, ptrs, value, mask, *rest):
            checker._check("store", ptrs, mask, element_bytes(ptrs))
            return hooked["create_masked_store"](self, ptrs, value, mask, *rest)

        def atomic_rmw(self, op, ptr, value, mask, *rest):
            checker._check("atomic", ptr, mask, element_bytes(ptr))
            return hooked["create_atomic_rmw"](self, op, ptr, value, mask, *rest)

        def atomic_cas(self, ptr, compare, value, *rest):
            checker._check("atomic", ptr, None, element_bytes(ptr))
            return hooked["create_atomic_cas"](self, ptr, compare, value, *rest)

        replacements = [(executor, "_init_args_hst", init_args_hooked), (executor, "__call__", call_hooked),
                        (builder, "create_masked_load", load), (builder, "create_masked_store", store),
                        (builder, "create_atomic_rmw", atomic_rmw), (builder, "create_atomic_cas", atomic_cas)]
        originals = [(owner, name, getattr(owner, name)) for owner, name, _ in replacements]
        try:
            for owner, name, replacement in replacements:
                setattr(owner, name, replacement)
            yield self
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)

    def report(self) -> str:
        """One line per kernel and access kind that went outside its launch's tensors."""
        totals: dict[tuple[str, str], list[int]] = {}
        for v in self.violations:
            entry = totals.setdefault((v.kernel, v.access), [0, 0, v.first_address])
            entry[0] += 1
            entry[1] += v.count
        return "\n".join(f"{kernel}: {count} masked-in {access} address(es) outside its tensor arguments in "
                         f"{launches} access(es) (first {first:#x})"
                         for (kernel, access), (launches, count, first) in totals.items())
