"""Evaluate a folder of predicted label maps against the ground truth: ``python -m c2w_fast.evaluate``.

    python -m c2w_fast.evaluate --pred preds/ --gt labels/ --labels wall=1,RA=2,LA=3 \\
        --tolerance 1.0 --convention surfel --out metrics.csv

**Matching.** Cases are matched by id. ``--pred`` is searched recursively for NIfTI/NRRD
files (``.nii``, ``.nii.gz``, ``.nrrd``, ``.nhdr``); a file's id is its name without the
extension and without one trailing suffix among ``_gt``, ``_seg``, ``_label``, ``_labels``,
``_mask``, ``_pred``, ``_prediction`` (any case): ``MBAS_001_gt.nii.gz`` and
``MBAS_001.nii.gz`` are both ``MBAS_001``. When two files of one folder tree give the same
id, the one with a suffix wins, and a suffix other than ``_gt`` wins over ``_gt`` (an MBAS
case folder as released holds the image ``MBAS_001_gt.nii.gz`` next to its labels
``MBAS_001_label.nii.gz``); folders named ``imagesTr``/``imagesTs`` (nnU-Net images) and
hidden files and folders are skipped. If ``--gt`` is a dataset of a known layout (LASC 2018,
MBAS, nnU-Net raw; see :mod:`c2w_fast.data.layouts`), its cases and canonical label maps
(1 wall, 2 RA, 3 LA) come from that layout instead (also for an nnU-Net dataset's ``labelsTr`` or
``labelsTs`` folder, whose values its ``dataset.json`` maps), so a LASC ``laendo.nrrd`` /
``lawall.nrrd`` pair is one case named after its folder, and the default ``--labels`` are
those the layout can hold (wall and LA for LASC). A LASC case without its optional
``lawall.nrrd`` has no wall ground truth: its wall is not scored (an unknown wall is not an
empty one). The default ``--labels`` leave out a label that no prediction and no ground truth
holds.

**Geometry.** Spacing is read from the ground-truth file; a prediction on another grid
(shape, spacing off by more than 0.1 %, or origin or directions off by more than 0.01 mm: a
flipped or shifted file) is reported as a problem, not evaluated.

**Output.** One CSV row per case and label with ``dice, hd, hd95, assd, surface_dice``
(mm; definitions in :mod:`c2w_fast.metrics`; a label the case's ground truth leaves unknown
gets a row with no values and the status ``no <label> ground truth``), then per label the rows
``mean``, ``sd`` (sample standard deviation) and ``n`` (how many cases had a finite value)
over the cases scored, then one row per problem case (missing prediction or ground truth,
unreadable file, grid mismatch; ``--predicted-only`` leaves ground-truth cases without a
prediction out instead) with the problem in the ``status`` column. A summary goes to stdout:
per label mean ± sd of the finite values, with how many were not finite (``n/a``); a
prediction or ground truth holding values that are neither evaluated nor label codes (an
image, or a 0/255 mask, given as a label map?) gets a warning on stderr. Exit status: 0 when
every case was evaluated, 1 when some had problems (the CSV is written either way), 2 for
bad arguments, a --pred folder with no label map, or --labels the --gt dataset cannot hold,
130 when interrupted (Ctrl-C; no CSV written).
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from c2w_fast import metrics
from c2w_fast.cli import INTERRUPTED, path_argument
from c2w_fast.data.io import (NIFTI_SUFFIXES, NRRD_SUFFIXES, Volume, check_same_grid, is_image_name, read_volume,
                              write_csv)
from c2w_fast.data.layouts import (CANONICAL_LABELS, NoLayoutError, check_whole_labels, detect_layout, discover_cases,
                                   files_under, layout_labels, load_labels, nnunet_label_cases, unknown_label_codes,
                                   values_outside)
from c2w_fast.errors import DataError
from c2w_fast.ops._dispatch import BACKEND_CHOICES
from c2w_fast.ops.surface import CONVENTIONS, PERCENTILE_RULES
from c2w_fast.training.evaluation import mean_sd

METRICS = ("dice", "hd", "hd95", "assd", "surface_dice")
LABEL_SUFFIXES = ("_gt", "_seg", "_label", "_labels", "_mask", "_pred", "_prediction")
SKIPPED_FOLDERS = {"imagesTr", "imagesTs"}
_SUFFIX = re.compile("(" + "|".join(LABEL_SUFFIXES) + ")$", re.IGNORECASE)


def case_id(path: Path) -> tuple[str, bool]:
    """``(id, had_suffix)`` of a label file name (module docstring)."""
    name = path.name
    for extension in (*NIFTI_SUFFIXES, *NRRD_SUFFIXES):
        if name.lower().endswith(extension):
            name = name[: -len(extension)]
            break
    stripped = _SUFFIX.sub("", name)
    return (stripped, True) if stripped and stripped != name else (name, False)


def gt_named(path: Path, identifier: str) -> bool:
    """Whether ``path`` is ``<identifier>_gt.<ext>``: a label-like name, but the one the MBAS
    release gives its images (its labels are ``<identifier>_label``)."""
    return path.name.lower().startswith(f"{identifier.lower()}_gt.")


def find_label_files(root: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """``({id: file}, {id: problem})`` for the label files under ``root``."""
    candidates: dict[str, list[tuple[int, Path]]] = {}
    for path in files_under(root):  # symlinks followed; hidden files skipped (a killed write's staging folder)
        if not is_image_name(path) or SKIPPED_FOLDERS & set(path.relative_to(root).parts[:-1]):
            continue  # nnU-Net image folders
        identifier, suffixed = case_id(path)
        # labels over images: a suffix over none, and another suffix over _gt (the MBAS release's image)
        rank = 0 if not suffixed else 1 if gt_named(path, identifier) else 2
        candidates.setdefault(identifier, []).append((rank, path))
    files, problems = {}, {}
    for identifier, found in candidates.items():
        best = [p for r, p in found if r == max(r for r, _ in found)]
        if len(best) > 1:
            problems[identifier] = "ambiguous: " + ", ".join(str(p) for p in best)
        else:
            files[identifier] = best[0]
    return files, problems


@dataclass
class GroundTruth:
    """How to load each case's reference label map: from files, or from a dataset layout."""

    files: dict[str, Path] = field(default_factory=dict)
    cases: dict[str, object] = field(default_factory=dict)  # id -> data.layouts.Case
    problems: dict[str, str] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=lambda: dict(CANONICAL_LABELS))  # those its label maps can hold

    @property
    def ids(self) -> set[str]:
        return set(self.files) | set(self.cases) | set(self.problems)

    def load(self, identifier: str) -> Volume:
        return load_labels(self.cases[identifier]) if identifier in self.cases else read_volume(self.files[identifier])

    def unknown(self, identifier: str) -> set[int]:
        """Label codes the case's ground truth leaves unknown, not empty (a LASC case without lawall.nrrd)."""
        return unknown_label_codes(self.cases[identifier]) if identifier in self.cases else set()


def find_ground_truth(root: Path) -> GroundTruth:
    label_cases = nnunet_label_cases(root)  # labelsTr / labelsTs: values mapped by the dataset's dataset.json
    if label_cases:
        return GroundTruth(cases={case.id: case for case in label_cases}, labels=layout_labels(root.parent, "nnunet"))
    try:
        layout = detect_layout(root)
    except NoLayoutError:  # a plain folder of label files (a mixed or broken dataset is reported as such)
        files, problems = find_label_files(root)
        return GroundTruth(files=files, problems=problems)
    return GroundTruth(cases={case.id: case for case in discover_cases(root, layout, require_labels=False)},
                       labels=layout_labels(root, layout))


def parse_labels(text: str) -> dict[str, int]:
    """``"wall=1,RA=2,LA=3"`` -> ``{"wall": 1, "RA": 2, "LA": 3}``: distinct names, distinct values >= 1
    (0 is the background)."""
    labels = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip() or not value.strip().isdigit() or int(value) < 1:
            raise ValueError(f"--labels must look like wall=1,RA=2,LA=3 (values >= 1), got {text!r}")
        if name.strip() in labels or int(value) in labels.values():
            raise ValueError(f"--labels names {name.strip()!r} or the value {int(value)} twice: {text!r}")
        labels[name.strip()] = int(value)
    if not labels:
        raise ValueError(f"--labels names no label: {text!r}")
    return labels


def _labels_the_layout_holds(labels: dict[str, int], gt: GroundTruth, gt_dir: Path) -> dict[str, int]:
    """``labels``, or a DataError when the ground truth is a dataset whose label maps cannot hold
    one of them (RA in LASC 2018): its rows would be NaN for every case."""
    missing = {name: value for name, value in labels.items() if value not in gt.labels.values()}
    if gt.cases and missing:
        held = ",".join(f"{name}={value}" for name, value in gt.labels.items())
        asked = ",".join(f"{name}={value}" for name, value in missing.items())
        raise DataError(gt_dir, f"--labels {asked}: this dataset's label maps hold only {held}")
    return labels


def _describe_values(values: np.ndarray) -> str:
    shown = ", ".join(f"{v:g}" for v in values[:5].tolist())
    return shown if len(values) <= 5 else f"{len(values)} values from {values[0]:g} to {values[-1]:g}"


def _as_label_map(array: np.ndarray, path) -> np.ndarray:
    check_whole_labels(array, path)
    if array.dtype.kind != "f":
        return array
    largest = max(-float(array.min()), float(array.max())) if array.size else 0.0  # no |array| copy
    if largest > np.iinfo(np.int32).max:  # int32 would wrap them into other codes
        raise DataError(path, f"holds whole values as large as {largest:g}: not label codes; give the segmentation")
    return array.astype(np.int32)


def evaluate_case(identifier: str, pred_path: Path, gt: GroundTruth, labels: dict[str, int], options: dict):
    """``(rows, problem, warnings)`` for one case: its per-label rows, or a problem message; the
    warnings name values of the prediction or ground truth that are neither evaluated nor label codes."""
    try:
        return _evaluate_case(identifier, pred_path, gt, labels, options)
    except Exception as exc:  # one bad case must not stop the others; it is reported in the CSV
        return [], str(exc) if isinstance(exc, DataError) else f"{type(exc).__name__}: {exc}", []


def _evaluate_case(identifier, pred_path, gt, labels, options):
    reference = gt.load(identifier)
    pred = read_volume(pred_path)
    check_same_grid(pred, reference, "prediction", "ground truth")
    pred_labels = _as_label_map(pred.array, pred_path)
    gt_labels = _as_label_map(reference.array, reference.path)
    unknown = gt.unknown(identifier)  # not scored: an absent label there is unknown, not an empty one
    known = {name: value for name, value in labels.items() if value not in unknown}
    on_gpu = options.get("backend") == "triton"  # the files are read on the CPU; triton runs where they are
    pair = [torch.from_numpy(m).cuda() if on_gpu else m for m in (pred_labels, gt_labels)]
    results = metrics.evaluate_labels(*pair, known, reference.spacing, **options) if known else {}
    expected = sorted({0, *labels.values(), *gt.labels.values()})
    warnings = [warning for warning in (_other_values(pred_labels, pred_path, expected),
                                        _other_values(gt_labels, reference.path, expected)) if warning]
    rows = [{"case": identifier, "label": name, **results[name].as_dict(), "status": "ok"} if name in results else
            {"case": identifier, "label": name, **dict.fromkeys(METRICS, ""), "status": f"no {name} ground truth"}
            for name in labels]
    return rows, None, warnings


def _other_values(label_map: np.ndarray, path, expected: list[int]) -> str | None:
    """A warning naming the values of ``label_map`` (read from ``path``) outside ``expected``, or None:
    many are likely an image (or a 0/255 mask) given as a label map, every case then scoring 0."""
    other = values_outside(label_map, expected)
    return None if not len(other) else (
        f"{path} also holds {_describe_values(other)}, neither evaluated nor label codes "
        f"({', '.join(map(str, expected))}): is it a label map?")


def _holds_label(row: dict) -> bool:
    """Whether the prediction or ground truth of a case holds the row's label: its ASSD is NaN only
    when both masks are empty (:mod:`c2w_fast.metrics`, empty masks). A label the ground truth leaves
    unknown counts, so that the summary says so."""
    return row["status"] != "ok" or not math.isnan(row["assd"])


def summary_rows(rows: list[dict], labels) -> list[dict]:
    """Per label: mean, sample sd and count of the finite values over the cases scored."""
    out = []
    for name in labels:
        values = {m: np.array([r[m] for r in _scored(rows, name)], dtype=float) for m in METRICS}
        finite = {m: v[np.isfinite(v)] for m, v in values.items()}
        out.append({"case": "mean", "label": name, **{m: float(f.mean()) if len(f) else math.nan
                                                       for m, f in finite.items()}, "status": ""})
        out.append({"case": "sd", "label": name, **{m: float(f.std(ddof=1)) if len(f) > 1 else math.nan
                                                     for m, f in finite.items()}, "status": ""})
        out.append({"case": "n", "label": name, **{m: len(f) for m, f in finite.items()}, "status": ""})
    return out


def _scored(rows: list[dict], label: str) -> list[dict]:
    """The rows of ``label`` with metrics (not those of cases whose ground truth leaves it unknown)."""
    return [row for row in rows if row["label"] == label and row["status"] == "ok"]


def run(pred_dir: Path, gt_dir: Path, labels: dict[str, int] | None, out: Path, *, workers: int = 2,
        progress: bool = True, predicted_only: bool = False, **options) -> tuple[list[dict], dict[str, str]]:
    """Evaluate every case; returns the per-case rows and ``{id: problem}``; writes ``out``.

    ``labels``: ``{name: value}``; None for those the ground truth can hold (wall, RA, LA; no RA
    in a LASC dataset) and some prediction or ground truth holds. ``predicted_only``: ground-truth
    cases without a prediction are left out instead of being problems (predictions of a test split
    against the whole dataset)."""
    from tqdm import tqdm

    predictions, problems = find_label_files(pred_dir)
    problems = {i: f"prediction {p}" for i, p in problems.items()}
    if not predictions and not problems:
        raise DataError(pred_dir, "no label maps here (.nii, .nii.gz, .nrrd, .nhdr); nothing to evaluate")
    gt = find_ground_truth(gt_dir)
    default_labels = labels is None
    labels = gt.labels if default_labels else _labels_the_layout_holds(labels, gt, gt_dir)
    problems.update({i: f"ground truth {p}" for i, p in gt.problems.items()})
    for identifier in sorted(gt.ids - set(predictions) - set(problems)) if not predicted_only else ():
        problems[identifier] = "missing prediction"
    for identifier in sorted(set(predictions) - gt.ids):
        problems[identifier] = f"missing ground truth for {predictions[identifier]}"
    todo = sorted(i for i in predictions if i in gt.ids and i not in problems)
    rows: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # the C++ kernels release the GIL
        futures = {pool.submit(evaluate_case, i, predictions[i], gt, labels, options): i for i in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="evaluate", unit="case",
                               disable=not progress):
                case_rows, problem, warnings = future.result()
                if problem:
                    problems[futures[future]] = problem
                for warning in warnings:
                    tqdm.write(f"warning: {futures[future]}: {warning}", file=sys.stderr)
                rows += case_rows
        except KeyboardInterrupt:  # the cases under way finish; the others do not start
            pool.shutdown(cancel_futures=True)
            raise
    held = {name: value for name, value in labels.items() if any(_holds_label(r) for r in rows if r["label"] == name)}
    if default_labels:  # a label no file holds would add a row of NaN per case (RA in a dataset without one)
        labels = held
        rows = [row for row in rows if row["label"] in labels]
    elif rows:  # asked for by name: kept, and said to be in no file (a wrong code?)
        for name in labels.keys() - held.keys():
            print(f"warning: --labels {name}={labels[name]}: no prediction or ground truth holds it, so its rows "
                  "are n/a; is the code right?", file=sys.stderr)
    rows.sort(key=lambda r: (r["case"], list(labels).index(r["label"])))
    problem_rows = [{"case": i, "label": "", **{m: "" for m in METRICS}, "status": p}
                    for i, p in sorted(problems.items())]
    write_csv(out, rows + summary_rows(rows, labels) + problem_rows, columns=["case", "label", *METRICS, "status"],
              float_digits=6)
    return rows, problems


def _summary_line(rows, problems, out) -> str:
    labels = list(dict.fromkeys(row["label"] for row in rows))
    evaluated = len({r["case"] for r in rows})
    lines = [f"evaluated {evaluated} of {evaluated + len(problems)} cases; wrote {out}"]
    for label in labels:
        lines.append(f"  {label}: " + _label_summary(rows, label))
    for identifier, problem in sorted(problems.items()):
        lines.append(f"  problem: {identifier}: {problem}")
    return "\n".join(lines)


def _label_summary(rows: list[dict], label: str) -> str:
    """``dice 0.900 ± 0.100, hd ...`` of ``label`` over the cases scored (as the training's Table 1:
    non-finite values left out and counted), and how many cases had no ground truth of it."""
    scored = _scored(rows, label)
    unknown = sum(row["label"] == label for row in rows) - len(scored)
    if not scored:
        return f"no case has {label} ground truth"
    text = ", ".join(f"{m} {mean_sd([row[m] for row in scored])}" for m in METRICS)
    return text + (f"; {unknown} case{'s' if unknown > 1 else ''} without {label} ground truth" if unknown else "")


def main(argv=None) -> int:
    paragraphs = __doc__.split("\n\n")
    details = "\n\n".join(paragraphs[2:])
    for markup in ("``", "**", ":mod:"):
        details = details.replace(markup, "")
    parser = argparse.ArgumentParser(prog="python -m c2w_fast.evaluate", description=paragraphs[0], epilog=details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pred", required=True, type=path_argument, help="folder of predicted label maps")
    parser.add_argument("--gt", required=True, type=path_argument,
                        help="folder of ground-truth label maps, or a dataset")
    parser.add_argument("--labels", help="name=value pairs, e.g. wall=1,LA=3 (default: those of wall=1,RA=2,LA=3 "
                                         "that the --gt dataset's layout can hold, no RA in LASC 2018, and some "
                                         "prediction or ground truth holds)")
    parser.add_argument("--predicted-only", action="store_true",
                        help="evaluate the cases that have a prediction; ground-truth cases without one are not "
                             "problems (e.g. a test split's predictions against the whole dataset)")
    parser.add_argument("--tolerance", type=float, default=1.0, help="Surface Dice tolerance in mm (default 1.0)")
    parser.add_argument("--convention", choices=CONVENTIONS, default="surfel",
                        help="surfel: surface elements at voxel corners weighted by area, as DeepMind "
                             "surface-distance; voxel: boundary voxel centres, as MONAI (default surfel)")
    parser.add_argument("--percentile-rule", choices=PERCENTILE_RULES, default="max",
                        help="HD95: max: the larger of the two directed 95th percentiles; pooled: the 95th "
                             "percentile of both directions together, as medpy (default max)")
    parser.add_argument("--backend", choices=[b for b in BACKEND_CHOICES if b != "cuda"], default="auto",
                        help="auto: the C++ backend for files (read on the CPU); triton: copied to the GPU and "
                             "evaluated there (default auto)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="cases evaluated at once (default %(default)s: the CPU cores, at most 4)")
    parser.add_argument("--out", required=True, type=path_argument, help="CSV file to write")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    try:
        labels = None if args.labels is None else parse_labels(args.labels)
    except ValueError as exc:
        parser.error(str(exc))
    for name in ("pred", "gt"):
        if not getattr(args, name).is_dir():
            parser.error(f"--{name} {getattr(args, name)} is not a folder")
    if not math.isfinite(args.tolerance) or args.tolerance < 0:
        parser.error(f"--tolerance must be a finite number >= 0 (mm), got {args.tolerance}")
    if is_image_name(args.out):
        parser.error(f"--out {args.out} is named as an image; the metrics are a CSV file (e.g. metrics.csv)")
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.backend == "triton" and not torch.cuda.is_available():
        parser.error("--backend triton runs on a GPU and none is available; use auto or cpu")
    if args.out.is_dir():
        parser.error(f"--out {args.out} is a folder; give the CSV file to write")
    if not _writable_file(args.out):
        parser.error(f"--out {args.out}: its folder cannot be made, or this user cannot write in it")
    try:
        rows, problems = run(args.pred, args.gt, labels, args.out, workers=args.workers, progress=not args.quiet,
                             predicted_only=args.predicted_only, tolerance_mm=args.tolerance,
                             convention=args.convention, percentile_rule=args.percentile_rule, backend=args.backend)
    except DataError as exc:  # the ground-truth dataset itself is unreadable, or nothing to evaluate
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # the CSV is written once every case is evaluated
        print(f"\ninterrupted: {args.out} not written", file=sys.stderr)
        return INTERRUPTED
    print(_summary_line(rows, problems, args.out))
    return 1 if problems else 0


def _writable_file(path: Path) -> bool:
    """Whether ``path``'s folder exists or can be made and takes files, checked before any case is evaluated."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(path.parent, os.W_OK)


if __name__ == "__main__":
    sys.exit(main())
