"""Inference engine: sliding windows agree with whole-volume application and with a plain float64
reference (batched, mirrored, padded), window counts, precision, out-of-memory retries, timing."""
import itertools
import math
import warnings

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from c2w_fast.infer import (NO_TIMER, InferenceError, PhaseTimer, WindowRunner, default_precision, gaussian_importance,
                            resolve_device, sliding_window, window_count, window_starts)
from c2w_fast.postprocess import atrium_mask, cascade_region, class_indices, keep_largest_per_class
from c2w_fast.stages import StageLoader, resolve_checkpoint


@pytest.mark.parametrize("size, patch, step", [(10, 10, 0.5), (9, 10, 0.5), (23, 8, 0.5), (23, 8, 1.0), (64, 16, 0.25)])
def test_windows_cover_the_axis_with_the_requested_overlap(size, patch, step):
    starts = window_starts(size, patch, step)
    assert starts[0] == 0 and starts[-1] == max(0, size - patch)
    assert all(0 < b - a <= patch * step for a, b in zip(starts, starts[1:]))


def test_window_counts_follow_the_formula_in_exact_arithmetic():
    """1 - 0.4 is 0.6 - 2e-17: ceil((96 - 24) / (24 * step)) must still be 5, not 6."""
    assert len(window_starts(96, 24, 1 - 0.4)) == 6
    assert len(window_starts(640, 256, 1 - 0.8)) == 9


@pytest.mark.parametrize("step", [0.25, 0.5, 1.0])
def test_window_starts_are_nnunets_evenly_spread_steps(step):
    """nnU-Net's compute_steps_for_sliding_window: n = ceil((size - patch) / (patch * step)) + 1
    windows whose starts are round(i * (size - patch) / (n - 1)): evenly spread, the last flush."""
    for patch in (1, 4, 7, 8, 16):
        for size in range(1, 70):
            if size <= patch:
                expected = [0]
            else:
                n = int(np.ceil((size - patch) / (patch * step))) + 1
                expected = [int(np.round(i * (size - patch) / (n - 1))) for i in range(n)]
            assert window_starts(size, patch, step) == expected, (size, patch, step)


def test_gaussian_importance_hands_out_a_copy():
    gaussian_importance((3, 4, 5)).fill_(7)
    assert float(gaussian_importance((3, 4, 5)).max()) == 1.0


def test_gaussian_is_one_at_the_centre_and_positive(rng):
    w = gaussian_importance((5, 8, 9))
    assert w.shape == (5, 8, 9) and float(w.max()) == 1.0 and float(w.min()) > 0
    axis = w[2, 3:5, 4]  # symmetric about the centre of an even axis
    assert float(axis[0]) == float(axis[1])
    # sigma = size / 8 per axis: 10 voxels from the centre of an 81-voxel axis, exp(-(10 / 10.125)^2 / 2)
    big = gaussian_importance((1, 1, 81))
    assert float(big[0, 0, 40 + 10]) == pytest.approx(np.exp(-0.5 * (10 / (81 / 8)) ** 2), rel=1e-5)
    narrow = gaussian_importance((32, 32, 32), 0.05)  # the corners would underflow float32: clamped instead
    assert narrow.dtype == torch.float32 and float(narrow.min()) >= torch.finfo(torch.float32).tiny ** 0.5


class Pointwise(nn.Module):
    """A per-voxel model: the sliding-window result must equal applying it to the whole volume."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(2, 3, 1)

    def forward(self, x):
        return self.conv(x)


@pytest.mark.parametrize("gaussian", [True, False])
def test_sliding_window_equals_whole_volume_for_a_pointwise_model(gaussian, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = Pointwise().eval()
    image = torch.randn(2, 11, 17, 20)
    with torch.no_grad():
        whole = model(image[None])[0]
    for patch in [(4, 8, 8), (11, 17, 20), (16, 8, 32)]:  # smaller, equal, partly larger (padded)
        torch.testing.assert_close(sliding_window(model, image, patch, step=0.5, gaussian=gaussian), whole,
                                   atol=1e-5, rtol=1e-5)


def test_one_window_is_the_model_output_and_deep_supervision_uses_the_first(rng):
    class DeepSupervised(nn.Module):
        def forward(self, x):
            return [x * 2, x[..., ::2, ::2, ::2]]

    image = torch.from_numpy(rng.normal(size=(1, 6, 8, 8)).astype(np.float32))
    torch.testing.assert_close(sliding_window(DeepSupervised().eval(), image, (6, 8, 8)), image * 2)
    with pytest.raises(ValueError, match="image must be"):
        sliding_window(DeepSupervised(), image[0], (6, 8, 8))


def test_resolve_checkpoint_prefers_the_fold_then_final(tmp_path):
    for name in ("fold_1", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint_best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path, "fold_1") == tmp_path / "fold_1" / "checkpoint_best.pt"
    assert resolve_checkpoint(tmp_path, "fold_3") == tmp_path / "final" / "checkpoint_best.pt"
    assert resolve_checkpoint(tmp_path / "final" / "checkpoint_best.pt") == tmp_path / "final" / "checkpoint_best.pt"
    with pytest.raises(FileNotFoundError, match="no such checkpoint file or run folder"):
        resolve_checkpoint(tmp_path / "nothing")


def test_resolve_checkpoint_strictly_takes_only_the_fold_named(tmp_path):
    """A fold the user names (``3`` or ``fold_3``) is no fallback to ``final``: a missing one is an
    error listing the trained folds; without a fold, ``final`` as before."""
    for name in ("fold_1", "final"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "checkpoint_best.pt").write_bytes(b"x")
    assert resolve_checkpoint(tmp_path, "1", strict=True) == tmp_path / "fold_1" / "checkpoint_best.pt"
    for fold in (None, "final"):
        assert resolve_checkpoint(tmp_path, fold, strict=True) == tmp_path / "final" / "checkpoint_best.pt"
    for fold in ("3", "fold_3"):
        with pytest.raises(FileNotFoundError, match="no fold_3/checkpoint_best.pt in this run folder; "
                                                    "trained folds: final, fold_1"):
            resolve_checkpoint(tmp_path, fold, strict=True)



def test_a_fold_named_beside_a_checkpoint_must_be_its_fold(tmp_path):
    """--model RUN/final (or its checkpoint file) with --fold: the same fold is accepted, another one is an
    error rather than silently predicting with ``final``; a helper stage (not strict) takes the file as is."""
    (tmp_path / "config.toml").write_text("")
    (tmp_path / "final").mkdir()
    checkpoint = tmp_path / "final" / "checkpoint_best.pt"
    checkpoint.write_bytes(b"x")
    for path in (tmp_path / "final", checkpoint):
        for fold in (None, "final"):
            assert resolve_checkpoint(path, fold, strict=True) == checkpoint
        for fold in ("0", "fold_0"):
            with pytest.raises(FileNotFoundError, match="is the checkpoint of 'final', not of 'fold_0': name the run"):
                resolve_checkpoint(path, fold, strict=True)
            assert resolve_checkpoint(path, fold) == checkpoint

# --- the full engine: batching, mirroring, precision, padding, out-of-memory, counts -------------------------

class SmallConvNet(nn.Module):
    """3x3x3 convolutions: a window's logits depend on its context, so stitching is visible."""

    def __init__(self, channels=2, classes=3):
        super().__init__()
        self.net = nn.Sequential(nn.Conv3d(channels, 4, 3, padding=1), nn.LeakyReLU(0.1),
                                 nn.Conv3d(4, classes, 3, padding=1))

    def forward(self, x):
        return self.net(x)


def reference_sliding_window(model, image, patch, step, gaussian, mirror_axes=()):
    """The definition written out in float64, one window at a time: pad evenly to the patch,
    weight each window's logits (averaged over the mirrored passes) by the Gaussian, divide by
    the summed weights, crop."""
    shape = image.shape[1:]
    before = [max(p - n, 0) // 2 for n, p in zip(shape, patch)]
    padded_shape = [max(n, p) for n, p in zip(shape, patch)]
    padded = torch.zeros((image.shape[0], *padded_shape), dtype=torch.float64)
    padded[(slice(None), *(slice(b, b + n) for b, n in zip(before, shape)))] = image.double()
    axes = []
    for n in patch:
        t = np.arange(n) - (n - 1) / 2
        axes.append(np.exp(-0.5 * (t / (n / 8)) ** 2))
    weight = torch.from_numpy(np.einsum("i,j,k->ijk", *axes)) if gaussian else torch.ones(patch, dtype=torch.float64)
    flips = [()] + [tuple(2 + a for a in c) for r in range(1, len(mirror_axes) + 1)
                    for c in itertools.combinations(mirror_axes, r)]
    total = torch.zeros(padded_shape, dtype=torch.float64)
    out = None
    for z in window_starts(padded_shape[0], patch[0], step):
        for y in window_starts(padded_shape[1], patch[1], step):
            for x in window_starts(padded_shape[2], patch[2], step):
                window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                batch = padded[(slice(None), *window)][None].float()
                with torch.no_grad():
                    logits = sum(model(batch.flip(d)).flip(d).double() for d in flips) / len(flips)
                if out is None:
                    out = torch.zeros((logits.shape[1], *padded_shape), dtype=torch.float64)
                out[(slice(None), *window)] += logits[0] * weight
                total[window] += weight
    out /= total
    return out[(slice(None), *(slice(b, b + n) for b, n in zip(before, shape)))]


@pytest.mark.parametrize("patch, step, gaussian, batch_size, mirror", [
    ((4, 8, 8), 0.5, True, 1, ()),
    ((4, 8, 8), 0.5, True, 3, ()),
    ((5, 7, 9), 1.0, True, 8, ()),
    ((4, 8, 8), 0.5, False, 4, ()),
    ((16, 8, 32), 0.5, True, 2, ()),     # larger than the volume on two axes: padded evenly
    ((6, 9, 8), 0.5, True, 5, (0, 2)),   # mirroring over z and x
    ((12, 8, 8), 0.5, True, 2, ()),      # one voxel short on z: padded after it only
])
def test_stitching_equals_the_plain_reference(patch, step, gaussian, batch_size, mirror, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = SmallConvNet().eval()
    image = torch.from_numpy(rng.normal(size=(2, 11, 17, 20)).astype(np.float32))
    ours = sliding_window(model, image, patch, step=step, gaussian=gaussian, batch_size=batch_size, mirror_axes=mirror)
    expected = reference_sliding_window(model, image, patch, step, gaussian, mirror)
    assert ours.dtype == torch.float32 and ours.shape == (3, 11, 17, 20)
    torch.testing.assert_close(ours.double(), expected, atol=2e-5, rtol=2e-5)


def test_window_counts_of_the_mbas_paper_and_monai():
    """44x640x640 with 20x256x256 patches: 64 windows at overlap 0.5, 27 at stride 1.0 (MBAS §7),
    the same counts MONAI's sliding_window_inference runs."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    shape, patch = (44, 640, 640), (20, 256, 256)
    assert window_count(shape, patch, 0.5) == 64
    assert window_count(shape, patch, 1.0) == 27
    cases = [((44, 640, 640), (20, 256, 256)), ((44, 410, 410), (28, 256, 224)), ((30, 50, 70), (8, 16, 32))]
    for shape, patch in cases:
        for overlap in (0.5, 0.0, 0.25):
            interval = _get_scan_interval(shape, patch, 3, (overlap,) * 3)
            assert window_count(shape, patch, 1 - overlap) == len(dense_patch_slices(shape, patch, interval))


class RecordsDtype(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv3d(1, 2, 3, padding=1)
        self.seen = set()

    def forward(self, x):
        out = self.conv(x)
        self.seen.add(out.dtype)
        return out


@pytest.mark.parametrize("precision, dtype, tolerance", [("bf16", torch.bfloat16, 5e-2), ("fp16", torch.float16, 5e-3)])
def test_reduced_precision_runs_the_convolutions_in_it_and_stays_close(precision, dtype, tolerance, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = RecordsDtype().eval()
    image = torch.from_numpy(rng.normal(size=(1, 9, 12, 12)).astype(np.float32))
    full = sliding_window(model, image, (6, 8, 8))
    assert model.seen == {torch.float32}
    reduced = sliding_window(model, image, (6, 8, 8), precision=precision)
    assert dtype in model.seen and reduced.dtype == torch.float32
    torch.testing.assert_close(reduced, full, atol=tolerance * float(full.abs().max()), rtol=0)
    with pytest.raises(ValueError, match="precision must be one of fp32, bf16, fp16, got 'int8'"):
        sliding_window(model, image, (6, 8, 8), precision="int8")


ALLOCATOR_OOM = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


class OutOfMemoryAbove(nn.Module):
    """Raises ``error`` (CUDA's out-of-memory error) for batches larger than ``limit`` (``limit`` 0: always)."""

    def __init__(self, limit, error=ALLOCATOR_OOM):
        super().__init__()
        self.inner, self.limit, self.error, self.batches = SmallConvNet(1, 2), limit, error, []

    def forward(self, x):
        self.batches.append(len(x))
        if len(x) > self.limit:
            raise self.error
        return self.inner(x)


@pytest.mark.parametrize("error", [ALLOCATOR_OOM, RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"),
                                   RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate")],
                         ids=["allocator", "cudnn", "cublas"])
def test_out_of_memory_halves_the_window_batch_and_retries(rng, error):
    model = OutOfMemoryAbove(limit=2, error=error).eval()
    image = torch.from_numpy(rng.normal(size=(1, 12, 20, 20)).astype(np.float32))
    with pytest.warns(RuntimeWarning) as caught:
        result = sliding_window(model, image, (6, 8, 8), batch_size=8)
    assert [str(w.message) for w in caught] == [f"CUDA out of memory with {n} windows per batch; retrying with {n // 2}"
                                                for n in (8, 4)]
    assert model.batches[:3] == [8, 4, 2] and set(model.batches[3:]) <= {1, 2}
    assert sum(b for b in model.batches if b <= 2) == window_count((12, 20, 20), (6, 8, 8), 0.5)
    torch.testing.assert_close(result, sliding_window(model.inner, image, (6, 8, 8), batch_size=1))
    with pytest.raises(InferenceError, match=r"CUDA out of memory running one \(6, 8, 8\) window"), \
            pytest.warns(RuntimeWarning):
        sliding_window(OutOfMemoryAbove(limit=0, error=error).eval(), image, (6, 8, 8), batch_size=2)


def test_the_cache_is_emptied_once_the_failed_forwards_tensors_are_gone(rng, monkeypatch):
    """The retry after an out-of-memory error empties the allocator's cache only after the exception (and the
    failed forward's frames, which hold its tensors) is gone; inside the except block those blocks were busy."""
    import weakref

    alive_at_empty, held = [], []

    class FailsOnce(nn.Module):
        def __init__(self):
            super().__init__()
            self.inner, self.failed = SmallConvNet(1, 2), False

        def forward(self, x):
            activation = self.inner(x)
            if not self.failed:
                self.failed = True
                held.append(weakref.ref(activation))
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
            return activation

    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: alive_at_empty.append(held[0]() is not None))
    image = torch.from_numpy(rng.normal(size=(1, 12, 20, 20)).astype(np.float32))
    with pytest.warns(RuntimeWarning, match="retrying with 1"):
        sliding_window(FailsOnce().eval(), image, (6, 8, 8), batch_size=2)
    assert alive_at_empty == [False]


def test_an_error_other_than_out_of_memory_is_not_retried(rng):
    model = OutOfMemoryAbove(limit=2, error=RuntimeError("CUDA error: an illegal memory access was encountered"))
    image = torch.from_numpy(rng.normal(size=(1, 12, 20, 20)).astype(np.float32))
    with pytest.raises(RuntimeError, match="illegal memory access"):
        sliding_window(model.eval(), image, (6, 8, 8), batch_size=8)
    assert model.batches == [8]


def test_bad_engine_arguments_are_named():
    model, image = SmallConvNet(1, 2).eval(), torch.zeros(1, 4, 4, 4)
    with pytest.raises(ValueError, match=r"step must be in \(0, 1\] \(overlap = 1 - step\), got 0"):
        sliding_window(model, image, (4, 4, 4), step=0)
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        sliding_window(model, image, (4, 4, 4), batch_size=0)
    with pytest.raises(ValueError, match=r"mirror_axes must be spatial axes among 0, 1, 2 \(z, y, x\), got \(3,\)"):
        sliding_window(model, image, (4, 4, 4), mirror_axes=(3,))
    with pytest.raises(ValueError, match=r"patch must be 3 positive sizes \(z, y, x\), got \(4, 4\)"):
        sliding_window(model, image, (4, 4))
    with pytest.raises(TypeError, match="image must be a floating-point torch tensor .*, got ndarray"):
        sliding_window(model, image.numpy(), (4, 4, 4))
    with pytest.raises(TypeError, match="image must be a floating-point torch tensor .*, got torch.int16"):
        sliding_window(model, image.short(), (4, 4, 4))
    torch.testing.assert_close(sliding_window(model, image, 4), sliding_window(model, image, (4, 4, 4)))
    with pytest.warns(UserWarning, match=r"the model is in training mode .*: call model.eval\(\)"):
        sliding_window(model.train(), image, (4, 4, 4))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without a GPU")
def test_a_cuda_device_without_a_gpu_is_a_clear_error():
    for device in ("cuda", "cuda:1", torch.device("cuda")):
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device(device)
    with pytest.raises(ValueError, match="device cuda: no CUDA GPU is available"):
        StageLoader("cuda")


def test_phase_timer_waits_for_the_gpu_the_timed_work_runs_on(monkeypatch):
    synchronised = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.cuda, "synchronize", synchronised.append)
    for device, expected in [("cuda:1", [torch.device("cuda:1")] * 2), (None, [None] * 2), ("cpu", [])]:
        synchronised.clear()
        with PhaseTimer(device=device).phase("network"):
            pass
        assert synchronised == expected, device
    with NO_TIMER.phase("network"):
        pass
    assert synchronised == []


def test_phase_timer_counts_exclusive_time_per_phase(monkeypatch):
    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0])
    monkeypatch.setattr(PhaseTimer, "_now", staticmethod(lambda: next(clock)))
    timer = PhaseTimer()
    with timer.phase("preprocess"):        # 0 .. 1 preprocess, then network, then preprocess again
        with timer.phase("network"):       # 1 .. 3
            pass
        with timer.phase("network"):       # 6 .. 10 (3 .. 6 is preprocess)
            pass
    assert dict(timer.totals) == {"preprocess": 1.0 + 3.0 + 5.0, "network": 2.0 + 4.0}
    timer.totals.update({"write": 1.0, "custom": 2.0, "stitch": 3.0, "read": 4.0})  # entered in another order
    assert list(timer.ordered()) == ["read", "preprocess", "network", "stitch", "write", "custom"]
    with NO_TIMER.phase("network"):
        pass
    assert not NO_TIMER.totals


@pytest.mark.cuda
def test_cuda_graph_and_gpu_stitching_equal_eager(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = SmallConvNet().cuda().eval()
    image = torch.from_numpy(rng.normal(size=(2, 21, 37, 40)).astype(np.float32)).cuda()
    eager = sliding_window(model, image, (8, 16, 16), batch_size=3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)  # a failed capture runs eagerly: it would pass vacuously
        graphed = sliding_window(model, image, (8, 16, 16), batch_size=3, cuda_graph=True)
    torch.testing.assert_close(graphed, eager)
    expected = reference_sliding_window(model.cpu(), image.cpu(), (8, 16, 16), 0.5, True)
    torch.testing.assert_close(eager.cpu().double(), expected, atol=1e-4, rtol=1e-4)


class HostSync(nn.Module):
    """A network that reads a value back to the host in its forward, which a CUDA graph cannot capture."""

    def __init__(self):
        super().__init__()
        self.inner = SmallConvNet()

    def forward(self, x):
        out = self.inner(x)
        return out * (1.0 if float(out.abs().max()) >= 0 else 0.0)


@pytest.mark.cuda
def test_a_failed_capture_runs_eagerly_on_the_callers_stream(rng):
    """The capture fails at the host sync; the result is the eager one and the caller's stream is current
    again (a capture that fails at its end leaves its own stream current otherwise)."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = HostSync().cuda().eval()
    image = torch.from_numpy(rng.normal(size=(2, 12, 20, 20)).astype(np.float32)).cuda()
    caller = torch.cuda.current_stream()
    with pytest.warns(RuntimeWarning, match="CUDA graph capture failed"):
        graphed = sliding_window(model, image, (8, 16, 16), batch_size=2, cuda_graph=True)
    assert torch.cuda.current_stream() == caller
    torch.testing.assert_close(graphed, sliding_window(model, image, (8, 16, 16), batch_size=2))


@pytest.mark.parametrize("slab_voxels", [1, 30, 1 << 22])
def test_class_indices_equal_argmax_in_any_slabs(slab_voxels):
    logits = torch.randn(4, 7, 5, 6)
    logits[:, 3] = 0.0  # ties pick the first class, as argmax does
    logits[1:3, 2], logits[:, 4, 0] = 9.0, torch.tensor([-1.0, 3.0, 3.0, 3.0])[:, None]  # ties of later classes
    out = class_indices(logits, slab_voxels)
    assert out.dtype == torch.uint8 and torch.equal(out.long(), logits.argmax(0))


def test_class_indices_refuse_arrays_and_logits_without_a_class_axis():
    with pytest.raises(TypeError, match="logits must be a torch tensor"):
        class_indices(np.zeros((2, 3, 4, 5), np.float32))
    with pytest.raises(ValueError, match=r"logits must be \(K, D, H, W\), classes first, got shape \(3, 4, 5\)"):
        class_indices(torch.zeros(3, 4, 5))
    nan = float("nan")
    logits = torch.tensor([[0.0, nan, nan, 1.0], [nan, 0.0, nan, 2.0], [-1.0, -2.0, nan, nan]])[:, None, None]
    assert class_indices(logits).flatten().tolist() == [0, 1, 0, 1]  # a NaN never wins; all NaN: class 0


def _largest_26(mask):
    """scipy: the largest 26-connected component (the test inputs have no ties)."""
    labels, count = ndimage.label(mask, structure=np.ones((3, 3, 3)))
    if count == 0:
        return mask.copy()
    sizes = np.bincount(labels.ravel())[1:]
    assert (sizes == sizes.max()).sum() == 1
    return labels == 1 + np.argmax(sizes)


def _label_map_without_ties(rng, shape=(9, 14, 13), classes=4):
    while True:
        labels = np.where(rng.random(shape) < 0.3, rng.integers(1, classes, shape), 0).astype(np.uint8)
        try:
            for c in range(1, classes):
                _largest_26(labels == c)
            _largest_26(labels > 0)
        except AssertionError:
            continue
        return labels


def test_keep_largest_per_class_and_atrium_mask_equal_scipy(rng):
    labels = _label_map_without_ties(rng)
    expected = np.zeros_like(labels)
    for c in range(1, 4):
        expected[_largest_26(labels == c)] = c
    assert (expected != labels).any()  # several components per class: something is removed
    np.testing.assert_array_equal(keep_largest_per_class(labels, 4), expected)
    assert torch.equal(keep_largest_per_class(torch.from_numpy(labels), 4), torch.from_numpy(expected))
    np.testing.assert_array_equal(np.asarray(atrium_mask(labels)), _largest_26(labels > 0))
    assert not np.asarray(atrium_mask(np.zeros((3, 4, 5), np.uint8))).any()


@pytest.mark.parametrize("keep_largest, radius", [(True, 2), (False, 2), (True, 0), (True, 1)])
def test_cascade_region_is_the_largest_component_dilated_by_a_ball(keep_largest, radius, rng):
    from types import SimpleNamespace

    mask = np.zeros((12, 20, 20), bool)
    mask[3:6, 3:8, 3:8] = True       # the largest component
    mask[9, 15:17, 15:17] = True     # a small one, far from it
    mask |= rng.random(mask.shape) < 0.002
    offsets = np.indices((2 * radius + 1,) * 3) - radius
    ball = (offsets ** 2).sum(0) <= radius ** 2   # the ball of the radius in voxels, by hand
    kept = _largest_26(mask) if keep_largest else mask
    expected = ndimage.binary_dilation(kept, structure=ball) if radius else kept
    region = cascade_region(mask, SimpleNamespace(keep_largest=keep_largest, dilation_radius=radius))
    np.testing.assert_array_equal(np.asarray(region), expected)


# --- from the mutation audit of the engine and the post-processing: precision, devices, runner, phases, classes ---

def test_default_precision_is_bf16_only_for_amp_on_a_gpu():
    assert default_precision(True, "cuda") == "bf16" and default_precision(True, torch.device("cuda:1")) == "bf16"
    assert default_precision(True, "cpu") == "fp32" and default_precision(False, "cuda") == "fp32"


def test_auto_device_is_the_gpu_when_there_is_one(monkeypatch):
    for available, expected in ((True, "cuda"), (False, "cpu")):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: available)
        assert resolve_device("auto") == torch.device(expected)
    assert resolve_device("cpu") == torch.device("cpu")


def test_a_gpu_index_beyond_those_torch_sees_is_named(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda", 1) and resolve_device("cuda") == torch.device("cuda")
    with pytest.raises(ValueError, match=r"device cuda:2: torch sees 2 GPU\(s\), cuda:0 to cuda:1"):
        resolve_device("cuda:2")


def test_phase_timer_pauses_the_innermost_enclosing_phase(monkeypatch):
    """Three levels (a helper stage's network inside preprocess inside read): entering a phase pauses the
    one just outside it, not the outermost."""
    clock = iter([0.0, 1.0, 3.0, 6.0, 10.0, 15.0])
    monkeypatch.setattr(PhaseTimer, "_now", staticmethod(lambda: next(clock)))
    timer = PhaseTimer()
    with timer.phase("read"):                  # 0 .. 1 and 10 .. 15
        with timer.phase("preprocess"):        # 1 .. 3 and 6 .. 10
            with timer.phase("network"):       # 3 .. 6
                pass
    assert dict(timer.totals) == {"read": 1.0 + 5.0, "preprocess": 2.0 + 4.0, "network": 3.0}


def test_window_runner_gives_float32_logits_in_reduced_precision(rng):
    """The runner's contract: float32 logits whatever the autocast dtype, with and without mirroring."""
    model = RecordsDtype().eval()
    batch = torch.from_numpy(rng.normal(size=(2, 1, 4, 6, 6)).astype(np.float32))
    for precision, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        for mirror in ((), (1,)):
            model.seen.clear()
            assert WindowRunner(model, precision=precision, mirror_axes=mirror)(batch, 2).dtype == torch.float32
            assert model.seen == {dtype}


def test_a_runner_brings_its_options_and_repeated_mirror_axes_count_once(rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = SmallConvNet(1, 2).eval()
    image = torch.from_numpy(rng.normal(size=(1, 7, 9, 10)).astype(np.float32))
    mirrored = sliding_window(model, image, (4, 8, 8), mirror_axes=(0, 2))
    torch.testing.assert_close(sliding_window(WindowRunner(model, mirror_axes=(0, 2)), image, (4, 8, 8)), mirrored)
    torch.testing.assert_close(sliding_window(model, image, (4, 8, 8), mirror_axes=(2, 0, 2)), mirrored)
    for options in ({"precision": "bf16"}, {"mirror_axes": (0,)}, {"cuda_graph": True}):
        with pytest.raises(ValueError, match="precision, mirror_axes and cuda_graph come from the WindowRunner"):
            sliding_window(WindowRunner(model), image, (4, 8, 8), **options)
    for patch in ((0, 4, 4), 0, (4, -1, 4)):
        with pytest.raises(ValueError, match=r"patch must be 3 positive sizes \(z, y, x\)"):
            sliding_window(model, image, patch)


def test_the_network_and_stitch_phases_hold_the_model_and_the_averaging(monkeypatch, rng):
    """A clock that moves only while the model runs (1000 per batch of windows) and while the summed logits
    are divided by the summed weights (1, the engine's one in-place division): the network phase gets
    1000 per batch, the stitch phase the division."""
    from torch.overrides import TorchFunctionMode

    clock = [0.0]

    class Ticking(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "div_":
                clock[0] += 1.0
            return func(*args, **(kwargs or {}))

    class SlowModel(SmallConvNet):
        def forward(self, x):
            clock[0] += 1000.0
            return super().forward(x)

    monkeypatch.setattr(PhaseTimer, "_now", staticmethod(lambda: clock[0]))
    image = torch.from_numpy(rng.normal(size=(2, 6, 10, 10)).astype(np.float32))
    timer = PhaseTimer()
    with Ticking():
        sliding_window(SlowModel().eval(), image, (4, 8, 8), batch_size=3, timer=timer)
    batches = math.ceil(window_count((6, 10, 10), (4, 8, 8), 0.5) / 3)
    assert batches > 1 and dict(timer.totals) == {"network": 1000.0 * batches, "stitch": 1.0}


def test_class_indices_take_up_to_256_classes():
    """uint8 holds the class indices 0..255: 256 classes fit, 257 do not."""
    logits = torch.zeros(256, 1, 1, 2)
    logits[255, 0, 0, 0] = logits[17, 0, 0, 1] = 1.0
    assert class_indices(logits).flatten().tolist() == [255, 17]
    with pytest.raises(ValueError, match="at most 256 classes, got 257"):
        class_indices(torch.zeros(257, 1, 1, 1))
