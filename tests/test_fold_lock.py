"""One training per fold folder at a time: a second run of a fold being trained is refused before it
writes anything, other folds of the run folder still train, a run that ends (or is killed) frees its folds,
and with torchrun every rank stops, not only rank 0."""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from c2w_fast import config as cfg
from c2w_fast import train
from c2w_fast.data.io import STAGING_PREFIX
from c2w_fast.training import lock
from c2w_fast.training import run as training_run
from c2w_fast.training.lock import FoldInUseError, FoldLocks
from training_helpers import CONFIGS, RESNEXT, SPLITS, run_train, set_args, write_phantoms

pytestmark = pytest.mark.skipif(lock.fcntl is None, reason="flock is POSIX")


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"))


def _torchrun_fold_0(data, out, *rank_1: tuple[str, str, str]) -> subprocess.CompletedProcess:
    """One epoch of fold 0 of the tiny cavity run, in two gloo processes launched by torchrun; each of
    ``rank_1``, (module, function, statement): rank 1 runs the statement whenever it calls that function
    (to slow or fail it)."""
    program = ["-m", "c2w_fast.train"]
    if rank_1:
        program = [str(out.parent / "train_rank_1_patched.py")]
        patches = "".join(ON_RANK_1.format(module=m, function=f, statement=s) for m, f, s in rank_1)
        Path(program[0]).write_text(f"{PATCHED_HEADER}{patches}sys.exit(train.main())\n")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *program,
               "--config", str(CONFIGS / "c2w_cavity.toml"), "--data", str(data), "--out", str(out),
               "--fold", "0", "--epochs", "1"] + set_args(SPLITS + RESNEXT)
    return subprocess.run(command, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=240)


PATCHED_HEADER = """import importlib, os, sys, time
from c2w_fast import train
from c2w_fast.training.run import RunError
"""
ON_RANK_1 = """module = importlib.import_module("{module}")
def patched(*args, original=module.{function}, **kwargs):
    if os.environ["RANK"] == "1":
        {statement}
    return original(*args, **kwargs)
module.{function} = patched
"""
SLOW_PRINTS = ("builtins", "print", "time.sleep(1)")  # torchrun ends a rank still printing once another has exited


@pytest.fixture
def held():
    """Locks held as another training's: each a separate open file, so they conflict with this process's own."""
    locks = FoldLocks()
    yield locks
    locks.release()


def test_a_held_fold_is_refused_with_its_holder_and_free_again_once_released(tmp_path, held):
    folder = tmp_path / "run" / "fold_0"
    assert not lock.in_use(folder)
    held.acquire(folder)
    assert lock.in_use(folder) and not lock.in_use(tmp_path / "run" / "fold_1")
    with pytest.raises(FoldInUseError, match=f"fold_0 is being trained now by pid {os.getpid()} on "):
        FoldLocks().acquire(folder)
    held.release()
    assert not lock.in_use(folder)
    again = FoldLocks()
    again.acquire(folder)  # the file stays; its lock is what counts
    assert lock.in_use(folder)
    again.release()


def test_taking_a_fold_removes_what_killed_writes_left_there_and_nothing_else(tmp_path, held):
    """A checkpoint save killed mid-write leaves write_atomically's staging folder (hundreds of MB at the
    seeds' size); the next training of the fold removes it, but never while another run holds the fold."""
    folder = tmp_path / "run" / "fold_0"
    leftover = folder / f"{STAGING_PREFIX}k7x2" / "checkpoint_latest.pt"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"partial")
    kept = [folder / "checkpoint_latest.pt", folder / ".hidden" / "note", tmp_path / "run" / f"{STAGING_PREFIX}run"]
    for path in kept:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("kept")
    held.acquire(folder)
    assert not leftover.parent.exists() and all(path.read_text() == "kept" for path in kept)
    leftover.parent.mkdir()  # the holder's own write in progress
    with pytest.raises(FoldInUseError):
        FoldLocks().acquire(folder)
    assert leftover.parent.is_dir()


def test_a_second_run_of_a_fold_in_training_is_refused_before_it_writes(lasc, tmp_path, held, capsys):
    out = tmp_path / "run"
    assert run_train("c2w_cavity.toml", lasc, out, fold="0", epochs=1) == 0
    latest = (out / "fold_0" / "checkpoint_latest.pt").read_bytes()
    held.acquire(out / "fold_0")  # e.g. a --resume still running
    assert train.main(["--resume", "--out", str(out), "--fold", "0", "--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert f"error: {out / 'fold_0'} is being trained now by pid {os.getpid()}" in err
    assert (out / "fold_0" / "checkpoint_latest.pt").read_bytes() == latest
    assert "epochs = 1\n" in (out / "config.toml").read_text()  # the --epochs 2 of the refused run is not written
    assert run_train("c2w_cavity.toml", lasc, out, fold="1", epochs=1) == 0  # another fold trains beside it
    held.release()
    assert train.main(["--resume", "--out", str(out), "--fold", "0", "--epochs", "2"]) == 0


def test_a_fold_in_training_keeps_the_run_folders_config_before_its_first_checkpoint(lasc, tmp_path, held, capsys):
    out = tmp_path / "run"
    assert run_train("c2w_cavity.toml", lasc, out, fold="0", epochs=1) == 0
    for path in (out / "fold_0").glob("checkpoint_*.pt"):
        path.unlink()  # as a run still in its first epoch: config.toml written, no checkpoint yet
    held.acquire(out / "fold_0")
    assert run_train("c2w_cavity.toml", lasc, out, fold="1", epochs=1, items=["optim.lr=0.5"]) == 2
    assert "already holds a run with another config (optim.lr" in capsys.readouterr().err
    held.release()
    assert run_train("c2w_cavity.toml", lasc, out, fold="1", epochs=1, items=["optim.lr=0.5"]) == 0  # trained nothing


def test_a_fold_another_run_trained_while_this_one_checked_is_refused(lasc, tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    checks = training_run.check_cases

    def another_run_meanwhile(config, cases, splits, folds, **kwargs):
        checks(config, cases, splits, folds, **kwargs)
        (out / "fold_0").mkdir(parents=True)
        (out / "fold_0" / "checkpoint_latest.pt").write_bytes(b"its checkpoint")

    monkeypatch.setattr(train, "check_cases", another_run_meanwhile)
    assert run_train("c2w_cavity.toml", lasc, out, fold="0", epochs=1) == 2
    assert "fold_0 already trained here; continue with --resume" in capsys.readouterr().err
    assert (out / "fold_0" / "checkpoint_latest.pt").read_bytes() == b"its checkpoint"
    assert not (out / "config.toml").exists()


def test_every_torchrun_rank_stops_when_rank_0_cannot_start(lasc, tmp_path, held):
    """Rank 0 alone locks and writes the run folder; the others stop with an error of their own, rather than
    wait for it in a collective until torchrun kills them."""
    out = tmp_path / "run"
    held.acquire(out / "fold_0")
    done = _torchrun_fold_0(lasc, out, SLOW_PRINTS)
    assert done.returncode != 0
    assert "is being trained now by pid" in done.stderr  # rank 0's error
    assert "rank 0 could not start the run (its error says why)" in done.stderr  # rank 1's
    assert not (out / "config.toml").exists()


def test_every_torchrun_rank_stops_when_another_rank_fails_its_checks(lasc, tmp_path):
    """A rank that fails a check stops every rank before rank 0 writes anything."""
    out = tmp_path / "run"
    failing = ("c2w_fast.train", "cases_and_splits", 'raise RunError("rank 1 saw something wrong")')
    done = _torchrun_fold_0(lasc, out, failing, SLOW_PRINTS)
    assert done.returncode != 0
    assert "error: rank 1 saw something wrong" in done.stderr
    assert "error: another rank stopped at its checks (its error says why)" in done.stderr  # rank 0's
    assert not out.exists()


def test_a_free_fold_is_taken_while_another_process_checks_whether_it_is_in_use(tmp_path):
    """in_use() holds the lock for an instant (as used_folds() does for every fold of another run starting
    at the same time): acquire() waits that out rather than refuse a free fold."""
    folder = tmp_path / "run" / "fold_0"
    first = FoldLocks()
    first.acquire(folder)  # makes the lock file
    first.release()
    probing = subprocess.Popen([sys.executable, "-c", "import sys; from pathlib import Path; "
                                "from c2w_fast.training import lock; print(flush=True)\n"
                                "while True: lock.in_use(Path(sys.argv[1]))", str(folder)], stdout=subprocess.PIPE)
    try:
        probing.stdout.readline()  # probing from now on
        for _ in range(1000):
            locks = FoldLocks()
            locks.acquire(folder)
            locks.release()
    finally:
        probing.kill()
        probing.wait()


def test_a_forked_child_does_not_keep_the_fold_locked(tmp_path):
    """A data-loader worker is forked while its run holds the fold: orphaned by a killed run, it must not
    keep the fold locked (the next --resume would be refused until it noticed)."""
    locks = FoldLocks()
    locks.acquire(tmp_path / "fold_0")
    started, ready = os.pipe()
    child = os.fork()
    if child == 0:  # past the fork hooks: it tells so, then sleeps on as an orphaned worker does
        os.write(ready, b"1")
        time.sleep(30)
        os._exit(0)
    try:
        assert os.read(started, 1) == b"1"
        assert lock.in_use(tmp_path / "fold_0")
        locks.release()
        assert not lock.in_use(tmp_path / "fold_0")
    finally:
        os.kill(child, 9)
        os.waitpid(child, 0)
        os.close(started)
        os.close(ready)


def test_the_lock_file_names_only_its_current_holder(tmp_path):
    for _ in range(2):
        locks = FoldLocks()
        locks.acquire(tmp_path / "fold_0")
        assert (tmp_path / "fold_0" / ".lock").read_text() == f"pid {os.getpid()} on {socket.gethostname()}\n"
        locks.release()


def test_a_fold_in_training_keeps_the_split_and_an_unreadable_config_of_its_run_folder(lasc, tmp_path, held):
    """Before its first checkpoint a fold in training protects what it trains with: the split (a case
    added to the dataset meanwhile) and the config.toml, even one this version cannot read."""
    data, out = tmp_path / "data", tmp_path / "run"
    shutil.copytree(lasc, data)
    assert run_train("c2w_cavity.toml", data, out, fold="0", epochs=1) == 0
    for path in (out / "fold_0").glob("checkpoint_*.pt"):
        path.unlink()
    held.acquire(out / "fold_0")
    shutil.copytree(data / "phantom000", data / "added")
    config = cfg.absolute_paths(cfg.load(out / "config.toml"))
    with pytest.raises(training_run.RunError, match=r"without the dataset's cases \['added'\]; fold_0 trained "
                                                    r"\(or is training\) on that split"):
        training_run.cases_and_splits(config, out)
    (out / "config.toml").write_text((out / "config.toml").read_text().replace("epochs = 1", "epochs = -1"))
    with pytest.raises(cfg.ConfigError):
        training_run.replaced_config(config, out)
    held.release()
    assert training_run.replaced_config(config, out)[0].startswith("invalid: ")  # nothing trained or training


def test_a_fold_another_run_began_while_this_one_checked_is_refused_on_resume(lasc, tmp_path, capsys, monkeypatch):
    """--resume --fold all plans fold_1 as new; another run trains it meanwhile: refused, naming the folds."""
    out = tmp_path / "run"
    assert run_train("c2w_cavity.toml", lasc, out, fold="0", epochs=1) == 0
    checks = training_run.check_cases

    def another_run_meanwhile(config, cases, splits, folds, **kwargs):
        checks(config, cases, splits, folds, **kwargs)
        shutil.copytree(out / "fold_0", out / "fold_1")

    monkeypatch.setattr(train, "check_cases", another_run_meanwhile)
    assert train.main(["--resume", "--out", str(out), "--fold", "all", "--epochs", "2"]) == 2
    assert f"error: {out}: another run trained fold_0, fold_1 while this one was checking; run the command again" \
        in capsys.readouterr().err


def test_under_torchrun_rank_0_alone_says_what_it_replaces(lasc, tmp_path):
    """A run folder that trained nothing takes a new config: said once, by the rank that writes it."""
    out = tmp_path / "run"
    assert run_train("c2w_cavity.toml", lasc, out, fold="0", epochs=1, items=["optim.lr=0.5"]) == 0
    for path in (out / "fold_0").glob("checkpoint_*.pt"):
        path.unlink()  # as a run killed in its first epoch
    # rank 1 reads the old config.toml, then waits: rank 0 would lock fold_0 meanwhile, had it not waited for rank 1
    done = _torchrun_fold_0(lasc, out, ("c2w_fast.config", "differences", "time.sleep(3)"))
    assert done.returncode == 0, done.stderr[-6000:]  # a rank's own lines precede torchrun's
    assert done.stdout.count("nothing trained there yet, so this run replaces its config.toml (optim.lr") == 1
