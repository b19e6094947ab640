"""An empty path given to a command-line tool (``--out ""``, an unset shell variable) is refused by the
parser: ``Path("")`` would otherwise mean the working folder, and e.g. a training run would write there."""
import importlib

import pytest

from c2w_fast.cli import path_argument


@pytest.mark.parametrize("module, argv", [
    ("train", ["--out", ""]), ("predict", ["--model", "m", "--in", " ", "--out", "o"]),
    ("evaluate", ["--pred", "", "--gt", "g", "--out", "o.csv"]), ("thickness", ["--wall", "", "--out", "t.nii.gz"]),
    ("fibrosis", ["--out", ""]), ("demo", ["--out", ""]), ("data.phantom", ["--out", ""])])
def test_an_empty_path_is_refused_by_every_tool(module, argv, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        importlib.import_module(f"c2w_fast.{module}").main(argv)
    assert stop.value.code == 2
    assert "an empty path; give a file or folder" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())  # nothing written in the working folder


def test_a_nonempty_path_argument_is_that_path():
    assert str(path_argument("./runs/a b")) == "runs/a b" and str(path_argument(".")) == "."
