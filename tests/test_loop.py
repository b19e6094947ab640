"""The training loop of one fold (c2w_fast.training.loop) piece by piece on tiny phantoms: the
loss and optimiser a config builds, one training step (its LR, fresh gradients, clipping, the
cascade's loss mask, no autocast on a CPU), validation (eval mode, the region, nnU-Net's pseudo
Dice), the best-score bookkeeping, and a run interrupted after an epoch resuming to the same weights."""
import math

import numpy as np
import pytest
import torch

from c2w_fast import config as cfg
from c2w_fast import ops
from c2w_fast.data.layouts import discover_cases
from c2w_fast.data.loader import BatchSource
from c2w_fast.training import loop
from c2w_fast.training.loop import Trainer, make_loss, make_optimizer, policy_of
from c2w_fast.training.schedule import learning_rate
from training_helpers import CONFIGS, RESNEXT, SPLITS, write_phantoms

TINY = SPLITS + RESNEXT
# the loss only inside the dilated atrium: the cascade's stage-2 region, here from the ground truth
REGION = ["loss.region_mask=true", "cascade.mask_source=\"ground_truth\""]
nan, inf = math.nan, math.inf


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"))


@pytest.fixture
def no_plot(monkeypatch):
    """progress.png left undrawn (a third of a tiny epoch's time); metrics.csv is still written."""
    monkeypatch.setattr(loop.runlog, "plot_progress", lambda path, rows: None)


def _config(lasc, *items, preset="c2w_cavity.toml"):
    return cfg.load(CONFIGS / preset, TINY + [f"data.root=\"{lasc}\"", *items])


def _trainer(lasc, folder, *items, resume=False, prepare=True):
    cases = discover_cases(lasc)
    trainer = Trainer(_config(lasc, *items), folder, cases[:3], cases[3:4], device=torch.device("cpu"), resume=resume)
    if prepare:
        trainer.prepare()
    return trainer


def _grads(model):
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


def _weights(model):
    return {name: value.detach().clone() for name, value in model.state_dict().items()}


class _AllForeground(torch.nn.Module):
    """Logits of class 1 everywhere (background logit -1, class 1 +1); records its training mode."""

    def __init__(self, classes=2):
        super().__init__()
        self.classes, self.modes = classes, []

    def forward(self, x):
        self.modes.append(self.training)
        logits = -torch.ones((x.shape[0], self.classes, *x.shape[2:]), dtype=torch.float32, device=x.device)
        logits[:, 1] = 1.0
        return logits


# --- what the config builds ------------------------------------------------------------------

@pytest.mark.parametrize("preset, items, function, expected", [
    ("c2w_cavity.toml", ["loss.gamma=3.0", "loss.smooth=0.5"], ops.dice_focal_loss,
     dict(gamma=3.0, include_background=True, batch_dice=False, smooth_nr=0.5, smooth_dr=0.5)),
    ("mbas_stage2.toml", ["loss.smooth=0.25"], ops.dice_ce_loss,
     dict(include_background=False, batch_dice=True, smooth_nr=0.25, smooth_dr=0.25)),
])
def test_the_loss_has_the_configured_options(preset, items, function, expected, rng):
    config = cfg.load(CONFIGS / preset, items + ["cascade.mask_source=\"ground_truth\""])
    k = config.num_classes
    logits = torch.from_numpy(rng.normal(size=(2, k, 3, 5, 4))).float()
    target = torch.from_numpy(rng.integers(0, k, size=(2, 3, 5, 4)))
    mask = torch.from_numpy(rng.random((2, 3, 5, 4)) < 0.7)
    loss = make_loss(config)
    torch.testing.assert_close(loss(logits, target, mask), function(logits, target, mask, **expected))
    # the options matter on these inputs: a loss with the defaults differs
    assert not torch.allclose(loss(logits, target, mask), function(logits, target, mask))


def test_the_optimiser_has_the_configured_options():
    model = torch.nn.Linear(2, 2)
    adamw = make_optimizer(cfg.load(CONFIGS / "c2w_cavity.toml", ["optim.lr=0.002", "optim.betas=[0.8, 0.9]",
                                                                  "optim.weight_decay=0.03"]), model)
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.defaults["lr"], adamw.defaults["betas"], adamw.defaults["weight_decay"]) == (0.002, (0.8, 0.9), 0.03)
    sgd = make_optimizer(cfg.load(CONFIGS / "mbas_stage2.toml", ["optim.weight_decay=0.02", "optim.momentum=0.9",
                                                                 "cascade.mask_source=\"ground_truth\""]), model)
    assert isinstance(sgd, torch.optim.SGD)
    assert (sgd.defaults["lr"], sgd.defaults["momentum"], sgd.defaults["weight_decay"], sgd.defaults["nesterov"]) \
        == (1e-2, 0.9, 0.02, True)


def test_class_weights_of_the_sampling_policy_are_keyed_by_class_index():
    """Index 0 is the background: the config's first named class is index 1."""
    config = cfg.load(CONFIGS / "mbas_stage2.toml", ["cascade.mask_source=\"ground_truth\""])
    names = config.class_names
    weights = policy_of(config).class_weights
    assert weights == {names.index(name) + 1: w for name, w in config.train.class_weights.items()}
    assert weights == {1: 0.5, 2: 0.25, 3: 0.25}  # wall, RA, LA as in the preset


def test_every_trainer_of_a_config_starts_from_the_same_weights(lasc, tmp_path):
    """run.seed fixes the initial weights: every DDP rank and every rerun of a fold start alike."""
    first = _weights(_trainer(lasc, tmp_path / "a", prepare=False).model)
    torch.manual_seed(1234)  # whatever the global generator held before
    torch.randn(10)
    second = _weights(_trainer(lasc, tmp_path / "b", prepare=False).model)
    assert all(torch.equal(first[k], second[k]) for k in first)


# --- one training step ----------------------------------------------------------------------

def test_a_step_applies_its_learning_rate_to_fresh_gradients_in_float32_on_a_cpu(lasc, tmp_path):
    trainer = _trainer(lasc, tmp_path / "fold")
    assert trainer.config.run.amp  # the preset's bf16 autocast, which a CPU run ignores
    dtypes = []
    trainer.model.register_forward_hook(lambda module, inputs, output: dtypes.append(output.dtype))
    batch, start = trainer.source[0], _weights(trainer.model)
    trainer.train_step(trainer.model, batch, 0.0)
    assert all(torch.equal(v, start[k]) for k, v in _weights(trainer.model).items())  # LR 0: nothing moves
    first = _grads(trainer.model)
    trainer.train_step(trainer.model, batch, 0.0)  # the same batch at the same weights
    again = _grads(trainer.model)
    assert first.keys() == again.keys() and len(first) > 0
    for name in first:  # the same gradient, not the sum of both steps'
        torch.testing.assert_close(again[name], first[name], rtol=1e-5, atol=1e-12, msg=name)
    trainer.train_step(trainer.model, batch, 1e-3)
    assert trainer.optimizer.param_groups[0]["lr"] == 1e-3
    assert any(not torch.equal(v, start[k]) for k, v in _weights(trainer.model).items())
    assert dtypes == [torch.float32] * 3


def test_gradients_are_clipped_to_optim_grad_clip_only_when_it_is_set(lasc, tmp_path):
    trainer = _trainer(lasc, tmp_path / "fold")
    assert trainer.config.optim.grad_clip == 0  # off
    batch = trainer.source[0]

    def norm():
        return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                            for g in _grads(trainer.model).values()])))

    trainer.train_step(trainer.model, batch, 0.0)
    unclipped = norm()
    assert unclipped > 0
    trainer.config.optim.grad_clip = unclipped / 4
    trainer.train_step(trainer.model, batch, 0.0)
    assert norm() == pytest.approx(unclipped / 4, rel=1e-4)


def test_the_cascades_loss_mask_hides_the_labels_outside_the_region(lasc, tmp_path):
    """loss.region_mask: what the labels say outside the stage-1 region does not change the loss."""
    trainer = _trainer(lasc, tmp_path / "fold", *REGION)
    batch = trainer.source[0]
    region = batch["region"]
    assert region.any() and not region.all()
    changed = dict(batch, target=torch.where(region, batch["target"], 1 - batch["target"]))
    masked = [float(trainer.train_step(trainer.model, b, 0.0)) for b in (batch, changed)]
    assert masked[0] == pytest.approx(masked[1], rel=1e-6)
    trainer.config.loss.region_mask = False  # the change outside the region does matter to an unmasked loss
    unmasked = [float(trainer.train_step(trainer.model, b, 0.0)) for b in (batch, changed)]
    assert unmasked[0] != pytest.approx(unmasked[1], rel=1e-3)


# --- validation -----------------------------------------------------------------------------

def test_patch_validation_is_the_pseudo_dice_inside_the_region_in_eval_mode(lasc, tmp_path, monkeypatch):
    """nnU-Net's pseudo Dice 2 tp / (2 tp + fp + fn), summed over ceil(val_patches / batch) batches of
    patches, voxels outside the cascade region left out; for a model that calls everything class 1
    that is 2 |T ∩ R| / (|T ∩ R| + |R|), and its loss is the masked loss of those logits."""
    trainer = _trainer(lasc, tmp_path / "fold", *REGION, "train.val_mode=\"patches\"", "train.val_patches=3")
    seen = []
    get = BatchSource.__getitem__
    monkeypatch.setattr(BatchSource, "__getitem__", lambda self, i: seen.append(get(self, i)) or seen[-1])
    model = trainer.model = _AllForeground()
    row = trainer.validate()
    assert len(seen) == math.ceil(3 / trainer.config.train.batch_size)
    assert model.modes == [False] * len(seen) and model.training  # eval mode for validation, then train again
    inside = sum(int(b["region"].sum()) for b in seen)
    hits = sum(int(((b["target"] == 1) & b["region"]).sum()) for b in seen)
    assert 0 < hits < inside < sum(b["region"].numel() for b in seen)  # the region leaves voxels out
    assert row["val_dice"] == pytest.approx(2 * hits / (hits + inside)) == row["val_dice_LA"]
    loss = make_loss(trainer.config)
    expected = [float(loss(model(b["image"]), b["target"].long(), b["region"])) for b in seen]
    assert row["val_loss"] == pytest.approx(float(np.mean(expected)))


def test_a_validation_prediction_is_background_outside_the_region(lasc, tmp_path):
    trainer = _trainer(lasc, tmp_path / "fold", *REGION)
    trainer.model = _AllForeground()
    volume = trainer.val_volumes[0]
    assert volume.region.any() and not volume.region.all()
    logits, labels = trainer.predict_volume(volume)
    assert logits.shape[1:] == volume.target.shape
    np.testing.assert_array_equal(labels, volume.region.astype(labels.dtype))


def test_validation_rows_average_the_finite_values(lasc, tmp_path):
    """A class absent from prediction and truth has Dice nan (left out); no finite HD95 is inf."""
    rows = [{"class": "wall", "dice": 0.5, "hd95": 1.0}, {"class": "wall", "dice": nan, "hd95": inf},
            {"class": "wall", "dice": 0.7, "hd95": 3.0}, {"class": "RA", "dice": nan, "hd95": inf},
            {"class": "LA", "dice": 0.2, "hd95": 4.0}]
    out = loop._class_means(rows, ("wall", "RA", "LA"))
    assert out["val_dice_wall"] == pytest.approx(0.6) and out["val_hd95_wall"] == pytest.approx(2.0)
    assert math.isnan(out["val_dice_RA"]) and out["val_hd95_RA"] == inf
    assert out["val_dice"] == pytest.approx((0.6 + 0.2) / 2)  # over the classes with a finite Dice
    assert out["val_hd95"] == inf  # a class never found counts as the worst


# --- the best checkpoint's score --------------------------------------------------------------

@pytest.mark.parametrize("best_ema, values, improved, emas", [
    # no smoothing: a tie is no improvement; nan (no class anywhere) scores 0
    (0.0, [0.5, 0.5, 0.2, 0.6, nan], [True, False, False, True, False], [0.5, 0.5, 0.2, 0.6, 0.0]),
    # nnU-Net's EMA: ema <- b ema + (1 - b) value
    (0.75, [0.2, 0.1, 0.9, nan], [True, False, True, False], [0.2, 0.175, 0.35625, 0.2671875]),
])
def test_the_best_score_is_the_ema_of_val_dice_and_patience_counts_since_the_last_best(
        lasc, tmp_path, best_ema, values, improved, emas):
    trainer = _trainer(lasc, tmp_path / "fold", f"train.best_ema={best_ema}", prepare=False)
    state, bad, best = trainer.state, 0, (-math.inf, -1)
    for epoch, (value, better, ema) in enumerate(zip(values, improved, emas)):
        assert trainer._score({"epoch": epoch, "val_dice": value}) is better
        bad = 0 if better else bad + 1
        best = (ema, epoch) if better else best
        assert state["ema"] == pytest.approx(ema) and state["bad"] == bad
        assert (state["best_score"], state["best_epoch"]) == (pytest.approx(best[0]), best[1])



# --- the epochs ----------------------------------------------------------------------------

def test_validation_every_val_every_epochs_and_after_the_last(lasc, tmp_path, monkeypatch, no_plot):
    """train.val_every = 2 of 3 epochs: validated after epochs 1 and 2 (the last); each row's LR is
    the one its last iteration trained with, its train_loss the mean over its iterations."""
    calls, losses = [], []
    monkeypatch.setattr(Trainer, "validate", lambda self: calls.append(self.state["epoch"]) or {"val_dice": 0.5})
    step = Trainer.train_step
    monkeypatch.setattr(Trainer, "train_step", lambda *args: losses.append(step(*args)) or losses[-1])
    trainer = _trainer(lasc, tmp_path / "fold", "train.val_every=2", "train.epochs=3", "train.iterations_per_epoch=2",
                       "schedule.kind=\"poly\"")
    trainer.fit()
    rows = trainer.state["history"]
    assert [r["epoch"] for r in rows] == [0, 1, 2] and calls == [1, 2]
    assert ["val_dice" in r for r in rows] == [False, True, True]
    assert [r["lr"] for r in rows] == [learning_rate(trainer.config, e, 1, 2) for e in range(3)]
    assert trainer.optimizer.param_groups[0]["lr"] == rows[-1]["lr"]
    assert len(losses) == 6 and len(set(float(x) for x in losses)) > 1
    for row, epoch_losses in zip(rows, (losses[0:2], losses[2:4], losses[4:6])):  # the mean of the epoch's steps
        assert row["train_loss"] == pytest.approx(float(sum(epoch_losses)) / 2)


def test_select_last_makes_every_epoch_the_best_checkpoint_as_it_ends(lasc, tmp_path, no_plot):
    """train.select = last: checkpoint_best.pt is the latest epoch's at every epoch's end (a helper
    run still training, or one killed, hands on its last weights), not only once the run ends; LR
    1e-12 makes the second epoch score no better than the first."""
    from c2w_fast.training import checkpoint

    trainer = _trainer(lasc, tmp_path / "fold", "train.select=\"last\"", "train.epochs=2", "optim.lr=1e-12",
                       "schedule.kind=\"constant\"", prepare=False)
    best = trainer.folder / "checkpoint_best.pt"
    seen = []
    trainer.fit(on_epoch_end=lambda epoch, model: seen.append(best.is_file() and checkpoint.load(best)["epoch"]))
    assert seen == [1, 2] and trainer.state["best_epoch"] == 0


class _Killed(Exception):
    pass


def test_a_run_stopped_after_an_epoch_resumes_to_the_uninterrupted_weights(lasc, tmp_path, no_plot):
    """In one process (tests/test_train_processes.py kills a real run): dropout, augmentation and
    the batches of the resumed epochs are those the uninterrupted run drew, and the optimiser's
    moments are restored, so weights, history and best epoch come out the same."""
    items = ["train.epochs=2", "train.iterations_per_epoch=2", "model.overrides.dropout=0.5", "augment.rotation_prob=0.5",
             "augment.brightness_prob=0.5", "schedule.kind=\"poly\""]
    whole = _trainer(lasc, tmp_path / "whole", *items, prepare=False)
    whole.fit()

    def kill(epoch, model):
        if epoch == 0:
            raise _Killed

    with pytest.raises(_Killed):
        _trainer(lasc, tmp_path / "killed", *items, prepare=False).fit(on_epoch_end=kill)
    resumed = _trainer(lasc, tmp_path / "killed", *items, resume=True, prepare=False)
    assert resumed.state["epoch"] == 1
    resumed.fit()
    final, expected = _weights(resumed.model), _weights(whole.model)
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    drop = ("time_s",)
    assert [{k: v for k, v in r.items() if k not in drop} for r in resumed.state["history"]] == \
           [{k: v for k, v in r.items() if k not in drop} for r in whole.state["history"]]
    assert resumed.state["best_epoch"] == whole.state["best_epoch"]


@pytest.mark.parametrize("poison", ["loss", "weights"])
def test_a_diverged_epoch_stops_the_run_before_it_is_saved(lasc, tmp_path, monkeypatch, no_plot, poison):
    """Epoch 1 ends with a NaN loss, or with an inf weight (the last step's update): the run stops
    with a DivergedError naming the epoch, and checkpoint_latest.pt and metrics.csv keep epoch 0."""
    from c2w_fast.training import checkpoint

    step, calls = Trainer.train_step, []

    def poisoned(self, *args):
        loss = step(self, *args)
        calls.append(loss)
        if len(calls) == 4:  # epoch 1's last step: its loss was finite, its update was not
            if poison == "loss":
                return loss * math.nan
            with torch.no_grad():
                next(self.model.parameters()).view(-1)[0] = math.inf
        return loss

    monkeypatch.setattr(Trainer, "train_step", poisoned)
    trainer = _trainer(lasc, tmp_path / "fold", "train.epochs=3", "train.iterations_per_epoch=2", prepare=False)
    reason = "the training loss is nan" if poison == "loss" else "the weights hold NaN or inf"
    with pytest.raises(loop.DivergedError, match=f"fold, epoch 1: {reason}, .*checkpoint_latest.pt keeps epoch 0"):
        trainer.fit()
    saved = checkpoint.load(trainer.folder / "checkpoint_latest.pt")
    assert saved["epoch"] == 1 and (checkpoint.non_finite(trainer.model.state_dict()) == []) == (poison == "loss")
    assert all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())
    assert (trainer.folder / "metrics.csv").read_text().count("\n") == 2  # the header and epoch 0


def test_a_resume_with_a_changed_config_or_voxel_arrangement_is_refused(lasc, tmp_path, no_plot):
    from c2w_fast.training import checkpoint
    from c2w_fast.training.checkpoint import CheckpointError

    _trainer(lasc, tmp_path / "fold", "train.epochs=1", prepare=False).fit()
    with pytest.raises(CheckpointError, match=r"differs from the config this checkpoint was trained with "
                                              r"\(optim.lr: 0.001 -> 0.002\)"):
        _trainer(lasc, tmp_path / "fold", "train.epochs=1", "optim.lr=0.002", resume=True, prepare=False)
    resumed = _trainer(lasc, tmp_path / "fold", "train.epochs=2", resume=True, prepare=False)  # epochs may change
    assert resumed.state["epoch"] == 1

    # a fold begun before c2w_fast read cases in the canonical voxel arrangement
    payload = checkpoint.load(tmp_path / "fold" / "checkpoint_latest.pt")
    del payload["orientation"]
    checkpoint.save(tmp_path / "fold" / "checkpoint_latest.pt", {k: v for k, v in payload.items() if k != "format"})
    with pytest.raises(CheckpointError, match=r"checkpoint_latest.pt: this fold began before c2w_fast read cases "
                                              r"in the canonical voxel arrangement \(SAR\).*train the fold anew"):
        _trainer(lasc, tmp_path / "fold", "train.epochs=2", resume=True, prepare=False)


def test_a_fold_starts_from_the_same_fold_of_the_init_run_else_from_its_final_model(lasc, tmp_path):
    """C2W: the wall stage's fold k starts from the cavity run's fold k, a fold it lacks from its final model."""
    from c2w_fast.training import checkpoint

    cavity = cfg.load(CONFIGS / "c2w_cavity.toml", TINY)
    saved = {}
    for seed, name in enumerate(("fold_0", "final")):
        torch.manual_seed(seed + 1)
        model = checkpoint.build_from_config(cavity)
        (tmp_path / "cavity" / name).mkdir(parents=True)
        checkpoint.save(tmp_path / "cavity" / name / "checkpoint_best.pt", {
            "model": model.state_dict(), "config": cavity.to_dict(),
            "architecture": checkpoint.architecture_of(model, "c2w_resnext")})
        saved[name] = _weights(model)
    wall = _config(lasc, f"run.init_from=\"{tmp_path / 'cavity'}\"", preset="c2w_wall.toml")
    for fold, source in (("fold_0", "fold_0"), ("fold_1", "final"), ("final", "final")):
        start = _weights(Trainer(wall, tmp_path / "wall" / fold, [], [], device=torch.device("cpu")).model)
        encoder = [k for k in start if k.startswith("encoder.")]
        assert encoder and all(torch.equal(start[k], saved[source][k]) for k in encoder), fold


def test_training_and_validation_patches_are_train_patch_size_within_the_roi(lasc, tmp_path):
    trainer = _trainer(lasc, tmp_path / "fold", "train.patch_size=[8,16,16]")
    shapes = []
    trainer.model.register_forward_pre_hook(lambda module, inputs: shapes.append(tuple(inputs[0].shape[2:])))
    trainer.train_step(trainer.model, trainer.source[0], 0.0)
    trainer.predict_volume(trainer.val_volumes[0])
    assert trainer.val_volumes[0].target.shape == (16, 24, 24)  # RESNEXT's roi.size
    assert len(shapes) > 1 and set(shapes) == {(8, 16, 16)}
