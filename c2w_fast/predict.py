"""python -m c2w_fast.predict: segment LGE-MRI volumes with a trained C2W-Tune or MBAS-cascade run.

    python -m c2w_fast.predict --model runs/c2w_wall --in scans/ --out preds/
    python -m c2w_fast.predict --model runs/mbas_stage2 --in MBAS_001.nii.gz --out preds/ --overlap 0

**What --model names.** A training run folder (``RUN_DIR``, its ``--fold`` checkpoint,
default ``final``), one fold of it (``RUN_DIR/final``, as ``RUN_DIR`` with that fold) or a
checkpoint file (a ``--fold`` beside these two must be theirs). The run's stage decides the pipeline, and the
runs it depends on are the ones its config records — nothing else to write:

=============  ================================================================  ==============
stage          pipeline                                                          labels written
=============  ================================================================  ==============
``wall``       C2W-Tune: localiser (``roi.localizer``) → ROI around its centre   1 wall, 3 LA
               of mass → cavity model (``run.init_from``, the run the wall
               stage was fine-tuned from) and wall model → pasted back; the wall
               wins where both claim a voxel (``--no-cavity``: the wall alone)
``cascade2``   MBAS: stage 1 (``cascade.stage1``) at its low resolution →        1 wall, 2 RA,
               largest component → dilation r=2 → stage 2 inside that region     3 LA
               → largest component per class
``cavity``,    one stage (with its localiser ROI where it has one)               3 LA (cavity,
``localizer``                                                                    localizer),
``scratch``,                                                                     1 wall (scratch),
``cascade1``                                                                     1 atria (cascade1)
=============  ================================================================  ==============

A recorded run is looked for where the config says (absolute, or relative to the working
directory), then next to the run folder under the same name — so a folder of runs
trained together (``runs/demo/{localizer,cavity,wall}``) can be moved as a whole;
``--use KEY=PATH`` (``run.init_from``, ``roi.localizer``, ``cascade.stage1``,
``data.sdf_from``) points one elsewhere. Every helper run is loaded before the first case.
Helper stages use the same fold as the named run when they have it, else ``final``.

**Inputs.** ``--in`` is a NIfTI/NRRD file, a dataset folder in a known layout (LASC 2018,
MBAS, nnU-Net; labels not needed) or a folder of image files (label-like names such as
``*_label.nii.gz`` are skipped, and ``X_gt`` beside an ``X`` image; an ``X_gt`` alone is an
image, as the MBAS release names them, with id ``X``; an nnU-Net channel suffix ``_0000`` is
dropped from the id). A file given alone gets the id its folder gives it: a LASC
``<case>/lgemri.nrrd`` is ``<case>``, a lone ``MBAS_XXX_gt`` is ``MBAS_XXX``. An image that is
constant, holds a few whole values only (a label map), spans less than a heart MRI or has voxels
under 0.2 mm or over 10 mm (a voxel size in the wrong unit) is predicted with a warning; image
files loose beside a dataset's cases are not predicted, and said so.
Each volume is rearranged (transposed and flipped, no interpolation) to the canonical voxel
arrangement that training read its cases in (:mod:`c2w_fast.data.orientation`), and each stage
resamples to the grid it was trained on; the outputs go back the same way. Runs whose
checkpoints predate the recorded arrangement work in each file's own voxel order, as they
were trained; a pipeline mixing the two is refused before the first case.

**Outputs.** ``OUT/<case>.nii.gz`` (``.nrrd`` for NRRD input) with the input's shape,
spacing, origin and direction (a NIfTI output keeps the input's qform/sform exactly);
``--probabilities DIR``: ``DIR/<case>_<class>.nii.gz`` (``.nrrd`` for NRRD input) float32
softmax per foreground class; ``--thickness DIR``: ``DIR/<case>.nii.gz`` (or ``.nrrd``) wall thickness in mm
(:mod:`c2w_fast.thickness`) and ``DIR/<case>.csv`` its summary, when the pipeline
predicts a wall and a cavity (a case with no wall or no cavity gets its label map and a
note instead). Both folders go beside ``OUT``, not in it: ``evaluate --pred OUT`` searches
``OUT`` recursively and would take their maps for predictions. A case that fails
(unreadable, not 3D, NaN voxels, out of memory, not writable) is reported and the others
are still written. Cases are read one ahead and
written behind in I/O threads while the current one runs (``--timings`` runs them one step
after the other to time each phase).

**An interrupted folder.** A case's label map is written last and atomically, so it exists
only when all of the case's outputs do: after Ctrl-C (the cases already predicted are still
written, and their count printed) or a crash, rerun the same command with ``--skip-existing`` and
the cases whose label map is already in ``--out`` are skipped. Nothing checks that they
came from the same model and options: after changing either, write to a new folder.

Exit status: 0 when every case was written, 1 when some failed, 2 for bad arguments or an
unusable model, 130 when interrupted (Ctrl-C).
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import warnings
from contextlib import contextmanager, suppress
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import takewhile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from c2w_fast import config as cfg
from c2w_fast.cli import INTERRUPTED, may_write_in, nearest_existing, path_argument
from c2w_fast.data.io import (NIFTI_SUFFIXES, NRRD_SUFFIXES, Volume, check_affine, check_spacing, image_format,
                              is_image_name, read_volume, voxel_size, write_csv, write_volume)
from c2w_fast.data.layouts import CANONICAL_LABELS, LASC_IMAGE, NoLayoutError, detect_layout, find_images
from c2w_fast.data.orientation import Reorientation
from c2w_fast.data.plausibility import implausible_image
from c2w_fast.data.preprocess import TARGET_CLASSES
from c2w_fast.errors import DataError, plain_warnings
from c2w_fast.evaluate import LABEL_SUFFIXES, gt_named
from c2w_fast.evaluate import case_id as label_file_id
from c2w_fast.infer import NO_TIMER, PhaseTimer, check_precision, resolve_device
from c2w_fast.ops._arrays import is_cupy
from c2w_fast.stages import InferenceOptions, Predictor, StageLoader, check_same_orientation, image_tensor
from c2w_fast.training.checkpoint import CheckpointError

_CHANNEL_SUFFIX = re.compile(r"_\d{4}$")  # nnU-Net's per-channel image suffix


class ModelError(ValueError):
    """``--model`` does not name a usable pipeline."""


@dataclass
class Stage:
    """One network of a pipeline and the canonical code written for each of its classes."""

    name: str
    predictor: Predictor
    codes: dict[int, int]  # class index -> canonical code (1 wall, 2 RA, 3 LA)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.predictor.config.class_names


def canonical_codes(target: str) -> dict[int, int]:
    """Class index → canonical code of a training target (the first code of each class)."""
    return {index: codes[0] for index, codes in enumerate(TARGET_CLASSES[target].values(), start=1)}


@dataclass
class CasePrediction:
    """A pipeline's output for one case: canonical label map (uint8, z/y/x) and, when asked
    for, the softmax probability (float32) of every foreground class by class name; numpy arrays,
    or tensors for a tensor image (:meth:`Pipeline.predict`)."""

    labels: np.ndarray | torch.Tensor
    probabilities: dict[str, np.ndarray | torch.Tensor] = field(default_factory=dict)


@dataclass
class Pipeline:
    """The stages whose outputs make the written label map, applied in order (later ones win)."""

    stages: list[Stage]
    device: torch.device
    timer: PhaseTimer = NO_TIMER

    @property
    def predicts_wall_and_cavity(self) -> bool:
        codes = {code for stage in self.stages for code in stage.codes.values()}
        return CANONICAL_LABELS["wall"] in codes and CANONICAL_LABELS["LA"] in codes

    @property
    def description(self) -> str:
        return " + ".join(f"{s.name} → {', '.join(f'{n}={c}' for n, c in zip(s.class_names, s.codes.values()))}"
                          for s in self.stages)

    @property
    def orientation(self) -> str | None:
        """The voxel arrangement the stages were trained in (None: each file's own)."""
        return self.stages[-1].predictor.pipeline.orientation

    def predict(self, image, spacing=None, *, affine=None, probabilities: bool = False) -> CasePrediction:
        """Canonical labels of ``image`` (z, y, x) in its grid. Give its ``affine`` ((z, y, x) index → RAS mm,
        as :attr:`c2w_fast.data.io.Volume.affine`), and the image is rearranged to the voxel arrangement
        the stages were trained in and the outputs back; or its ``spacing`` (mm) alone when it is in that
        arrangement already (:mod:`c2w_fast.data.orientation`). A numpy image gets numpy outputs; a torch
        tensor or CuPy array (any device) gets tensors on the pipeline's device, never copied through the host."""
        numpy_in = not (isinstance(image, torch.Tensor) or is_cupy(image))
        image = image_tensor(np.asarray(image) if numpy_in else image)
        if (spacing is None) == (affine is None):
            raise ValueError("give the image's spacing or its affine (which holds the spacing), one of them")
        reorientation = Reorientation()
        if affine is None:
            spacing = check_spacing(spacing)
        else:
            affine = check_affine(affine)
            spacing = voxel_size(affine)
            if self.orientation:
                reorientation = Reorientation.of(affine)
        for message in implausible_image(image, spacing):
            warnings.warn(message, stacklevel=2)
        with self.timer.phase("preprocess"):  # one tensor: helpers reuse their results on it
            x = reorientation.apply(image.to(self.device).float())
            spacing = reorientation.spacing(spacing)
        labels = torch.zeros(x.shape, dtype=torch.uint8, device=self.device)
        probs = {}
        out = (lambda t: t.cpu().numpy()) if numpy_in else (lambda t: t)
        with self.stages[0].predictor.loader.case():  # the stages share one loader and their helpers' results
            for stage in self.stages:
                result = stage.predictor.run(x, spacing, probabilities=probabilities)
                with self.timer.phase("postprocess"):
                    for index, code in stage.codes.items():
                        labels[result.labels == index] = code
                    if probabilities:
                        for index, name in enumerate(stage.class_names, start=1):
                            probs[name] = out(reorientation.undo(result.probabilities[index]))
        with self.timer.phase("postprocess"):
            return CasePrediction(out(reorientation.undo(labels)), probs)


def load_pipeline(model, *, fold: str | None = None, device="cpu", options: InferenceOptions = InferenceOptions(),
                  timer: PhaseTimer = NO_TIMER, cavity: bool = True, runs: dict[str, Path] | None = None) -> Pipeline:
    """The pipeline ``model`` (run folder or checkpoint) names, with every helper stage loaded;
    see the module docstring. ``runs`` maps a config key (``run.init_from``, ``roi.localizer``,
    ``cascade.stage1``, ``data.sdf_from``) to the run to use in place of the recorded one.

    Raises :class:`ModelError` naming the folder or file when it holds no usable stage.
    """
    loader = StageLoader(device, options, timer, runs)
    try:
        named = loader.load(model, fold, strict=True)
    except (FileNotFoundError, CheckpointError) as exc:
        raise ModelError(str(exc)) from None
    try:  # the helper runs the config records
        config = named.config
        stages = [Stage(config.run.stage, named, canonical_codes(config.data.target))]
        if config.run.stage == "wall" and cavity:
            if not config.run.init_from and "run.init_from" not in loader.runs:
                raise ModelError(f"{model}: the wall run records no cavity run (run.init_from); "
                                 f"predict the wall alone with --no-cavity")
            path = loader.locate("run.init_from", config.run.init_from, named.pipeline.run_dir)
            cavity_stage = loader.load(path, named.pipeline.fold)
            if cavity_stage.config.run.stage != "cavity":  # a localiser segments the LA cavity too, coarsely
                raise ModelError(f"{path}: run.init_from of {model} is a {cavity_stage.config.run.stage!r} run, "
                                 f"not a cavity one; name the cavity run with --use run.init_from=PATH, or use "
                                 f"--no-cavity")
            check_same_orientation(cavity_stage.pipeline, named.pipeline, f"run.init_from = {str(path)!r}")
            stages.insert(0, Stage("cavity", cavity_stage, canonical_codes("la_cavity")))
        pipelines = [stage.predictor.pipeline for stage in stages]
        pipelines += [helper for pipeline in pipelines for helper in pipeline.helper_pipelines()]  # loads them
        oracles = [f"{pipeline.run_dir or 'this stage'}: {setting}"
                   for pipeline in pipelines for setting in cfg.oracle_settings(pipeline.config)]
        if oracles:
            raise ModelError(f"{'; '.join(oracles)}: trained to take the ROI centre or stage-2 region from each "
                             "case's labels, which new images lack; train with roi.center = 'localizer' or "
                             "cascade.mask_source = 'stage1' to predict")
        unused = sorted(set(loader.runs) - loader.used)
        if unused:
            raise ModelError(f"--use {', '.join(unused)}: the {config.run.stage} pipeline of {model} uses no such "
                             "helper run")
    except FileNotFoundError as exc:
        raise ModelError(f"{exc}; --use KEY=PATH points a recorded run elsewhere") from None
    except CheckpointError as exc:
        raise ModelError(str(exc)) from None
    return Pipeline(stages, loader.device, timer)


def image_id(path: Path) -> str:
    """Case id of an image file: its name without extension and without a ``_0000`` channel suffix."""
    name = path.name
    for extension in (*NIFTI_SUFFIXES, *NRRD_SUFFIXES):
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
            break
    return _CHANNEL_SUFFIX.sub("", name) or name


def folder_images(folder: Path) -> tuple[list[tuple[str, Path]], list[Path]]:
    """``(case id, image file)`` of the image files in ``folder`` itself (not below), sorted, and
    the NIfTI/NRRD files skipped as label maps: label-like names (``*_label``, ...), except an
    ``X_gt`` with no ``X`` beside it, the MBAS release's image."""
    files = [p for p in folder.iterdir() if (p.is_file() or p.is_symlink())  # a broken link fails as its case
             and is_image_name(p) and not p.name.startswith(".")]
    found = [(image_id(p), p) for p in files if not label_file_id(p)[1]]
    plain = {case for case, _ in found}
    labels = []
    for p in files:
        case, labelled = label_file_id(p)
        if labelled and case not in plain and gt_named(p, case):
            found.append((case, p))
        elif labelled:
            labels.append(p)
    return sorted(found), labels


def file_id(path: Path) -> str:
    """Case id of an image file given alone: the one it gets when its folder is given — a LASC
    ``<case>/lgemri.nrrd`` is ``<case>``, a lone ``X_gt`` is ``X`` — so that predicting cases one by
    one names them as predicting their folder does (and as evaluate's ground truth does)."""
    if path.name.lower() == LASC_IMAGE:
        return Path(os.path.abspath(path)).parent.name  # a bare "lgemri.nrrd": the working directory's name
    return {p: case for case, p in folder_images(path.parent)[0]}.get(path, image_id(path))


def find_inputs(path) -> list[tuple[str, Path]]:
    """``(case id, image file)`` for ``--in``: one file, a dataset folder, or a folder of images."""
    path = Path(path)
    if path.is_file():
        image_format(path)
        return [(file_id(path), path)]
    if not path.is_dir():
        raise DataError(path, "no such file or folder")
    labels = []
    try:
        found = find_images(path)
    except NoLayoutError:  # not a dataset layout: the image files in the folder itself
        found, labels = folder_images(path)
    else:
        loose = [p.name for _, p in folder_images(path)[0]]
        if loose:
            warnings.warn(f"{path}: {len(loose)} image file(s) beside the dataset's cases are not predicted "
                          f"({', '.join(loose[:3])}{', ...' * (len(loose) > 3)}): a dataset folder's cases are read "
                          "by its layout; give those files in a folder of their own", stacklevel=2)
    if not found:
        skipped = (f"; {len(labels)} NIfTI/NRRD file(s) skipped as label maps, by their names' suffix "
                   f"({', '.join(LABEL_SUFFIXES)}; an X_gt only beside an X)" if labels else "")
        raise DataError(path, f"no NIfTI/NRRD images found (.nii, .nii.gz, .nrrd, .nhdr){skipped}")
    ids = [i for i, _ in found]
    repeated = sorted({i for i in ids if ids.count(i) > 1})
    if repeated:
        raise DataError(path, f"several images give the case ids {repeated}; keep one file per case")
    return found


def output_path(folder: Path, case: str, image_path: Path, suffix: str = "") -> Path:
    """``folder/<case><suffix>`` with ``.nrrd`` for an NRRD input, else ``.nii.gz``."""
    return Path(folder) / f"{case}{suffix}{'.nrrd' if image_format(image_path) == 'nrrd' else '.nii.gz'}"


@dataclass
class CaseOutputs:
    """Everything written for one case: volumes (path → array, on the input's grid) and CSV rows."""

    volume: Volume
    arrays: dict[Path, np.ndarray]
    tables: dict[Path, list[dict]] = field(default_factory=dict)

    def write(self) -> None:
        """The label map (the first array) last: a case whose other outputs failed is reported as
        failed and has no label map that would make it look done."""
        (label_path, labels), *others = self.arrays.items()
        for path, array in others:
            write_volume(path, array, like=self.volume)
        for path, rows in self.tables.items():
            write_csv(path, rows)
        write_volume(label_path, labels, like=self.volume)


def case_outputs(volume: Volume, case: str, prediction: CasePrediction, out: Path, *,
                 probabilities_dir: Path | None = None, thickness_dir: Path | None = None,
                 device="cpu") -> CaseOutputs:
    """The label map, probability maps and (computed on ``device``) thickness map and summary of a case."""
    outputs = CaseOutputs(volume, {output_path(out, case, volume.path): prediction.labels})
    for name, probability in prediction.probabilities.items():
        outputs.arrays[output_path(probabilities_dir, case, volume.path, f"_{name}")] = probability
    if thickness_dir is not None:
        from c2w_fast.thickness import wall_thickness

        labels = torch.from_numpy(prediction.labels).to(device)
        wall = labels == CANONICAL_LABELS["wall"]
        cavity = (labels == CANONICAL_LABELS["RA"]) | (labels == CANONICAL_LABELS["LA"])
        la = labels == CANONICAL_LABELS["LA"]
        missing = [name for name, mask in (("wall", wall), ("cavity", cavity), ("LA", la)) if not mask.any()]
        if missing:  # the label map is still written
            tqdm.write(f"note: {case}: no thickness map, the prediction has no {' and no '.join(missing)}",
                       file=sys.stderr)
        else:
            try:
                result = wall_thickness(wall, cavity, affine=volume.affine, la_cavity=la, chambers=labels)
            except ValueError as exc:  # e.g. a predicted wall with no face towards the cavity
                tqdm.write(f"note: {case}: no thickness map, the prediction's wall cannot be measured: {exc}",
                           file=sys.stderr)
                return outputs
            outputs.arrays[output_path(thickness_dir, case, volume.path)] = result.thickness.cpu().numpy()
            outputs.tables[Path(thickness_dir) / f"{case}.csv"] = [{"case": case, **row} for row in result.summary()]
    return outputs


def predict_file(pipeline: Pipeline, case: str, image_path: Path, out: Path, *, probabilities_dir: Path | None = None,
                 thickness_dir: Path | None = None) -> Path:
    """Read, predict and write one case, one step after the other (each in its timer phase);
    returns the label map's path."""
    with pipeline.timer.phase("read"):
        volume = read_volume(image_path)
    prediction = pipeline.predict(volume.array, affine=volume.affine, probabilities=probabilities_dir is not None)
    with pipeline.timer.phase("postprocess"):
        outputs = case_outputs(volume, case, prediction, out, probabilities_dir=probabilities_dir,
                               thickness_dir=thickness_dir, device=pipeline.device)
    with pipeline.timer.phase("write"):
        outputs.write()
    return output_path(out, case, image_path)


@contextmanager
def case_warnings(case: str):
    """Warnings raised while ``case`` is predicted, printed after it once each as
    ``warning: <case>: <message>`` (a warning without the case would not say which to check)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for message in dict.fromkeys(str(w.message) for w in caught):
        tqdm.write(f"warning: {case}: {message}", file=sys.stderr)


def _record_failure(failed: dict[str, str], case: str, path: Path, exc: Exception) -> None:
    """Keep in ``failed`` and print at once what went wrong with ``case``, read from ``path``:
    the file named (the exception type too when it is not a data or value error, i.e. not the
    input's fault)."""
    if isinstance(exc, DataError):
        problem = str(exc)
    else:
        problem = f"{path}: {exc}" if isinstance(exc, ValueError) else f"{path}: {type(exc).__name__}: {exc}"
    failed[case] = problem
    tqdm.write(f"failed: {case}: {problem}", file=sys.stderr)


CASE_ERRORS = (Exception,)  # whatever goes wrong with one case, the others are still predicted


def predict_cases(pipeline: Pipeline, cases: list[tuple[str, Path]], out: Path, *,
                  probabilities_dir: Path | None = None, thickness_dir: Path | None = None) -> dict[str, str]:
    """Predict every ``(case id, image file)``; returns ``{case: problem}`` for those that failed.

    Files are read one case ahead and written behind in two I/O threads while the current
    case runs on the device (compressed NIfTI reading and writing take about as long as the
    networks on a GPU); at most two cases wait to be written. A failing case is reported
    and the others go on.
    """
    failed: dict[str, str] = {}
    pending: list[tuple[str, Path, Future]] = []

    def settle(keep: int) -> None:
        while len(pending) > keep:
            case, path, future = pending.pop(0)
            try:
                future.result()
            except CASE_ERRORS as exc:
                _record_failure(failed, case, path, exc)

    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="c2w-io") as io:
        upcoming = io.submit(read_volume, cases[0][1]) if cases else None
        for i, (case, path) in enumerate(tqdm(cases, desc="predict", unit="case", disable=None)):
            reading, upcoming = upcoming, io.submit(read_volume, cases[i + 1][1]) if i + 1 < len(cases) else None
            try:
                volume = reading.result()
                with case_warnings(case):
                    prediction = pipeline.predict(volume.array, affine=volume.affine,
                                                  probabilities=probabilities_dir is not None)
                outputs = case_outputs(volume, case, prediction, out, probabilities_dir=probabilities_dir,
                                       thickness_dir=thickness_dir, device=pipeline.device)
            except CASE_ERRORS as exc:
                _record_failure(failed, case, path, exc)
                continue
            pending.append((case, path, io.submit(outputs.write)))
            settle(keep=2)
        settle(keep=0)
    return failed


def parser() -> argparse.ArgumentParser:
    paragraphs = __doc__.split("\n\n")
    p = argparse.ArgumentParser(prog="python -m c2w_fast.predict", description=paragraphs[0].split(": ", 1)[1],
                                epilog="\n\n".join(paragraphs[1:]),
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, type=path_argument, help="training run folder or checkpoint file")
    p.add_argument("--in", dest="inputs", required=True, type=path_argument,
                   help="image file, dataset folder or image folder")
    p.add_argument("--out", required=True, type=path_argument, help="folder for the label maps (created)")
    p.add_argument("--fold", help="fold of the run to use (0 or fold_0, ...; default final)")
    p.add_argument("--use", action="append", default=[], metavar="KEY=PATH",
                   help="use this run folder or checkpoint for a helper stage instead of the one its config "
                        "records (KEY: run.init_from, roi.localizer, cascade.stage1, data.sdf_from); repeatable")
    p.add_argument("--no-cavity", action="store_true", help="C2W wall run: predict the wall only, without the cavity")
    p.add_argument("--overlap", type=float,
                   help="sliding-window overlap in [0, 1): 0.5 nnU-Net's default, 0 the fast mode (stride 1.0); "
                        "default: each stage's eval.step")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"),
                   help="autocast of the networks; default bf16 on a GPU (runs trained with run.amp), fp32 on a CPU")
    p.add_argument("--batch-size", type=int, default=2,
                   help="windows per forward pass (default: %(default)s; halved on GPU out-of-memory)")
    p.add_argument("--mirror", nargs="*", type=int, metavar="AXIS", default=None,
                   help="mirroring test-time augmentation over these axes of the canonical voxel arrangement "
                        "(0 S/I, 1 A/P, 2 R/L; no value: all three)")
    p.add_argument("--cuda-graph", action="store_true", help="capture each network's forward as a CUDA graph")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="default: %(default)s, a GPU when there is one")
    p.add_argument("--probabilities", type=path_argument, metavar="DIR",
                   help="also write softmax maps per class to DIR")
    p.add_argument("--thickness", type=path_argument, metavar="DIR",
                   help="also write wall-thickness maps and summaries to DIR")
    p.add_argument("--skip-existing", action="store_true",
                   help="skip the cases whose label map is already in --out (to finish an interrupted folder)")
    p.add_argument("--timings", action="store_true", help="print the time spent per phase (read, preprocess, "
                                                          "network, stitch, postprocess, write)")
    return p


def _options(args) -> InferenceOptions:
    if args.overlap is not None and not 0 <= args.overlap < 1:
        raise ModelError(f"--overlap must be in [0, 1), got {args.overlap}")
    if args.batch_size < 1:
        raise ModelError(f"--batch-size must be >= 1, got {args.batch_size}")
    mirror = () if args.mirror is None else tuple(args.mirror or (0, 1, 2))
    if any(a not in (0, 1, 2) for a in mirror):
        raise ModelError(f"--mirror axes must be among 0, 1, 2 (z, y, x), got {list(mirror)}")
    return InferenceOptions(step=None if args.overlap is None else 1 - args.overlap,
                            precision=args.precision and check_precision(args.precision),
                            batch_size=args.batch_size, mirror_axes=mirror, cuda_graph=args.cuda_graph)


def _helper_runs(pairs: list[str]) -> dict[str, Path]:
    runs = {}
    for pair in pairs:
        key, _, path = pair.partition("=")
        if key not in cfg.HELPER_KEYS or not path:
            raise ModelError(f"--use takes KEY=PATH with KEY one of {', '.join(cfg.HELPER_KEYS)}, got {pair!r}")
        runs[key] = Path(path)
    return runs


def _output_folders(args, cases: list[tuple[str, Path]]) -> None:
    """Create the output folders before any case runs. Refuse a folder that holds input images
    (outputs are named ``<case>.nii.gz`` / ``.nrrd``, so they would overwrite or join the inputs) or
    lies in the dataset folder ``--in`` names (its label maps have those names too), a name of an
    image file, a folder this user cannot write in, and a thickness or probability folder that is
    the ``--out`` folder or inside it (evaluate searches ``--pred`` recursively). Nothing is created
    unless every folder can be."""
    if args.thickness is not None and args.thickness.resolve() == args.out.resolve():
        raise ModelError(f"--thickness {args.thickness} is the --out folder; thickness maps would overwrite "
                         "the label maps (both are <case>.nii.gz): give it a folder of its own")
    if args.probabilities is not None and args.probabilities.resolve() == args.out.resolve():
        raise ModelError(f"--probabilities {args.probabilities} is the --out folder; <case>_<class> maps among "
                         "the label maps would read as extra cases (evaluate, a later predict): give it its own folder")
    out = args.out.resolve()
    for option, folder in (("--probabilities", args.probabilities), ("--thickness", args.thickness)):
        if folder is not None and out in folder.resolve().parents:
            raise ModelError(f"{option} {folder} is inside the --out folder; evaluate searches --pred recursively and "
                             "would take its maps for predictions: give it a folder beside --out "
                             f"(e.g. {out.parent / f'{out.name}_{folder.name}'})")
    folders = [(option, folder) for option, folder in (("--out", args.out), ("--probabilities", args.probabilities),
                                                       ("--thickness", args.thickness)) if folder is not None]
    input_folders = {path.resolve().parent for _, path in cases}
    dataset = _dataset_root(args.inputs)
    for option, folder in folders:
        _check_output_folder(option, folder, input_folders, dataset, args.inputs)
    made = []  # the folders this call makes, deepest first
    try:
        for option, folder in folders:
            made[:0] = _missing_folders(folder)
            folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        for path in made:
            with suppress(OSError):  # one it never made, or one another process has filled meanwhile
                path.rmdir()
        raise ModelError(f"{option} {folder}: cannot create the folder ({exc.strerror or exc})") from None


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its parents up to the first that exists, deepest first: what ``mkdir`` would make
    (a name too long was refused by :func:`_check_output_folder` before)."""
    return list(takewhile(lambda path: not path.exists(), (folder.absolute(), *folder.absolute().parents)))


def _check_output_folder(option: str, folder: Path, input_folders: set[Path], dataset: Path | None,
                         inputs: Path) -> None:
    """A ModelError when ``folder`` cannot take the outputs (:func:`_output_folders`)."""
    if folder.resolve() in input_folders:
        raise ModelError(f"{option} {folder} holds input images; the outputs (<case>.nii.gz or .nrrd) would "
                         "overwrite them or join them: give the outputs a folder of their own")
    if dataset is not None and (folder.resolve() == dataset or dataset in folder.resolve().parents):
        raise ModelError(f"{option} {folder} is inside the dataset folder {inputs}, whose label maps share "
                         "the outputs' names (<case>.nii.gz): give the outputs a folder outside it")
    if folder.exists() and not folder.is_dir():
        raise ModelError(f"{option} {folder} is a file, not a folder")
    if is_image_name(folder):
        raise ModelError(f"{option} {folder} is the name of an image file, but {option} is a folder: the maps "
                         "are written in it as <case>.nii.gz (or .nrrd)")
    existing = nearest_existing(folder)
    if existing.is_dir() and not may_write_in(existing):
        raise ModelError(f"{option} {folder}: no permission to write in {existing}")


def _dataset_root(inputs: Path) -> Path | None:
    """The folder ``--in`` names when it is a dataset in a known layout, else None."""
    if not inputs.is_dir():
        return None
    try:
        detect_layout(inputs)
    except DataError:  # NoLayoutError included: a plain folder of images
        return None
    return inputs.resolve()


def not_yet_written(cases: list[tuple[str, Path]], out: Path) -> list[tuple[str, Path]]:
    """The cases whose label map is not in ``out`` (it is written last, so a case that has one is complete)."""
    return [(case, path) for case, path in cases if not output_path(out, case, path).is_file()]


def _load(args, cases: list[tuple[str, Path]], device: torch.device, timer: PhaseTimer) -> Pipeline:
    """The pipeline ``--model`` names, loaded on ``device`` before any case, and the output folders made."""
    pipeline = load_pipeline(args.model, fold=args.fold, device=device, options=_options(args),
                             timer=timer, cavity=not args.no_cavity, runs=_helper_runs(args.use))
    if args.thickness is not None and not pipeline.predicts_wall_and_cavity:
        print("note: --thickness needs a wall and a cavity; this pipeline predicts "
              f"{pipeline.description}, so no thickness maps are written", file=sys.stderr)
        args.thickness = None  # nor its folder made
    if args.cuda_graph and pipeline.device.type != "cuda":
        print(f"note: --cuda-graph needs a GPU; on {pipeline.device} the networks run without one", file=sys.stderr)
    if args.no_cavity and pipeline.stages[0].name != "wall":
        print(f"note: --no-cavity leaves out a wall run's cavity stage; this pipeline predicts {pipeline.description}",
              file=sys.stderr)
    _output_folders(args, cases)
    return pipeline


def _predict(args, pipeline: Pipeline, cases: list[tuple[str, Path]]) -> tuple[int, dict[str, str]]:
    """Predict the cases (those not yet written with ``--skip-existing``); returns how many were
    predicted and ``{case: problem}`` for those that failed."""
    if pipeline.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # every window has the same shape
    if args.skip_existing:
        todo = not_yet_written(cases, args.out)
        print(f"skipping {len(cases) - len(todo)} case(s) whose label map is already in {args.out}", file=sys.stderr)
        cases = todo
    print(f"{len(cases)} case(s), {pipeline.description}, on {pipeline.device}", file=sys.stderr)
    failed = {}
    if args.timings:  # one step after the other, so that every phase is timed alone
        for case, path in tqdm(cases, desc="predict", unit="case", disable=None):
            try:
                with case_warnings(case):
                    predict_file(pipeline, case, path, args.out, probabilities_dir=args.probabilities,
                                 thickness_dir=args.thickness)
            except CASE_ERRORS as exc:
                _record_failure(failed, case, path, exc)
    else:
        failed = predict_cases(pipeline, cases, args.out, probabilities_dir=args.probabilities,
                               thickness_dir=args.thickness)
    return len(cases), failed


def _interrupted(cases: list[tuple[str, Path]], out: Path) -> str:
    """What to do after Ctrl-C: a case whose label map is in ``out`` is complete (it is written
    last, and the cases already predicted are written before the I/O threads stop), the others
    are predicted by the same command with ``--skip-existing``."""
    done = len(cases) - len(not_yet_written(cases, out))
    return (f"\ninterrupted: {done} of {len(cases)} case(s) have their label map in {out}; rerun the same command "
            "with --skip-existing to predict the others")


def main(argv=None) -> int:
    plain_warnings()
    args = parser().parse_args(argv)
    cases = []  # those found: an interruption says how many are written
    try:
        device = resolve_device(args.device)
        timer = PhaseTimer(enabled=args.timings, device=device)
        cases = find_inputs(args.inputs)
        pipeline = _load(args, cases, device, timer)
        count, failed = _predict(args, pipeline, cases)
    except (ModelError, DataError, ValueError, OSError) as exc:  # before the first case: each case's own are caught
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(cases, args.out), file=sys.stderr)
        return INTERRUPTED
    print(f"wrote {count - len(failed)} of {count} case(s) to {args.out}", file=sys.stderr)
    if args.timings:
        total = sum(timer.totals.values())
        for name, seconds in timer.ordered().items():
            print(f"  {name:12s} {seconds:8.3f} s  {100 * seconds / max(total, 1e-12):5.1f} %", file=sys.stderr)
    for case, problem in failed.items():
        print(f"  failed {case}: {problem}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
