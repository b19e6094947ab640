"""python -m c2w_fast.train end to end on tiny phantoms: run folder, folds, errors before training,
progressive unfreezing, early stopping, the MBAS cascade and the signed-distance channel."""
import json
import math
import re
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from c2w_fast import config as cfg
from c2w_fast import train
from c2w_fast.data.io import read_volume, write_volume
from c2w_fast.data.layouts import discover_cases
from c2w_fast.data.orientation import CANONICAL
from c2w_fast.training import checkpoint
from c2w_fast.training import run as training_run
from c2w_fast.training.loop import Trainer
from training_helpers import (CONFIGS, PHANTOM, RESNEXT, SPLITS, STOPS_AT_ONCE, csv_rows, run_train, set_args,
                              write_phantoms)

TINY = SPLITS + RESNEXT


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"))


def _save_model(path, model, config: dict):
    """A checkpoint at ``path`` as training writes one: ``model``'s weights, trained with ``config``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return checkpoint.save(path, {"model": model.state_dict(), "config": config, "orientation": CANONICAL,
                                  "architecture": checkpoint.architecture_of(model, "c2w_resnext")})


def test_help_documents_every_stage(capsys):
    with pytest.raises(SystemExit):
        train.main(["--help"])
    text = capsys.readouterr().out
    for stage in cfg.STAGES:
        assert f"\n  {stage} " in text
    for option in ("--fold", "--resume", "--init-from", "--epochs", "--device", "--set"):
        assert option in text


def test_final_run_writes_the_run_folder_and_the_test_table(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path) == 0
    out = capsys.readouterr().out
    assert "Held-out test set (2 cases), cavity stage, class LA" in out and "LA Dice ↑" in out
    assert {p.name for p in tmp_path.iterdir()} == {"config.toml", "splits.json", "final"}
    files = {p.name for p in (tmp_path / "final").iterdir()}
    assert files == {".lock", "metrics.csv", "progress.png", "checkpoint_latest.pt", "checkpoint_best.pt",
                     "val_metrics.csv", "test_metrics.csv"}
    rows = csv_rows(tmp_path / "final" / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["0", "1"]
    assert all(0 <= float(r["val_dice"]) <= 1 and float(r["val_hd95"]) >= 0 for r in rows)
    # one progress line per epoch on stdout, for runs logged to a file
    for row in rows:
        start = f"epoch {row['epoch']} ({int(row['epoch']) + 1} of 2)  "
        line = next(x for x in out.splitlines() if x.startswith(start))
        assert f"loss {float(row['train_loss']):.4f}" in line and f"val_dice {float(row['val_dice']):.4g}" in line
    test = csv_rows(tmp_path / "final" / "test_metrics.csv")
    assert len(test) == 2 and {"case", "class", "dice", "surface_dice", "hd95", "assd"} <= set(test[0])
    saved = cfg.load(tmp_path / "config.toml")
    assert saved.train.epochs == 2 and saved.data.root == str(lasc)
    # the grid the patches came from, which prediction resamples to: the phantoms' native one (no data.spacing)
    assert checkpoint.load(tmp_path / "final" / "checkpoint_best.pt")["spacing"] == list(PHANTOM["spacing"])


def test_all_folds_train_in_turn(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path, fold="all", epochs=1) == 0
    assert (tmp_path / "fold_0" / "checkpoint_best.pt").is_file()
    assert (tmp_path / "fold_1" / "val_metrics.csv").is_file()
    assert "Cross-validation (2 folds, validation cases), class LA" in capsys.readouterr().out
    rows = csv_rows(tmp_path / "cv_val_metrics.csv")
    assert {r["fold"] for r in rows} == {"fold_0", "fold_1"} and {"dice", "overlap"} <= set(rows[0])
    assert not list(tmp_path.glob("*/test_metrics.csv"))  # the held-out test set is the final model's alone


@pytest.mark.parametrize("extra, items, message", [
    ((), ["train.epoch=3"], "--set train.epoch: unknown key"),
    ((), ["train.batch_size=two"], "--set train.batch_size must be an integer, got str 'two'"),
    ((), ["bogus.x=1"], "--set bogus: unknown section [bogus]"),
    (("--fold", "2"), [], "--fold 2 is out of range: the splits have 2 folds (0..1)"),
    (("--fold", "best"), [], "--fold must be a fold index, 'all' or 'final'"),
    ((), ["data.n_test=30"], "the split is set by data.n_test, data.n_folds and data.final_val"),
    ((), ["data.spacing=[nan,1,1]"], "data.spacing must have 3 positive values (z, y, x), all finite"),
    ((), ["augment.elastic_prob=1", "augment.elastic_sigma_mm=nan"], "augment.elastic_sigma_mm must be in (0, inf)"),
    ((), ["augment.brightness_prob=1", "augment.brightness_range=[nan,nan]"],
     "augment.brightness_range must be finite"),
    pytest.param((), ["run.device=\"cuda\""], "no CUDA GPU",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="there is a GPU")),
])
def test_bad_input_stops_before_training(lasc, tmp_path, capsys, extra, items, message):
    args = ["--config", str(CONFIGS / "c2w_cavity.toml"), "--data", str(lasc), "--out", str(tmp_path / "run"),
            *extra] + set_args(TINY + items)
    assert train.main(args) == 2
    err = capsys.readouterr().err
    assert message in err.replace("\n", " ") and err.startswith("error: ") and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # nothing written: the corrected command runs


def test_dataset_without_cases_is_an_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert run_train("c2w_cavity.toml", tmp_path / "empty", tmp_path / "run") == 2
    assert "no dataset layout recognised" in capsys.readouterr().err
    assert run_train("c2w_cavity.toml", tmp_path / "empty", tmp_path / "run", items=["data.layout=\"lasc\""]) == 2
    assert "no cases found for layout 'lasc'" in capsys.readouterr().err


def test_init_from_another_architecture_is_refused_before_training(lasc, tmp_path, capsys):
    config = cfg.load(CONFIGS / "c2w_cavity.toml", TINY + ["model.overrides.features=[4,8,8]"])
    path = _save_model(tmp_path / "other" / "cavity.pt", checkpoint.build_from_config(config), config.to_dict())
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(path)) == 2
    err = capsys.readouterr().err
    assert "cavity.pt: checkpoint of another architecture — features: checkpoint [4, 8, 8], this run [4, 8, 16]" in err
    assert not (tmp_path / "wall").exists()  # refused before the run folder was written: a corrected retry runs
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "never")) == 2
    assert f"run.init_from: {tmp_path / 'never'}: no such checkpoint file or run folder; train that run first " \
           f"(--out {tmp_path / 'never'}) or name another with --init-from PATH" in capsys.readouterr().err
    torch.save({"a": 1}, tmp_path / "foreign.pt")
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "foreign.pt")) == 2
    assert "foreign.pt: not a checkpoint of c2w_fast's training" in capsys.readouterr().err


def test_a_helper_trained_on_this_runs_test_cases_is_refused(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=1) == 0
    other_split = ["data.split_seed=7"]  # another held-out test set: the cavity run trained on some of it
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "cavity"),
                items=other_split) == 2
    assert re.search(r"cavity was trained on [12] of this run's test cases \(phantom\d+", capsys.readouterr().err)
    assert not (tmp_path / "wall").exists()


def test_a_batch_the_processes_cannot_share_is_refused_before_training(lasc, tmp_path, capsys, monkeypatch):
    from c2w_fast.training import distributed

    monkeypatch.setattr(distributed, "setup", lambda device: (distributed.Processes(0, 3, 0), torch.device("cpu")))
    monkeypatch.setattr(distributed, "all_true", lambda flag, processes, device: flag)  # a world of one, in fact
    monkeypatch.setattr(distributed, "barrier", lambda processes: None)
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", items=["train.batch_size=2"]) == 2
    assert "train.batch_size (2) must be divisible by the number of processes (3)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_a_resumed_run_needs_neither_its_init_checkpoint_nor_fewer_epochs(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=1) == 0
    items = ["unfreeze.steps=[1,1]", "schedule.restarts=[1]", "schedule.restart_lr=[1e-4]"]
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "cavity"), epochs=2,
                items=items) == 0
    shutil.rmtree(tmp_path / "cavity")  # the wall run continues from its own checkpoint
    assert train.main(["--resume", "--out", str(tmp_path / "wall"), "--fold", "final", "--epochs", "3"]) == 0
    assert len(csv_rows(tmp_path / "wall" / "final" / "metrics.csv")) == 3
    assert train.main(["--resume", "--out", str(tmp_path / "wall"), "--fold", "final", "--epochs", "2"]) == 2
    assert "final has trained 3 epochs already; --epochs 2 cannot undo them" in capsys.readouterr().err
    assert cfg.load(tmp_path / "wall" / "config.toml").train.epochs == 3  # the refused resume wrote nothing


def test_a_diverged_run_is_a_clear_error_of_the_command(lasc, tmp_path, capsys, monkeypatch):
    from c2w_fast.training.loop import Trainer

    monkeypatch.setattr(Trainer, "train_step", lambda *args: torch.tensor(math.nan))
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", epochs=2) == 2
    err = capsys.readouterr().err
    assert "error: final, epoch 0: the training loss is nan, so the run diverged" in err
    assert "no checkpoint was written" in err and "Traceback" not in err


def test_a_damaged_latest_checkpoint_points_to_the_best_one(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", epochs=2) == 0
    fold = tmp_path / "run" / "final"
    (fold / "checkpoint_latest.pt").write_bytes((fold / "checkpoint_latest.pt").read_bytes()[:1000])  # a bad disk
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--fold", "final", "--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint_latest.pt: not a readable checkpoint" in err
    assert "checkpoint_best.pt (after epoch " in err and "copy it over checkpoint_latest.pt" in err
    shutil.copy(fold / "checkpoint_best.pt", fold / "checkpoint_latest.pt")  # what the error says to do
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--fold", "final", "--epochs", "3"]) == 0
    assert [int(r["epoch"]) for r in csv_rows(fold / "metrics.csv")][-1] == 2
    (fold / "checkpoint_best.pt").write_bytes(b"")
    (fold / "checkpoint_latest.pt").write_bytes(b"")
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--fold", "final", "--epochs", "4"]) == 2
    assert "no intact checkpoint_best.pt either: delete" in capsys.readouterr().err


def _snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _same(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    assert keys, prefix
    return all(torch.equal(a[k], b[k]) for k in keys)


def _all_moved(a, b, prefix):
    keys = [k for k in a if k.startswith(prefix)]
    return all(not torch.equal(a[k], b[k]) for k in keys)


def test_progressive_unfreezing_is_verified(lasc, tmp_path):
    """Step A: encoder unchanged but for the bottleneck; step B: the shallow encoder unchanged;
    step C: everything moves; and the wall head starts re-initialised."""
    cavity_config = cfg.load(CONFIGS / "c2w_cavity.toml", TINY)
    torch.manual_seed(0)
    cavity = checkpoint.build_from_config(cavity_config)
    path = _save_model(tmp_path / "cavity" / "checkpoint.pt", cavity, cavity_config.to_dict())
    config = cfg.load(CONFIGS / "c2w_wall.toml", TINY + [
        f"run.init_from=\"{path}\"", "unfreeze.steps=[1, 2]", "schedule.restarts=[1, 2]", "unfreeze.shallow_stages=1",
        "train.epochs=3", f"data.root=\"{lasc}\""])
    cases = discover_cases(lasc)
    trainer = Trainer(config, tmp_path / "wall" / "final", cases[:3], cases[3:4], device=torch.device("cpu"))
    start = _snapshot(trainer.model)
    before = _snapshot(cavity)
    assert _same(start, before, "encoder.") and _same(start, before, "decoder.")
    assert not _same(start, before, "heads.")  # new head
    states = []
    trainer.fit(on_epoch_end=lambda epoch, model: states.append(_snapshot(model)))
    after_a, after_b, after_c = states
    # step A: stem and encoder stages 0-1 frozen, the bottleneck (stage 2), decoder and head train
    assert _same(after_a, start, "encoder.stem.") and _same(after_a, start, "encoder.stages.1.")
    assert _all_moved(after_a, start, "encoder.stages.2.") and _all_moved(after_a, start, "decoder.")
    assert _all_moved(after_a, start, "heads.")
    # step B: the shallow part (stem + stage 0, which holds no blocks) stays, stage 1 now trains
    assert _same(after_b, start, "encoder.stem.")
    assert _all_moved(after_b, after_a, "encoder.stages.1.") and _all_moved(after_b, after_a, "encoder.stages.2.")
    # step C: every parameter moves
    params = {name for name, _ in trainer.model.named_parameters()}
    assert all(not torch.equal(after_c[k], after_b[k]) for k in params)
    phases = [r["phase"] for r in csv_rows(tmp_path / "wall" / "final" / "metrics.csv")]
    assert phases == ["A", "B", "C"]


def test_validation_volumes_are_predicted_in_eval_mode_and_the_mode_is_kept(lasc, tmp_path):
    """No dropout in a validation prediction, even right after training (the fold's final
    validation rows are computed then; the MBAS stage-1 network has dropout 0.5)."""
    config = cfg.load(CONFIGS / "c2w_cavity.toml", TINY + [f"data.root=\"{lasc}\""])
    cases = discover_cases(lasc)
    trainer = Trainer(config, tmp_path / "cavity" / "final", cases[:2], cases[2:3], device=torch.device("cpu"))
    trainer.prepare()
    modes = []
    trainer.model.register_forward_pre_hook(lambda module, inputs: modes.append(module.training))
    for training in (True, False):
        trainer.model.train(training)
        trainer.predict_volume(trainer.val_volumes[0])
        assert modes and not any(modes) and trainer.model.training == training


def test_progress_png_is_drawn_after_the_first_epoch_at_most_every_plot_every_s_and_after_the_last(lasc, tmp_path,
                                                                                                     monkeypatch):
    from c2w_fast.training import loop, runlog

    drawn = []
    real_plot = runlog.plot_progress
    monkeypatch.setattr(runlog, "plot_progress", lambda path, rows: drawn.append(len(rows)) or real_plot(path, rows))
    pngs = {}
    for every in (0.0, math.inf):
        monkeypatch.setattr(loop, "PLOT_EVERY_S", every)
        drawn.clear()
        assert run_train("c2w_cavity.toml", lasc, tmp_path / str(every), epochs=3) == 0
        pngs[every] = (drawn[:], (tmp_path / str(every) / "final" / "progress.png").read_bytes())
    assert pngs[0.0][0] == [1, 2, 3] and pngs[math.inf][0] == [1, 3]
    assert pngs[0.0][1] == pngs[math.inf][1]  # the same last drawing


def test_resume_into_a_folder_that_is_no_run_is_named(tmp_path, capsys):
    assert train.main(["--resume", "--out", str(tmp_path / "nothing"), "--fold", "final"]) == 2
    assert f"--out {tmp_path / 'nothing'} is not a run folder (no config.toml in it)" in capsys.readouterr().err


def test_early_stopping_stops_when_validation_stops_improving(lasc, tmp_path):
    assert run_train("c2w_cavity.toml", lasc, tmp_path, epochs=5, items=STOPS_AT_ONCE) == 0
    rows = csv_rows(tmp_path / "final" / "metrics.csv")
    assert len(rows) == 2  # best at the first validation, no better at the second: stop
    assert checkpoint.load(tmp_path / "final" / "checkpoint_best.pt")["epoch"] == 1  # the first epoch's weights
    assert checkpoint.load(tmp_path / "final" / "checkpoint_latest.pt")["epoch"] == 2


@pytest.mark.parametrize("patience, phases", [(1, "AABBC"), (2, "AABBCC")])
def test_early_stopping_waits_for_step_c_and_each_step_gets_its_patience(lasc, tmp_path, patience, phases):
    """C2W: early stopping during step C (from epoch 4). Nothing improves. Patience 1: the run stops
    at the end of step C's first epoch, not in step B, although step B never improved either.
    Patience 2: not in step B although its second epoch (epoch 3) is the second without improvement,
    and step C starts with the full patience again, so the run stops after step C's second epoch."""
    items = ["optim.lr=1e-12", "schedule.kind=\"constant\"", f"train.early_stopping={patience}",
             "train.early_stopping_from=4", "unfreeze.enabled=true", "unfreeze.steps=[2,4]"]
    with pytest.warns(UserWarning, match=r"^unfreeze.enabled without run.init_from: steps A and B keep a randomly "
                                         r"initialised encoder frozen"):
        assert run_train("c2w_cavity.toml", lasc, tmp_path, epochs=8, items=items) == 0
    assert "".join(r["phase"] for r in csv_rows(tmp_path / "final" / "metrics.csv")) == phases


def test_select_last_makes_the_last_epoch_the_checkpoint_used_downstream(lasc, tmp_path):
    # LR 1e-12: the last epoch scores no better than the first, and is still the one selected
    items = ["train.select=\"last\"", "optim.lr=1e-12", "schedule.kind=\"constant\""]
    assert run_train("c2w_cavity.toml", lasc, tmp_path, epochs=2, items=items) == 0
    best = checkpoint.load(tmp_path / "final" / "checkpoint_best.pt")
    assert best["epoch"] == 2 and best["trainer"]["best_epoch"] == 0


def test_mbas_cascade_stage1_then_masked_stage2(tmp_path):
    data = write_phantoms(tmp_path / "mbas", n=6, layout="mbas")
    small = ["model.overrides.features=[4,8,8]", "model.overrides.strides=[1,[1,2,2],2]",
             "model.overrides.kernels=[[1,3,3],3,3]", "model.overrides.blocks_per_stage=[1,1,1]",
             "model.overrides.decoder_convs=[1,1]", "train.iterations_per_epoch=2", "train.val_patches=4"]
    stage1 = small + ["data.spacing=[4.0,3.0,3.0]", "train.patch_size=[8,16,16]", "model.overrides.dropout=0.5"]
    args = ["--data", str(data), "--fold", "final", "--epochs", "2"]
    assert train.main(["--config", str(CONFIGS / "mbas_stage1.toml"), "--out", str(tmp_path / "s1"), *args]
                      + set_args(SPLITS + stage1)) == 0
    region = [r for r in csv_rows(tmp_path / "s1" / "final" / "test_metrics.csv") if r["class"] == "stage-2 region"]
    atria = [r for r in csv_rows(tmp_path / "s1" / "final" / "test_metrics.csv") if r["class"] == "atria"]
    assert len(region) == len(atria) == 2  # the dilated largest component covers at least what the union did
    assert all(float(r["overlap"]) >= float(a["overlap"]) for r, a in zip(region, atria))
    stage2 = small + ["train.patch_size=[8,24,24]", f"cascade.stage1=\"{tmp_path / 's1'}\""]
    assert train.main(["--config", str(CONFIGS / "mbas_stage2.toml"), "--out", str(tmp_path / "s2"), *args]
                      + set_args(SPLITS + stage2)) == 0
    rows = csv_rows(tmp_path / "s2" / "final" / "metrics.csv")
    assert {"val_dice_wall", "val_dice_RA", "val_dice_LA"} <= set(rows[0])
    test = csv_rows(tmp_path / "s2" / "final" / "test_metrics.csv")
    assert {r["class"] for r in test} == {"wall", "RA", "LA"}


def test_wall_stage_with_the_cavity_distance_channel(lasc, tmp_path):
    """Beyond the paper: the cavity run's signed distance as a second input channel."""
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=1) == 0
    items = [f"data.sdf_from=\"{tmp_path / 'cavity'}\"", "data.sdf_channel=true", "unfreeze.steps=[1,1]",
             "schedule.restarts=[1]", "schedule.restart_lr=[1e-4]"]
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "cavity"), epochs=2,
                items=items) == 0
    model, config = checkpoint.load_model(tmp_path / "wall" / "final" / "checkpoint_best.pt")
    assert model.in_channels == 2 and config.data.sdf_channel
    test = csv_rows(tmp_path / "wall" / "final" / "test_metrics.csv")
    assert all(math.isfinite(float(r["dice"])) for r in test)


def test_a_resumable_pipeline_stage_skips_when_finished_and_resumes_when_killed(lasc, tmp_path, monkeypatch):
    """bench/reproduce_c2w.py reruns continue: finished stages are skipped, a killed one resumes."""
    from c2w_fast import demo

    calls = []
    real_main = train.main
    monkeypatch.setattr(train, "main", lambda args: calls.append(args) or real_main(args))
    out = tmp_path / "cavity"
    demo.train_stage("c2w_cavity.toml", lasc, out, 1, TINY, resumable=True)
    assert calls[-1][0] == "--config" and (out / demo.STAGE_DONE).is_file()
    demo.train_stage("c2w_cavity.toml", lasc, out, 1, TINY, resumable=True)
    assert len(calls) == 1  # finished: not trained again
    (out / demo.STAGE_DONE).unlink()  # as if killed after its last checkpoint
    demo.train_stage("c2w_cavity.toml", lasc, out, 1, TINY, resumable=True)
    assert calls[-1] == ["--resume", "--out", str(out), "--fold", "final"] and (out / demo.STAGE_DONE).is_file()
    assert len(csv_rows(out / "final" / "metrics.csv")) == 1  # the resumed run had nothing left to train
    demo.train_stage("c2w_cavity.toml", lasc, out, 2, TINY)  # the demo rerun: its own folder, trained anew
    assert calls[-1][0] == "--config" and len(csv_rows(out / "final" / "metrics.csv")) == 2


@pytest.mark.parametrize("epochs", [1, 2, 3, 7, 30, 1000])
def test_the_short_run_schedule_is_valid_for_any_number_of_epochs(epochs):
    """The demo's wall schedule (`--epochs N`) gives increasing unfreezing steps that the config accepts."""
    from c2w_fast import demo

    items = demo.short_run_schedule(epochs)
    config = cfg.load(CONFIGS / "c2w_wall.toml", TINY + items + [f"train.epochs={epochs}"])
    steps = list(config.unfreeze.steps)
    assert steps == sorted(set(steps)) and steps[0] >= 1 and list(config.schedule.restarts) == steps


@pytest.mark.parametrize("argv, message", [(["--n", "6"], "--n must be at least 7"),
                                           (["--epochs", "0"], "--epochs must be at least 1")])
def test_demo_refuses_sizes_it_cannot_split_before_writing_anything(argv, message, tmp_path, capsys):
    from c2w_fast import demo

    with pytest.raises(SystemExit):
        demo.main(argv + ["--out", str(tmp_path / "demo")])
    assert message in capsys.readouterr().err and not (tmp_path / "demo").exists()


def test_a_patch_the_network_cannot_take_is_refused_before_anything_is_written(lasc, tmp_path, capsys):
    """The tiny network's three strided stages bring a 4x4x4 patch to one voxel: a ConfigError naming the key,
    not an instance-norm traceback after config.toml and splits.json were written."""
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", items=["train.patch_size=[4,4,4]"]) == 2
    err = capsys.readouterr().err
    assert "error: train.patch_size for model.architecture = 'c2w_resnext': a (4, 4, 4) input leaves encoder " \
           "stage" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_a_run_folder_holds_one_run(lasc, tmp_path, capsys):
    """A new run never mixes with an earlier one in the same folder; the split settings are recorded."""
    (tmp_path / "afile").write_text("")
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "afile") == 2
    assert "is a file; it must be a run folder" in capsys.readouterr().err
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", fold="5") == 2
    assert not (tmp_path / "run").exists()  # refused before it started: nothing written
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", epochs=1) == 0
    assert "no validation cases" not in capsys.readouterr().out
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", fold="0", items=["data.n_test=1"]) == 2
    assert "splits.json was made with n_test 2 (config: 1)" in capsys.readouterr().err
    assert train.main(["--resume", "--out", str(tmp_path / "run")]) == 2  # --fold defaults to 0
    assert ("nothing to resume (no checkpoint_latest.pt in fold_0); a fold that never finished an epoch is trained "
            "without --resume (this run folder has final: to resume it, name it with --fold)") in capsys.readouterr().err
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", epochs=1) == 2
    assert "final already trained here; continue with --resume" in capsys.readouterr().err
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", fold="0", epochs=1, items=["optim.lr=5e-4"]) == 2
    assert "already holds a run with another config (optim.lr: 0.001 -> 0.0005)" in capsys.readouterr().err


def test_out_under_a_file_or_in_the_dataset_is_refused_before_writing(tmp_path, capsys, monkeypatch):
    """Refused in one line with nothing written; a run folder that cannot be written is one line too."""
    data = write_phantoms(tmp_path / "data")
    (tmp_path / "afile").write_text("")
    assert run_train("c2w_cavity.toml", data, tmp_path / "afile" / "run") == 2
    err = capsys.readouterr().err
    assert err == f"error: --out {tmp_path / 'afile' / 'run'}: {tmp_path / 'afile'} is a file, so no run folder can " \
                  "be made in it\n"
    files = sorted(data.rglob("*"))
    monkeypatch.chdir(tmp_path)
    for out, where in ((data, "the"), (Path("data"), "the"), (data / "run", "inside the"),
                       (Path("data") / "phantom000" / "run", "inside the")):
        assert run_train("c2w_cavity.toml", data, out) == 2
        err = capsys.readouterr().err
        assert err == f"error: --out {out} is {where} dataset folder {data} (--data / data.root); put the run folder " \
                      "outside it\n"
    assert sorted(data.rglob("*")) == files

    def no_permission(*_):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(training_run, "write_config", no_permission)  # e.g. a folder of another user
    assert run_train("c2w_cavity.toml", data, tmp_path / "run") == 2
    assert capsys.readouterr().err == f"error: --out {tmp_path / 'run'}: cannot write the run folder ([Errno 13] " \
                                      "Permission denied)\n"


def test_a_run_folder_that_trained_nothing_takes_another_config(lasc, tmp_path, capsys, monkeypatch):
    """A run killed or failed before its first checkpoint starts again with another config (and
    splits); once a fold holds a checkpoint, the folder keeps its run."""
    def killed(self, *args, **kwargs):
        raise RuntimeError("killed in the first epoch")

    out = tmp_path / "run"
    monkeypatch.setattr(Trainer, "fit", killed)
    with pytest.raises(RuntimeError, match="killed"):
        run_train("c2w_cavity.toml", lasc, out, epochs=1)
    assert {p.name for p in out.iterdir()} == {"config.toml", "splits.json", "final"}
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 2
    assert "a run folder that trained nothing takes a new config" in capsys.readouterr().err
    with pytest.raises(RuntimeError, match="killed"):  # the same command: nothing to replace, nothing said
        run_train("c2w_cavity.toml", lasc, out, epochs=1)
    assert "replaces" not in capsys.readouterr().out
    monkeypatch.undo()
    assert run_train("c2w_cavity.toml", lasc, out, epochs=2, items=["data.n_test=1"]) == 0
    assert f"{out}: nothing trained there yet, so this run replaces its config.toml (data.n_test: 2 -> 1; " \
           "train.epochs: 1 -> 2) and splits.json (split anew)\n" in capsys.readouterr().out
    assert json.loads((out / "splits.json").read_text())["settings"]["n_test"] == 1
    assert len(csv_rows(out / "final" / "metrics.csv")) == 2
    assert run_train("c2w_cavity.toml", lasc, out, epochs=3, items=["data.n_test=1"]) == 2
    assert "already holds a run with another config (train.epochs: 2 -> 3)" in capsys.readouterr().err
    # a config.toml this version refuses (NaN, as a crashed run of an earlier version left it), and a checkpoint
    (out / "final" / "checkpoint_latest.pt").unlink()  # killed in epoch 0 after checkpoint_best.pt
    saved = (out / "config.toml").read_text()
    (out / "config.toml").write_text(saved.replace("spacing = []", "spacing = [nan, 1, 1]"))
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1, items=["data.n_test=1"]) == 2
    assert "data.spacing must have 3 positive values" in capsys.readouterr().err
    (out / "final" / "checkpoint_best.pt").unlink()
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1, items=["data.n_test=1"]) == 0
    assert "so this run replaces its config.toml (invalid: data.spacing must have" in capsys.readouterr().out
    assert cfg.load(out / "config.toml").data.spacing == []


def test_every_case_is_checked_before_the_first_epoch(tmp_path, capsys):
    """A held-out test image with a NaN voxel stops the run before anything is written; an empty
    label map of a training case is a warning naming the case."""
    from c2w_fast.training.run import cases_and_splits

    data = write_phantoms(tmp_path / "data")
    _, splits = cases_and_splits(cfg.load(CONFIGS / "c2w_cavity.toml", TINY + [f"data.root=\"{data}\""]), tmp_path)
    test_image = data / splits.test[0] / "lgemri.nrrd"
    original = read_volume(test_image)
    image = original.array.astype(np.float32)
    image[2, 3, 4] = np.nan
    write_volume(test_image, image, like=original)
    assert run_train("c2w_cavity.toml", data, tmp_path / "run") == 2
    assert capsys.readouterr().err == f"error: {test_image}: image has 1 NaN/inf voxels\n"
    assert not (tmp_path / "run").exists()
    write_volume(test_image, original.array, like=original)
    empty = splits.final.train[0]
    for case in (empty, splits.final.val[0]):  # the validation case's empty labels are no training matter
        cavity = read_volume(data / case / "laendo.nrrd")
        write_volume(cavity.path, np.zeros_like(cavity.array), like=cavity)
    with pytest.warns(UserWarning, match=rf"training case {empty}: no LA voxel in its labels \(.*laendo.nrrd") as caught:
        assert run_train("c2w_cavity.toml", data, tmp_path / "run", epochs=1) == 0
    assert sum("no LA voxel" in str(w.message) for w in caught) == 1


def test_resume_finishes_what_a_killed_all_folds_run_left(lasc, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.chdir(lasc.parent)
    args = ["--config", str(CONFIGS / "c2w_cavity.toml"), "--data", lasc.name, "--out", str(out), "--fold", "all",
            "--epochs", "1"] + set_args(TINY)
    assert train.main(args[:7] + ["0"] + args[8:]) == 0  # as if killed after fold 0
    saved = cfg.load(out / "config.toml")
    assert saved.data.root == str(lasc)  # relative --data recorded as an absolute path
    monkeypatch.chdir(tmp_path)
    assert train.main(["--resume", "--out", str(out), "--fold", "all", "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "fold_0: 2 epochs" in printed and "fold_1: not started yet" in printed and "fold_1: 2 epochs" in printed
    assert cfg.load(out / "config.toml").train.epochs == 2  # --epochs of a resume is the run's from now on
    assert train.main(["--resume", "--out", str(out), "--fold", "all"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == 2
    assert "Cross-validation (2 folds" in printed  # the skipped folds' validation rows still count
    assert {row["fold"] for row in csv_rows(out / "cv_val_metrics.csv")} == {"fold_0", "fold_1"}
    assert train.main(["--resume", "--out", str(out), "--fold", "0", "--epochs", "3"]) == 0
    assert train.main(["--resume", "--out", str(out), "--fold", "1", "--epochs", "2"]) == 0  # config.toml: 2
    assert train.main(["--resume", "--out", str(out), "--fold", "all"]) == 0  # fold_0's 3 epochs are not refused
    assert capsys.readouterr().out.count("finished earlier, skipped") >= 2
    assert train.main(["--resume", "--out", str(out), "--fold", "0", "--epochs", "2"]) == 2
    assert "fold_0 has trained 3 epochs already; --epochs 2 cannot undo them" in capsys.readouterr().err
    (out / "config.toml").write_text((out / "config.toml").read_text().replace("lr = 0.001", "lr = 0.002"))
    edited = (out / "config.toml").read_text()
    assert train.main(["--resume", "--out", str(out), "--fold", "0", "--epochs", "4"]) == 2
    assert "differs from the config this checkpoint was trained with (optim.lr" in capsys.readouterr().err
    assert (out / "config.toml").read_text() == edited  # refused before the run folder is written: not epochs 4


def test_runs_killed_between_their_writes_can_go_on(lasc, tmp_path, capsys):
    # killed in epoch 0 after checkpoint_best.pt, before checkpoint_latest.pt: nothing to resume, so start again
    out = tmp_path / "first_epoch"
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1) == 0
    (out / "final" / "checkpoint_latest.pt").unlink()
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 2
    assert "start it again with its command" in capsys.readouterr().err
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1) == 0
    # no validation cases, killed after the last epoch's checkpoint: resume writes best and the logs
    out = tmp_path / "no_validation"
    assert run_train("c2w_cavity.toml", lasc, out, epochs=2, items=["data.final_val=0"]) == 0
    for name in ("checkpoint_best.pt", "metrics.csv", "test_metrics.csv"):  # killed before these were written
        (out / "final" / name).unlink()
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 0
    assert (out / "final" / "checkpoint_best.pt").is_file() and len(csv_rows(out / "final" / "metrics.csv")) == 2
    # resumed for more epochs: the best (no validation: the last epoch) follows, it does not stay at epoch 2
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "3"]) == 0
    best, latest = (torch.load(out / "final" / f"checkpoint_{kind}.pt", weights_only=False)
                    for kind in ("best", "latest"))
    assert best["trainer"]["epoch"] == latest["trainer"]["epoch"] == 3
    for key, value in latest["model"].items():
        torch.testing.assert_close(best["model"][key], value, rtol=0, atol=0)


def test_a_helper_run_of_the_wrong_kind_is_refused_before_training(lasc, tmp_path, capsys):
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=1) == 0
    localizer = ["roi.center=\"localizer\"", f"roi.localizer=\"{tmp_path / 'cavity'}\""]
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "other", epochs=1, items=localizer) == 2
    assert "needs one with run.stage = 'localizer'" in capsys.readouterr().err
    assert not (tmp_path / "other" / "final").exists()


def test_a_helper_from_before_the_recorded_voxel_arrangement_is_refused_before_training(lasc, tmp_path, capsys):
    """Checkpoints record the canonical arrangement their cases were read in; a cavity run from before
    (each file's own voxel order) would be the wall pipeline's cavity stage on other volumes."""
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=1) == 0
    path = tmp_path / "cavity" / "final" / "checkpoint_best.pt"
    payload = checkpoint.load(path)
    assert payload.pop("orientation") == "SAR"
    checkpoint.save(path, {k: v for k, v in payload.items() if k != "format"})
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "cavity"), epochs=1) == 2
    err = capsys.readouterr().err
    assert f"run.init_from: {path} was trained on volumes in each file's own voxel order" in err
    assert "this run on volumes in the canonical voxel arrangement (SAR)" in err
    assert not (tmp_path / "wall" / "final").exists()


def test_a_training_subset_is_drawn_from_the_folds_training_cases(lasc, tmp_path, capsys):
    """C2W's N = 70 ablation: a seeded subset of the training cases; validation and test stay fixed."""
    from c2w_fast.data.splits import Fold
    from c2w_fast.training.run import RunError, training_cases

    split = Fold(tuple(f"case{i:02d}" for i in range(10)), ("val0",))
    config = cfg.load(CONFIGS / "c2w_cavity.toml", ["data.train_subset=7", "data.subset_seed=1"])
    chosen = training_cases(config, split)
    assert len(set(chosen)) == 7 and set(chosen) <= set(split.train) and chosen == training_cases(config, split)
    other = cfg.load(CONFIGS / "c2w_cavity.toml", ["data.train_subset=7", "data.subset_seed=2"])
    assert training_cases(other, split) != chosen
    assert training_cases(cfg.load(CONFIGS / "c2w_cavity.toml"), split) == list(split.train)
    with pytest.raises(RunError, match="data.train_subset = 11, but the split has only 10 training cases"):
        training_cases(cfg.load(CONFIGS / "c2w_cavity.toml", ["data.train_subset=11"]), split)

    assert run_train("c2w_cavity.toml", lasc, tmp_path / "big", items=["data.train_subset=50"]) == 2
    assert "but the split has only" in capsys.readouterr().err and not (tmp_path / "big").exists()
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "run", epochs=1, items=["data.train_subset=2"]) == 0
    assert "final: training on 2 of its" in capsys.readouterr().out
    assert len(csv_rows(tmp_path / "run" / "final" / "test_metrics.csv")) == 2  # the test set is unchanged


# --- from the mutation audit of the training loop and the run (loop.py, run.py) ---

def test_a_finished_fold_is_skipped_and_one_missing_a_file_is_completed_without_training(lasc, tmp_path, capsys):
    """A fold stopped early is finished even below --epochs; a resume of a fold killed before its
    checkpoint_best.pt, val_metrics.csv or test_metrics.csv was written writes it and trains nothing."""
    out, fold = tmp_path / "run", tmp_path / "run" / "final"
    assert run_train("c2w_cavity.toml", lasc, out, epochs=5, items=STOPS_AT_ONCE) == 0
    assert len(csv_rows(fold / "metrics.csv")) == 2  # stopped early
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "6"]) == 0
    assert "final: finished earlier, skipped" in capsys.readouterr().out
    for name in ("val_metrics.csv", "test_metrics.csv", "checkpoint_best.pt"):
        (fold / name).unlink()
        assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 0
        said = capsys.readouterr().out
        assert "finished earlier" not in said
        assert "final: trained (2 epochs, stopped early) but not evaluated: evaluating it now\n" in said
        assert (fold / name).is_file() and len(csv_rows(fold / "metrics.csv")) == 2, name
    # no validation cases: finished without a val_metrics.csv
    out = tmp_path / "no_validation"
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1, items=["data.final_val=0"]) == 0
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 0
    assert "final: finished earlier, skipped" in capsys.readouterr().out


def _set_head(path, background: float):
    """Rewrite a checkpoint's head to a constant: class 0 logit ``background``, class 1 ``-background``."""
    payload = checkpoint.load(path)
    payload["model"]["heads.0.weight"].zero_()
    payload["model"]["heads.0.bias"].copy_(torch.tensor([background, -background]))
    checkpoint.save(path, payload)


def test_validation_and_test_rows_score_the_best_checkpoint_not_the_last_weights(lasc, tmp_path):
    out, fold = tmp_path / "run", tmp_path / "run" / "final"
    assert run_train("c2w_cavity.toml", lasc, out, epochs=1) == 0
    _set_head(fold / "checkpoint_best.pt", 10.0)  # calls nothing LA
    _set_head(fold / "checkpoint_latest.pt", -10.0)  # calls everything LA
    for name in ("val_metrics.csv", "test_metrics.csv"):
        (fold / name).unlink()
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 0  # killed before they were written
    for name in ("val_metrics.csv", "test_metrics.csv"):
        rows = csv_rows(fold / name)
        assert rows and all(float(r["dice"]) == 0 and float(r["overlap"]) == 0 for r in rows), name


def test_another_fold_of_the_run_may_train_on_another_device(lasc, tmp_path):
    """run.device is no part of what makes a run (like --device on --resume)."""
    assert run_train("c2w_cavity.toml", lasc, tmp_path, fold="0", epochs=1) == 0
    assert run_train("c2w_cavity.toml", lasc, tmp_path, fold="1", epochs=1, items=["run.device=\"auto\""]) == 0
    assert cfg.load(tmp_path / "config.toml").run.device == "auto"


def test_the_wall_stage_starts_only_from_a_cavity_run_and_other_stages_from_any(lasc, tmp_path, capsys):
    config = cfg.load(CONFIGS / "c2w_wall.toml", TINY)
    torch.manual_seed(0)
    model = checkpoint.build_from_config(config)
    path = _save_model(tmp_path / "other" / "wall.pt", model, config.to_dict())
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(path)) == 2
    assert f"run.init_from: {path} is a run with run.stage = 'wall'; run.init_from needs one with run.stage = " \
           "'cavity'" in capsys.readouterr().err.replace("\n", " ")
    assert not (tmp_path / "wall").exists()
    # a localiser segments the LA cavity too (data.target = 'la_cavity'), but it is no cavity stage
    localizer = config.to_dict()
    localizer["run"]["stage"], localizer["data"]["target"] = "localizer", "la_cavity"
    other = _save_model(tmp_path / "other" / "localizer.pt", model, localizer)
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(other)) == 2
    assert "is a run with run.stage = 'localizer'; run.init_from needs one with run.stage = 'cavity'" \
        in capsys.readouterr().err.replace("\n", " ")
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", "--init-from", str(path), epochs=1) == 0


def test_fold_indices_and_training_subsets_at_their_bounds():
    from c2w_fast.data.splits import Fold
    from c2w_fast.training.run import RunError, fold_names, training_cases

    assert fold_names("1", 2) == ["fold_1"] and fold_names("0", 2) == ["fold_0"]
    for fold in ("-1", "2"):
        with pytest.raises(RunError, match=rf"--fold {fold} is out of range: the splits have 2 folds \(0..1\)"):
            fold_names(fold, 2)
    split = Fold(tuple(f"case{i}" for i in range(4)), ())
    assert training_cases(cfg.load(CONFIGS / "c2w_cavity.toml", ["data.train_subset=4"]), split) == list(split.train)



def test_a_helper_stopped_early_is_no_unfinished_run(lasc, tmp_path, recwarn):
    assert run_train("c2w_cavity.toml", lasc, tmp_path / "cavity", epochs=5, items=STOPS_AT_ONCE) == 0
    state = checkpoint.load(tmp_path / "cavity" / "final" / "checkpoint_latest.pt")["trainer"]
    assert state["stopped"] and state["epoch"] == 2  # of 5
    wall = ["unfreeze.steps=[1,1]", "schedule.restarts=[1]", "schedule.restart_lr=[1e-4]"]
    assert run_train("c2w_wall.toml", lasc, tmp_path / "wall", "--init-from", str(tmp_path / "cavity"), epochs=1,
                items=wall) == 0
    assert not [w for w in recwarn if "epochs (killed" in str(w.message)]


def test_labels_without_any_target_class_are_warned_case_by_case_only(tmp_path):
    """Every training case empty: each is named; the warning about a class no training case holds is
    for a class missing beside others (MBAS classes on a LASC dataset), not a second word on this."""
    from c2w_fast.training.run import cases_and_splits, check_cases

    data = write_phantoms(tmp_path / "data")
    for path in data.glob("*/laendo.nrrd"):
        cavity = read_volume(path)
        write_volume(path, np.zeros_like(cavity.array), like=cavity)
    config = cfg.load(CONFIGS / "c2w_cavity.toml", TINY + [f"data.root=\"{data}\""])
    cases, splits = cases_and_splits(config, tmp_path / "run")
    with pytest.warns(UserWarning) as caught:
        check_cases(config, cases, splits, ["final"])
    messages = [str(w.message) for w in caught]
    assert sorted(m.split(":")[0] for m in messages) == [f"training case {c}" for c in sorted(splits.final.train)]


def test_a_helper_fold_folder_its_splits_do_not_know_is_no_error(tmp_path):
    """A helper run whose fold_2 folder lies beyond the 2 folds of its splits.json (copied in by hand):
    nothing is known of what it trained on, so nothing is warned, and nothing fails."""
    from c2w_fast.data.splits import Fold, Splits, save_splits
    from c2w_fast.training.run import check_helpers

    ids = [f"case{i}" for i in range(7)]
    test, dev = ids[:1], tuple(ids[1:])

    def folds(parts):
        return tuple(Fold(tuple(c for c in dev if c not in part), part) for part in parts)

    two = Splits(tuple(test), folds((dev[:3], dev[3:])), Fold(dev[:5], dev[5:]), 0)
    three = Splits(tuple(test), folds((dev[:2], dev[2:4], dev[4:])), Fold(dev[:5], dev[5:]), 0)
    cavity = cfg.load(CONFIGS / "c2w_cavity.toml", TINY)
    _save_model(tmp_path / "cavity" / "fold_2" / "checkpoint_best.pt", checkpoint.build_from_config(cavity),
                cavity.to_dict())
    save_splits(two, tmp_path / "cavity" / "splits.json")
    wall = cfg.load(CONFIGS / "c2w_wall.toml", TINY + [f"run.init_from=\"{tmp_path / 'cavity'}\""])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_helpers(wall, ["fold_2"], ["fold_2"], three)


def test_native_cases_of_several_voxel_sizes_train_toward_their_median_and_say_so(lasc, tmp_path):
    """With data.spacing = [] the recorded grid (where predict resamples new images) is the training cases'
    per-axis median, whatever their order: it was the first case's, so folds differed and one odd case
    sorting first moved every prediction to its grid; a warning names the sizes and data.spacing."""
    from c2w_fast.data.io import affine_from_spacing
    from c2w_fast.training.prepare import stage_spacing

    data = tmp_path / "data"
    shutil.copytree(lasc, data)
    first = sorted(p.name for p in data.iterdir())[0]
    for path in (data / first).glob("*.nrrd"):  # the same voxels, a coarser header: the case sorting first
        volume = read_volume(path)
        write_volume(path, volume.array, affine_from_spacing((3.0, 2.0, 2.0)))
    cases = discover_cases(data)
    config = cfg.load(CONFIGS / "c2w_cavity.toml", SPLITS + RESNEXT)
    assert stage_spacing(config, cases) == stage_spacing(config, cases[::-1]) == PHANTOM["spacing"]
    assert stage_spacing(config, cases[:2]) == (2.5, 2.0, 2.0)  # an even count: the middle two's mean
    with pytest.warns(UserWarning, match=r"the training cases have 2 different voxel sizes \(e\.g\. \(2\.0, 2\.0, "
                                         r"2\.0\) and \(3\.0, 2\.0, 2\.0\) mm\): with data\.spacing = \[\] each trains "
                                         r"in its own grid and predict resamples new images to their median \(2\.0, "
                                         r"2\.0, 2\.0\) mm; --set data\.spacing=\[z,y,x\] trains all in one grid"):
        assert run_train("c2w_cavity.toml", data, tmp_path / "run", epochs=1) == 0
    recorded = torch.load(tmp_path / "run" / "final" / "checkpoint_best.pt", weights_only=False)["spacing"]
    assert recorded == list(PHANTOM["spacing"])
    with warnings.catch_warnings(record=True) as caught:  # one grid for all: nothing to say
        warnings.simplefilter("always")
        assert run_train("c2w_cavity.toml", data, tmp_path / "resampled", epochs=1,
                         items=["data.spacing=[2.0,2.0,2.0]"]) == 0
    assert caught and not any("voxel sizes" in str(w.message) for w in caught)


@pytest.mark.parametrize("preset, labels, message", [
    ("c2w_scratch.toml", {"background": 0, "left_atrium": 3},
     "this nnunet dataset has no wall label (its dataset.json names LA): data.target = 'wall' cannot be trained"),
    ("c2w_cavity.toml", {"background": 0, "wall": 1, "RA": 2},
     "this nnunet dataset has no LA label (its dataset.json names wall, RA): data.target = 'la_cavity' cannot"),
])
def test_a_dataset_without_any_class_of_the_target_is_refused_before_training(preset, labels, message, tmp_path,
                                                                              capsys):
    """A wall (or scratch) stage on an nnU-Net dataset whose dataset.json names no wall trained to the end with one
    warning per case and a wall Dice of 0 (a LASC case without lawall.nrrd was already refused)."""
    data = write_phantoms(tmp_path / "data", layout="nnunet")
    meta = json.loads((data / "dataset.json").read_text())
    (data / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    assert run_train(preset, data, tmp_path / "run") == 2
    assert f"error: {data}: {message}" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
