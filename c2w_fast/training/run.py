"""A training run folder from start to finish: splits, folds, training, validation and test evaluation.

Layout of ``RUN_DIR``::

    config.toml        the full config of the run (what --resume reads)
    splits.json        test set, folds and final train/val split (per patient with data.patients)
    fold_0/ … final/   one folder per trained fold: metrics.csv, progress.png,
                       checkpoint_latest.pt, checkpoint_best.pt, val_metrics.csv
                       (and test_metrics.csv for ``final``)
"""
from __future__ import annotations

import dataclasses
import os
import re
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from c2w_fast import config as cfg
from c2w_fast.data.io import same_spacing
from c2w_fast.data.layouts import Case, discover_cases, layout_labels, load_cases, unknown_label_codes
from c2w_fast.data.orientation import CANONICAL, check_same_arrangement
from c2w_fast.data.preprocess import TARGET_CLASSES, target_labels
from c2w_fast.data.splits import Splits, load_splits, make_splits, read_patients, save_splits
from c2w_fast.errors import DataError
from c2w_fast.stages import Predictor, grid_in, locate_stage, resolve_checkpoint
from c2w_fast.training import checkpoint, lock, runlog
from c2w_fast.training.distributed import Processes
from c2w_fast.training.evaluation import REGION_CLASS, evaluate_cases, stage1_cascade, table1
from c2w_fast.training.loop import Trainer, check_resumable
from c2w_fast.training.prepare import stage_spacing


class RunError(ValueError):
    """The run cannot start: a missing helper run, a bad fold index, too few cases."""


def fold_names(fold: str, n_folds: int) -> list[str]:
    """Folder names for ``--fold``: ``k`` → ``fold_k``, ``all`` → every fold, ``final`` → ``final``."""
    if fold == "all":
        return [f"fold_{k}" for k in range(n_folds)]
    if fold == "final":
        return ["final"]
    try:
        k = int(fold)
    except ValueError:
        raise RunError(f"--fold must be a fold index, 'all' or 'final', got {fold!r}") from None
    if not 0 <= k < n_folds:
        raise RunError(f"--fold {k} is out of range: the splits have {n_folds} folds (0..{n_folds - 1}), "
                       f"or use 'all' / 'final'")
    return [f"fold_{k}"]


def fold_split(splits: Splits, name: str):
    return splits.final if name == "final" else splits.fold(int(name.split("_")[1]))


def check_out(run_dir: Path) -> None:
    """A RunError when ``--out`` cannot be a run folder: a file, or a path under a file."""
    path = run_dir.absolute()
    blocker = next((p for p in (path, *path.parents) if p.exists() or p.is_symlink()), None)
    if blocker is not None and not blocker.is_dir():
        what = "a file" if blocker.is_file() else "not a folder"  # or a broken link
        if blocker == path:
            raise RunError(f"--out {run_dir} is {what}; it must be a run folder (created when missing)")
        raise RunError(f"--out {run_dir}: {blocker} is {what}, so no run folder can be made in it")


def check_out_of_dataset(run_dir: Path, data_root: str) -> None:
    """A RunError when ``--out`` is the dataset folder or inside it: its files would mix with the cases."""
    if not data_root:
        return
    out, root = run_dir.resolve(), Path(data_root).resolve()
    if out == root or root in out.parents:
        raise RunError(f"--out {run_dir} is {'the' if out == root else 'inside the'} dataset folder {root} "
                       "(--data / data.root); put the run folder outside it")


def trained_folds(run_dir: Path) -> list[str]:
    """The fold folders of ``run_dir`` that hold a checkpoint."""
    return sorted({path.parent.name for path in run_dir.glob("*/checkpoint_*.pt")})


def used_folds(run_dir: Path) -> list[str]:
    """The fold folders of ``run_dir`` that hold a checkpoint or are being trained now (:func:`lock.in_use`):
    a run folder without any has trained nothing (a run killed or failed before its first checkpoint),
    so another config or split may replace its own."""
    in_training = {path.parent.name for path in run_dir.glob(f"*/{lock.LOCK_NAME}") if lock.in_use(path.parent)}
    return sorted(set(trained_folds(run_dir)) | in_training)


def replaced_config(config: cfg.Config, run_dir: Path) -> list[str]:
    """How ``config`` differs from the run folder's ``config.toml`` (``section.key: old -> new``), which
    it then replaces; a RunError when the folder has trained with that other config (one folder, one run)."""
    saved = run_dir / "config.toml"
    if not saved.is_file():
        return []
    try:  # a config.toml written before paths were stored absolute compares as this run reads it
        changed = cfg.differences(cfg.absolute_paths(cfg.load(saved)), config, ignore=("run.device",))
    except cfg.ConfigError as exc:  # e.g. a value this version refuses
        if used_folds(run_dir):
            raise
        return [f"invalid: {exc}"]
    if changed and used_folds(run_dir):
        raise RunError(f"{run_dir} already holds a run with another config ({'; '.join(changed[:5])}); "
                       "use another --out")
    return changed


def check_helpers(config: cfg.Config, folds: list[str], new_folds: list[str], splits: Splits, *,
                  run_dir: Path | None = None, main: bool = True) -> None:
    """Every run this config depends on has a checkpoint for each fold (or a ``final`` one) of
    the kind the key needs (each checkpoint read once, however many folds share it), and was not
    trained on this run's test cases; on the ``main`` process, a warning when it was trained on
    a fold's validation cases. ``run.init_from`` is needed, and its weights tried on this
    config's model, only for the ``new_folds`` (a resumed fold starts from its own checkpoint).
    A resumed run (its ``run_dir`` given) also finds a helper run moved beside it (:func:`locate_stage`)."""
    needed = {"run.init_from": (config.run.init_from, new_folds),
              **{key: (path, folds) for key, path in cfg.used_helpers(config).items()}}
    for key, (path, for_folds) in needed.items():
        if not path or not for_folds:
            continue
        try:
            located = Path(path) if run_dir is None else locate_stage(path, key, run_dir)
        except FileNotFoundError as exc:
            raise RunError(f"{exc}; a resumed run finds its helper runs where they were trained, or beside "
                           "its own run folder when they were moved together") from None
        try:
            found = {fold: resolve_checkpoint(located, fold) for fold in for_folds}
        except FileNotFoundError as exc:
            option = "--init-from PATH" if key == "run.init_from" else f"--set {key}=PATH"
            hint = ("" if located.exists() or run_dir is not None else
                    f"; train that run first (--out {path}) or name another with {option}")
            raise RunError(f"{key}: {exc}{hint}") from None
        for checkpoint_path in sorted(set(found.values())):
            _check_helper_kind(config, key, checkpoint_path)
            if main:
                _warn_unfinished(key, checkpoint_path)
        for run_folder in sorted({p.parent.parent for p in found.values()}):  # RUN/fold/checkpoint: once per run
            _check_test_set_unseen(key, run_folder, splits)
        if main:
            _warn_validation_seen(key, found, splits)
        if key == "run.init_from":
            _check_init_weights(config, sorted(set(found.values())))


def _warn_validation_seen(key: str, found: dict[str, Path], splits: Splits) -> None:
    """A warning when a helper checkpoint was trained on validation cases of the fold that uses it
    (a cross-validation fold helped by a helper's ``final`` model): those scores are optimistic."""
    seen = {}
    for fold, path in found.items():
        trained = _trained_cases(path)
        leaked = sorted(set(fold_split(splits, fold).val) & trained) if trained else []
        if leaked:
            seen[fold] = f"{fold} by {path.parent.name} ({', '.join(leaked[:3])}{', ...' if len(leaked) > 3 else ''})"
    if seen:
        warnings.warn(f"{key}: the helper run was trained on validation cases of {'; '.join(seen.values())}, so "
                      "their validation scores will be optimistic; train the helper with the same folds "
                      "(--fold all) to keep them held out", stacklevel=3)


def _warn_unfinished(key: str, checkpoint_path: Path) -> None:
    """A warning when the helper's run (its ``checkpoint_latest.pt`` beside the checkpoint) was
    stopped before its epochs were done and before an early stop: a killed or still running run."""
    latest = checkpoint_path.parent / "checkpoint_latest.pt"
    if not latest.is_file():
        return
    payload = checkpoint.load(latest, lazy=True)
    state, epochs = payload["trainer"], payload["config"]["train"]["epochs"]
    if not state["stopped"] and state["epoch"] < epochs:
        warnings.warn(f"{key}: {checkpoint_path.parent} has trained {state['epoch']} of its {epochs} epochs (killed, "
                      "or still training): its checkpoint_best.pt is used as it is now", stacklevel=3)


def _trained_cases(checkpoint_path: Path) -> set[str]:
    """The cases a helper checkpoint (``RUN/fold/checkpoint``) trained on, from its run's
    ``splits.json``; none known for a checkpoint outside a run folder."""
    folder = checkpoint_path.parent
    recorded = folder.parent / "splits.json"
    if not recorded.is_file() or not re.fullmatch(r"final|fold_\d+", folder.name):
        return set()
    helper_splits = load_splits(recorded)
    if folder.name != "final" and int(folder.name[5:]) >= len(helper_splits.folds):
        return set()
    return set(fold_split(helper_splits, folder.name).train)


def _check_test_set_unseen(key: str, run_folder: Path, splits: Splits) -> None:
    """A RunError when the helper's run folder records splits whose development cases include
    this run's test cases: its model has seen them (other split settings, or cases added
    since), so this run's test scores would not be held out."""
    helper_splits = run_folder / "splits.json"
    if not helper_splits.is_file():  # a checkpoint outside a run folder: nothing recorded to compare
        return
    seen = sorted(set(splits.test) & set(load_splits(helper_splits).development))
    if seen:
        raise RunError(f"{key}: {run_folder} was trained on {len(seen)} of this run's test "
                       f"cases ({', '.join(seen[:5])}{', ...' if len(seen) > 5 else ''}): use the helper's split "
                       f"settings (data.n_test, data.split_seed, the same cases) so the test set stays held out")


def _check_init_weights(config: cfg.Config, paths: list[Path]) -> None:
    """Load each ``run.init_from`` checkpoint into this config's model as training will, so that one
    of another architecture is refused before the run folder is written."""
    model = checkpoint.build_from_config(config)
    for path in paths:
        checkpoint.initialise_from(model, path, new_head=config.unfreeze.new_head)


def check_patch(config: cfg.Config) -> None:
    """A ConfigError when the network's strided stages would bring the training patch (or the ROI)
    down to one voxel, which instance norm cannot normalise: found before the run folder is written."""
    from c2w_fast.models import build_spec

    key = "train.patch_size" if config.train.patch_size else "roi.size"
    try:
        build_spec(config.model.architecture, **config.model.overrides).check_input(cfg.value_at(config, key))
    except ValueError as exc:
        raise cfg.ConfigError(f"{key} for model.architecture = {config.model.architecture!r}: {exc}") from None


def check_processes(config: cfg.Config, processes: Processes) -> None:
    """Each process trains an equal share of every batch."""
    if config.train.batch_size % processes.world_size:
        raise RunError(f"train.batch_size ({config.train.batch_size}) must be divisible by the number of "
                       f"processes ({processes.world_size})")


def _check_helper_kind(config: cfg.Config, key: str, checkpoint_path: Path) -> None:
    """A ConfigError when a helper run was trained for something else (:func:`c2w_fast.config.check_helper_kind`),
    a RunError when on volumes arranged otherwise than this run reads them (:mod:`c2w_fast.data.orientation`)."""
    if key == "run.init_from" and config.run.stage != "wall":  # any run may initialise another
        return
    kind = ("run.stage", "cavity") if key == "run.init_from" else None  # the wall stage needs a cavity run
    payload = checkpoint.load(checkpoint_path, lazy=True)
    helper = cfg.from_dict(payload["config"], source=str(checkpoint_path))
    cfg.check_helper_kind(key, helper, f"{key}: {checkpoint_path}", kind)
    try:  # helpers see this run's cases; a wall stage's cavity run is its cavity stage at prediction
        check_same_arrangement(payload.get("orientation"), CANONICAL, f"{key}: {checkpoint_path}", "this run")
    except ValueError as exc:
        raise RunError(str(exc)) from None


def training_cases(config: cfg.Config, split) -> list[str]:
    """The fold's training cases, or ``data.train_subset`` of them drawn with ``data.subset_seed``
    (C2W-Tune's matched-supervision ablation: N = 70 of the 100 final training cases)."""
    cases, wanted = sorted(split.train), config.data.train_subset
    if not wanted:
        return cases
    if wanted > len(cases):
        raise RunError(f"data.train_subset = {wanted}, but the split has only {len(cases)} training cases")
    chosen = np.random.default_rng(config.data.subset_seed).choice(len(cases), wanted, replace=False)
    return [cases[i] for i in sorted(chosen)]


def save_new_splits(splits: Splits, run_dir: Path) -> bool:
    """Write ``splits`` to ``run_dir/splits.json`` unless the folder already has them; True when that
    replaced the stale splits of a run folder that trained nothing (see :func:`cases_and_splits`)."""
    path = run_dir / "splits.json"
    stale = path.is_file()
    if stale:
        recorded = load_splits(path)
        if recorded == splits and recorded.settings == splits.settings:
            return False
    save_splits(splits, path, splits.settings)
    return stale


def split_settings(config: cfg.Config) -> dict:
    """The config values that decide the splits, recorded in ``splits.json``."""
    data = config.data
    return {"n_test": data.n_test, "n_folds": data.n_folds, "final_val": data.final_val, "split_seed": data.split_seed,
            **({"patients": data.patients} if data.patients else {})}


def cases_and_splits(config: cfg.Config, run_dir: Path) -> tuple[dict[str, Case], Splits]:
    """The dataset's cases by id and the run's splits: ``splits.json`` checked when the run folder
    has one (splits made by an earlier run with other settings, or of other cases, are an error,
    unless no fold has a checkpoint or is training: then they are made anew), else made in memory — every
    process makes the same — for :func:`save_new_splits` to write once the run has passed its
    checks, so that a run refused before it starts leaves nothing behind."""
    if not config.data.root:
        raise RunError("no dataset: pass --data DIR (or set data.root)")
    cases = {c.id: c for c in discover_cases(config.data.root, config.data.layout)}
    path = run_dir / "splits.json"
    settings = split_settings(config)
    trained = trained_folds(run_dir)
    if trained and not path.is_file():  # a new split would mix test and training cases with the trained folds'
        raise RunError(f"{run_dir}: {', '.join(trained)} trained here, but its splits.json is gone; put it back "
                       "(one run folder holds one split), or use another --out")
    splits = _recorded_splits(path, cases, settings, used_folds(run_dir)) if path.is_file() else None
    if splits is not None:
        return cases, splits
    groups = read_patients(config.data.patients) if config.data.patients else None
    if groups is not None and not set(groups) & set(cases):
        listed = ", ".join(sorted(groups)[:3])
        raise DataError(config.data.patients, f"none of its cases ({listed}{', ...' * (len(groups) > 3)}) is in the "
                        f"dataset, whose case ids are e.g. {', '.join(sorted(cases)[:3])}: the case column holds those")
    try:
        splits = make_splits(sorted(cases), n_test=settings["n_test"], n_folds=settings["n_folds"],
                             final_val=settings["final_val"], seed=settings["split_seed"], groups=groups)
    except ValueError as exc:
        how = ("is --data the folder of one case? give the folder that holds all the cases" if len(cases) == 1 else
               "the split is set by data.n_test, data.n_folds and data.final_val (--set data.KEY=VALUE)")
        raise RunError(f"{config.data.root}: cannot split {len(cases)} case{'s' * (len(cases) != 1)}: {exc}; "
                       f"{how}") from None
    return cases, dataclasses.replace(splits, settings=settings)


def _recorded_splits(path: Path, cases: dict[str, Case], settings: dict, trained: list[str]) -> Splits | None:
    """The run folder's ``splits.json`` when it is this config's split: made by hand (no settings
    recorded; its cases must exist), or by a run with these settings and cases. Recorded splits
    that are not are a RunError once a fold uses them (``trained``: :func:`used_folds`), else None: split anew."""
    recorded = load_splits(path)
    if recorded.settings is None:
        return load_splits(path, list(cases))
    changed = [f"{key} {value} (config: {settings[key]})" for key, value in recorded.settings.items()
               if settings.get(key) != value]
    listed = set(recorded.development) | set(recorded.test)
    missing, unknown = sorted(set(cases) - listed), sorted(listed - set(cases))
    if not (changed or missing or unknown):
        return recorded
    if not trained:
        return None
    if changed:
        why = f"made with {', '.join(changed)}"
    else:
        why = "made " + " and ".join(([f"without the dataset's cases {missing[:5]}"] if missing else [])
                                     + ([f"with cases no longer in the dataset {unknown[:5]}"] if unknown else []))
    fix = "give --data the dataset that holds them, or use another --out" if unknown else "use another --out"
    raise RunError(f"{path} was {why}; {', '.join(trained)} trained (or {'is' if len(trained) == 1 else 'are'} "
                   f"training) on that split and one run folder holds one split: {fix}")


def _warn_of_mixed_spacings(config: cfg.Config, training: list[Case]) -> None:
    """With ``data.spacing = []`` (native), say when the training cases' voxel sizes differ: the
    network then sees several grids and predict resamples to their median (:func:`stage_spacing`)."""
    spacings = {tuple(round(h, 4) for h in case.spacing) for case in training}
    if config.data.spacing or len(spacings) < 2 or all(same_spacing(s, min(spacings)) for s in spacings):
        return
    median = tuple(round(h, 4) for h in stage_spacing(config, training))
    warnings.warn(f"the training cases have {len(spacings)} different voxel sizes (e.g. {sorted(spacings)[0]} and "
                  f"{sorted(spacings)[-1]} mm): with data.spacing = [] each trains in its own grid and predict "
                  f"resamples new images to their median {median} mm; --set data.spacing=[z,y,x] trains all in one "
                  f"grid", stacklevel=3)


def check_cases(config: cfg.Config, cases: dict[str, Case], splits: Splits, folds: list[str], *,
                main: bool = True) -> None:
    """Read every case the ``folds`` train, validate and (``final``) test on, a few ahead in threads
    (:func:`load_cases`), with the checks training makes (:func:`load_case`: readable, 3D, finite, labels on
    the image's grid with the layout's values, a sensible size in the stage's grid), so that a bad case stops
    the run before its first epoch; on the ``main`` process a training case whose labels hold none of the
    target's classes is a warning."""
    trained = {name: training_cases(config, fold_split(splits, name)) for name in folds}
    training = set().union(*trained.values())
    used = training.union(*(fold_split(splits, name).val for name in folds), splits.test if "final" in folds else ())
    ordered = [cases[case_id] for case_id in sorted(used)]
    _check_target_labelled(config, ordered)
    grids = {stage_spacing(config, [cases[case_id] for case_id in ids]) for ids in trained.values()}
    if main:
        _warn_of_mixed_spacings(config, [cases[case_id] for case_id in sorted(training)])
    trained_classes = np.zeros(config.num_classes, bool)
    for data in tqdm(load_cases(ordered), total=len(ordered), desc="check cases", unit="case",
                     disable=None if main else True, leave=False):
        for spacing in grids:
            try:
                grid_in(data.image.array.shape, data.image.spacing, spacing)
            except ValueError as exc:
                raise DataError(data.case.image_path, str(exc)) from None
        if data.case.id not in training:
            continue
        present = np.bincount(target_labels(data.labels, config.data.target).ravel(), minlength=config.num_classes) > 0
        trained_classes |= present
        if main and not present[1:].any():
            files = ", ".join(str(path) for path in data.case.label_paths.values())
            warnings.warn(f"training case {data.case.id}: no {' / '.join(config.class_names)} voxel in its labels "
                          f"({files}): an empty label map for data.target = {config.data.target!r}", stacklevel=2)
    absent = [name for name, seen in zip(config.class_names, trained_classes[1:]) if not seen]
    if main and absent and len(absent) < len(config.class_names):
        warnings.warn(f"no training case holds a {' / '.join(absent)} voxel: the model cannot learn "
                      f"{'that class' if len(absent) == 1 else 'those classes'} of data.target = "
                      f"{config.data.target!r} (are these cases labelled for it?)", stacklevel=2)


def _check_target_labelled(config: cfg.Config, cases: list[Case]) -> None:
    """A DataError for a dataset that cannot hold any class of the target (an nnU-Net dataset whose
    dataset.json names no wall, for a wall stage), or for cases whose label files leave a class of
    the target unknown (a LASC case without its optional lawall.nrrd): training would take those
    voxels for background. A multi-class target missing some classes is :func:`check_cases`' warning."""
    if not cases:  # a resume with nothing left to train
        return
    codes = {code for class_codes in TARGET_CLASSES[config.data.target].values() for code in class_codes}
    layout = cases[0].layout
    held = layout_labels(config.data.root, layout)
    if not codes & set(held.values()):
        wanted = " / ".join(TARGET_CLASSES[config.data.target])
        source = "its dataset.json names" if layout == "nnunet" else "it holds"
        raise DataError(config.data.root, f"this {layout} dataset has no {wanted} label ({source} "
                        f"{', '.join(held) or 'none'}): data.target = {config.data.target!r} cannot be trained on it")
    unlabelled = [case.id for case in cases if unknown_label_codes(case) & codes]
    if unlabelled:
        raise DataError(cases[0].image_path.parents[1], f"{len(unlabelled)} case(s) of this run have no wall label "
                        f"file (lawall.nrrd): {', '.join(unlabelled[:5])}{' ...' * (len(unlabelled) > 5)}; "
                        f"data.target = {config.data.target!r} needs their wall (training would take it for "
                        "background): label them, or move them out of the dataset folder")


def plan_folds(config: cfg.Config, run_dir: Path, names: list[str], splits: Splits, *,
               resume: bool, epochs_given: bool = False) -> dict[str, str]:
    """What to do with each fold to train: ``"new"``, ``"resume"`` or ``"finished"``, checked before any work.

    A new run refuses fold folders that already hold a ``checkpoint_latest.pt`` (a
    ``checkpoint_best.pt`` alone, left by a run killed in its first epoch, is replaced; another
    config is :func:`replaced_config`'s to check). ``--resume`` continues the folds that
    have a checkpoint, leaves those already finished and evaluated, and starts those never begun;
    an ``--epochs`` given with it (``epochs_given``) below the epochs a fold has done is refused.
    """
    if not resume:
        taken = [name for name in names if (run_dir / name / "checkpoint_latest.pt").is_file()]
        if taken:
            raise RunError(f"{run_dir}: {', '.join(taken)} already trained here; continue with --resume, or use "
                           "another --out (or delete those folders)")
        return {name: "new" for name in names}
    latest = {name: run_dir / name / "checkpoint_latest.pt" for name in names}
    if not any(path.is_file() for path in latest.values()):
        trained = sorted(p.parent.name for p in run_dir.glob("*/checkpoint_latest.pt"))
        hint = (f"; a fold that never finished an epoch is trained without --resume (this run folder has "
                f"{', '.join(trained)}: to resume {'it' if len(trained) == 1 else 'one'}, name it with --fold)"
                if trained else
                "; a run killed before its first epoch ended has no checkpoint: start it again with its command "
                "(or another: a run folder that trained nothing takes a new config)")
        raise RunError(f"{run_dir}: nothing to resume (no checkpoint_latest.pt in {', '.join(names)}){hint}")
    plan = {}
    for name, path in latest.items():
        if not path.is_file():
            plan[name] = "new"
            continue
        saved = checkpoint.load_latest(path.parent, lazy=True)
        check_resumable(saved, config, path)  # before the run folder's config.toml is rewritten
        state = saved["trainer"]
        if epochs_given and state["epoch"] > config.train.epochs:
            raise RunError(f"{name} has trained {state['epoch']} epochs already; --epochs {config.train.epochs} "
                           f"cannot undo them: resume with --epochs {state['epoch']} or more")
        plan[name] = "finished" if _finished(state, path.parent, config, splits) else "resume"
    return plan


def _finished(state: dict, folder: Path, config: cfg.Config, splits: Splits) -> bool:
    """Trained to its end (or stopped early) and evaluated: a resume has nothing left to do."""
    trained = state["stopped"] or state["epoch"] >= config.train.epochs
    split = fold_split(splits, folder.name)
    validated = not split.val or (folder / "val_metrics.csv").is_file()
    tested = folder.name != "final" or not splits.test or (folder / "test_metrics.csv").is_file()
    return trained and validated and tested and (folder / "checkpoint_best.pt").is_file()


def _resumed_at(state: dict, epochs: int, latest: Path) -> str:
    """Where a resumed fold goes on, in the words of the epoch lines (``epoch 3 (4 of 10)``)."""
    done = state["epoch"]
    if state["stopped"] or done >= epochs:  # killed while it was evaluated
        return f"trained ({done} epochs{', stopped early' * state['stopped']}) but not evaluated: evaluating it now"
    return f"resuming at epoch {done} ({done + 1} of {epochs}) from {latest}"


def fold_rows(path: Path) -> list[dict]:
    """The rows of a fold's CSV, or none when the fold wrote none (no validation cases)."""
    return runlog.read_csv(path) if path.is_file() else []


def cross_validation_summary(config: cfg.Config, run_dir: Path, rows: list[dict]) -> str:
    """The folds' validation rows (a ``fold`` column added) written to ``RUN_DIR/cv_val_metrics.csv``
    and summarised per class as mean ± sd over all validation cases of the folds trained."""
    runlog.write_csv(run_dir / "cv_val_metrics.csv", rows)
    folds = sorted({row["fold"] for row in rows})
    classes = list(dict.fromkeys(row["class"] for row in rows))
    return "\n".join(f"\nCross-validation ({len(folds)} folds, validation cases), class {name}:\n"
                     + table1({config.run.stage: rows}, name) for name in classes)


def start_folds(config: cfg.Config, run_dir: Path, plan: dict[str, str], splits: Splits, locks: lock.FoldLocks, *,
                resume: bool, epochs_given: bool) -> bool:
    """Lock the fold folders the ``plan`` trains, check that no other run trained them while this one was
    checking (:func:`plan_folds` again), and write ``splits.json`` and ``config.toml``; True when that
    replaced the stale splits of a run folder that trained nothing (:func:`save_new_splits`)."""
    try:
        for name, todo in plan.items():
            if todo != "finished":
                locks.acquire(run_dir / name)
        if plan_folds(config, run_dir, list(plan), splits, resume=resume, epochs_given=epochs_given) != plan:
            raise RunError(f"{run_dir}: another run trained {', '.join(plan)} while this one was checking; "
                           "run the command again")
        resplit = save_new_splits(splits, run_dir)
        write_config(config, run_dir)  # on --resume with the new --epochs / --device
    except OSError as exc:  # no permission, a read-only disk
        raise RunError(f"--out {run_dir}: cannot write the run folder ({exc})") from None
    return resplit


def write_config(config: cfg.Config, run_dir: Path) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    tmp = run_dir / ".config.toml.tmp"
    tmp.write_text(cfg.dumps(config))
    os.replace(tmp, run_dir / "config.toml")


def train_fold(config: cfg.Config, run_dir: Path, name: str, cases: dict[str, Case], splits: Splits, *,
               device: torch.device, processes: Processes, resume: bool) -> dict:
    """Train fold ``name``; on rank 0 then score its best checkpoint on the validation cases
    (``val_metrics.csv``) and, for ``final``, the held-out test cases (``test_metrics.csv``), both
    as ``predict`` sees them (native grid, whole volume; the per-epoch validation in ``metrics.csv``
    scores the stage's grid and ROI, which is faster)."""
    split = fold_split(splits, name)
    folder = run_dir / name
    if not resume and processes.is_main:
        (folder / "checkpoint_best.pt").unlink(missing_ok=True)  # left by a run killed in its first epoch
    train_cases = [cases[i] for i in training_cases(config, split)]
    if config.data.train_subset and processes.is_main:
        print(f"{name}: training on {len(train_cases)} of its {len(split.train)} training cases (data.train_subset, "
              f"data.subset_seed = {config.data.subset_seed}): {', '.join(c.id for c in train_cases)}")
    trainer = Trainer(config, folder, train_cases, [cases[i] for i in split.val], device=device, processes=processes,
                      resume=resume)
    if resume and processes.is_main:
        print(f"{name}: {_resumed_at(trainer.state, config.train.epochs, folder / 'checkpoint_latest.pt')}")
    state = trainer.fit()
    result = {"fold": name, "best_epoch": state["best_epoch"], "epochs": state["epoch"], "folder": folder,
              "select": config.train.select, "stopped": state["stopped"]}
    if not processes.is_main:
        return result
    best = Predictor.load(folder / "checkpoint_best.pt", device=device)
    # scored as the test cases and predict: whole cases in their native grid, with the helpers' ROI
    rows = evaluate_cases(best, [cases[i] for i in split.val], desc="validation") if split.val else []
    if rows:
        runlog.write_csv(folder / "val_metrics.csv", rows)
        result["val"] = rows
    if name == "final" and splits.test:
        test = evaluate_cases(best, [cases[i] for i in splits.test])
        runlog.write_csv(folder / "test_metrics.csv", test)
        result["test"] = test
        for class_name in (*config.class_names, *([REGION_CLASS] if stage1_cascade(config) else [])):
            print(f"\nHeld-out test set ({len(splits.test)} cases), {config.run.stage} stage, class {class_name}:")
            print(table1({config.run.stage: test}, class_name))
    return result
