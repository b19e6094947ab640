"""Checkpoints: written atomically, carry their architecture and config, and refuse a mismatch clearly.

A checkpoint is a dict: ``model`` (state_dict), ``architecture`` (preset name, spec,
input channels, classes, deep supervision), ``config`` (the run's config as a dict),
``spacing`` (the (z, y, x) mm grid the patches were sampled from, which inference
resamples to), ``orientation`` (the voxel arrangement the cases were read in,
:data:`c2w_fast.data.orientation.CANONICAL`; absent: each file's own), ``epoch``
(completed epochs), ``optimizer`` and ``trainer`` (best score, early-stopping counters,
per-epoch history) — everything ``--resume`` needs.
"""
from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import NamedTuple

import torch

from c2w_fast.config import Config, from_dict
from c2w_fast.data.io import write_atomically
from c2w_fast.models import UNet, build_model

FORMAT = 1


class TrainedStage(NamedTuple):
    """A checkpoint's model (weights loaded) and config, and how its cases were read: the grid
    spacing (mm) and voxel arrangement, each None when the checkpoint predates its recording."""

    model: UNet
    config: Config
    spacing: tuple[float, float, float] | None
    orientation: str | None


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not fit the model being built."""


def architecture_of(model: UNet, name: str) -> dict:
    return {"name": name, "spec": dataclasses.asdict(model.spec), "in_channels": model.in_channels,
            "num_classes": model.num_classes, "deep_supervision": model.deep_supervision}


def build_from_config(config: Config) -> UNet:
    """The model a config describes (architecture preset + overrides, channels, classes)."""
    m = config.model
    return build_model(m.architecture, config.in_channels, config.num_classes, deep_supervision=m.deep_supervision,
                       init=m.init, **m.overrides)


def save(path, payload: dict) -> Path:
    """``torch.save`` to a temporary file beside ``path``, flushed to disk, then renamed over it
    (:func:`c2w_fast.data.io.write_atomically`)."""
    def write(target):
        with open(target, "wb") as handle:
            torch.save({"format": FORMAT, **payload}, handle)
            handle.flush()
            os.fsync(handle.fileno())

    return write_atomically(path, write)


def load(path, *, lazy: bool = False) -> dict:
    """The checkpoint's payload, checked. ``lazy``: its tensors are memory-mapped and read only
    when used, for reading the config or the trainer state of a large checkpoint cheaply."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False, mmap=lazy)
    except Exception as exc:  # truncated or foreign files raise many types
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a checkpoint of c2w_fast's training (python -m c2w_fast.train writes "
                              f"RUN/<fold>/checkpoint_best.pt, format {FORMAT}); give such a file or its run folder")
    missing = [key for key in ("model", "architecture", "config") if key not in payload]
    if missing:
        raise CheckpointError(f"{path}: incomplete c2w_fast checkpoint, no {', '.join(missing)} in it")
    return payload


def load_latest(folder, *, lazy: bool = False) -> dict:
    """``folder/checkpoint_latest.pt`` for ``--resume``. When it is damaged (writes are atomic, so
    only the disk can do that), the error says how to go on from ``checkpoint_best.pt``, whose
    payload is as complete, or to train the fold again."""
    latest, best = Path(folder) / "checkpoint_latest.pt", Path(folder) / "checkpoint_best.pt"
    try:
        return load(latest, lazy=lazy)
    except CheckpointError as exc:
        if not latest.is_file():
            raise
        try:
            epochs = load(best, lazy=True)["epoch"]
            hint = (f"{best} (after epoch {epochs}) is intact: copy it over {latest.name} and --resume again "
                    "to continue from that epoch")
        except CheckpointError:
            hint = f"no intact {best.name} either: delete {folder} to train this fold again"
        raise CheckpointError(f"{exc}; {hint}") from None


def load_model(path) -> tuple[UNet, Config]:
    """The model and config saved in checkpoint ``path``, weights loaded."""
    stage = load_stage(path)
    return stage.model, stage.config


def load_stage(path) -> TrainedStage:
    """What checkpoint ``path`` holds: its model, config, training grid and voxel arrangement."""
    payload = load(path)
    config = from_dict(payload["config"], source=str(path))
    model = build_from_config(config)
    check_architecture(model, payload["architecture"], path)
    load_weights(model, payload["model"], path)
    spacing = payload.get("spacing")
    return TrainedStage(model, config, None if spacing is None else tuple(float(s) for s in spacing),
                        payload.get("orientation"))


def load_weights(model: UNet, state: dict, path) -> None:
    """``model.load_state_dict(state)``, with a CheckpointError naming ``path`` when the weights do
    not fit (a damaged or hand-edited checkpoint whose weights disagree with its recorded architecture)
    or are not finite (a run that diverged: its predictions would be empty, without a word)."""
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        details = str(exc).replace("\n", " ").replace("\t", "")
        raise CheckpointError(f"{path}: its weights do not fit the architecture it records ({details})") from None
    check_finite(state, path)


def non_finite(state: dict) -> list[str]:
    """The names of the floating-point tensors of ``state`` (a state_dict) that hold NaN or inf, in one host sync."""
    floats = {name: t for name, t in state.items() if torch.is_tensor(t) and t.is_floating_point()}
    if not floats:
        return []
    finite = torch.stack([torch.isfinite(t).all() for t in floats.values()]).tolist()
    return [name for name, ok in zip(floats, finite) if not ok]


def check_finite(state: dict, path) -> None:
    """A CheckpointError naming ``path`` when weights of ``state`` hold NaN or inf."""
    broken = non_finite(state)
    if broken:
        raise CheckpointError(f"{path}: {len(broken)} of its weight tensors hold NaN or inf ({', '.join(broken[:3])}"
                              f"{', ...' * (len(broken) > 3)}): did the run diverge? use a checkpoint from before")


def _differences(ours: dict, theirs: dict) -> list[str]:
    out = []
    for key in ("in_channels", "num_classes", "deep_supervision"):
        if ours[key] != theirs.get(key):
            out.append(f"{key}: checkpoint {theirs.get(key)!r}, this run {ours[key]!r}")
    for key, value in ours["spec"].items():
        theirs_value = theirs.get("spec", {}).get(key)
        if _plain(value) != _plain(theirs_value):
            out.append(f"{key}: checkpoint {_plain(theirs_value)}, this run {_plain(value)}")
    return out


def _plain(value):
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def check_architecture(model: UNet, saved: dict, path, *, ignore=()) -> None:
    """A CheckpointError listing every difference between ``model`` and the saved architecture."""
    ours = architecture_of(model, saved.get("name", "?"))
    problems = [d for d in _differences(ours, saved) if d.split(":")[0] not in ignore]
    if problems:
        raise CheckpointError(f"{path}: checkpoint of another architecture — " + "; ".join(problems))


def initialise_from(model: UNet, path, *, new_head: bool) -> None:
    """Load a pre-trained stage's weights into ``model`` (C2W: the cavity model into the wall model).

    The encoder and decoder must match; with ``new_head`` the segmentation heads are
    re-initialised (and may have another number of classes). A model with one more input
    channel (the signed-distance channel) takes the checkpoint's stem weights for the image
    channel and zeros for the extra one, so it starts out computing what the checkpoint did.
    """
    payload = load(path)
    ignore = {"num_classes"} if new_head else set()
    extra_channels = model.in_channels - payload["architecture"]["in_channels"]
    if extra_channels > 0:
        ignore.add("in_channels")
    check_architecture(model, payload["architecture"], path, ignore=ignore)
    state = {k: v for k, v in payload["model"].items() if not (new_head and k.startswith("heads."))}
    check_finite(state, path)
    own = model.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape and extra_channels > 0 and value.ndim == 5 \
                and own[key].shape[1] == value.shape[1] + extra_channels:
            expanded = torch.zeros_like(own[key])
            expanded[:, : value.shape[1]] = value
            state[key] = expanded
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (new_head and k.startswith("heads."))]
    if missing or unexpected:
        raise CheckpointError(f"{path}: weights do not fit this model "
                              f"(missing {missing[:5]}, unexpected {unexpected[:5]})")
    if new_head:
        model.reset_heads()
