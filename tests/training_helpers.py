"""Shared pieces of the training tests: a tiny phantom dataset, CPU-sized config overrides, a scan
stored in another voxel arrangement."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from c2w_fast.data.phantom import write_dataset

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
PHANTOM = dict(shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))

# 3-stage networks of a few channels, batch 2, no worker processes: seconds per run on a CPU.
SPLITS = ["data.n_test=2", "data.n_folds=2", "data.final_val=1", "run.device=\"cpu\"", "train.num_workers=0",
          "train.batch_size=2"]
RESNEXT = ["model.overrides.features=[4,8,16]", "model.overrides.strides=[1,2,2]", "model.overrides.kernels=[3,3,3]",
           "model.overrides.blocks_per_stage=[0,1,1]", "model.overrides.decoder_convs=[1,1]",
           "model.overrides.groups=[1,2,4]", "roi.size=[16,24,24]", "roi.center=\"ground_truth\"",
           "unfreeze.shallow_stages=1"]


def write_phantoms(root: Path, n: int = 6, layout: str = "lasc") -> Path:
    write_dataset(root, layout, n, progress=False, **PHANTOM)
    return root


def set_args(items) -> list[str]:
    """``--set`` arguments for ``c2w_fast.train.main``."""
    out = []
    for item in items:
        out += ["--set", item]
    return out


# an LR too small to improve anything: the run stops at its second validation (patience 1)
STOPS_AT_ONCE = ["optim.lr=1e-12", "schedule.kind=\"constant\"", "train.early_stopping=1"]


def run_train(preset: str, data, out, *extra, fold: str = "final", epochs: int = 2, items=()) -> int:
    """``python -m c2w_fast.train`` of a preset with the tiny networks and splits, and ``items`` on top."""
    from c2w_fast import train

    args = ["--config", str(CONFIGS / preset), "--data", str(data), "--out", str(out), "--fold", fold,
            "--epochs", str(epochs), *extra] + set_args(SPLITS + RESNEXT + list(items))
    return train.main(args)


def csv_rows(path) -> list[dict]:
    """A CSV file's rows as dicts of text."""
    with open(path) as handle:
        return list(csv.DictReader(handle))


def stored_as(canonical: np.ndarray, affine: np.ndarray, order, flips):
    """``canonical`` (with ``affine``) stored with its axes transposed by ``order`` and reversed where
    ``flips``, and the affine of that storage, found by following each voxel's canonical index."""
    stored = np.flip(np.transpose(canonical, order), [i for i, flip in enumerate(flips) if flip])
    grids = np.meshgrid(*(np.arange(n) for n in canonical.shape), indexing="ij")
    moved = [np.flip(np.transpose(g, order), [i for i, flip in enumerate(flips) if flip]) for g in grids]
    own = np.stack([*np.indices(stored.shape), np.ones(stored.shape)], -1).reshape(-1, 4)
    to_canonical = np.linalg.lstsq(own, np.stack([*moved, np.ones(stored.shape)], -1).reshape(-1, 4), rcond=None)[0].T
    return np.ascontiguousarray(stored), affine @ to_canonical
