"""The README's demo: C2W-Tune end to end on synthetic LGE-MRI phantoms, on a CPU, in minutes.

Writes a small phantom dataset in LASC layout, then runs ``python -m c2w_fast.train``
with the installed presets (``configs/``, :func:`c2w_fast.config.preset_path`) shrunk to
CPU size (``--set`` overrides: 4-stage networks with a quarter of the channels, a 32×64×64
ROI, tens of epochs): the localiser, the cavity stage, the wall stage fine-tuned from the
cavity run with progressive unfreezing, and the scratch baseline. Both wall models then
predict the held-out phantoms in their native grid and the C2W paper's Table 1 is printed
for them;
``python -m c2w_fast.predict --model OUT/wall`` writes the held-out predictions (cavity and
wall) to ``OUT/predictions`` and their wall-thickness maps to ``OUT/thickness``, as it
would for new scans.
``bench/reproduce_c2w.py`` runs the same pipeline at full size on a GPU.
Usage: python -m c2w_fast.demo [--out runs/demo] [--n 16] [--epochs 30]
"""
from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

from c2w_fast import config as cfg
from c2w_fast import predict, train
from c2w_fast.cli import INTERRUPTED, path_argument
from c2w_fast.data.layouts import LASC_IMAGE, discover_cases
from c2w_fast.data.phantom import write_dataset
from c2w_fast.data.splits import load_splits
from c2w_fast.stages import Predictor
from c2w_fast.training.evaluation import evaluate_cases, table1

DEMO_SHAPE, DEMO_SPACING = (40, 96, 96), (1.25, 1.25, 1.25)
N_TEST, FINAL_VAL = 4, 2  # held-out test phantoms; validation phantoms of the final models

CPU_RUN = [f"data.n_test={N_TEST}", "data.n_folds=2", f"data.final_val={FINAL_VAL}", "train.batch_size=2",
           "train.num_workers=0", "run.device=\"cpu\"", "augment.elastic_prob=0.0"]
TINY_RESNEXT = [
    "model.overrides.features=[8,16,32,64]", "model.overrides.strides=[1,[1,2,2],2,2]",
    "model.overrides.kernels=[3,3,3,3]", "model.overrides.blocks_per_stage=[0,1,1,1]",
    "model.overrides.decoder_convs=[1,1,1]", "model.overrides.groups=[2,4,8,16]", "roi.size=[32,64,64]",
    "unfreeze.shallow_stages=2",  # the wall's step B trains the deeper half of the 4 stages (the preset: 4 of 7)
]
TINY_LOCALIZER = [
    "model.overrides.features=[8,16,32]", "model.overrides.strides=[1,2,2]", "model.overrides.kernels=[3,3,3]",
    "model.overrides.blocks_per_stage=[1,1,1]", "model.overrides.decoder_convs=[1,1]",
    "data.spacing=[2.5,2.5,2.5]", "train.patch_size=[16,48,48]",
]


STAGE_DONE = "stage_complete"  # marker in a stage's run folder once its training has finished


def train_stage(preset: str, data: Path, out: Path, epochs: int, overrides: list[str], *,
                resumable: bool = False) -> None:
    """``python -m c2w_fast.train --config <installed preset> ... --fold final`` with ``--set`` overrides.

    ``resumable``: a stage whose run folder says it finished is skipped, and one that was
    killed (a ``checkpoint_latest.pt`` but no marker) continues with ``--resume``. Otherwise
    an earlier run of the stage in ``out`` is removed first: the demo's run folders are its own.
    """
    if not resumable and (out / "config.toml").is_file():
        shutil.rmtree(out)
    if resumable and (out / STAGE_DONE).is_file():
        print(f"  {preset}: finished earlier in {out}", flush=True)
        return
    if resumable and (out / "final" / "checkpoint_latest.pt").is_file():
        args = ["--resume", "--out", str(out), "--fold", "final"]
    else:
        args = ["--config", str(cfg.preset_path(preset)), "--data", str(data), "--out", str(out), "--fold", "final",
                "--epochs", str(epochs)]
        for item in overrides:
            args += ["--set", item]
    began = time.perf_counter()
    status = train.main(args)
    if status == INTERRUPTED:  # train printed how far it got; the caller says how to go on
        raise KeyboardInterrupt
    if status != 0:
        raise SystemExit(f"training {preset} failed")
    if resumable:
        (out / STAGE_DONE).touch()
    print(f"  {preset}: {time.perf_counter() - began:.0f} s", flush=True)


def short_run_schedule(epochs: int) -> list[str]:
    """The wall stage's unfreezing for a run of tens of epochs.

    The paper's steps (epochs 61 / 181 of up to 1000) with tenfold LR decays at each restart
    leave a short run barely moving after step A (on the demo's phantoms: wall Dice 0.66
    with peaks 1e-3/3e-4 vs 0.81 without decay, 30 epochs). This keeps the steps and the
    cosine restarts, starting B and C at e/10 and e/4, with every peak at 1e-3.
    """
    step_b = max(1, epochs // 10)
    steps = f"[{step_b},{max(step_b + 1, epochs // 4)}]"  # strictly increasing, also for a few epochs
    return [f"unfreeze.steps={steps}", f"schedule.restarts={steps}", "schedule.restart_lr=[1e-3,1e-3]",
            "schedule.warmup_epochs=1", f"train.early_stopping_from={max(1, epochs // 4)}"]


def c2w_pipeline(data: Path, runs: Path, epochs: int, *, common: list[str], resnext: list[str],
                 localizer: list[str], wall_schedule: list[str], device: str = "cpu",
                 resumable: bool = False) -> dict[str, list[dict]]:
    """Localiser → cavity → wall (from the cavity run) and the scratch baseline, then the test
    cases predicted by both wall models; returns their per-case metrics by method name.
    ``resumable``: rerunning continues where a killed run stopped (:func:`train_stage`)."""
    roi = [f"roi.localizer=\"{runs / 'localizer'}\""]
    warmup = [f"schedule.warmup_epochs={max(1, epochs // 10)}"]
    stages = [("c2w_localizer.toml", "localizer", max(1, epochs // 2), common + localizer + warmup),
              ("c2w_cavity.toml", "cavity", epochs, common + resnext + roi + warmup),
              ("c2w_wall.toml", "wall", epochs,
               common + resnext + roi + [f"run.init_from=\"{runs / 'cavity'}\""] + wall_schedule),
              ("c2w_scratch.toml", "scratch", epochs, common + resnext + roi + warmup)]
    for preset, name, stage_epochs, overrides in stages:
        train_stage(preset, data, runs / name, stage_epochs, overrides, resumable=resumable)
    cases = {c.id: c for c in discover_cases(data)}
    test = [cases[i] for i in load_splits(runs / "wall" / "splits.json").test]
    return {name: evaluate_cases(Predictor.load(runs / run, "final", device), test, desc=name)
            for name, run in (("3D U-Net (scratch baseline)", "scratch"), ("C2W-Tune", "wall"))}


DEMO_MARK = ".c2w_fast_demo"  # in a demo's --out: the folder is the demo's, so a rerun may replace what it holds
OUTPUTS = ("data", "held_out", "predictions", "thickness")  # replaced by every run (the run folders by train_stage)
RUNS = ("localizer", "cavity", "wall", "scratch")


def is_demo_folder(out: Path) -> bool:
    """Whether ``out`` is a demo's: marked so, or (written before the mark) holding only what a demo
    writes, its localiser run among it."""
    if (out / DEMO_MARK).is_file():
        return True
    names = {p.name for p in out.iterdir()}
    return names <= {*OUTPUTS, *RUNS} and (out / "localizer" / "config.toml").is_file()


def claim_out(out: Path) -> str | None:
    """Make ``out`` the demo's folder with none of an earlier run's data and outputs (a rerun with
    another --n would otherwise train on stale phantoms); why not, for a folder that holds other things."""
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file; give a folder (created when missing)"
    if out.is_dir() and any(out.iterdir()) and not is_demo_folder(out):
        return f"--out {out} holds files of its own; give a new or empty folder, or an earlier demo's"
    out.mkdir(parents=True, exist_ok=True)
    (out / DEMO_MARK).touch()
    for name in OUTPUTS:
        shutil.rmtree(out / name, ignore_errors=True)
    return None


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m c2w_fast.demo", description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out", type=path_argument, default=Path("runs/demo"),
                        help="the demo's folder: phantoms, run folders, predictions (a rerun replaces them)")
    parser.add_argument("--n", type=int, default=16, help=f"number of phantom cases ({N_TEST} are held out)")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the cavity, wall and scratch stages")
    args = parser.parse_args(argv)
    if args.n < N_TEST + FINAL_VAL + 1:  # two folds, and a final split of >= 1 training and the validation cases
        parser.error(f"--n must be at least {N_TEST + FINAL_VAL + 1}: {N_TEST} phantoms are held out for the test")
    if args.epochs < 1:
        parser.error("--epochs must be at least 1")
    problem = claim_out(args.out)
    if problem:
        parser.error(problem)
    try:
        run_demo(args)
    except KeyboardInterrupt:
        print(f"\ndemo interrupted: `python -m c2w_fast.demo --out {args.out}` (or `make demo`) starts it again",
              file=sys.stderr)
        raise SystemExit(INTERRUPTED) from None


def run_demo(args) -> None:
    """Phantoms → the four stages → Table 1 → ``predict`` on the held-out scans, in ``args.out``."""
    # One thread: the small convolutions gain little from a second one, and on a shared
    # machine OpenMP threads waiting for a busy core slow them down many times over.
    torch.set_num_threads(1)
    began = time.perf_counter()
    data = args.out / "data"
    write_dataset(data, "lasc", args.n, shape=DEMO_SHAPE, spacing=DEMO_SPACING)  # claim_out removed the last run's
    print(f"training on {args.n - N_TEST} phantoms ({FINAL_VAL} of them for validation; {DEMO_SHAPE} voxels @ "
          f"{DEMO_SPACING} mm), {train.counted(args.epochs, 'epoch')} per stage:", flush=True)
    results = c2w_pipeline(data, args.out, args.epochs, common=CPU_RUN, resnext=TINY_RESNEXT,
                           localizer=TINY_LOCALIZER, wall_schedule=short_run_schedule(args.epochs))
    print(f"\nLA wall on the {N_TEST} held-out phantoms (native grid; mean ± sd over cases):")
    print(table1(results, "wall"))
    held_out = args.out / "held_out"
    held_out.mkdir()
    for case in load_splits(args.out / "wall" / "splits.json").test:
        shutil.copyfile(data / case / LASC_IMAGE, held_out / f"{case}.nrrd")  # a folder of new scans
    command = ["--model", str(args.out / "wall"), "--in", str(held_out), "--out", str(args.out / "predictions"),
               "--thickness", str(args.out / "thickness")]
    print(f"\npython -m c2w_fast.predict {' '.join(command)}", flush=True)
    predict.main(command)
    print(f"\ndemo finished in {time.perf_counter() - began:.0f} s; runs in {args.out}")


if __name__ == "__main__":
    main()
