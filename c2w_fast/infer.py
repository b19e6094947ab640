"""Inference engine: sliding-window prediction with Gaussian weighting, and a trained stage as a predictor.

:func:`sliding_window` runs a model over a (C, D, H, W) volume in patches (one patch when
the volume is the ROI), weighting overlapping windows with a Gaussian centred on each
patch (σ = patch / 8, nnU-Net's choice) and averaging logits. :class:`Predictor` loads a
training run's checkpoint and predicts a whole case in its native grid: resampling to
the stage's spacing, z-score, the ROI around the localiser's centre of mass (C2W), the
dilated stage-1 region (MBAS stage 2), the optional signed-distance channel, and back.
Arrays are (z, y, x), spacing in mm; labels returned are class indices of the stage's target.
"""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from c2w_fast.data.layouts import CANONICAL_LABELS
from c2w_fast.data.preprocess import Box, center_of_mass, crop, paste, resample, resampled_shape, zscore


@lru_cache(maxsize=8)
def _gaussian_cached(patch: tuple[int, int, int], sigma_scale: float) -> torch.Tensor:
    axes = []
    for n in patch:
        t = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        axes.append(torch.exp(-0.5 * (t / (n * sigma_scale)) ** 2))
    weight = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    weight = weight / weight.max()
    return weight.clamp_min(weight[weight > 0].min().item()).float()  # never 0: every voxel gets a weight


def gaussian_importance(patch, sigma_scale: float = 1 / 8) -> torch.Tensor:
    """(D, H, W) weights, 1 at the patch centre, a Gaussian with σ = ``sigma_scale`` · size per axis."""
    return _gaussian_cached(tuple(int(p) for p in patch), float(sigma_scale))


def window_starts(size: int, patch: int, step: float) -> list[int]:
    """Start offsets of windows of ``patch`` covering ``size`` with at most ``step`` · patch between them."""
    if size <= patch:
        return [0]
    n = math.ceil((size - patch) / (patch * step)) + 1
    return [int(round(i * (size - patch) / (n - 1))) for i in range(n)]


@torch.no_grad()
def sliding_window(model: torch.nn.Module, image: torch.Tensor, patch, *, step: float = 0.5,
                   gaussian: bool = True, amp: bool = False) -> torch.Tensor:
    """Logits (K, D, H, W) float32 of ``model`` on ``image`` (C, D, H, W), window by window.

    The volume is zero-padded to at least ``patch`` per axis (and cropped back); windows
    overlap by ``1 - step``; with ``gaussian`` each window's logits are weighted by
    :func:`gaussian_importance`, else uniformly. Runs on ``image``'s device; bf16
    autocast when ``amp`` and on CUDA. A deep-supervision model's first output is used.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, D, H, W), got {tuple(image.shape)}")
    if not 0 < step <= 1:
        raise ValueError(f"step must be in (0, 1], got {step}")
    patch = tuple(int(p) for p in patch)
    shape = tuple(image.shape[1:])
    padded = tuple(max(n, p) for n, p in zip(shape, patch))
    if padded != shape:
        image = torch.nn.functional.pad(image, [0, padded[2] - shape[2], 0, padded[1] - shape[1],
                                               0, padded[0] - shape[0]])
    weight = gaussian_importance(patch).to(image.device) if gaussian else torch.ones(patch, device=image.device)
    logits = None
    total = torch.zeros(padded, device=image.device)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and image.device.type == "cuda")
    for z in window_starts(padded[0], patch[0], step):
        for y in window_starts(padded[1], patch[1], step):
            for x in window_starts(padded[2], patch[2], step):
                window = (slice(z, z + patch[0]), slice(y, y + patch[1]), slice(x, x + patch[2]))
                with autocast:
                    out = model(image[(slice(None), *window)][None])
                out = (out[0] if isinstance(out, (list, tuple)) else out)[0].float()
                if logits is None:
                    logits = torch.zeros((out.shape[0], *padded), device=image.device)
                logits[(slice(None), *window)] += out * weight
                total[window] += weight
    logits /= total
    return logits[:, : shape[0], : shape[1], : shape[2]]


def keep_largest_per_class(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Labels where every class keeps only its largest 26-connected component (others → 0)."""
    from c2w_fast.ops import keep_largest_component

    out = np.zeros_like(labels)
    for c in range(1, num_classes):
        mask = labels == c
        if mask.any():
            out[np.asarray(keep_largest_component(mask, connectivity=26))] = c
    return out


def resolve_checkpoint(path, fold: str | None = None) -> Path:
    """A checkpoint file from ``path``: the file itself, or in a run folder the best checkpoint
    of ``fold`` (a folder name such as ``fold_0`` or ``final``), else of ``final``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or run folder")
    for name in ([fold] if fold else []) + ["final"]:
        candidate = path / name / "checkpoint_best.pt"
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no {fold + '/' if fold else ''}checkpoint_best.pt or final/checkpoint_best.pt "
                            f"in this run folder")


class StagePipeline:
    """What a stage does to a case around its network: grid, input channels, ROI and cascade region.

    Helper stages (the localiser for the ROI, cascade stage 1 for the region, the cavity
    stage for the signed-distance channel) are loaded on first use from the run folders
    the config names, from the same fold as this stage when they have it.
    """

    def __init__(self, config, *, fold: str | None = None, device="cpu"):
        self.config = config
        self.fold = fold
        self.device = torch.device(device)
        self._helpers: dict[str, Predictor] = {}

    def helper(self, kind: str, path: str) -> "Predictor":
        if kind not in self._helpers:
            self._helpers[kind] = Predictor.load(path, self.fold, self.device)
        return self._helpers[kind]

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.train.patch_size or self.config.roi.size)

    def stage_grid(self, shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """Shape and spacing of a native (``shape``, ``spacing``) volume in this stage's grid."""
        target = tuple(self.config.data.spacing)
        if not target:
            return tuple(shape), tuple(spacing)
        return resampled_shape(shape, spacing, target), target

    def input_channels(self, image: np.ndarray, spacing, labels: np.ndarray | None = None) -> np.ndarray:
        """(C, D, H, W) network input in the stage grid: z-scored image (+ signed-distance channel).

        ``labels`` are passed on to helper stages that use ground truth (oracle settings) only."""
        shape, _ = self.stage_grid(image.shape, spacing)
        channels = [zscore(resample(image.astype(np.float32, copy=False), shape))]
        if self.config.data.sdf_channel:
            cavity = self.helper("sdf", self.config.data.sdf_from).predict(image, spacing, labels) > 0
            channels.append(resample(cavity_distance(cavity, spacing, self.config.data.sdf_scale_mm), shape))
        return np.stack(channels)

    def roi_centre(self, image: np.ndarray, spacing, labels: np.ndarray | None = None):
        """Centre (z, y, x, stage grid) of the ROI: the centre of mass of the localiser's atrium
        (or of the ground-truth LA cavity with ``roi.center = "ground_truth"``); the volume
        centre when there is nothing. None without an ROI."""
        if not self.config.roi.size:
            return None
        shape, stage_spacing = self.stage_grid(image.shape, spacing)
        if self.config.roi.center == "ground_truth":
            if labels is None:
                raise ValueError("roi.center = 'ground_truth' needs the case's labels")
            mask = labels == CANONICAL_LABELS["LA"] if (labels == CANONICAL_LABELS["LA"]).any() else labels > 0
        else:
            mask = atrium_mask(self.helper("localizer", self.config.roi.localizer).predict(image, spacing, labels))
        centre = center_of_mass(mask)
        return native_to_stage(centre, spacing, stage_spacing) if centre else tuple((n - 1) / 2 for n in shape)

    def region(self, image: np.ndarray, spacing, labels: np.ndarray | None = None) -> np.ndarray | None:
        """MBAS stage 2 (native grid): the stage-1 union (or the ground-truth union with
        ``cascade.mask_source = "ground_truth"``), largest component, dilated. None if unused."""
        if not self.config.loss.region_mask:
            return None
        if self.config.cascade.mask_source == "ground_truth":
            if labels is None:
                raise ValueError("cascade.mask_source = 'ground_truth' needs the case's labels")
            union = labels > 0
        else:
            union = self.helper("stage1", self.config.cascade.stage1).predict(image, spacing, labels) > 0
        return cascade_region(union, self.config.cascade)


class Predictor:
    """A trained stage that predicts class labels for whole cases in their native grid."""

    def __init__(self, model: torch.nn.Module, config, *, fold: str | None = None, device="cpu"):
        self.model = model.to(device).eval()
        self.config = config
        self.pipeline = StagePipeline(config, fold=fold, device=device)

    @classmethod
    def load(cls, path, fold: str | None = None, device="cpu") -> "Predictor":
        """The stage saved at ``path`` (checkpoint file or run folder; see :func:`resolve_checkpoint`)."""
        from c2w_fast.training.checkpoint import load_model

        checkpoint = resolve_checkpoint(path, fold)
        model, config = load_model(checkpoint)
        return cls(model, config, fold=checkpoint.parent.name, device=device)

    def logits(self, image: np.ndarray, spacing, labels: np.ndarray | None = None) -> torch.Tensor:
        """(K, D, H, W) logits in the native grid of ``image`` (z, y, x) with ``spacing`` (mm);
        ``labels`` are needed only by the oracle settings (ground-truth ROI centre)."""
        pipeline = self.pipeline
        shape, _ = pipeline.stage_grid(image.shape, spacing)
        channels = pipeline.input_channels(image, spacing, labels)
        centre = pipeline.roi_centre(image, spacing, labels)
        box = None if centre is None else Box.around(centre, self.config.roi.size)
        if box is not None:
            channels = crop(channels, box)
        x = torch.from_numpy(np.ascontiguousarray(channels)).to(pipeline.device)
        logits = sliding_window(self.model, x, pipeline.patch_size, step=self.config.eval.step,
                                gaussian=self.config.eval.gaussian, amp=self.config.run.amp).cpu()
        if box is not None:
            background = torch.full((logits.shape[0],), -1e4)
            background[0] = 1e4
            full = torch.from_numpy(paste(logits.numpy(), box, shape))
            inside = torch.from_numpy(paste(np.ones(box.size, bool), box, shape, fill=False))
            logits = torch.where(inside, full, background[:, None, None, None])
        return resample(logits, image.shape)

    def predict(self, image: np.ndarray, spacing, labels: np.ndarray | None = None) -> np.ndarray:
        """Class indices (uint8, native grid): argmax, zero outside the cascade region, post-processing."""
        prediction = self.logits(image, spacing, labels).argmax(0).numpy().astype(np.uint8)
        region = self.pipeline.region(image, spacing, labels)
        if region is not None:
            prediction[~region] = 0
        if self.config.eval.keep_largest:
            prediction = keep_largest_per_class(prediction, self.config.num_classes)
        return prediction


def atrium_mask(labels: np.ndarray) -> np.ndarray:
    """Foreground of a localiser prediction, reduced to its largest component."""
    from c2w_fast.ops import keep_largest_component

    mask = labels > 0
    return np.asarray(keep_largest_component(mask, connectivity=26)) if mask.any() else mask


def native_to_stage(point, native_spacing, stage_spacing) -> tuple[float, float, float]:
    """A (z, y, x) voxel position in the native grid as a position in a resampled grid (centres aligned)."""
    return tuple((p + 0.5) * h / g - 0.5 for p, h, g in zip(point, native_spacing, stage_spacing))


def cascade_region(mask: np.ndarray, cascade) -> np.ndarray:
    """Largest component (if ``cascade.keep_largest``) dilated by ``cascade.dilation_radius`` voxels."""
    from c2w_fast.ops import binary_dilation, keep_largest_component

    if not mask.any():
        return mask
    if cascade.keep_largest:
        mask = np.asarray(keep_largest_component(mask, connectivity=26))
    if cascade.dilation_radius > 0:
        mask = np.asarray(binary_dilation(mask, cascade.dilation_radius))
    return mask


def cavity_distance(cavity: np.ndarray, spacing, scale_mm: float) -> np.ndarray:
    """Signed distance to the cavity surface (mm, negative inside) / ``scale_mm``, clipped to [-1, 1]."""
    from c2w_fast.ops import signed_distance

    if not cavity.any():
        return np.ones(cavity.shape, np.float32)
    distance = np.asarray(signed_distance(cavity, spacing=spacing), dtype=np.float32)
    return np.clip(distance / scale_mm, -1, 1)
