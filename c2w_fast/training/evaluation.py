"""Evaluation of predictions against ground truth, per case and class, and the C2W paper's Table 1.

Metrics come from :func:`c2w_fast.metrics.evaluate` on binary masks of one class in the
native grid: Dice, Surface Dice at ``eval.tolerance_mm`` (1 mm), HD95 and ASSD (mm), and the
overlap ``|P ∩ G| / |G|``. A ``cascade1`` stage also scores the region it hands to stage 2
(largest component + dilation of its atrial union) as class ``"stage-2 region"``, as the
MBAS paper's stage-1 tables do.
The table prints mean ± sample standard deviation over cases; non-finite distances
(an empty prediction or ground truth) are left out of the mean and counted.
"""
from __future__ import annotations

import numpy as np
import torch
from tqdm import tqdm

from c2w_fast.data.layouts import Case, load_cases
from c2w_fast.data.preprocess import target_labels

TABLE_COLUMNS = (("dice", "Dice ↑"), ("surface_dice", "Surface Dice ↑"), ("hd95", "HD95 (mm) ↓"),
                 ("assd", "ASSD (mm) ↓"))  # the C2W paper's Table 1; rows also hold "overlap"


REGION_CLASS = "stage-2 region"


def _row(name: str, pred, truth, spacing, tolerance_mm: float) -> dict:
    from c2w_fast.metrics import evaluate, overlap

    result = evaluate(pred, truth, spacing, tolerance_mm=tolerance_mm)
    return {"class": name, **{key: float(getattr(result, key)) for key, _ in TABLE_COLUMNS},
            "overlap": overlap(pred, truth)}


def class_metrics(prediction: np.ndarray, truth: np.ndarray, spacing, class_names, tolerance_mm: float,
                  cascade=None) -> list[dict]:
    """One row per foreground class (class index c = position + 1): dice, surface_dice, hd95, assd,
    overlap; with ``cascade`` (a cascade1 stage's ``config.cascade``) also the stage-2 region's row."""
    rows = [_row(name, prediction == c, truth == c, spacing, tolerance_mm)
            for c, name in enumerate(class_names, start=1)]
    if cascade is not None:
        from c2w_fast.postprocess import cascade_region

        region = cascade_region(torch.from_numpy(np.ascontiguousarray(prediction > 0)), cascade).numpy()
        rows.append(_row(REGION_CLASS, region, truth > 0, spacing, tolerance_mm))
    return rows


def stage1_cascade(config):
    """``config.cascade`` for a cascade1 stage (whose output gates stage 2), else None."""
    return config.cascade if config.run.stage == "cascade1" else None


def evaluate_cases(predictor, cases: list[Case], *, desc: str = "test") -> list[dict]:
    """Predict every case with ``predictor`` (a :class:`c2w_fast.stages.Predictor`) and score it."""
    config = predictor.config
    rows = []
    for data in tqdm(load_cases(cases), total=len(cases), desc=desc, unit="case", disable=None, leave=False):
        spacing = data.image.spacing
        prediction = predictor.predict(data.image.array, spacing, data.labels)
        truth = target_labels(data.labels, config.data.target)
        for row in class_metrics(prediction, truth, spacing, config.class_names, config.eval.tolerance_mm,
                                 stage1_cascade(config)):
            rows.append({"case": data.case.id, **row})
    return rows


def mean_sd(values) -> str:
    """``mean ± sd`` (sample sd) of the finite values, 3 decimals, with how many were not finite; ``n/a`` if
    none; a single value has no sample sd, and says so (``± 0.000`` would claim a spread of zero)."""
    values = np.asarray(values, float)
    finite = values[np.isfinite(values)]
    if len(finite) == 0:
        return "n/a"
    text, notes = f"{float(np.mean(finite)):.3f}", []
    if len(finite) > 1:
        text += f" ± {float(np.std(finite, ddof=1)):.3f}"
    else:
        notes.append("1 value, no sd")
    missing = len(values) - len(finite)
    notes += [f"{missing} n/a"] if missing else []
    return text + (f" ({'; '.join(notes)})" if notes else "")


def table1(results: dict[str, list[dict]], class_name: str) -> str:
    """Rows ``method → mean ± sd`` of each metric for ``class_name``, as in the C2W paper's Table 1; the
    stage-2 region adds the share of the ground truth it covers, what stage 2 can reach at most."""
    columns = TABLE_COLUMNS + ((("overlap", "GT covered ↑"),) if class_name == REGION_CLASS else ())
    header = ["Method"] + [f"{class_name[:1].upper() + class_name[1:]} {label}" if key == "dice" else label
                           for key, label in columns]
    lines = [header]
    for method, rows in results.items():
        picked = [r for r in rows if r["class"] == class_name]
        lines.append([f"{method} (n={len(picked)})"] + [mean_sd([r[key] for r in picked]) for key, _ in columns])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)) for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)

