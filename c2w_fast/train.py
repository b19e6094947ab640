"""python -m c2w_fast.train: train a stage of C2W-Tune or of the MBAS cascade.

Stages (run.stage; one preset each in configs/, installed with the package: --config c2w_wall
names the preset c2w_wall.toml; --config ./c2w_wall.toml an edited copy in the working folder):

  localizer  coarse low-resolution U-Net for the LA cavity; its centre of mass places the ROI
  cavity     C2W stage 1: ResNeXt U-Net segments the LA cavity in the 44x256x256 ROI
  wall       C2W stage 2: starts from the cavity run (--init-from), new head, progressive
             unfreezing A/B/C (unfreeze.steps) with a cosine restart per step, LR 1e-3/1e-4/1e-5
  scratch    the architecture-matched wall baseline trained from random weights
  cascade1   MBAS stage 1: binary atrial union at 2.5x0.97x0.97 mm, 25% foreground patches,
             largest component + dilation r=2 of its output gates stage 2
  cascade2   MBAS stage 2: wall/RA/LA with the Dice+CE loss masked to the stage-1 region,
             patches centred on wall 0.5 / RA 0.25 / LA 0.25, SGD momentum 0.99, poly LR

Examples:
  python -m c2w_fast.train --config c2w_localizer --data /data/LASC2018 --out runs/loc --fold final
  python -m c2w_fast.train --config c2w_cavity --data /data/LASC2018 --out runs/cavity --fold final \\
      --set roi.localizer=runs/loc
  python -m c2w_fast.train --config c2w_wall --data /data/LASC2018 --out runs/wall --fold final \\
      --init-from runs/cavity --set roi.localizer=runs/loc
  (--fold all trains folds 0..k-1 and no final model; a wall fold starts from the same fold of
  the cavity run, else from its final model)
  python -m c2w_fast.train --resume --out runs/wall --fold final
  torchrun --nproc_per_node 2 -m c2w_fast.train --config ... (DDP, one process per GPU)
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings
from pathlib import Path

from c2w_fast import config as cfg
from c2w_fast.cli import INTERRUPTED, path_argument
from c2w_fast.errors import DataError, plain_warnings
from c2w_fast.training import distributed
from c2w_fast.training.checkpoint import CheckpointError
from c2w_fast.training.lock import FoldInUseError, FoldLocks
from c2w_fast.training.loop import DivergedError
from c2w_fast.training.schedule import unreached_settings
from c2w_fast.training.run import (RunError, cases_and_splits, check_cases, check_helpers, check_out,
                                   check_out_of_dataset, check_patch, check_processes, cross_validation_summary,
                                   fold_names, fold_rows, fold_split, plan_folds, replaced_config, start_folds,
                                   train_fold, training_cases)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m c2w_fast.train", description=__doc__.split("\n\n")[0].split(": ", 1)[1],
                                epilog=__doc__.split("\n\n", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config",  # a string: Path() would drop the "./" that marks a path
                   help="TOML config file, or a preset name: c2w_localizer, c2w_cavity, c2w_wall, c2w_scratch, "
                        "mbas_stage1, mbas_stage2 (configs/*.toml, installed with the package); not with --resume")
    p.add_argument("--data", type=path_argument, help="dataset folder: LASC 2018, MBAS or nnU-Net raw (sets data.root)")
    p.add_argument("--out", type=path_argument, required=True,
                   help="run folder (created; holds config.toml, splits.json, fold_k/)")
    p.add_argument("--fold", default="0", help="cross-validation fold k, 'all' folds in turn, or 'final' "
                                               "(all development cases, then the held-out test set); default 0")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint_latest.pt")
    p.add_argument("--init-from",
                   help="checkpoint or run folder to start from (sets run.init_from; wall: the cavity run)")
    p.add_argument("--epochs", type=int, help="number of epochs (sets train.epochs)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), help="sets run.device")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override any config value, e.g. --set train.batch_size=2 --set roi.size=[24,64,64]")
    return p


def _config(args) -> cfg.Config:
    overrides = list(args.overrides)
    for key, value in (("data.root", args.data), ("run.init_from", args.init_from), ("train.epochs", args.epochs),
                       ("run.device", args.device)):
        if value is not None and any(item.split("=", 1)[0].strip() == key for item in args.overrides):
            raise cfg.ConfigError(f"{key} is given twice, by --set and by its option: keep one")
        if value is not None:
            overrides.append(f"{key}={cfg._toml_value(str(value) if isinstance(value, Path) else value)}")
    if args.resume:
        if args.config or args.overrides or args.init_from:
            raise cfg.ConfigError("--resume continues with the run's saved config.toml; drop --config, --init-from "
                                  "and --set (only --epochs, --device and --data, for a moved dataset, may change)")
        if not (args.out / "config.toml").is_file():
            raise cfg.ConfigError(f"--out {args.out} is not a run folder (no config.toml in it); --resume continues "
                                  "a run that was started with --config into that folder")
        config = cfg.absolute_paths(cfg.load(args.out / "config.toml", overrides))
        if args.data is None and config.data.root and not Path(config.data.root).is_dir():
            saved = args.out / "config.toml"
            raise cfg.ConfigError(f"the run's dataset folder {config.data.root} (data.root in {saved}) is gone; "
                                  "if it moved, resume with --data NEW_FOLDER")
        return config
    if args.config is None:
        raise cfg.ConfigError("--config is required (or --resume to continue a run)")
    return cfg.absolute_paths(cfg.load(args.config, overrides))


def _describe(name: str, result: dict, config: cfg.Config) -> str:
    if result["select"] == "last":
        best = "checkpoint_best.pt is the last epoch (train.select = last)"
    elif result["best_epoch"] >= 0:
        best = f"best epoch {result['best_epoch']}"
    else:
        best = "no validation cases, so checkpoint_best.pt is the last epoch"
    stopped = (f" (stopped early: no better validation score in {counted(config.train.early_stopping, 'validation')})"
               if result["stopped"] else "")
    return f"{name}: {counted(result['epochs'], 'epoch')}{stopped}, {best}, checkpoints in {result['folder']}"


def counted(n: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``: ``n`` and ``noun``, plural unless ``n`` is 1."""
    return f"{n} {noun}{'s' * (n != 1)}"


def _replaced(out: Path, changes: list[str], resplit: bool) -> str:
    """The line saying that this run replaces the config and/or splits of a run folder that trained nothing."""
    files = ([f"config.toml ({'; '.join(changes[:5])})"] if changes else []) + (["splits.json (split anew)"] * resplit)
    return f"{out}: nothing trained there yet, so this run replaces its {' and '.join(files)}"


def _checked(config: cfg.Config, args, processes: distributed.Processes, device):
    """Every check of the run, before anything is written: the dataset's cases, its splits, the folds
    to train and how, the config a run folder that trained nothing replaces. Every rank checks, and none
    goes on until all have: rank 0 locks and writes the run folder only then, so that no rank reads it
    half-written or finds its own run's lock on a fold (and each rank stops with the first error)."""
    failure = None
    try:
        cases, splits = cases_and_splits(config, args.out)
        names = fold_names(args.fold, len(splits.folds))
        changes = [] if args.resume else replaced_config(config, args.out)
        plan = plan_folds(config, args.out, names, splits, resume=args.resume, epochs_given=args.epochs is not None)
        check_helpers(config, names, [name for name, todo in plan.items() if todo == "new"], splits,
                      run_dir=args.out if args.resume else None, main=processes.is_main)
        check_processes(config, processes)
        check_patch(config)
        unreached = unreached_settings(config)
        if unreached and processes.is_main:
            warnings.warn(f"a run of {counted(config.train.epochs, 'epoch')} does not reach all of its config: "
                          f"{'; '.join(unreached)} (a short run scales them: see "
                          "c2w_fast.demo.short_run_schedule)", stacklevel=1)
        if config.unfreeze.enabled and not config.run.init_from and processes.is_main:
            warnings.warn("unfreeze.enabled without run.init_from: steps A and B keep a randomly initialised "
                          "encoder frozen; give --init-from the pre-trained run, or set unfreeze.enabled = false",
                          stacklevel=1)
        for name in names:  # a data.train_subset larger than a fold's training cases is refused now
            training_cases(config, fold_split(splits, name))
        check_cases(config, cases, splits, [name for name, todo in plan.items() if todo != "finished"],
                    main=processes.is_main)
    except Exception as exc:  # raised below, once the other ranks know
        failure = exc
    _stop_together(failure, processes, device, "another rank stopped at its checks (its error says why)")
    return cases, splits, names, changes, plan


_REPORTED = (cfg.ConfigError, DataError, RunError, CheckpointError, FoldInUseError, DivergedError,
             FileNotFoundError)


class _StoppedTogether(Exception):
    """Every rank has said why it stops (:func:`_stop_together`)."""


def _stop_together(failure: Exception | None, processes: distributed.Processes, device, elsewhere: str) -> None:
    """Every rank stops when one failed: that rank with its error, the others with ``elsewhere``; none is
    left waiting in a collective for torchrun to kill it. torchrun ends every rank as soon as one exits,
    so under it each rank prints its error and waits for the others to print theirs before it leaves."""
    if distributed.all_true(failure is None, processes, device):
        return
    error = failure or RunError(elsewhere)
    if not processes.distributed:
        raise error
    if isinstance(error, (*_REPORTED, OSError)):
        print(f"error: {error}", file=sys.stderr, flush=True)
    else:  # a bug: its traceback
        traceback.print_exception(error, file=sys.stderr)
        sys.stderr.flush()
    distributed.barrier(processes)
    raise _StoppedTogether() from error


def _start(config: cfg.Config, args, plan: dict[str, str], splits, changes: list[str], locks: FoldLocks,
           processes: distributed.Processes, device) -> None:
    """Every check passed: rank 0 locks the folds to train and writes the run folder
    (:func:`start_folds`), and every rank learns whether it could."""
    starting = processes.is_main and set(plan.values()) != {"finished"}
    failure = resplit = None
    if starting:
        try:
            resplit = start_folds(config, args.out, plan, splits, locks, resume=args.resume,
                                  epochs_given=args.epochs is not None)
        except Exception as exc:  # raised below, once the other ranks know
            failure = exc
    _stop_together(failure, processes, device, "rank 0 could not start the run (its error says why)")
    if starting and (changes or resplit):
        print(_replaced(args.out, changes, resplit))
    if starting and splits.settings is None and not args.resume:
        print(f"{args.out / 'splits.json'}: made by hand, used as it is ({len(splits.test)} test cases, "
              f"{len(splits.folds)} folds); data.n_test, n_folds, final_val and split_seed do not apply")


def main(argv=None) -> int:
    plain_warnings()
    args = parser().parse_args(argv)
    try:
        check_out(args.out)
        config = _config(args)
        check_out_of_dataset(args.out, config.data.root)
        processes, device = distributed.setup(config.run.device)
        locks = FoldLocks()  # held while the folds train
        try:
            cases, splits, names, changes, plan = _checked(config, args, processes, device)
            _start(config, args, plan, splits, changes, locks, processes, device)
            validated = []
            for name, todo in plan.items():
                if processes.is_main and args.resume and todo != "resume":
                    print(f"{name}: " + ("finished earlier, skipped" if todo == "finished"
                                         else "not started yet, trained from the beginning"))
                if todo == "finished":  # its validation rows still belong in the cross-validation summary
                    rows = fold_rows(args.out / name / "val_metrics.csv") if processes.is_main else []
                    validated += [{"fold": name, **row} for row in rows]
                    continue
                result = train_fold(config, args.out, name, cases, splits, device=device, processes=processes,
                                    resume=todo == "resume")
                if processes.is_main:
                    print(_describe(name, result, config))
                    validated += [{"fold": name, **row} for row in result.get("val", [])]
            if processes.is_main and len(plan) > 1 and validated:
                print(cross_validation_summary(config, args.out, validated))
            distributed.barrier(processes)  # rank 0 has evaluated: no rank leaves the group while another uses it
        finally:
            locks.release()
            distributed.teardown()
    except _StoppedTogether:
        return 2
    except _REPORTED as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, a folder made read-only while training: the earlier epochs are kept
        print(f"error: {exc}\n{_interrupted(args.out, args.fold).strip()}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(_interrupted(args.out, args.fold), file=sys.stderr)
        return INTERRUPTED
    return 0


def _interrupted(out: Path, fold: str) -> str:
    """What to do after Ctrl-C: resume the folds ``--fold`` names from their last checkpoint (the
    same ``--fold``: ``--resume`` alone means fold 0), or start again when none of them has one."""
    pattern = "fold_*" if fold == "all" else ("final" if fold == "final" else f"fold_{fold}")
    if any(out.glob(f"{pattern}/checkpoint_latest.pt")):
        fold_option = "" if fold == "0" else f" --fold {fold}"
        return (f"\ninterrupted: continue from the last checkpoint with python -m c2w_fast.train --resume "
                f"--out {out}{fold_option}")
    return "\ninterrupted before the end of a first epoch (no checkpoint): start the run again with its command"


if __name__ == "__main__":
    sys.exit(main())
