"""Shared pieces of the training tests: a tiny phantom dataset and CPU-sized config overrides."""
from __future__ import annotations

from pathlib import Path

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
