"""Runs in separate processes: a run killed mid-epoch and resumed ends with the uninterrupted run's
weights, and two gloo DDP processes train the same weights as one process with the whole batch."""
import csv
import os
import subprocess
import sys
import time

import pytest
import torch

from c2w_fast import config as cfg
from c2w_fast.training import checkpoint
from training_helpers import CONFIGS, RESNEXT, SPLITS, set_args, write_phantoms

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"))


def _command(data, out, epochs, *items):
    return [sys.executable, "-m", "c2w_fast.train", "--config", str(CONFIGS / "c2w_cavity.toml"), "--data", str(data),
            "--out", str(out), "--fold", "0", "--epochs", str(epochs)] + set_args(SPLITS + RESNEXT + list(items))


def _in_process(command):
    """Run a ``_command`` here with one torch thread, as the subprocesses run (same numerics)."""
    from c2w_fast import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert train.main(command[3:]) == 0
    finally:
        torch.set_num_threads(threads)


def _model(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _history(folder, drop=("time_s",)):
    with open(folder / "metrics.csv") as handle:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(handle)]


def test_killed_run_resumes_to_the_uninterrupted_weights(lasc, tmp_path):
    # 10 iterations per epoch: the kill, 0.3 s after the first checkpoint, lands inside epoch 1's steps
    items = ["train.num_workers=1", "train.iterations_per_epoch=10", "augment.rotation_prob=0.5",
             "augment.brightness_prob=0.5"]
    _in_process(_command(lasc, tmp_path / "whole", 4, *items))

    killed = subprocess.Popen(_command(lasc, tmp_path / "killed", 4, *items), env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    latest = tmp_path / "killed" / "fold_0" / "checkpoint_latest.pt"
    deadline = time.monotonic() + 300
    while not latest.exists() and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
    killed.kill()
    assert killed.wait() == -9, "the run finished before it could be killed"
    stopped_at = torch.load(latest, map_location="cpu", weights_only=False)["epoch"]
    assert 1 <= stopped_at < 4

    resumed = subprocess.run([sys.executable, "-m", "c2w_fast.train", "--resume", "--out", str(tmp_path / "killed"),
                              "--fold", "0"], env=ENV, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    whole, again = _model(tmp_path / "whole" / "fold_0" / "checkpoint_latest.pt"), _model(latest)
    assert whole["epoch"] == again["epoch"] == 4
    for key, value in whole["model"].items():
        assert torch.equal(value, again["model"][key]), key
    assert whole["trainer"]["best_epoch"] == again["trainer"]["best_epoch"]
    assert _history(tmp_path / "whole" / "fold_0") == _history(tmp_path / "killed" / "fold_0")


def test_resume_without_a_checkpoint_is_an_error(lasc, tmp_path):
    from c2w_fast import train

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.toml").write_text((CONFIGS / "c2w_cavity.toml").read_text().replace(
        "[data]", f"[data]\nroot = \"{lasc}\"").replace("center = \"localizer\"", "center = \"ground_truth\""))
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--fold", "0"]) == 2
    assert train.main(["--resume", "--out", str(tmp_path / "run"), "--config", "x.toml"]) == 2


@pytest.mark.parametrize("batch_dice", [False, True])  # True: the Dice sums are gathered across the processes
def test_two_gloo_processes_train_like_one_with_the_whole_batch(lasc, tmp_path, batch_dice):
    items = ["optim.name=\"sgd\"", "optim.momentum=0.9", "optim.lr=0.01", "schedule.kind=\"constant\"",
             f"loss.batch_dice={str(batch_dice).lower()}"]
    _in_process(_command(lasc, tmp_path / "one", 2, *items))
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
                         + _command(lasc, tmp_path / "two", 2, *items)[1:], env=ENV, capture_output=True, text=True)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    one, two = (_model(tmp_path / name / "fold_0" / "checkpoint_latest.pt") for name in ("one", "two"))
    for key, value in one["model"].items():
        torch.testing.assert_close(two["model"][key], value, rtol=1e-4, atol=1e-6, msg=key)
    torch.manual_seed(0)  # run.seed: the initial weights of both runs
    initial = checkpoint.build_from_config(cfg.from_dict(one["config"])).state_dict()
    assert sum(not torch.equal(v, initial[k]) for k, v in one["model"].items()) > len(initial) // 2
    one_log, two_log = (_history(tmp_path / name / "fold_0") for name in ("one", "two"))
    assert [r["epoch"] for r in two_log] == ["0", "1"]
    # every rank's loss is the whole batch's: rank 0 logs what one process logs
    assert [float(r["train_loss"]) for r in two_log] == pytest.approx([float(r["train_loss"]) for r in one_log],
                                                                       rel=1e-4)
