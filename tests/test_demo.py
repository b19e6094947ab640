"""python -m c2w_fast.demo: its own folder (a rerun replaces its phantoms and outputs, other folders are refused)
and its end on Ctrl-C, also in bench/reproduce_c2w.py."""
from pathlib import Path

import pytest

from c2w_fast import demo
from c2w_fast.cli import INTERRUPTED


def test_a_rerun_replaces_the_phantoms_and_outputs_of_the_last_one(tmp_path):
    out = tmp_path / "demo"
    assert demo.claim_out(out) is None and (out / demo.DEMO_MARK).is_file()
    for name in demo.OUTPUTS:  # a last run with more phantoms left these
        (out / name / "phantom008").mkdir(parents=True)
    (out / "wall").mkdir()  # run folders are train_stage's to replace
    assert demo.claim_out(out) is None
    assert sorted(p.name for p in out.iterdir()) == sorted([demo.DEMO_MARK, "wall"])


def test_a_folder_that_is_not_the_demos_is_refused_untouched(tmp_path, capsys):
    (tmp_path / "mine" / "data").mkdir(parents=True)
    assert demo.claim_out(tmp_path / "mine") == f"--out {tmp_path / 'mine'} holds files of its own; give a new or " \
                                                "empty folder, or an earlier demo's"
    assert (tmp_path / "mine" / "data").is_dir() and not (tmp_path / "mine" / demo.DEMO_MARK).exists()
    (tmp_path / "file").write_text("")
    for out in ("mine", "file"):
        with pytest.raises(SystemExit):
            demo.main(["--out", str(tmp_path / out), "--n", "7", "--epochs", "1"])
    assert "--out" in capsys.readouterr().err and (tmp_path / "file").read_text() == ""
    assert demo.claim_out(tmp_path / "empty") is None  # a new folder is made


def test_a_demo_folder_written_before_the_mark_is_recognised(tmp_path):
    out = tmp_path / "old"
    (out / "localizer").mkdir(parents=True)
    (out / "localizer" / "config.toml").write_text("")
    (out / "predictions").mkdir()
    assert demo.claim_out(out) is None and not (out / "predictions").exists()
    (tmp_path / "mine" / "localizer").mkdir(parents=True)  # a run of the user's, with other things beside it
    (tmp_path / "mine" / "localizer" / "config.toml").write_text("")
    (tmp_path / "mine" / "notes.txt").write_text("")
    assert "holds files of its own" in demo.claim_out(tmp_path / "mine")


def test_ctrl_c_in_a_stage_ends_the_demo_with_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    """train.main reports Ctrl-C as status 130 (its own line says how far it got): the demo stops there,
    says how to start again, and exits 130, instead of calling the interrupted stage 'failed'."""
    from c2w_fast import train

    stages = []
    monkeypatch.setattr(train, "main", lambda args: stages.append(args) or INTERRUPTED)
    with pytest.raises(SystemExit) as stop:
        demo.main(["--out", str(tmp_path / "demo"), "--n", "7", "--epochs", "1"])
    assert stop.value.code == INTERRUPTED and len(stages) == 1
    err = capsys.readouterr().err
    assert f"demo interrupted: `python -m c2w_fast.demo --out {tmp_path / 'demo'}`" in err and "failed" not in err


def test_ctrl_c_outside_training_ends_the_demo_the_same_way(tmp_path, monkeypatch, capsys):
    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(demo, "write_dataset", interrupt)
    with pytest.raises(SystemExit) as stop:
        demo.main(["--out", str(tmp_path / "demo"), "--n", "7", "--epochs", "1"])
    assert stop.value.code == INTERRUPTED and "demo interrupted" in capsys.readouterr().err


def test_a_stage_that_fails_otherwise_is_named(tmp_path, monkeypatch):
    from c2w_fast import train

    monkeypatch.setattr(train, "main", lambda args: 2)
    with pytest.raises(SystemExit, match="training c2w_cavity.toml failed"):
        demo.train_stage("c2w_cavity.toml", tmp_path / "data", tmp_path / "cavity", 1, [])


def test_reproduce_c2w_stopped_in_a_stage_says_a_rerun_continues(tmp_path, monkeypatch, capsys):
    """gpu_session.sh stops a stage at its time limit with SIGINT: reproduce_c2w.py exits 130 saying the
    same command continues (its stages resume), where it used to report the stage as failed."""
    import torch

    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "bench"))
    import reproduce_c2w

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(reproduce_c2w, "c2w_pipeline", interrupt)
    (tmp_path / "data").mkdir()  # phantoms written earlier
    assert reproduce_c2w.main(["--out", str(tmp_path), "--results", str(tmp_path / "results")]) == INTERRUPTED
    assert "the same command continues from the last checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "results").exists()
