"""C2W-Tune's progressive unfreezing (§2.5): which encoder parts train in steps A, B and C.

* step A (epochs before ``unfreeze.steps[0]``): the encoder is frozen except its deepest
  stage, the bottleneck; bottleneck, decoder and heads train;
* step B (until ``unfreeze.steps[1]``): the stem and the first ``shallow_stages`` encoder
  stages stay frozen, the deeper stages train too;
* step C: everything trains.

Frozen means ``requires_grad = False``: those parameters get no gradient, so neither the
optimiser's update nor its weight decay touches them (instance norm keeps no running
statistics, so nothing else changes).
"""
from __future__ import annotations

from torch import nn

from c2w_fast.config import Config
from c2w_fast.models import UNet


def phase(config: Config, epoch: int) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` for ``epoch`` (0-based); None when unfreezing is off."""
    if not config.unfreeze.enabled:
        return None
    first_b, first_c = config.unfreeze.steps
    return "A" if epoch < first_b else "B" if epoch < first_c else "C"


def frozen_modules(model: UNet, step: str | None, shallow_stages: int) -> list[nn.Module]:
    """The encoder modules that do not train in ``step``."""
    encoder = model.encoder
    stem = [encoder.stem] if encoder.stem is not None else []
    if step == "A":
        return stem + list(encoder.stages[:-1])
    if step == "B":
        return stem + list(encoder.stages[:shallow_stages])
    return []


def apply(model: UNet, step: str | None, shallow_stages: int) -> None:
    """Set ``requires_grad`` of every parameter for ``step``."""
    frozen = {id(p) for m in frozen_modules(model, step, shallow_stages) for p in m.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
