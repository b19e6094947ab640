"""Inference engine: batched, Gaussian-weighted sliding windows on the GPU.

:func:`sliding_window` runs a model over a (C, D, H, W) volume in patch-sized windows
whose starts are spread evenly with at most ``step`` × patch between them (``step`` 0.5 =
overlap 0.5, nnU-Net's default; 1.0 = the MBAS paper's fast mode: 27 instead of 64 windows
for 44×640×640 with 20×256×256 patches), several windows per forward pass, logits
weighted by a Gaussian centred on each window (σ = patch / 8) and averaged where windows
overlap. Options: bf16/fp16 autocast, mirroring test-time augmentation, CUDA-graph
capture of the forward pass; on CUDA out-of-memory the window batch is halved and the
batch retried. Stitching runs on the image's device.

Trained stages that predict whole cases around this engine are :mod:`c2w_fast.stages`;
the steps from logits to label maps, :mod:`c2w_fast.postprocess`.
"""
from __future__ import annotations

import contextlib
import itertools
import math
import time
import warnings
from collections import defaultdict
from functools import lru_cache

import torch

from c2w_fast.ops._arrays import is_int

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# GPU allocation failures that reach Python as a plain RuntimeError rather than torch.cuda.OutOfMemoryError
ALLOCATION_FAILURES = ("CUDNN_STATUS_ALLOC_FAILED", "CUBLAS_STATUS_ALLOC_FAILED", "CUDA error: out of memory")


def out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` is the GPU running out of memory: PyTorch's allocator's error, or a cuDNN, cuBLAS or
    CUDA allocation failure (:data:`ALLOCATION_FAILURES`)."""
    return isinstance(exc, torch.cuda.OutOfMemoryError) or (
        isinstance(exc, RuntimeError) and any(text in str(exc) for text in ALLOCATION_FAILURES))


class InferenceError(RuntimeError):
    """Inference cannot go on: out of memory with one window per batch, a missing stage."""


# --- timing ----------------------------------------------------------------------------------

PHASES = ("read", "preprocess", "network", "stitch", "postprocess", "write")  # a case's phases, in order


class PhaseTimer:
    """Exclusive wall time (s) per named phase; the timed GPU is synchronised at every phase boundary.

    Phases nest: entering one pauses the enclosing phase, so the totals add up to the
    elapsed time (a helper stage's network time counts as ``network``, not as the caller's
    ``preprocess``). ``device`` is where the timed work runs: its queued kernels are waited for
    at each boundary (None: the current GPU; a CPU device: none). A disabled timer costs
    nothing and synchronises nothing.
    """

    def __init__(self, enabled: bool = True, device=None):
        self.enabled = enabled
        self.device = None if device is None else torch.device(device)
        self.totals: dict[str, float] = defaultdict(float)
        self._stack: list[str] = []
        self._since = 0.0

    def _now(self) -> float:
        on_gpu = self.device is None or self.device.type == "cuda"
        if on_gpu and torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize(self.device)  # another GPU's work would be cut short by the current one's sync
        return time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        if not self.enabled:
            yield
            return
        now = self._now()
        if self._stack:
            self.totals[self._stack[-1]] += now - self._since
        self._stack.append(name)
        self._since = now
        try:
            yield
        finally:
            now = self._now()
            self.totals[self._stack.pop()] += now - self._since
            self._since = now

    def ordered(self) -> dict[str, float]:
        """The totals in the order a case goes through :data:`PHASES` (others after them)."""
        rank = {name: i for i, name in enumerate(PHASES)}
        return dict(sorted(self.totals.items(), key=lambda item: rank.get(item[0], len(PHASES))))


NO_TIMER = PhaseTimer(enabled=False)


# --- windows -----------------------------------------------------------------------------------

MIN_WEIGHT = torch.finfo(torch.float32).tiny ** 0.5  # ~1e-19: weight * |logit| >= 1e-19 stays a normal float32


@lru_cache(maxsize=8)
def _gaussian_cached(patch: tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    axes = []
    for n in patch:
        t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (t / (n * sigma_scale)) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    # every voxel gets a weight: never 0, nor so small in float32 that weight * logit loses its precision
    return weight.clamp_min(max(weight[weight > 0].min().item(), MIN_WEIGHT)).float()


GAUSSIAN_SIGMA_SCALE = 1 / 8  # sigma of the window weights, as a fraction of the patch size (nnU-Net's)


def gaussian_importance(patch, sigma_scale: float = GAUSSIAN_SIGMA_SCALE) -> torch.Tensor:
    """(D, H, W) weights, 1 at the patch centre, a Gaussian with σ = ``sigma_scale`` · size per axis
    (a copy: the cached map that :func:`sliding_window` reads stays as it is)."""
    return _gaussian_cached(tuple(int(p) for p in patch), float(sigma_scale)).clone()


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start offsets of windows of ``patch`` covering ``size`` with at most ``step`` · patch between them."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step) - 1e-9) + 1  # 1 - overlap is inexact (0.6 for 0.4)
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


def window_positions(shape, patch, step: float) -> list[tuple[int, int, int]]:
    """(z, y, x) starts of every window over a volume of ``shape`` (already at least ``patch``)."""
    return list(itertools.product(*(window_starts(n, p, step) for n, p in zip(shape, patch))))


def window_count(shape, patch, step: float) -> int:
    """Windows :func:`sliding_window` runs over ``shape`` (padded to ``patch`` where smaller)."""
    return len(window_positions([max(n, p) for n, p in zip(shape, patch)], patch, step))


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def default_precision(amp: bool, device) -> str:
    """Training's ``run.amp`` as an inference precision: bf16 on a GPU, fp32 on a CPU."""
    return "bf16" if amp and torch.device(device).type == "cuda" else "fp32"


def resolve_device(name) -> torch.device:
    """``auto`` (a GPU when there is one), ``cpu``, ``cuda`` or ``cuda:N`` (or a torch.device); a
    ValueError for a CUDA device without a GPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device}: no CUDA GPU is available (torch.cuda.is_available() is False)")
    if device.type == "cuda" and device.index is not None and device.index >= (count := torch.cuda.device_count()):
        raise ValueError(f"device {device}: torch sees {count} GPU(s), cuda:0 to cuda:{count - 1} "
                         "(CUDA_VISIBLE_DEVICES renumbers the GPUs it lists from 0)")
    return device


def _pad_to_patch(image: torch.Tensor, patch) -> tuple[torch.Tensor, tuple[slice, ...]]:
    """``image`` zero-padded evenly on both sides to at least ``patch``, and the slices undoing it."""
    shape = tuple(image.shape[1:])
    before = [max(p - n, 0) // 2 for n, p in zip(shape, patch)]
    after = [max(p - n, 0) - b for n, p, b in zip(shape, patch, before)]
    if not any(before) and not any(after):
        return image, (slice(None),) * 3
    pad = [v for axis in (2, 1, 0) for v in (before[axis], after[axis])]
    return torch.nn.functional.pad(image, pad), tuple(slice(b, b + n) for b, n in zip(before, shape))


class WindowRunner:
    """The model on a batch of windows (B, C, *patch) → float32 logits (B, K, *patch).

    Autocast in ``precision``; with ``mirror_axes`` (spatial axes 0, 1, 2 = z, y, x) the
    logits are averaged over every combination of flips of those axes (2^n passes); a
    deep-supervision model's first output is used. With ``cuda_graph`` the whole forward
    is captured once per batch size and window shape and replayed (shorter batches are
    padded); keep the runner to reuse the graph across volumes (a :class:`Predictor` does).
    When the capture fails the runner warns once and runs eagerly.
    """

    def __init__(self, model: torch.nn.Module, *, precision: str = "fp32", mirror_axes=(), cuda_graph: bool = False):
        self.model = model
        self.dtype = PRECISIONS[check_precision(precision)]
        axes = tuple(sorted(set(int(a) for a in mirror_axes)))
        if any(a not in (0, 1, 2) for a in axes):
            raise ValueError(f"mirror_axes must be spatial axes among 0, 1, 2 (z, y, x), got {tuple(mirror_axes)}")
        self.flips = [tuple(2 + a for a in combo) for r in range(len(axes) + 1)
                      for combo in itertools.combinations(axes, r)]
        self.cuda_graph = cuda_graph
        self._graph = None  # (batch size, graph, static input, static output)

    def eager(self, batch: torch.Tensor) -> torch.Tensor:
        autocast = torch.autocast(batch.device.type, dtype=self.dtype or torch.float32, enabled=self.dtype is not None,
                                  cache_enabled=not self.cuda_graph)
        total = None
        with autocast:
            for dims in self.flips:
                out = self.model(batch.flip(dims) if dims else batch)
                out = (out[0] if isinstance(out, (list, tuple)) else out).float()
                out = out.flip(dims) if dims else out
                total = out if total is None else total + out
        return total / len(self.flips) if len(self.flips) > 1 else total

    def __call__(self, batch: torch.Tensor, capacity: int) -> torch.Tensor:
        if not (self.cuda_graph and batch.device.type == "cuda"):
            return self.eager(batch)
        with torch.cuda.device(batch.device):  # capture and replay on the batch's GPU, not the current one
            if self._graph is None or self._graph[0] != capacity or self._graph[2].shape[1:] != batch.shape[1:]:
                self._graph = None
                self._graph = self._capture(batch, capacity)
                if self._graph is None:
                    return self.eager(batch)
            _, graph, static_in, static_out = self._graph
            static_in[: len(batch)].copy_(batch)
            graph.replay()
            return static_out[: len(batch)]

    def _capture(self, batch: torch.Tensor, capacity: int):
        static_in = torch.zeros((capacity, *batch.shape[1:]), dtype=batch.dtype, device=batch.device)
        static_in[: len(batch)].copy_(batch)
        caller = torch.cuda.current_stream()
        try:
            stream = torch.cuda.Stream()
            stream.wait_stream(caller)
            with torch.cuda.stream(stream):
                for _ in range(2):  # warm-up outside the graph: autotuning, cuDNN plans, allocations
                    self.eager(static_in)
            caller.wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=stream):  # torch's own capture stream is on the first GPU used
                static_out = self.eager(static_in)
        except Exception as exc:  # capture rejects host syncs and some kernels; eager still works
            # a capture that failed at its end leaves its stream current (torch.cuda.graph exits it after
            # ending the capture, which raised): the caller's stream is made current again
            torch.cuda.set_stream(caller)
            if out_of_memory(exc):
                raise
            warnings.warn(f"CUDA graph capture failed ({type(exc).__name__}: {exc}); running the model eagerly",
                          RuntimeWarning, stacklevel=3)
            self.cuda_graph = False
            return None
        return capacity, graph, static_in, static_out

    def release(self) -> None:
        self._graph = None


@torch.no_grad()
def sliding_window(model: torch.nn.Module, image: torch.Tensor, patch, *, step: float = 0.5, gaussian: bool = True,
                   precision: str = "fp32", batch_size: int = 1, mirror_axes=(), cuda_graph: bool = False,
                   timer: PhaseTimer = NO_TIMER) -> torch.Tensor:
    """Logits (K, D, H, W) float32 of ``model`` on ``image`` (C, D, H, W), window by window.

    Args:
        model: maps (B, C, *patch) to (B, K, *patch) logits (or a list, first = full resolution);
            in eval mode (a warning otherwise: dropout would make the logits random).
        image: (C, D, H, W) tensor; windows, stitching and the result live on its device.
        patch: window size (z, y, x), or one int for all three; a smaller volume is zero-padded
            evenly to it (and cropped back).
        step: largest distance between window starts as a fraction of the patch, in (0, 1];
            overlap = 1 - step. Windows are spread evenly, the first and last at the ends.
        gaussian: weight each window's logits by :func:`gaussian_importance` (else uniformly).
        precision: ``"fp32"``, ``"bf16"`` or ``"fp16"`` autocast of the forward pass.
        batch_size: windows per forward pass; halved on CUDA out-of-memory (down to 1).
        mirror_axes, cuda_graph: see :class:`WindowRunner`. ``model`` may be a :class:`WindowRunner`
            instead, which brings its own precision, mirroring and (reusable) CUDA graphs.
        timer: gets the ``network`` and ``stitch`` phases.

    Returns:
        ``sum_w weight_w · logits_w / sum_w weight_w`` at every voxel.
    """
    if not isinstance(image, torch.Tensor) or not image.is_floating_point():
        raise TypeError(f"image must be a floating-point torch tensor (C, D, H, W), got "
                        f"{image.dtype if isinstance(image, torch.Tensor) else type(image).__name__}")
    if image.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got {tuple(image.shape)}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1] (overlap = 1 - step), got {step}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    patch = (int(patch),) * 3 if is_int(patch) else tuple(int(p) for p in patch)
    if len(patch) != 3 or min(patch) < 1:
        raise ValueError(f"patch must be 3 positive sizes (z, y, x), got {patch}")
    if isinstance(model, WindowRunner):
        if (precision, tuple(mirror_axes), cuda_graph) != ("fp32", (), False):
            raise ValueError("precision, mirror_axes and cuda_graph come from the WindowRunner passed as the model")
        runner = model
    else:
        runner = WindowRunner(model, precision=precision, mirror_axes=mirror_axes, cuda_graph=cuda_graph)
    if getattr(runner.model, "training", False):
        warnings.warn("the model is in training mode (dropout active, batch statistics): call model.eval() "
                      "before inference", UserWarning, stacklevel=3)  # 3: past torch.no_grad's wrapper
    image, unpad = _pad_to_patch(image, patch)
    padded = tuple(image.shape[1:])
    weight = (_gaussian_cached(patch, GAUSSIAN_SIGMA_SCALE).to(image.device) if gaussian
              else torch.ones(patch, device=image.device))
    starts = window_positions(padded, patch, step)
    logits, total = None, torch.zeros(padded, device=image.device)
    done, size, retrying = 0, batch_size, False
    while done < len(starts):
        if retrying:  # after the except block, whose exception (cleared as it ends) held the failed forward's
            torch.cuda.empty_cache()  # frames and their tensors: only now are those blocks free to release
            retrying = False
        chunk = starts[done: done + size]
        windows = [(slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2])) for z, y, x in chunk]
        with timer.phase("stitch"):
            batch = torch.stack([image[(slice(None), *w)] for w in windows])
        try:
            with timer.phase("network"):
                out = runner(batch, size)
        except Exception as exc:
            if not out_of_memory(exc):
                raise
            if size == 1:
                raise InferenceError(f"CUDA out of memory running one {patch} window; free GPU memory, "
                                     f"use a smaller model or run on the CPU") from None
            runner.release()
            warnings.warn(f"CUDA out of memory with {size} windows per batch; retrying with {size // 2}",
                          RuntimeWarning, stacklevel=3)
            size, retrying = size // 2, True
            continue
        with timer.phase("stitch"):
            if logits is None:
                logits = torch.zeros((out.shape[1], *padded), device=image.device)
            for w, o in zip(windows, out):
                logits[(slice(None), *w)].addcmul_(o, weight)
                total[w] += weight
        done += len(chunk)
    with timer.phase("stitch"):
        logits /= total
        return logits[(slice(None), *unpad)]
