"""The training loop of one fold: model, optimiser, schedule, unfreezing, validation, checkpoints.

Everything random derives from ``run.seed`` and the global iteration (which cases, patch
positions, augmentation, dropout), and the LR is a function of the position, so a run
resumed from ``checkpoint_latest.pt`` (written after every epoch) replays exactly what the
uninterrupted run would have done. Rank 0 validates and writes; the others train.
"""
from __future__ import annotations

import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from c2w_fast import config as cfg
from c2w_fast import nn as c2w_nn
from c2w_fast.config import Config
from c2w_fast.data.augment import augment_batch
from c2w_fast.data.layouts import Case
from c2w_fast.data.loader import BatchSource, DevicePrefetcher, TrainingVolume, batches, sample_seed
from c2w_fast.data.orientation import CANONICAL
from c2w_fast.data.sampling import SamplingPolicy
from c2w_fast.infer import default_precision, sliding_window
from c2w_fast.postprocess import class_indices
from c2w_fast.stages import StagePipeline, locate_stage, resolve_checkpoint
from c2w_fast.training import checkpoint, runlog, unfreeze
from c2w_fast.training.distributed import Processes, broadcast_flag
from c2w_fast.training.evaluation import class_metrics
from c2w_fast.training.prepare import crop_size, prepare_volumes, stage_spacing
from c2w_fast.training.schedule import learning_rate

# progress.png is drawn at most this often while a fold trains, and after its last epoch:
# drawing it takes ~0.4 s, a tenth of a small CPU epoch; epochs longer than this get one each
PLOT_EVERY_S = 30.0


def make_loss(config: Config, across_processes: bool = False) -> torch.nn.Module:
    """Dice-Focal (C2W) or Dice-CE (MBAS) with the configured options; deep supervision as nnU-Net.

    ``across_processes``: the loss of the whole DDP batch (see :func:`c2w_fast.ops.dice_ce_loss`).
    """
    loss = config.loss
    options = dict(include_background=loss.include_background, batch_dice=loss.batch_dice,
                   smooth_nr=loss.smooth, smooth_dr=loss.smooth, across_processes=across_processes)
    if loss.name == "dice_focal":
        return c2w_nn.DiceFocalLoss(gamma=loss.gamma, **options)
    return c2w_nn.DiceCELoss(**options)


def make_optimizer(config: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    optim = config.optim
    if optim.name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=tuple(optim.betas),
                                 weight_decay=optim.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=optim.lr, momentum=optim.momentum,
                           weight_decay=optim.weight_decay, nesterov=optim.nesterov)


def policy_of(config: Config) -> SamplingPolicy:
    names = config.class_names
    weights = {names.index(k) + 1: v for k, v in config.train.class_weights.items()} or None
    return SamplingPolicy(config.train.sampling, config.train.foreground_prob, weights)


class DivergedError(RuntimeError):
    """An epoch ended with a non-finite training loss or weights: the run stops before saving it."""


def check_resumable(saved: dict, config: Config, latest: Path) -> None:
    """A CheckpointError unless ``config`` is the one the ``saved`` checkpoint (``latest``) was trained
    with, but for what a resume may change (:data:`c2w_fast.config.RESUMABLE_KEYS`: epochs, device...),
    and its cases were read in the voxel arrangement this version reads them in."""
    changed = cfg.differences(cfg.from_dict(saved["config"], source=str(latest)), config, ignore=cfg.RESUMABLE_KEYS)
    if changed:
        raise checkpoint.CheckpointError(
            f"{latest}: the run's config.toml differs from the config this checkpoint was trained with "
            f"({'; '.join(changed[:5])}); --resume only continues the same run")
    if saved.get("orientation") != CANONICAL:
        raise checkpoint.CheckpointError(
            f"{latest}: this fold began before c2w_fast read cases in the canonical voxel arrangement "
            f"({CANONICAL}); its epochs so far saw each file's own voxel order. Finish it with the version "
            "that began it, or train the fold anew")


class Trainer:
    """Trains one fold into ``folder`` (``RUN_DIR/fold_k`` or ``RUN_DIR/final``)."""

    def __init__(self, config: Config, folder: Path, train_cases: list[Case], val_cases: list[Case], *,
                 device: torch.device, processes: Processes = Processes(), resume: bool = False):
        self.config, self.folder = config, Path(folder)
        self.train_cases, self.val_cases = train_cases, val_cases
        self.device, self.processes = device, processes
        self.folder.mkdir(parents=True, exist_ok=True)
        torch.manual_seed(config.run.seed)  # the same initial weights on every rank and every rerun
        self.model = checkpoint.build_from_config(config)
        self.state = {"epoch": 0, "best_score": -math.inf, "best_epoch": -1, "ema": None, "bad": 0,
                      "stopped": False, "history": []}
        saved = None
        if resume:
            latest = self.folder / "checkpoint_latest.pt"
            saved = checkpoint.load_latest(self.folder)
            check_resumable(saved, config, latest)
            checkpoint.check_architecture(self.model, saved["architecture"], latest)
            checkpoint.load_weights(self.model, saved["model"], latest)
            self.state = saved["trainer"]
        elif config.run.init_from:
            path = resolve_checkpoint(locate_stage(config.run.init_from, "run.init_from", self.folder.parent),
                                      self.folder.name)
            checkpoint.initialise_from(self.model, path, new_head=config.unfreeze.new_head)
        self.model.to(device)
        self.optimizer = make_optimizer(config, self.model)
        if saved is not None:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.step_loss = make_loss(config, across_processes=processes.distributed)  # every rank calls it
        self.loss = make_loss(config)  # rank 0 alone validates
        self.source: BatchSource | None = None  # the training batches, made by prepare()
        self.patch = tuple(config.train.patch_size or config.roi.size)
        self._plotted_rows = -1  # the epochs progress.png was last drawn with (_plot)

    # --- data -----------------------------------------------------------------------------

    def prepare(self) -> None:
        """Read and preprocess the fold's cases (helper stages run here: localiser, stage 1)."""
        # the run folder: a resumed run finds helper runs moved with it (the checks found them already)
        pipeline = StagePipeline(self.config, fold=self.folder.name, device=self.device, run_dir=self.folder.parent)
        self.spacing = stage_spacing(self.config, self.train_cases)
        self.train_volumes = prepare_volumes(self.train_cases, self.config, pipeline, training=True, desc="train cases")
        self.val_volumes = (prepare_volumes(self.val_cases, self.config, pipeline, training=False, desc="val cases")
                            if self.processes.is_main else [])
        train = self.config.train
        self.source = BatchSource(
            self.train_volumes, batch_size=train.batch_size, crop_size=crop_size(self.config, self.spacing),
            policy=policy_of(self.config), seed=self.config.run.seed, iterations_per_epoch=train.iterations_per_epoch,
            rank=self.processes.rank, world_size=self.processes.world_size,
            histogram_references=self.config.augment.histogram_match_prob > 0, patch_size=self.patch)

    # --- one step ---------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16,
                              enabled=self.config.run.amp and self.device.type == "cuda")

    def train_step(self, net: torch.nn.Module, batch: dict, lr: float) -> torch.Tensor:
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        image, target, region = augment_batch(batch["image"], batch["target"], batch.get("region"), self.patch,
                                              self.spacing, self.config.augment, batch["seeds"].tolist(),
                                              batch.get("references"))
        torch.manual_seed(sample_seed(self.config.run.seed, batch["iteration"], 10_000 + self.processes.rank))
        with self._autocast():
            outputs = net(image)
        loss = self.step_loss(outputs, target, region if self.config.loss.region_mask else None)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.grad_clip)
        self.optimizer.step()
        return loss.detach()

    def _wrapped(self) -> torch.nn.Module:
        if not self.processes.distributed:
            return self.model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(self.model, device_ids=device_ids,
                                       find_unused_parameters=self.config.model.deep_supervision)

    # --- validation -------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation loss, mean foreground Dice (``val_dice``), per-class Dice and (full mode) HD95."""
        if not self.val_volumes:
            return {}
        self.model.eval()
        try:
            if self.config.train.val_mode == "patches":
                return self._validate_patches()
            return self._validate_full()
        finally:
            self.model.train()

    def predict_volume(self, volume: TrainingVolume) -> tuple[torch.Tensor, np.ndarray]:
        """Logits (K, D, H, W) and class indices of one validation volume in the stage grid, in eval
        mode (no dropout; the MBAS stage-1 network has some) whatever the model's mode, which is kept."""
        x = torch.from_numpy(volume.image).to(self.device)
        training = self.model.training
        self.model.eval()
        try:
            logits = sliding_window(self.model, x, self.patch, step=self.config.eval.step,
                                    gaussian=self.config.eval.gaussian,
                                    precision=default_precision(self.config.run.amp, self.device))
        finally:
            self.model.train(training)
        labels = class_indices(logits).cpu().numpy()
        if volume.region is not None:
            labels[~volume.region] = 0
        return logits, labels

    def _validate_full(self) -> dict:
        losses, rows = [], []
        for volume in self.val_volumes:
            logits, labels = self.predict_volume(volume)
            target = torch.from_numpy(volume.target)[None].to(self.device)
            region = None if volume.region is None or not self.config.loss.region_mask else \
                torch.from_numpy(volume.region)[None].to(self.device)
            losses.append(float(self.loss(logits[None], target, region)))
            rows += class_metrics(labels, volume.target, volume.spacing, self.config.class_names,
                                  self.config.eval.tolerance_mm)
        out = {"val_loss": float(np.mean(losses))}
        out.update(_class_means(rows, self.config.class_names))
        return out

    def _validate_patches(self) -> dict:
        """nnU-Net's pseudo Dice: tp/fp/fn summed over ``train.val_patches`` fixed validation patches."""
        train = self.config.train
        source = BatchSource(self.val_volumes, batch_size=train.batch_size, crop_size=self.patch,
                             policy=policy_of(self.config), seed=self.config.run.seed + 1, iterations_per_epoch=1)
        k = self.config.num_classes
        counts = torch.zeros(3, k - 1, dtype=torch.float64)
        losses = []
        for i in range(math.ceil(train.val_patches / train.batch_size)):
            batch = source[i]
            image, target = batch["image"].to(self.device), batch["target"].to(self.device).long()
            region = batch.get("region")
            with self._autocast():
                outputs = self.model(image)
            logits = (outputs[0] if isinstance(outputs, list) else outputs).float()
            mask = None if region is None or not self.config.loss.region_mask else region.to(self.device)
            losses.append(float(self.loss(logits, target, mask)))
            labels = logits.argmax(1)
            valid = torch.ones_like(target, dtype=torch.bool) if mask is None else mask
            for c in range(1, k):
                p, t = (labels == c) & valid, (target == c) & valid
                counts[:, c - 1] += torch.stack([(p & t).sum(), (p & ~t).sum(), (~p & t).sum()]).double().cpu()
        tp, fp, fn = counts
        dice = (2 * tp / (2 * tp + fp + fn).clamp_min(1)).tolist()
        out = {"val_loss": float(np.mean(losses)), "val_dice": float(np.mean(dice))}
        out.update({f"val_dice_{name}": d for name, d in zip(self.config.class_names, dice)})
        return out

    # --- the run ------------------------------------------------------------------------------

    def _score(self, row: dict) -> bool:
        """Update best score / EMA / patience from a validation row; True when it is a new best."""
        state, ema = self.state, self.config.train.best_ema
        value = row["val_dice"]
        if not math.isfinite(value):
            value = 0.0
        state["ema"] = value if state["ema"] is None or ema == 0 else ema * state["ema"] + (1 - ema) * value
        if state["ema"] > state["best_score"]:
            state["best_score"], state["best_epoch"], state["bad"] = state["ema"], row["epoch"], 0
            return True
        state["bad"] += 1
        return False

    def _payload(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "architecture": checkpoint.architecture_of(self.model, self.config.model.architecture),
                "config": self.config.to_dict(), "spacing": list(self.spacing), "orientation": CANONICAL,
                "epoch": self.state["epoch"], "trainer": self.state}

    def _write_logs(self, *, throttle: bool = False) -> None:
        """metrics.csv, and progress.png; with ``throttle`` (after an epoch) the plot only :data:`PLOT_EVERY_S`
        after its last drawing (the first epoch's at once), and :meth:`_train_epochs` draws the last epoch's."""
        runlog.write_csv(self.folder / "metrics.csv", self.state["history"])
        if not throttle or time.monotonic() - self._plotted_at >= PLOT_EVERY_S:
            self._plot()

    def _plot(self) -> None:
        runlog.plot_progress(self.folder / "progress.png", self.state["history"])
        self._plotted_at, self._plotted_rows = time.monotonic(), len(self.state["history"])

    def fit(self, on_epoch_end=None) -> dict:
        """Train from the current state to ``train.epochs`` (or an early stop); returns the state.

        ``on_epoch_end(epoch, model)`` is called on every rank after each epoch.
        """
        config, train, state = self.config, self.config.train, self.state
        if config.run.deterministic:
            # cuBLAS needs a fixed workspace for reproducible matmuls (read when cuBLAS starts); ops
            # with no deterministic CUDA kernel (AvgPool3d's backward) warn instead of stopping the run
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=True)
        if self.source is None:
            self.prepare()
        start = state["epoch"]
        if not (state["stopped"] or start >= train.epochs):
            self._train_epochs(state, start, on_epoch_end)  # logs written after every epoch
        elif self.processes.is_main:
            self._write_logs()  # a resume that found the epochs done: killed before its last logs
        best = self.folder / "checkpoint_best.pt"
        if self.processes.is_main and (not self.val_cases or not best.is_file()):
            # without validation cases the best is the last epoch, also after a --resume with more epochs
            checkpoint.save(best, self._payload())
        return state

    def _train_epochs(self, state: dict, start: int, on_epoch_end) -> None:
        """Epochs ``start`` to ``train.epochs`` (or an early stop), a checkpoint after each."""
        config, train = self.config, self.config.train
        ipe = self.source.iterations_per_epoch
        loader = batches(self.source, start * ipe, train.epochs * ipe, num_workers=train.num_workers,
                         prefetch=train.prefetch, pin_memory=self.device.type == "cuda")
        stream = DevicePrefetcher(loader, self.device)
        step_name, net = "unset", self.model
        self.model.train()
        self._plotted_at = -math.inf  # the first epoch drawn at once, so progress.png shows up early
        for epoch in range(start, train.epochs):
            step = unfreeze.phase(config, epoch)
            if step != step_name:
                unfreeze.apply(self.model, step, config.unfreeze.shallow_stages)
                step_name, net = step, self._wrapped()
            if epoch > 0 and unfreeze.phase(config, epoch - 1) != step:
                state["bad"] = 0  # each unfreezing step starts with the full early-stopping patience
            began = time.perf_counter()
            total = torch.zeros((), device=self.device)
            for it in tqdm(range(ipe), desc=f"epoch {epoch}", unit="it", disable=None, leave=False):
                lr = learning_rate(config, epoch, it, ipe)
                total += self.train_step(net, next(stream), lr)
            row = {"epoch": epoch, "phase": step or "", "lr": lr, "train_loss": float(total) / ipe,
                   "time_s": time.perf_counter() - began}
            self._check_converging(row)
            stop = False
            if self.processes.is_main:
                if (epoch + 1) % train.val_every == 0 or epoch + 1 == train.epochs:
                    row.update(self.validate())
                state["history"].append(row)
                state["epoch"] = epoch + 1
                improved = "val_dice" in row and self._score(row)
                if (improved and train.select == "best") or train.select == "last":
                    checkpoint.save(self.folder / "checkpoint_best.pt", self._payload())
                stop = bool(train.early_stopping) and epoch >= train.early_stopping_from \
                    and state["bad"] >= train.early_stopping
                state["stopped"] = stop
                checkpoint.save(self.folder / "checkpoint_latest.pt", self._payload())
                self._write_logs(throttle=True)
                _print_epoch(row, train.epochs, improved)
            else:
                state["epoch"] = epoch + 1
            if on_epoch_end is not None:
                on_epoch_end(epoch, self.model)
            if broadcast_flag(stop, self.processes, self.device):
                break
        if self.processes.is_main and self._plotted_rows != len(state["history"]):
            self._plot()  # the epochs that the throttle left undrawn

    def _check_converging(self, row: dict) -> None:
        """A DivergedError on every rank when rank 0's epoch ended with a non-finite loss or weights (DDP
        keeps the weights equal), raised before this epoch is validated or saved: checkpoint_latest.pt,
        checkpoint_best.pt and metrics.csv keep the last finite epoch, and the run can start anew from it."""
        loss_finite = math.isfinite(row["train_loss"])
        weights_finite = not self.processes.is_main or not checkpoint.non_finite(self.model.state_dict())
        if not broadcast_flag(self.processes.is_main and not (loss_finite and weights_finite),
                              self.processes, self.device):
            return
        what = [f"the training loss is {row['train_loss']}"] * (not loss_finite)
        what += ["the weights hold NaN or inf"] * (not weights_finite)
        kept = (f"{self.folder / 'checkpoint_latest.pt'} keeps epoch {row['epoch'] - 1}" if row["epoch"] > 0
                else "no checkpoint was written")
        raise DivergedError(
            f"{self.folder.name}, epoch {row['epoch']}: {' and '.join(what)}, so the run diverged and this epoch "
            f"was not saved ({kept}). Train again with a lower optim.lr or with optim.grad_clip "
            "(--set optim.grad_clip=12), optionally --init-from the last finite checkpoint")


def _print_epoch(row: dict, epochs: int, improved: bool) -> None:
    """One flushed line per epoch, so that a run logged to a file (nohup, a cluster job) shows its progress."""
    # epochs count from 0, as in metrics.csv and the final "best epoch"
    parts = [f"epoch {row['epoch']} ({row['epoch'] + 1} of {epochs})", *([f"step {row['phase']}"] * bool(row["phase"])),
             f"lr {row['lr']:.2e}", f"loss {row['train_loss']:.4f}"]
    parts += [f"{key} {row[key]:.4g}" for key in ("val_loss", "val_dice", "val_hd95") if key in row]
    tqdm.write("  ".join(parts) + f"  ({row['time_s']:.1f} s)" + ("  best" if improved else ""))
    sys.stdout.flush()


def _class_means(rows: list[dict], class_names) -> dict:
    """val_dice (mean over classes of the per-class mean Dice), val_hd95, and per-class values."""
    out = {}
    dices, hd95s = [], []
    for name in class_names:
        picked = [r for r in rows if r["class"] == name]
        scored = [r["dice"] for r in picked if math.isfinite(r["dice"])]  # nan: class absent from both
        dice = float(np.mean(scored)) if scored else math.nan
        finite = [r["hd95"] for r in picked if math.isfinite(r["hd95"])]
        hd95 = float(np.mean(finite)) if finite else math.inf
        out[f"val_dice_{name}"], out[f"val_hd95_{name}"] = dice, hd95
        dices.append(dice)
        hd95s.append(hd95)
    finite = [d for d in dices if math.isfinite(d)]
    return {"val_dice": float(np.mean(finite)) if finite else math.nan, "val_hd95": float(np.mean(hd95s)), **out}
