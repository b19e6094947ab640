"""Runs in separate processes: a run killed mid-epoch and resumed ends with the uninterrupted run's
weights, and two gloo DDP processes train the same weights as one process with the whole batch."""
import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from c2w_fast import config as cfg
from c2w_fast.training import checkpoint
from training_helpers import CONFIGS, RESNEXT, SPLITS, set_args, write_phantoms

# faulthandler: a rank that aborts (once in about 30 runs under CI load, gloo's "terminate called without
# an active exception") prints every thread's Python stack, so a failure shows where it stopped
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", "PYTHONFAULTHANDLER": "1"}


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


KILLED_AT = """import os, signal, sys
from c2w_fast import train
from c2w_fast.training.loop import Trainer
original = Trainer.train_step
def train_step(self, net, batch, lr):
    if batch["iteration"] == {iteration}:
        os.kill(os.getpid(), signal.SIGKILL)
    return original(self, net, batch, lr)
Trainer.train_step = train_step
sys.exit(train.main())
"""


def test_killed_run_resumes_to_the_uninterrupted_weights(lasc, tmp_path):
    # 10 iterations per epoch: the run kills itself at global iteration 15, in epoch 1's steps, after
    # epoch 0's checkpoint (a kill timed from outside could land after the run's end on a fast machine)
    items = ["train.num_workers=1", "train.iterations_per_epoch=10", "augment.rotation_prob=0.5",
             "augment.brightness_prob=0.5"]
    _in_process(_command(lasc, tmp_path / "whole", 4, *items))

    script = tmp_path / "train_killed_at_15.py"
    script.write_text(KILLED_AT.format(iteration=15))
    log = tmp_path / "killed.log"  # a file, not a pipe: an orphaned loader worker would hold a pipe open
    with open(log, "w") as handle:
        killed = subprocess.run([sys.executable, str(script), *_command(lasc, tmp_path / "killed", 4, *items)[3:]],
                                env=ENV, stdout=subprocess.DEVNULL, stderr=handle)
    assert killed.returncode == -9, log.read_text()[-3000:]
    latest = tmp_path / "killed" / "fold_0" / "checkpoint_latest.pt"
    assert torch.load(latest, map_location="cpu", weights_only=False)["epoch"] == 1

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
    assert ddp.returncode == 0, ddp.stderr[-12000:]  # the ranks' stacks come before torchrun's own report
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


# --- from the mutation audit of distributed.py: the process set-up and the flag, without launching processes ---

def test_each_rank_gets_its_device(monkeypatch):
    from c2w_fast.config import ConfigError
    from c2w_fast.training.distributed import choose_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == choose_device("cpu", 1) == torch.device("cpu")
    with pytest.raises(ConfigError, match="'cuda' but torch sees no CUDA GPU"):
        choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # only devices are named: no GPU is touched
    assert choose_device("auto", 1) == choose_device("cuda", 1) == torch.device("cuda", 1)
    assert choose_device("cpu", 1) == torch.device("cpu")


def test_setup_joins_the_group_that_torchrun_describes(monkeypatch):
    """torchrun's WORLD_SIZE / LOCAL_RANK: gloo on CPUs, NCCL and the local rank's GPU on GPUs, a
    timeout of hours (rank 0 validates whole volumes while the others wait); one process joins nothing."""
    import datetime

    from c2w_fast.training import distributed

    joined, devices = [], []
    monkeypatch.setattr(distributed.dist, "is_initialized", lambda: False)
    monkeypatch.setattr(distributed.dist, "init_process_group", lambda backend, **kw: joined.append((backend, kw)))
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 3)
    monkeypatch.setattr(distributed.dist, "get_world_size", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", devices.append)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for world in (None, "1"):
        if world is None:
            monkeypatch.delenv("WORLD_SIZE", raising=False)
        else:
            monkeypatch.setenv("WORLD_SIZE", world)
        assert distributed.setup("auto") == (distributed.Processes(), torch.device("cpu")) and not joined
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.setup("auto") == (distributed.Processes(3, 4, 1), torch.device("cpu"))
    assert [backend for backend, _ in joined] == ["gloo"] and not devices
    assert joined[0][1]["timeout"] >= datetime.timedelta(hours=1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert distributed.setup("auto") == (distributed.Processes(3, 4, 1), torch.device("cuda", 1))
    assert joined[-1][0] == "nccl" and devices == [torch.device("cuda", 1)]


def test_every_rank_gets_rank_0s_flag(monkeypatch):
    from c2w_fast.training import distributed

    sources = []

    def broadcast(tensor, src):  # what gloo does on rank 1 when rank 0 sends 1 ("stop early")
        sources.append(src)
        tensor.fill_(1)

    monkeypatch.setattr(distributed.dist, "broadcast", broadcast)
    monkeypatch.setattr(distributed.dist, "get_rank", lambda: 1)
    assert distributed.broadcast_flag(False, distributed.Processes(1, 2, 1), torch.device("cpu")) is True
    assert sources == [0]
    for flag in (True, False):  # one process: its own flag, no collective
        assert distributed.broadcast_flag(flag, distributed.Processes(), torch.device("cpu")) is flag
    assert sources == [0]
    assert distributed.Processes(0, 2).is_main and not distributed.Processes(1, 2).is_main


def test_a_deep_supervision_network_trains_under_ddp(lasc, tmp_path):
    """The lowest-resolution deep-supervision output has weight 0 (nnU-Net), so its head gets no
    gradient: DDP must be told to look for unused parameters, else its second step fails. A
    one-process gloo group stands in for torchrun's (DDP's bookkeeping is the same for any number)."""
    import torch.distributed as dist

    from c2w_fast.data.layouts import discover_cases
    from c2w_fast.training.distributed import Processes
    from c2w_fast.training.loop import Trainer

    config = cfg.load(CONFIGS / "c2w_cavity.toml", SPLITS + RESNEXT + ["model.deep_supervision=true",
                                                                       f"data.root=\"{lasc}\""])
    cases = discover_cases(lasc)
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        trainer = Trainer(config, tmp_path / "fold", cases[:3], cases[3:4], device=torch.device("cpu"),
                          processes=Processes(0, 2, 0))
        trainer.prepare()
        net = trainer._wrapped()
        assert isinstance(net, torch.nn.parallel.DistributedDataParallel)
        losses = [float(trainer.train_step(net, trainer.source[i], 1e-3)) for i in range(2)]
        assert all(math.isfinite(loss) for loss in losses)
    finally:
        dist.destroy_process_group()
