"""What python -m c2w_fast.train tells its user: a case the stage's grid cannot hold, an early
stop, a resume that trains nothing, Ctrl-C, a helper that saw validation cases; and resuming a
run tree and dataset that were moved."""
import shutil

import pytest

from c2w_fast import config as cfg
from c2w_fast import train
from c2w_fast.training import checkpoint
from training_helpers import CONFIGS, STOPS_AT_ONCE, csv_rows, run_train, write_phantoms


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"))


def _run(data, out, epochs, items=()):
    return run_train("c2w_cavity.toml", data, out, epochs=epochs, items=items)


def test_a_voxel_size_that_would_make_an_absurd_stage_grid_is_refused_before_writing(lasc, tmp_path, capsys):
    # 0.05 mm voxels: the 2 mm phantoms would be (800, 1600, 1600) voxels, a crash while preparing the volumes
    assert _run(lasc, tmp_path / "run", 1, ["data.spacing=[0.05,0.05,0.05]"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    assert "would be (800, 1600, 1600) voxels on the model's (0.05, 0.05, 0.05) mm grid" in err
    assert "lgemri" in err  # the file is named
    assert not (tmp_path / "run").exists()


def test_an_early_stop_is_reported_and_a_resume_that_trains_nothing_leaves_the_config(lasc, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(lasc, out, 5, STOPS_AT_ONCE) == 0
    assert "final: 2 epochs (stopped early: no better validation score in 1 validation), best epoch 0" \
        in capsys.readouterr().out
    config = (out / "config.toml").read_text()
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "8"]) == 0
    assert "final: finished earlier, skipped" in capsys.readouterr().out
    assert (out / "config.toml").read_text() == config  # still the epochs the checkpoints were trained with


def test_ctrl_c_says_how_to_go_on(lasc, tmp_path, capsys, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    out = tmp_path / "run"
    monkeypatch.setattr(train, "train_fold", interrupted)
    assert _run(lasc, out, 1) == 130
    assert capsys.readouterr().err.strip() == ("interrupted before the end of a first epoch (no checkpoint): start "
                                               "the run again with its command")
    monkeypatch.undo()
    assert _run(lasc, out, 1) == 0  # the command again
    monkeypatch.setattr(train, "train_fold", interrupted)
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "2"]) == 130
    assert capsys.readouterr().err.strip() == ("interrupted: continue from the last checkpoint with python -m "
                                               f"c2w_fast.train --resume --out {out} --fold final")
    monkeypatch.undo()
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "2"]) == 0
    assert f"final: resuming at epoch 1 (2 of 2) from {out / 'final' / 'checkpoint_latest.pt'}\n" \
        in capsys.readouterr().out
    (out / "final" / "val_metrics.csv").unlink()  # killed while evaluating, after its last epoch
    assert train.main(["--resume", "--out", str(out), "--fold", "final"]) == 0
    assert "final: trained (2 epochs) but not evaluated: evaluating it now\n" in capsys.readouterr().out


def test_a_checkpoint_that_cannot_be_written_mid_run_is_an_error_that_says_how_to_go_on(lasc, tmp_path, capsys,
                                                                                        monkeypatch):
    """A fold folder made read-only (or a full disk) after the run started: no traceback, and the resume command."""
    from c2w_fast.training import checkpoint

    out = tmp_path / "run"
    assert _run(lasc, out, 1) == 0

    def refused(path, payload):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(checkpoint, "save", refused)
    capsys.readouterr()
    assert train.main(["--resume", "--out", str(out), "--fold", "final", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: [Errno 13] Permission denied: '") and "Traceback" not in err
    assert err.strip().endswith(f"interrupted: continue from the last checkpoint with python -m c2w_fast.train "
                                f"--resume --out {out} --fold final")


def test_the_resume_command_after_ctrl_c_names_the_folds_it_resumes(tmp_path):
    """--resume alone means fold 0: the command printed repeats the run's --fold; a fold that has no checkpoint
    yet (fold 1 interrupted in its first epoch, fold 0 finished) is started again, not resumed."""
    (tmp_path / "fold_0").mkdir()
    (tmp_path / "fold_0" / "checkpoint_latest.pt").touch()
    command = f"python -m c2w_fast.train --resume --out {tmp_path}"
    assert train._interrupted(tmp_path, "0").endswith(command)
    assert train._interrupted(tmp_path, "all").endswith(f"{command} --fold all")
    for fold in ("1", "final"):
        assert "no checkpoint): start the run again" in train._interrupted(tmp_path, fold)
    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "checkpoint_latest.pt").touch()
    assert train._interrupted(tmp_path, "1").endswith(f"{command} --fold 1")


WALL = ["unfreeze.steps=[1,1]", "schedule.restarts=[1]", "schedule.restart_lr=[1e-4]"]


def _wall(data, out, fold, epochs, cavity, items=()):
    return run_train("c2w_wall.toml", data, out, "--init-from", str(cavity), fold=fold, epochs=epochs,
                     items=WALL + list(items))


def test_a_fold_helped_by_a_model_trained_on_its_validation_cases_is_warned(lasc, tmp_path, recwarn):
    assert _run(lasc, tmp_path / "cavity", 1) == 0
    assert _wall(lasc, tmp_path / "wall_final", "final", 1, tmp_path / "cavity") == 0
    assert not [w for w in recwarn if "validation cases" in str(w.message)]  # final: its validation case held out
    with pytest.warns(UserWarning, match=r"run.init_from: the helper run was trained on validation cases of fold_0 "
                                         r"by final \(phantom\d+.*optimistic; train the helper with the same folds"):
        assert _wall(lasc, tmp_path / "wall_0", "0", 1, tmp_path / "cavity") == 0


def test_a_run_tree_and_dataset_moved_together_resume(lasc, tmp_path, capsys):
    first, moved = tmp_path / "first", tmp_path / "moved"
    shutil.copytree(lasc, first / "data")
    assert _run(first / "data", first / "cavity", 1) == 0
    sdf = [f"data.sdf_from=\"{first / 'cavity'}\"", "data.sdf_channel=true"]  # a helper run every case needs
    assert _wall(first / "data", first / "wall", "final", 1, first / "cavity", sdf) == 0
    shutil.move(first, moved)
    resume = ["--resume", "--out", str(moved / "wall"), "--fold", "final", "--epochs", "2"]
    assert train.main(resume) == 2
    assert capsys.readouterr().err == (f"error: the run's dataset folder {first / 'data'} (data.root in "
                                       f"{moved / 'wall' / 'config.toml'}) is gone; if it moved, resume with "
                                       "--data NEW_FOLDER\n")
    assert train.main(resume + ["--data", str(moved / "data")]) == 0  # the cavity run found beside the wall run
    assert len(csv_rows(moved / "wall" / "final" / "metrics.csv")) == 2
    assert cfg.load(moved / "wall" / "config.toml").data.root == str(moved / "data")
    shutil.rmtree(moved / "cavity")
    assert train.main(resume[:-2] + ["--epochs", "3"]) == 2
    err = capsys.readouterr().err
    assert f"data.sdf_from = '{first / 'cavity'}' (in the config saved with {moved / 'wall'}): no such run folder" \
           in err and "or beside its own run folder when they were moved together" in err


def test_validation_rows_score_whole_cases_in_their_native_grid_as_the_test_set(lasc, tmp_path):
    """A stage trained on another grid (3 mm for the 2 mm phantoms): val_metrics.csv holds the
    best checkpoint's scores of the validation cases as predict sees them, like test_metrics.csv."""
    from c2w_fast.data.layouts import discover_cases
    from c2w_fast.data.splits import load_splits
    from c2w_fast.stages import Predictor
    from c2w_fast.training.evaluation import evaluate_cases

    out = tmp_path / "run"
    assert _run(lasc, out, 1, ["data.spacing=[3,3,3]", "roi.size=[8,16,16]"]) == 0
    val = load_splits(out / "splits.json").final.val
    cases = [c for c in discover_cases(lasc) if c.id in val]
    expected = evaluate_cases(Predictor.load(out / "final" / "checkpoint_best.pt"), cases)
    rows = csv_rows(out / "final" / "val_metrics.csv")
    assert [r["case"] for r in rows] == [r["case"] for r in expected] and rows
    for row, want in zip(rows, expected):
        for key in ("dice", "surface_dice", "hd95", "assd", "overlap"):
            assert float(row[key]) == pytest.approx(want[key], rel=1e-6, nan_ok=True), key


def test_a_short_run_of_a_preset_is_told_what_it_never_reaches(lasc, tmp_path):
    from c2w_fast.training.schedule import unreached_settings

    for preset in CONFIGS.glob("*.toml"):
        assert unreached_settings(cfg.load(preset)) == [], preset.name  # the presets' own lengths reach everything
    wall = cfg.load("c2w_wall", ["train.epochs=100", "run.init_from=\"cavity\""])
    assert unreached_settings(wall) == ["schedule.restarts [181] come after the last epoch",
                                        "unfreeze.steps = [61, 181]: the run ends in step B (shallow encoder frozen)",
                                        "train.early_stopping_from = 181: no early stop"]
    wall = cfg.load("c2w_wall", ["train.epochs=62", "run.init_from=\"cavity\"", "schedule.warmup_epochs=2"])
    assert unreached_settings(wall)[0] == ("schedule.warmup_epochs = 2 fills the cosine cycle of epochs 61, "
                                           "whose LR then only rises")
    with pytest.warns(UserWarning, match=r"^a run of 1 epoch does not reach all of its config: "
                                         r"schedule.warmup_epochs = 50 fills the cosine cycle of epochs 0, whose LR "
                                         r"then only rises \(a short run scales them"):
        assert _run(lasc, tmp_path / "run", 1) == 0


@pytest.mark.parametrize("option, item", [(["--epochs", "1"], "train.epochs=5"), (["--data", "d"], "data.root=\"e\""),
                                          (["--device", "cpu"], "run.device=\"cpu\""),
                                          (["--init-from", "c"], "run.init_from=\"c\"")])
def test_a_value_given_by_its_option_and_by_set_is_refused(option, item):
    args = train.parser().parse_args(["--config", "c2w_cavity", "--out", "run", *option, "--set", item])
    with pytest.raises(cfg.ConfigError, match=rf"^{item.split('=')[0]} is given twice, by --set and by its option"):
        train._config(args)


def test_a_hand_made_split_is_used_and_said_so(lasc, tmp_path, capsys):
    from c2w_fast.data.layouts import discover_cases
    from c2w_fast.data.splits import Fold, Splits, save_splits

    ids = sorted(c.id for c in discover_cases(lasc))
    folds = (Fold(tuple(ids[1:3]), tuple(ids[3:])), Fold(tuple(ids[3:]), tuple(ids[1:3])))
    save_splits(Splits((ids[0],), folds, Fold(tuple(ids[1:5]), (ids[5],)), 0), tmp_path / "run" / "splits.json")
    assert _run(lasc, tmp_path / "run", 1) == 0
    assert f"{tmp_path / 'run' / 'splits.json'}: made by hand, used as it is (1 test cases, 2 folds); data.n_test, " \
           "n_folds, final_val and split_seed do not apply" in capsys.readouterr().out
    assert len(csv_rows(tmp_path / "run" / "final" / "test_metrics.csv")) == 1
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--fold", "final", "--epochs", "2"]) == 0
    assert "made by hand" not in capsys.readouterr().out  # said once, when the run began


def test_an_unfinished_helper_and_a_class_no_training_case_holds_are_warned(lasc, tmp_path, recwarn):
    assert _run(lasc, tmp_path / "cavity", 1) == 0
    assert _wall(lasc, tmp_path / "wall_0", "final", 1, tmp_path / "cavity") == 0
    assert not [w for w in recwarn if "epochs (killed" in str(w.message)]  # a finished helper
    latest = tmp_path / "cavity" / "final" / "checkpoint_latest.pt"
    payload = checkpoint.load(latest)
    payload["config"]["train"]["epochs"] = 4  # as a run of 4 epochs killed after its first
    checkpoint.save(latest, payload)
    with pytest.warns(UserWarning, match=rf"run.init_from: {tmp_path / 'cavity' / 'final'} has trained 1 of its 4 "
                                         r"epochs \(killed, or still training\)"):
        assert _wall(lasc, tmp_path / "wall", "final", 1, tmp_path / "cavity") == 0
    # the MBAS stage-2 classes on a LASC dataset, which labels the LA cavity and wall but no RA
    mbas = ["data.target=\"multiclass\"", "train.sampling=\"classes\"", "train.class_weights.wall=1.0"]
    with pytest.warns(UserWarning, match=r"no training case holds a RA voxel: the model cannot learn that class of "
                                         r"data.target = 'multiclass' \(are these cases labelled for it\?\)"):
        assert _run(lasc, tmp_path / "multiclass", 1, mbas) == 0


def test_a_wall_stage_refuses_lasc_cases_without_their_wall_file(lasc, tmp_path, capsys):
    data = tmp_path / "data"
    shutil.copytree(lasc, data)
    (data / "phantom001" / "lawall.nrrd").unlink()  # optional in the layout: its wall is unknown, not empty
    assert run_train("c2w_scratch.toml", data, tmp_path / "wall", epochs=1) == 2
    err = capsys.readouterr().err
    assert "1 case(s) of this run have no wall label file (lawall.nrrd): phantom001; data.target = 'wall'" in err
    assert not (tmp_path / "wall").exists()
