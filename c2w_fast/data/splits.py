"""Patient-level splits: a held-out test set plus k cross-validation folds, in ``splits.json``.

Splits are deterministic from a seed and assign whole patients (``groups``) to one side,
so no patient's scans leak between training, validation and test. ``final`` is the
train/validation split of all development cases for the final retrain (C2W: 100/24).
"""
from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from c2w_fast.errors import DataError


@dataclass(frozen=True)
class Fold:
    train: tuple[str, ...]
    val: tuple[str, ...]


@dataclass(frozen=True)
class Splits:
    test: tuple[str, ...]
    folds: tuple[Fold, ...]
    final: Fold
    seed: int
    settings: dict | None = field(default=None, compare=False)  # what made them, as recorded in the file

    @property
    def development(self) -> tuple[str, ...]:
        return tuple(sorted(self.final.train + self.final.val))

    def fold(self, k: int) -> Fold:
        if not 0 <= k < len(self.folds):
            raise ValueError(f"fold must be in 0..{len(self.folds) - 1}, got {k}")
        return self.folds[k]


def _count(value: int | float, total: int, name: str) -> int:
    count = int(round(value * total)) if isinstance(value, float) else int(value)
    if not 0 <= count <= total:
        what = "a fraction in [0, 1]" if isinstance(value, float) else f"a count in 0..{total}"
        raise ValueError(f"{name} must be {what}, got {value!r}")
    return count


def make_splits(case_ids: Sequence[str], *, n_test: int | float = 0.2, n_folds: int = 5,
                final_val: int | float = 0.2, seed: int = 0,
                groups: Mapping[str, str] | None = None) -> Splits:
    """Split ``case_ids`` by patient into test, ``n_folds`` folds and the final train/val split.

    ``n_test`` and ``final_val`` are patient counts (int) or fractions (float). ``groups``
    maps a case id to its patient id (default: each case is its own patient).
    """
    ids = sorted(set(case_ids))
    if len(ids) != len(case_ids):
        raise ValueError("case_ids contain duplicates")
    groups = {i: (groups or {}).get(i, i) for i in ids}
    patients = sorted(set(groups.values()))
    test_count = _count(n_test, len(patients), "n_test")
    n_dev = len(patients) - test_count
    if n_dev < 2:
        raise ValueError(f"{len(patients)} patients with {test_count} held out for the test leave {n_dev} "
                         f"development patient(s); cross-validation needs at least 2")
    if not 2 <= n_folds <= n_dev:
        raise ValueError(f"n_folds must be in 2..{n_dev} (the development patients left after {test_count} "
                         f"test patients of {len(patients)}), got {n_folds}")
    final_count = _count(final_val, n_dev, "final_val")
    if final_count >= n_dev:
        raise ValueError(f"final_val={final_val!r} takes all {n_dev} development patients for validation, "
                         f"leaving none to train the final model on")
    rng = np.random.default_rng(seed)
    order = [patients[i] for i in rng.permutation(len(patients))]
    test_patients, dev_patients = order[:test_count], order[test_count:]

    def cases_of(selected) -> tuple[str, ...]:
        chosen = set(selected)
        return tuple(i for i in ids if groups[i] in chosen)

    folds = []
    for k in range(n_folds):
        val = set(dev_patients[k::n_folds])
        folds.append(Fold(cases_of(p for p in dev_patients if p not in val), cases_of(val)))
    final_order = [dev_patients[i] for i in rng.permutation(len(dev_patients))]
    final = Fold(cases_of(final_order[final_count:]), cases_of(final_order[:final_count]))
    return Splits(cases_of(test_patients), tuple(folds), final, seed)


def save_splits(splits: Splits, path, settings: dict | None = None) -> Path:
    """Write ``splits`` to ``path`` as JSON (written to a temporary file, then renamed), with the
    ``settings`` that made them when given, so that a later run can tell whether they still apply."""
    path = Path(path)
    payload = {
        **({"settings": settings} if settings is not None else {}),
        "seed": splits.seed,
        "test": list(splits.test),
        "folds": [{"train": list(f.train), "val": list(f.val)} for f in splits.folds],
        "final": {"train": list(splits.final.train), "val": list(splits.final.val)},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(path)
    return path


def load_splits(path, case_ids: Sequence[str] | None = None) -> Splits:
    """Read ``splits.json`` and check it: folds partition the development cases, the test set
    is disjoint from them, and (given ``case_ids``) every listed case exists."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        folds = tuple(Fold(tuple(f["train"]), tuple(f["val"])) for f in payload["folds"])
        splits = Splits(tuple(payload["test"]), folds,
                        Fold(tuple(payload["final"]["train"]), tuple(payload["final"]["val"])), int(payload["seed"]),
                        payload.get("settings"))
    except FileNotFoundError:
        raise DataError(path, "splits file not found") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(path, f"not a valid splits file ({type(exc).__name__}: {exc})") from exc
    development = set(splits.development)
    if development & set(splits.test):
        raise DataError(path, f"test cases also in development: {sorted(development & set(splits.test))[:5]}")
    for k, fold in enumerate(splits.folds):
        if set(fold.train) & set(fold.val) or set(fold.train) | set(fold.val) != development:
            raise DataError(path, f"fold {k} does not partition the development cases")
    if set(splits.final.train) & set(splits.final.val):
        raise DataError(path, f"final split: cases both in train and val: "
                              f"{sorted(set(splits.final.train) & set(splits.final.val))[:5]}")
    validated = [case for fold in splits.folds for case in fold.val]
    if len(validated) != len(set(validated)):
        raise DataError(path, "a case is validated in more than one fold; the folds' val sets must be disjoint")
    if case_ids is not None:
        unknown = (development | set(splits.test)) - set(case_ids)
        if unknown:
            raise DataError(path, f"cases not in the dataset: {sorted(unknown)[:5]}")
    return splits


def read_patients(path) -> dict[str, str]:
    """``{case id: patient id}`` from a CSV with the columns ``case`` and ``patient`` (e.g. LASC
    2018's pre- and post-ablation scans of one patient), for :func:`make_splits`' ``groups``."""
    path = Path(path)
    try:
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
    except FileNotFoundError:
        raise DataError(path, "patients file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(path, f"cannot read the patients CSV ({exc})") from None
    if not rows or not {"case", "patient"} <= set(rows[0]):
        raise DataError(path, "the patients CSV needs a header with the columns case and patient, and rows")
    groups: dict[str, str] = {}
    for row in rows:
        case, patient = (row["case"] or "").strip(), (row["patient"] or "").strip()
        if not case or not patient:
            raise DataError(path, f"a row without its case or patient: {row}")
        if groups.setdefault(case, patient) != patient:
            raise DataError(path, f"case {case!r} is given two patients: {groups[case]!r} and {patient!r}")
    return groups
