"""Turn dataset cases into in-memory training and validation volumes in the stage's grid.

Each case is read once, resampled to ``data.spacing`` (if set), z-scored, mapped to the
target's classes and — for ROI stages — cropped around the ROI centre. Training volumes
of an ROI stage keep a margin around the ROI (the *initial patch* that rotations and
zooms need); validation volumes are exactly the ROI, as at test time.
"""
from __future__ import annotations

import numpy as np
from tqdm import tqdm

from c2w_fast.config import Config
from c2w_fast.data.augment import QUANTILES, initial_patch_size
from c2w_fast.data.layouts import Case, CaseData, load_cases
from c2w_fast.data.loader import TrainingVolume
from c2w_fast.data.preprocess import Box, crop, resample, target_labels
from c2w_fast.data.sampling import class_locations
from c2w_fast.stages import StagePipeline


def crop_size(config: Config, spacing) -> tuple[int, int, int]:
    """Size of the crops the loader takes: the initial patch around the training patch."""
    patch = tuple(config.train.patch_size or config.roi.size)
    return initial_patch_size(patch, spacing, config.augment)


def prepare_volume(data: CaseData, config: Config, pipeline: StagePipeline, *, roi_extent=None,
                   seed: int = 0) -> TrainingVolume:
    """One loaded case as a :class:`TrainingVolume`; ``roi_extent`` is the crop around the ROI
    centre (default: the ROI itself)."""
    image, labels, spacing = data.image.array, data.labels, data.image.spacing
    shape, stage_spacing = pipeline.stage_grid(image.shape, spacing)
    centre = pipeline.roi_centre(image, spacing, labels)
    box = None if centre is None else Box.around(centre, roi_extent or config.roi.size)
    channels = pipeline.input_channels(image, spacing, labels, box)
    target = target_labels(resample(labels, shape, labels=True), config.data.target)
    region = pipeline.region(image, spacing, labels)
    if region is not None:
        region = resample(region, shape, labels=True)
    if box is not None:
        target = crop(target, box)
        region = None if region is None else crop(region, box)
    rng = np.random.default_rng([seed, 5])
    quantiles = np.quantile(channels[0], QUANTILES.numpy()).astype(np.float32)
    return TrainingVolume(data.case.id, np.ascontiguousarray(channels, dtype=np.float32), np.ascontiguousarray(target),
                          None if region is None else np.ascontiguousarray(region), tuple(stage_spacing),
                          class_locations(target, config.num_classes, rng), quantiles)


def stage_spacing(config: Config, cases: list[Case]) -> tuple[float, float, float]:
    """The stage grid's spacing: ``data.spacing``, else the per-axis median of the training ``cases``'
    (nnU-Net's choice; the seeds' datasets share one). With ``data.spacing = []`` each case trains in
    its own grid; this one is recorded in the checkpoints, and prediction resamples new images to it."""
    if config.data.spacing:
        return tuple(config.data.spacing)
    return tuple(float(h) for h in np.median([case.spacing for case in cases], axis=0))


def prepare_volumes(cases: list[Case], config: Config, pipeline: StagePipeline, *, training: bool,
                    desc: str) -> list[TrainingVolume]:
    """Training (with the augmentation margin around an ROI) or validation volumes of ``cases``."""
    extent = crop_size(config, stage_spacing(config, cases)) if training and config.roi.size else None
    return [prepare_volume(data, config, pipeline, roi_extent=extent, seed=config.run.seed)
            for data in tqdm(load_cases(cases), total=len(cases), desc=desc, unit="case", disable=None, leave=False)]
