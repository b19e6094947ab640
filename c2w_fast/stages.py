"""Trained stages as predictors of whole cases in their native grid.

:class:`Predictor` wraps a trained stage around the sliding-window engine
(:mod:`c2w_fast.infer`): resampling to the grid the stage was trained on (and back),
z-score, the ROI around the localiser's centre of mass (C2W), the dilated stage-1 region
(MBAS stage 2), the optional signed-distance channel, argmax and per-class largest
component — all on the stage's device with the project's ops. Helper stages named in a
stage's config (``roi.localizer``, ``cascade.stage1``, ``data.sdf_from``) are loaded once
through a :class:`StageLoader`. Arrays are (z, y, x) in the voxel arrangement the stage was
trained in (:mod:`c2w_fast.data.orientation`; :class:`c2w_fast.predict.Pipeline` rearranges any
file's), spacing in mm; numpy in → numpy out, tensors in → tensors out.
"""
from __future__ import annotations

import math
import warnings
import weakref
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from c2w_fast.config import check_helper_kind, used_helpers
from c2w_fast.data.io import check_spacing, same_spacing
from c2w_fast.data.layouts import CANONICAL_LABELS
from c2w_fast.data.orientation import CANONICAL, check_same_arrangement
from c2w_fast.data.preprocess import Box, center_of_mass, crop, paste, resample, resampled_shape, zscore
from c2w_fast.infer import NO_TIMER, PhaseTimer, WindowRunner, default_precision, resolve_device, sliding_window
from c2w_fast.ops._arrays import as_tensor
from c2w_fast.postprocess import atrium_mask, cascade_region, class_indices, keep_largest_per_class

MAX_STAGE_VOXELS = 2 ** 30  # a volume resampled beyond this (4 GiB as float32) has a wrong voxel size


class RoiWarning(UserWarning):
    """A case whose ROI could not be placed on the atrium; shown for every case, not once per process."""


warnings.filterwarnings("always", category=RoiWarning)
NO_ATRIUM = "found no atrium in a case: its ROI is centred on the volume"


def native_to_stage(point, native_spacing, stage_spacing) -> tuple[float, float, float]:
    """A (z, y, x) voxel position in the native grid as a position in a resampled grid (centres aligned)."""
    return tuple((p + 0.5) * h / g - 0.5 for p, h, g in zip(point, native_spacing, stage_spacing))


def cavity_distance(cavity, spacing, scale_mm: float):
    """Signed distance to the cavity surface (mm, negative inside) / ``scale_mm``, clipped to [-1, 1], float32."""
    from c2w_fast.ops import signed_distance

    if isinstance(cavity, torch.Tensor):
        if not cavity.any():
            return torch.ones(cavity.shape, dtype=torch.float32, device=cavity.device)
        return (signed_distance(cavity, spacing=spacing) / scale_mm).clamp(-1, 1)
    if not cavity.any():
        return np.ones(cavity.shape, np.float32)
    distance = np.asarray(signed_distance(cavity, spacing=spacing), dtype=np.float32)
    return np.clip(distance / scale_mm, -1, 1)


def grid_in(shape, spacing, target) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
    """Shape and spacing of a (``shape``, ``spacing``) volume resampled to the ``target`` spacing
    (None: kept); a clear error for a grid that a wrong voxel size would make absurd."""
    if target is None or same_spacing(spacing, target):  # within 0.1 %: not resampled
        return tuple(shape), tuple(spacing)
    resampled = resampled_shape(shape, spacing, target)
    described = f"an image of {tuple(shape)} voxels of {tuple(round(s, 4) for s in spacing)} mm"
    if math.prod(resampled) > MAX_STAGE_VOXELS:
        raise ValueError(f"{described} would be {resampled} voxels on the model's {target} mm grid: is the "
                         "header's voxel size in mm?")
    if any(n * h < t for n, h, t in zip(shape, spacing, target)):
        extent = tuple(round(n * h, 4) for n, h in zip(shape, spacing))
        raise ValueError(f"{described} spans {extent} mm, less than one voxel of the model's {target} mm grid "
                         "along an axis: is it the whole volume, and the header's voxel size in mm?")
    return resampled, tuple(target)


def resolve_checkpoint(path, fold: str | None = None, *, strict: bool = False) -> Path:
    """A checkpoint file from ``path``: the file itself, or in a run folder the best checkpoint
    of ``fold`` (a folder name such as ``fold_0`` or ``final``; ``3`` means ``fold_3``), else of
    ``final`` — unless ``strict``: a fold asked for by name must then be there (a helper stage
    takes its user's fold where it has one, a fold the user names is no fallback). A fold folder
    (``RUN/final``: a best checkpoint, and the run's ``config.toml`` above it) is taken as its
    checkpoint file, so its helper runs are looked for from ``RUN`` with that fold; a ``strict``
    fold that is not that folder's is an error (a file can't be another fold's)."""
    path = Path(path)
    if fold and fold.isdigit():  # --fold 1 as train takes it
        fold = f"fold_{fold}"
    if path.is_file() or (path / "checkpoint_best.pt").is_file() and (path.parent / "config.toml").is_file():
        checkpoint = path if path.is_file() else path / "checkpoint_best.pt"
        if strict and fold and fold != checkpoint.parent.name:
            raise FileNotFoundError(f"{path} is the checkpoint of {checkpoint.parent.name!r}, not of {fold!r}: "
                                    "name the run folder to choose a fold, or leave out the fold")
        return checkpoint
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such checkpoint file or run folder")
    names = [fold or "final"] if strict else ([fold] if fold and fold != "final" else []) + ["final"]
    for name in names:
        candidate = path / name / "checkpoint_best.pt"
        if candidate.is_file():
            return candidate
    trained = sorted(p.parent.name for p in path.glob("*/checkpoint_best.pt"))
    runs = sorted(p.parent.name for p in path.glob("*/config.toml"))
    if trained and strict and fold:
        hint = f"; trained folds: {', '.join(trained)}"
    elif trained:
        hint = f"; it has {', '.join(trained)} (a helper run needs the fold that uses it, or a final model)"
    elif runs:
        hint = f" (it holds the run folders {', '.join(runs)}: name one of them)"
    else:
        hint = " (is this a training run folder? it has no trained fold)"
    raise FileNotFoundError(f"{path}: no {' or '.join(n + '/checkpoint_best.pt' for n in names)} in this run "
                            f"folder{hint}")


def run_folder_of(checkpoint: Path) -> Path:
    """The run folder a checkpoint belongs to (``RUN/fold/checkpoint_best.pt`` → ``RUN``), else its folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if (checkpoint.parent.parent / "config.toml").is_file() else checkpoint.parent


def locate_stage(recorded: str, key: str, run_dir: Path | None) -> Path:
    """The run folder (or checkpoint) a config value ``key`` = ``recorded`` names.

    Tried in order: ``recorded`` as written (absolute, or relative to the working
    directory, as training resolved it); then a sibling of ``run_dir`` with the same
    name, so a folder of runs trained together can be moved or copied as a whole.
    """
    path = Path(recorded)
    if path.exists():
        return path
    tried = [str(path)]
    if run_dir is not None:
        # a run folder, or a checkpoint inside one (RUN/fold/checkpoint_best.pt), beside the moved run
        for tail in range(1, min(3, len(path.parts) - 1) + 1):
            sibling = Path(run_dir).parent.joinpath(*path.parts[-tail:])
            if sibling.exists():
                return sibling
            tried.append(str(sibling))
    where = f" (in the config saved with {run_dir})" if run_dir is not None else ""
    raise FileNotFoundError(f"{key} = {recorded!r}{where}: no such run folder or checkpoint; looked for "
                            f"{' and '.join(tried)}")


def image_tensor(image) -> torch.Tensor:
    """A torch view of ``image`` (numpy, or torch / CuPy on any device), or a clear error for an image
    that is not 3D or not real."""
    x = as_tensor(image)
    if x.ndim != 3:
        raise ValueError(f"image must be 3D (z, y, x), got shape {tuple(x.shape)}")
    if x.is_complex():
        raise TypeError(f"image must hold real intensities, got {x.dtype} (take the magnitude first)")
    return x


@dataclass(frozen=True)
class InferenceOptions:
    """How stages run at prediction time; ``None`` takes the value from each stage's config."""

    step: float | None = None          # eval.step (overlap = 1 - step)
    precision: str | None = None       # None: bf16 on a GPU when run.amp, else fp32
    batch_size: int = 2                # windows per forward pass
    mirror_axes: tuple[int, ...] = ()  # test-time mirroring of these (z, y, x) axes
    cuda_graph: bool = False


class StageLoader:
    """Loads trained stages once each (by checkpoint file) on one device with one set of options.

    Every :class:`Predictor` loaded through it — including the helper stages its config
    names — shares the device, the :class:`InferenceOptions` and the :class:`PhaseTimer`,
    and a helper used by two stages (the localiser of the C2W cavity and wall stages) is
    loaded and run once per case.
    """

    def __init__(self, device="cpu", options: InferenceOptions = InferenceOptions(), timer: PhaseTimer = NO_TIMER,
                 runs: dict[str, Path] | None = None):
        self.device = resolve_device(device)
        self.options = options
        self.timer = timer
        self.runs = dict(runs or {})  # config key -> run folder or checkpoint, in place of the recorded one
        self.used: set[str] = set()   # the helper keys looked up so far
        self._stages: dict[Path, Predictor] = {}
        self._open_cases = 0

    @contextmanager
    def case(self):
        """The scope of one case: within it the stages loaded here reuse each other's results for
        the same image tensor (the localiser of the C2W cavity and wall stages runs once), and
        they forget them when it ends, so that a buffer refilled with the next case (through
        numpy, unseen by torch) is never taken for the last one. Each :class:`Predictor` call
        opens one; open it around several calls that are one case."""
        self._open_cases += 1
        try:
            yield
        finally:
            self._open_cases -= 1
            if not self._open_cases:
                for stage in self._stages.values():
                    stage.forget()

    def locate(self, key: str, recorded: str, run_dir: Path | None) -> Path:
        """The run a helper key names: the one given in ``runs``, else :func:`locate_stage`."""
        self.used.add(key)
        return self.runs[key] if key in self.runs else locate_stage(recorded, key, run_dir)

    def load(self, path, fold: str | None = None, *, strict: bool = False) -> "Predictor":
        """The stage at ``path`` (see :func:`resolve_checkpoint`), loaded on first use."""
        from c2w_fast.training.checkpoint import load_stage

        checkpoint = resolve_checkpoint(path, fold, strict=strict)
        key = checkpoint.resolve()
        if key not in self._stages:
            stage = load_stage(checkpoint)
            self._stages[key] = Predictor(stage.model, stage.config, fold=checkpoint.parent.name, device=self.device,
                                          trained_spacing=stage.spacing, orientation=stage.orientation,
                                          run_dir=run_folder_of(checkpoint), loader=self)
        return self._stages[key]


def check_same_orientation(helper: "StagePipeline", stage: "StagePipeline", name: str) -> None:
    """:func:`~c2w_fast.data.orientation.check_same_arrangement` of a helper stage, ``name`` its key and run."""
    check_same_arrangement(helper.orientation, stage.orientation, name, str(stage.run_dir or "this stage"))


class StagePipeline:
    """What a stage does to a case around its network: grid, input channels, ROI and cascade region.

    Methods take the image as a (z, y, x) array (numpy, or a tensor on any device) and
    compute on ``device``; ``labels`` (numpy, canonical codes) only serve the oracle
    settings (ground-truth ROI centre or cascade region). Helper stages are loaded on
    first use from the run folders the config names (see :func:`locate_stage`), from the
    same fold as this stage when they have it. ``orientation`` is the voxel arrangement the stage
    works in (:data:`~c2w_fast.data.orientation.CANONICAL`; None: each file's own, as checkpoints
    from before its recording were trained), which its helpers must share.
    """

    def __init__(self, config, *, fold: str | None = None, device="cpu", trained_spacing=None,
                 orientation: str | None = CANONICAL, run_dir: Path | None = None, loader: StageLoader | None = None):
        self.config = config
        self.fold = fold
        self.device = torch.device(device)
        self.trained_spacing = None if trained_spacing is None else tuple(float(s) for s in trained_spacing)
        self.orientation = orientation
        self.run_dir = run_dir
        self.loader = loader or StageLoader(device)

    @property
    def timer(self) -> PhaseTimer:
        return self.loader.timer

    def helper(self, key: str, recorded: str) -> "Predictor":
        """The helper stage ``key`` names; a ValueError when it was trained for something else."""
        path = self.loader.locate(key, recorded, self.run_dir)
        predictor = self.loader.load(path, self.fold)
        check_helper_kind(key, predictor.config, f"{key} = {str(path)!r}")
        check_same_orientation(predictor.pipeline, self, f"{key} = {str(path)!r}")
        return predictor

    def helper_pipelines(self, chain: tuple = ()) -> list["StagePipeline"]:
        """Every helper stage the config uses, and theirs, loaded, so that a missing or wrong run is
        an error before the first case rather than in each one (``chain``: the stages above)."""
        if self in chain:
            cycle = " -> ".join(str(stage.run_dir) for stage in (*chain, self))
            raise ValueError(f"the helper runs form a cycle: {cycle}")
        found = []
        for key, recorded in used_helpers(self.config).items():
            helper = self.helper(key, recorded).pipeline
            found += [helper, *helper.helper_pipelines((*chain, self))]
        return found

    @property
    def patch_size(self) -> tuple[int, int, int]:
        return tuple(self.config.train.patch_size or self.config.roi.size)

    @property
    def spacing(self) -> tuple[float, float, float] | None:
        """The grid (mm) the stage works in: ``data.spacing``, else the recorded training grid, else None (native)."""
        return tuple(self.config.data.spacing) or self.trained_spacing

    def stage_grid(self, shape, spacing) -> tuple[tuple[int, int, int], tuple[float, float, float]]:
        """Shape and spacing of a native (``shape``, ``spacing``) volume in this stage's grid."""
        return grid_in(shape, spacing, self.spacing)

    def _image(self, image) -> torch.Tensor:
        """``image`` as a float32 tensor on the device (:func:`image_tensor`'s checks)."""
        return image_tensor(image).to(self.device).float()

    def checked_image(self, image) -> torch.Tensor:
        """:meth:`_image`, and a clear error for NaN/inf voxels: once per case where a stage's
        prediction starts (the internal steps then reuse the checked tensor)."""
        x = self._image(image)
        bad = 0 if torch.isfinite(x.sum()) else int((~torch.isfinite(x)).sum())  # a finite sum: no temporaries
        if bad:
            raise ValueError(f"image has {bad} NaN/inf voxels; a network would turn them into an empty prediction")
        return x

    def input_channels(self, image, spacing, labels=None, box: Box | None = None):
        """(C, D, H, W) float32 network input in the stage grid, cropped to ``box`` (stage grid) if
        given: z-scored image (statistics of the whole volume) (+ signed-distance channel)."""
        x = self._image(image)
        shape, _ = self.stage_grid(x.shape, spacing)
        channels = [zscore(resample(x, shape), box)]
        if self.config.data.sdf_channel:
            cavity = self.helper("data.sdf_from", self.config.data.sdf_from).predict(x, spacing, labels) > 0
            distance = resample(cavity_distance(cavity, spacing, self.config.data.sdf_scale_mm), shape)
            channels.append(distance if box is None else crop(distance, box))
        out = channels[0][None] if len(channels) == 1 else torch.stack(channels)  # one channel: no copy
        return out.cpu().numpy() if isinstance(image, np.ndarray) else out

    def roi_centre(self, image, spacing, labels=None):
        """Centre (z, y, x, stage grid) of the ROI: the centre of mass of the localiser's atrium
        (or of the ground-truth LA cavity with ``roi.center = "ground_truth"``); the volume
        centre, with a warning, when there is nothing. None without an ROI."""
        if not self.config.roi.size:
            return None
        shape, stage_spacing = self.stage_grid(tuple(image.shape), spacing)
        if self.config.roi.center == "ground_truth":
            if labels is None:
                raise ValueError("roi.center = 'ground_truth' needs the case's labels")
            la = labels == CANONICAL_LABELS["LA"]
            centre = center_of_mass(la if la.any() else labels > 0)
            if centre is None:
                warnings.warn(f"the labels {NO_ATRIUM}", RoiWarning, stacklevel=2)
        else:
            localizer = self.helper("roi.localizer", self.config.roi.localizer)
            centre = localizer.atrium_centre(self._image(image), spacing, labels)  # warns once per case
        if centre:
            return native_to_stage(centre, spacing, stage_spacing)
        return tuple((n - 1) / 2 for n in shape)

    def region(self, image, spacing, labels=None):
        """MBAS stage 2 (native grid, bool): the stage-1 union (or the ground-truth union with
        ``cascade.mask_source = "ground_truth"``), largest component, dilated. None if unused."""
        if not self.config.loss.region_mask:
            return None
        if self.config.cascade.mask_source == "ground_truth":
            if labels is None:
                raise ValueError("cascade.mask_source = 'ground_truth' needs the case's labels")
            union = torch.from_numpy(np.asarray(labels) > 0).to(self.device)
        else:
            stage1 = self.helper("cascade.stage1", self.config.cascade.stage1)
            union = stage1.predict(self._image(image), spacing, labels) > 0
        region = cascade_region(union, self.config.cascade)
        return region.cpu().numpy() if isinstance(image, np.ndarray) else region


@dataclass
class StagePrediction:
    """A stage's output for one case in its native grid: class indices (uint8), and the
    softmax probabilities (K, D, H, W) when asked for (tensors on the stage's device)."""

    labels: torch.Tensor
    probabilities: torch.Tensor | None = None


@dataclass
class _LastCase:
    """A stage's last result, valid while its image tensor and the result tensors are unchanged."""

    image: weakref.ref
    versions: tuple[int, ...]  # of the image and of the result's tensors
    key: tuple  # spacing, labels, probabilities wanted
    result: StagePrediction

    @staticmethod
    def _versions(image: torch.Tensor, result: StagePrediction) -> tuple[int, ...]:
        return tuple(t._version for t in (image, result.labels, result.probabilities) if t is not None)

    @classmethod
    def of(cls, image, key, result: StagePrediction) -> "_LastCase | None":
        if not isinstance(image, torch.Tensor):  # an array can change unseen: nothing kept
            return None
        return cls(weakref.ref(image), cls._versions(image, result), key, result)

    def matches(self, image, key) -> bool:
        spacing, labels, probabilities = key
        kept_spacing, kept_labels, kept_probabilities = self.key
        return (self.image() is image and spacing == kept_spacing and labels is kept_labels
                and (kept_probabilities or not probabilities) and self._versions(image, self.result) == self.versions)


class Predictor:
    """A trained stage that predicts class labels for whole cases in their native grid."""

    def __init__(self, model: torch.nn.Module, config, *, fold: str | None = None, device="cpu",
                 trained_spacing=None, orientation: str | None = CANONICAL, run_dir: Path | None = None,
                 loader: StageLoader | None = None):
        self.model = model.to(device).eval()
        self.config = config
        self.loader = loader or StageLoader(device)
        self.pipeline = StagePipeline(config, fold=fold, device=device, trained_spacing=trained_spacing,
                                      orientation=orientation, run_dir=run_dir, loader=self.loader)
        self._last: _LastCase | None = None
        self._centre: tuple[weakref.ref, tuple | None] | None = None  # (result, its atrium centre)
        self._runner = None

    @classmethod
    def load(cls, path, fold: str | None = None, device="cpu", *, options: InferenceOptions = InferenceOptions(),
             timer: PhaseTimer = NO_TIMER) -> "Predictor":
        """The stage saved at ``path``: a checkpoint file, or a run folder's ``fold`` (``3`` or
        ``fold_3``, which must have been trained; default ``final``)."""
        return StageLoader(device, options, timer).load(path, fold, strict=True)

    @property
    def device(self) -> torch.device:
        return self.pipeline.device

    @property
    def runner(self) -> WindowRunner:
        """The stage's network with the options' precision, mirroring and CUDA graphs, kept across cases."""
        if self._runner is None:
            options = self.loader.options
            self._runner = WindowRunner(self.model, mirror_axes=options.mirror_axes, cuda_graph=options.cuda_graph,
                                        precision=options.precision or default_precision(self.config.run.amp,
                                                                                         self.device))
        return self._runner

    def window_settings(self) -> dict:
        """Keyword arguments of :func:`sliding_window` (besides the runner) from the options and the config."""
        options, config = self.loader.options, self.config
        return dict(step=config.eval.step if options.step is None else options.step, gaussian=config.eval.gaussian,
                    batch_size=options.batch_size)

    def _logits(self, x: torch.Tensor, spacing, labels) -> torch.Tensor:
        pipeline, timer = self.pipeline, self.loader.timer
        with timer.phase("preprocess"):
            shape, _ = pipeline.stage_grid(tuple(x.shape), spacing)
            centre = pipeline.roi_centre(x, spacing, labels)
            box = None if centre is None else Box.around(centre, self.config.roi.size)
            channels = pipeline.input_channels(x, spacing, labels, box)
        logits = sliding_window(self.runner, channels.contiguous(), pipeline.patch_size, timer=timer,
                                **self.window_settings())
        with timer.phase("postprocess"):
            if box is not None:  # background outside the ROI
                inside = paste(torch.ones(box.size, dtype=torch.bool, device=x.device), box, shape, fill=False)
                logits = paste(logits, box, shape, fill=-1e4)
                logits[0].masked_fill_(~inside, 1e4)
            return resample(logits, tuple(x.shape))

    def run(self, image, spacing, labels=None, *, probabilities: bool = False) -> StagePrediction:
        """Class indices (argmax, zero outside the cascade region, per-class largest component
        with ``eval.keep_largest``) and optionally the softmax, for ``image`` (z, y, x) with
        ``spacing`` (mm); ``labels`` are needed only by the oracle settings. Within one
        :meth:`StageLoader.case`, a tensor image's result is reused while neither the tensor
        nor the result has changed (the stages of one case share their helpers' predictions)."""
        with self.loader.case():
            return self._run(image, check_spacing(spacing), labels, probabilities)

    def _run(self, image, spacing, labels, probabilities: bool) -> StagePrediction:
        key = (spacing, labels, probabilities)
        if self._last is not None and self._last.matches(image, key):
            return self._last.result
        x = self.pipeline.checked_image(image)
        logits = self._logits(x, spacing, labels)
        with self.loader.timer.phase("postprocess"):
            out = class_indices(logits)
            probs = torch.softmax(logits, 0) if probabilities else None
            del logits
            region = self.pipeline.region(x, spacing, labels)
            if region is not None:
                out[~region] = 0
                if probs is not None:
                    probs[:, ~region] = 0
                    probs[0].masked_fill_(~region, 1)
            if self.config.eval.keep_largest:
                out = keep_largest_per_class(out, self.config.num_classes)
        result = StagePrediction(out, probs)
        self._last = _LastCase.of(image, key, result)
        return result

    def atrium_centre(self, image, spacing, labels=None) -> tuple[float, float, float] | None:
        """Centre of mass (native voxel indices) of the largest foreground component of this stage's
        prediction: where a localiser puts the ROI. Kept with :meth:`run`'s reused result, so the
        stages of one case that share the localiser find its centre once, and warn once
        (:class:`RoiWarning`) when there is none."""
        with self.loader.case():
            result = self.run(image, spacing, labels)
            if self._centre is None or self._centre[0]() is not result:
                centre = center_of_mass(atrium_mask(result.labels))
                if centre is None:
                    warnings.warn(f"the localiser ({self.pipeline.run_dir}) {NO_ATRIUM}", RoiWarning, stacklevel=3)
                self._centre = (weakref.ref(result), centre)
            return self._centre[1]

    def forget(self) -> None:
        """Drop the kept result of the last case (see :meth:`StageLoader.case`)."""
        self._last = self._centre = None

    def logits(self, image, spacing, labels=None):
        """(K, D, H, W) float32 logits in the native grid of ``image`` (z, y, x) with ``spacing`` (mm)."""
        with self.loader.case():
            out = self._logits(self.pipeline.checked_image(image), check_spacing(spacing), labels)
        return out.cpu().numpy() if isinstance(image, np.ndarray) else out

    def predict(self, image, spacing, labels=None):
        """Class indices (uint8, native grid) of ``image``; see :meth:`run`."""
        labels_out = self.run(image, spacing, labels).labels
        return labels_out.cpu().numpy() if isinstance(image, np.ndarray) else labels_out
