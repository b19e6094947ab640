"""Learning-rate schedules as pure functions of the position in training (so resume needs no state).

* ``constant`` — ``optim.lr`` throughout;
* ``poly`` — nnU-Net / MBAS eq. (1): ``lr · (1 − t/T)^0.9`` with t the iteration, T the total;
* ``cosine`` — cycles starting at epoch 0 and at every ``schedule.restarts`` epoch, the
  first peaking at ``optim.lr`` and the k-th restart at ``schedule.restart_lr[k]``
  (C2W stage 2: 1e-3 → 1e-4 → 1e-5 at epochs 61 and 181); each cycle warms up linearly
  over ``warmup_epochs`` and then follows a half cosine down to ``min_lr`` at its end.
"""
from __future__ import annotations

import math

from c2w_fast.config import Config


def learning_rate(config: Config, epoch: int, iteration: int, iterations_per_epoch: int) -> float:
    """The LR of ``iteration`` (0-based, within ``epoch``) of a run of ``train.epochs`` epochs."""
    sched, base, epochs = config.schedule, config.optim.lr, config.train.epochs
    step = epoch * iterations_per_epoch + iteration
    total = epochs * iterations_per_epoch
    if sched.kind == "constant":
        return base
    if sched.kind == "poly":
        return base * (1 - step / total) ** sched.poly_exponent
    starts = [0] + [e for e in sched.restarts if e < epochs]
    peaks = [base] + list(sched.restart_lr)
    k = max(i for i, s in enumerate(starts) if s <= epoch)
    end = starts[k + 1] if k + 1 < len(starts) else epochs
    position = step - starts[k] * iterations_per_epoch
    length = (end - starts[k]) * iterations_per_epoch
    warmup = min(int(round(sched.warmup_epochs * iterations_per_epoch)), length)
    peak = peaks[k]
    floor = min(sched.min_lr, peak)
    if position < warmup:
        return peak * (position + 1) / warmup
    remaining = length - warmup - 1
    # the last step reaches the floor; a cycle of one step after its warm-up is that step (without a
    # warm-up, a one-step cycle stays at its peak: it would train at the floor only)
    progress = (position - warmup) / remaining if remaining > 0 else float(warmup > 0)
    return floor + (peak - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def unreached_settings(config: Config) -> list[str]:
    """What a run of ``train.epochs`` never reaches of its schedule, unfreezing and early stopping:
    a short run of a preset made for 1000 epochs (``c2w_fast.demo.short_run_schedule`` scales them)."""
    epochs, sched, notes = config.train.epochs, config.schedule, []
    if sched.kind == "cosine":
        starts = [0] + [e for e in sched.restarts if e < epochs]
        filled = [f"{s}-{e - 1}" if e - 1 > s else f"{s}" for s, e in zip(starts, starts[1:] + [epochs])
                  if sched.warmup_epochs >= e - s]
        if filled:
            notes.append(f"schedule.warmup_epochs = {sched.warmup_epochs:g} fills the cosine cycle of epochs "
                         f"{', '.join(filled)}, whose LR then only rises")
        late = [e for e in sched.restarts if e >= epochs]
        if late:
            notes.append(f"schedule.restarts {late} come after the last epoch")
    steps = config.unfreeze.steps
    if config.unfreeze.enabled and steps[1] >= epochs:
        step = "A (encoder frozen)" if steps[0] >= epochs else "B (shallow encoder frozen)"
        notes.append(f"unfreeze.steps = {steps}: the run ends in step {step}")
    if config.train.early_stopping and config.train.early_stopping_from >= epochs:
        notes.append(f"train.early_stopping_from = {config.train.early_stopping_from}: no early stop")
    return notes
