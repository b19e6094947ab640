"""Backend selection shared by every public op: one contract, one error style.

Every public op takes ``backend="auto" | "reference" | "cpu" | "triton" | "cuda"``:

* ``reference`` — plain torch/numpy/scipy; the truth the tests compare against; runs anywhere.
* ``cpu`` — the C++/OpenMP extension ``c2w_fast._cpu``; CPU inputs only.
* ``triton`` — Triton kernels in ``c2w_fast.kernels``; CUDA tensors, or CPU tensors when
  ``TRITON_INTERPRET=1`` is set before the first call (that is how CI tests them).
* ``cuda`` — CUDA C kernels compiled at run time by NVRTC through CuPy; CUDA tensors only.
* ``auto`` — the fastest available backend for the inputs' device, in the op's order of
  preference; when none of those can run it falls back to ``reference`` with a one-time
  :class:`BackendFallbackWarning` that says what is missing.

Asking for an unavailable backend by name raises :class:`BackendUnavailableError` naming
what is missing; it never falls back silently.
"""
from __future__ import annotations

import functools
import importlib
import os
import sys
import warnings
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping

import torch

from c2w_fast.kernels import interpreting

BACKENDS = ("reference", "cpu", "triton", "cuda")
BACKEND_CHOICES = ("auto", *BACKENDS)
# The volume ops' ``auto`` order (metrics, distances, components, morphology): the C++ backend
# for CPU inputs; for CUDA inputs the CUDA C kernels where the op has them, else Triton.
COMPILED_FIRST = MappingProxyType({"cpu": ("cpu",), "cuda": ("cuda", "triton")})


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here; the message says what is missing."""


class BackendFallbackWarning(RuntimeWarning):
    """``backend="auto"`` had to use the slow reference implementation."""


def triton_interpreter_enabled() -> bool:
    """True when Triton kernels run on the CPU through Triton's interpreter."""
    return interpreting()


def _cpu_extension_problem(device_type: str) -> str | None:
    if device_type != "cpu":
        return f"it runs on CPU inputs only, got {device_type} inputs"
    try:
        importlib.import_module("c2w_fast._cpu")
    except ImportError as exc:
        return f"the C++ extension c2w_fast._cpu is not built ({exc}); reinstall with `pip install -e .`"
    return None


OLDEST_TRITON = (3, 6)  # the oldest Triton the kernels compile with (tested: Makefile's TRITON_OLDEST)
OLDEST_INTERPRETER = (3, 7)  # with NumPy >= 2.4: 3.6's interpreter holds a loop bound in a 1-element array
NUMPY_STRICT_SCALARS = (2, 4)  # and NumPy 2.4 refuses to turn such an array into an int


def _version(text: str) -> tuple[int, ...]:
    """(major, minor) of a version string such as ``3.7.0+git1a2b3c``."""
    return tuple(int(part) for part in text.split(".")[:2] if part.isdigit())


def interpreter_problem() -> str | None:
    """Why the installed Triton's interpreter cannot run the kernels on the CPU, or None: Triton 3.6's
    fails on every loop over a runtime bound with NumPy >= 2.4 (an InterpreterError "only
    0-dimensional arrays can be converted to Python scalars")."""
    import numpy
    import triton

    if _version(triton.__version__) < OLDEST_INTERPRETER and _version(numpy.__version__) >= NUMPY_STRICT_SCALARS:
        return (f"triton {triton.__version__}'s interpreter cannot run the kernels with numpy {numpy.__version__} "
                f"(it needs triton >= {'.'.join(map(str, OLDEST_INTERPRETER))} or numpy < "
                f"{'.'.join(map(str, NUMPY_STRICT_SCALARS))}; compiled kernels on a GPU are not affected)")
    return None


def _triton_problem(device_type: str) -> str | None:
    try:
        import triton
    except ImportError:
        return "triton is not installed (`pip install triton`)"
    if _version(triton.__version__) < OLDEST_TRITON:
        return (f"triton {triton.__version__} is older than {'.'.join(map(str, OLDEST_TRITON))}, the oldest the "
                "kernels compile with (upgrade torch to >= 2.10, or triton)")
    if device_type == "cuda":
        return None
    if device_type == "cpu" and triton_interpreter_enabled():
        return interpreter_problem()
    return (f"triton runs {device_type} inputs only in interpreter mode; "
            "set TRITON_INTERPRET=1 before the first call")


def import_problem(name: str) -> str | None:
    """Why the package ``name`` cannot be imported, ``"is not installed"`` or ``"cannot be imported (...)"``
    (CuPy re-raises its CUDA libraries' load failures as ImportError), or None when it imports."""
    try:
        importlib.import_module(name)
    except Exception as exc:  # noqa: BLE001 - whatever the import raised is the reason
        if isinstance(exc, ModuleNotFoundError) and exc.name == name:
            return "is not installed"
        return f"cannot be imported ({type(exc).__name__}: {exc})"
    return None


CUPY_INSTALL = "install the one for torch's CUDA: `pip install 'c2w_fast[cuda]'` for CUDA 12, '[cuda13]' for 13"


def _cuda_problem(device_type: str) -> str | None:
    if device_type != "cuda":
        return f"it runs on CUDA inputs only, got {device_type} inputs"
    problem = import_problem("cupy")
    return f"cupy {problem}; {CUPY_INSTALL}" if problem else nvrtc_problem()


@functools.cache
def nvrtc_problem() -> str | None:
    """Why CuPy cannot compile the CUDA C kernels here, or None (checked once per process): a CuPy built
    for another CUDA (cupy-cuda12x beside a CUDA 13 torch, without CUDA 12's libraries) imports but
    fails at its first compile, where ``auto`` could no longer fall back to Triton."""
    try:
        import cupy

        cupy.cuda.nvrtc.getVersion()
    except Exception as exc:  # noqa: BLE001 - whatever stops the library from loading
        return f"cupy cannot load its NVRTC compiler ({type(exc).__name__}: {exc}); {CUPY_INSTALL}"
    return None


_PROBLEM_CHECKS: Mapping[str, Callable[[str], str | None]] = {
    "reference": lambda device_type: None,
    "cpu": _cpu_extension_problem,
    "triton": _triton_problem,
    "cuda": _cuda_problem,
}

_warned: set[tuple[str, str]] = set()


def backend_problem(backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run on ``device_type`` inputs here, or None when it can."""
    return _PROBLEM_CHECKS[backend](device_type)


@dataclass(frozen=True)
class Op:
    """One public op: its implementations by backend and its fast-path preference by device.

    ``implementations`` must hold ``"reference"``. ``preferred`` maps a device type
    (``"cpu"``, ``"cuda"``) to the backends ``auto`` tries, fastest first; a device type
    with no entry (or an empty one) uses the reference without a warning.
    """

    name: str
    implementations: Mapping[str, Callable]
    preferred: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    def __post_init__(self):
        if "reference" not in self.implementations:
            raise ValueError(f"op {self.name!r} needs a reference implementation")
        unknown = set(self.implementations) - set(BACKENDS)
        if unknown:
            raise ValueError(f"op {self.name!r}: unknown backends {sorted(unknown)}")

    def select(self, backend: str, device: torch.device | str) -> Callable:
        """The implementation to run for ``backend`` on inputs living on ``device`` (a device type suffices for
        the choice), run with that GPU current (:func:`on_device`)."""
        device = torch.device(device)
        return on_device(self._implementation(backend, device.type), device)

    def _implementation(self, backend: str, device_type: str) -> Callable:
        if backend not in BACKEND_CHOICES:
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        if backend != "auto":
            if backend not in self.implementations:
                raise BackendUnavailableError(
                    f"{self.name}: there is no {backend!r} backend; "
                    f"implemented: {', '.join(sorted(self.implementations))}")
            problem = backend_problem(backend, device_type)
            if problem:
                raise BackendUnavailableError(f"{self.name}: backend {backend!r} is unavailable: {problem}")
            return self.implementations[backend]
        return self.implementations[self.auto_backend(device_type)]

    def auto_choice(self, device_type: str) -> tuple[str, list[str]]:
        """The backend ``auto`` picks for inputs on ``device_type`` (the first preferred one available here,
        else ``reference``) and why each preferred one tried before it cannot run, without warning."""
        problems = []
        for name in self.preferred.get(device_type, ()):
            if name not in self.implementations:
                continue
            problem = backend_problem(name, device_type)
            if problem is None:
                return name, problems
            problems.append(f"{name}: {problem}")
        return "reference", problems

    def auto_backend(self, device_type: str) -> str:
        """The backend ``auto`` runs for inputs on ``device_type`` (:meth:`auto_choice`), warning with a
        :class:`BackendFallbackWarning` (once per op and device type) when it falls back to ``reference``."""
        name, problems = self.auto_choice(device_type)
        if name == "reference" and problems and (self.name, device_type) not in _warned:
            _warned.add((self.name, device_type))
            warnings.warn(f"{self.name}: no fast backend for {device_type} inputs "
                          f"({'; '.join(problems)}); using the reference implementation",
                          BackendFallbackWarning, stacklevel=_outside_stacklevel())
        return name


@functools.lru_cache(maxsize=None)
def on_device(implementation: Callable, device: torch.device) -> Callable:
    """``implementation``, run with ``device`` as the current CUDA device when it is a GPU: Triton launches on
    the current device and its stream, not on its inputs' (kernels for cuda:1 tensors would run on GPU 0).
    One wrapper per implementation and device, made at its first call."""
    if device.type != "cuda" or device.index is None:
        return implementation

    @functools.wraps(implementation)
    def on_its_gpu(*args, **kwargs):
        with torch.cuda.device(device):
            return implementation(*args, **kwargs)
    return on_its_gpu


# c2w_fast and torch (whose decorators wrap some of its functions): a warning names the first line outside them
_INTERNAL = tuple(os.path.dirname(module.__file__) + os.sep for module in (sys.modules[__name__.split(".")[0]], torch))


def _outside_stacklevel() -> int:
    """``stacklevel`` for a ``warnings.warn`` in the caller that names the user's line: the first frame
    outside c2w_fast and torch, however deep the op that warns was called (``hd`` → ``evaluate`` → ...)."""
    frame, level = sys._getframe(2), 2
    while frame is not None and frame.f_code.co_filename.startswith(_INTERNAL):
        frame, level = frame.f_back, level + 1
    return level


def reference_only(backend: str, problem: str) -> str:
    """The backend for inputs only the reference takes: ``reference`` under ``auto``, ``problem``
    as a ``ValueError`` for an explicit ``triton``, any other choice as given."""
    if backend == "triton":
        raise ValueError(problem)
    return "reference" if backend == "auto" else backend


def first_order_backward(backward: Callable) -> Callable:
    """Decorates the ``backward`` of a fused op's autograd Function, which has no double backward.

    Autograd runs a backward with grad mode on only for ``create_graph=True``; the decorated
    backward then raises instead of returning a gradient without a graph, which would silently
    drop every second-order term (gradient penalties, Hessian-vector products).
    """
    @functools.wraps(backward)
    def first_order(ctx, *grads):
        if torch.is_grad_enabled():
            raise RuntimeError("the triton backend's backward is first-order only (create_graph=True asks for "
                               "a double backward); use backend='reference' for higher-order gradients")
        return backward(ctx, *grads)
    return first_order
