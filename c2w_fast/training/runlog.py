"""The human-readable part of a run folder: ``metrics.csv`` and ``progress.png``, rewritten atomically.

The full per-epoch history lives in the checkpoint, so after ``--resume`` both files are
rewritten from it and never hold epochs the resumed run will redo.
"""
from __future__ import annotations

import csv
import io
import math

from c2w_fast.data.io import write_atomically
from c2w_fast.data.io import write_csv as write_csv_file


def write_csv(path, rows: list[dict]) -> None:
    """``rows`` as CSV with the union of their keys as columns (first-seen order), floats to 6 digits."""
    write_csv_file(path, rows, float_digits=6)


def read_csv(path) -> list[dict]:
    """Rows written by :func:`write_csv`, numbers (inf and nan too) as floats, the rest as text."""
    with open(path, newline="") as handle:
        return [{k: _number_or_text(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _number_or_text(text: str):
    try:
        return float(text)
    except ValueError:
        return text


def plot_progress(path, rows: list[dict]) -> None:
    """Losses, validation Dice and learning rate per epoch, as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    epochs = [r["epoch"] for r in rows]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for key, style in (("train_loss", "b-"), ("val_loss", "r-")):
        points = [(e, r[key]) for e, r in zip(epochs, rows) if _finite(r.get(key))]
        if points:
            top.plot(*zip(*points), style, label=key)
    dice = [(e, r["val_dice"]) for e, r in zip(epochs, rows) if _finite(r.get("val_dice"))]
    if dice:
        twin = top.twinx()
        twin.plot(*zip(*dice), "g.-", label="val_dice")
        twin.set_ylabel("validation Dice")
        twin.set_ylim(0, 1)
        twin.legend(loc="upper right")
    top.set_ylabel("loss")
    top.legend(loc="upper left")
    bottom.plot(epochs, [r["lr"] for r in rows], "k-")
    bottom.set_yscale("log")
    bottom.set_ylabel("learning rate")
    bottom.set_xlabel("epoch")
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    write_atomically(path, lambda target: target.write_bytes(buffer.getvalue()))


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)
