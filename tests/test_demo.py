"""python -m c2w_fast.demo's own folder: a rerun replaces its phantoms and outputs, other folders are refused."""
import pytest

from c2w_fast import demo


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
