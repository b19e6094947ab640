"""Dataset layouts on disk (LASC 2018, MBAS, nnU-Net raw): discovery and validated loading.

Every layout yields :class:`Case` records; :func:`load_case` reads one and returns the
image with a single label map in the project's canonical codes (MBAS's): 0 background,
1 atrial wall, 2 right-atrium cavity, 3 left-atrium cavity, both in the canonical voxel
arrangement that training works in (:mod:`c2w_fast.data.orientation`). nnU-Net raw datasets are mapped
to these codes by the label names of their ``dataset.json`` (:data:`LABEL_NAMES`).

=========  ===================================================  =============================
layout     files                                                 labels
=========  ===================================================  =============================
lasc       ``<case>/lgemri.nrrd``, ``<case>/laendo.nrrd``,       cavity 0/1 or 0/255 → 3 (LA);
           optional ``<case>/lawall.nrrd``                       wall → 1 (wins on overlap)
mbas       ``MBAS_XXX/MBAS_XXX_gt.nii.gz`` (the image, as       0..3 as above
           released), ``MBAS_XXX/MBAS_XXX_label.nii.gz``
nnunet     ``imagesTr/<case>_0000<ext>``, ``labelsTr/<case><ext>``  by name in ``dataset.json``
=========  ===================================================  =============================
"""
from __future__ import annotations

import json
import os
import re
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from c2w_fast.data.io import Volume, check_same_grid, is_image_name, read_geometry, read_volume, voxel_size
from c2w_fast.data.orientation import Reorientation
from c2w_fast.errors import DataError

CANONICAL_LABELS = {"wall": 1, "RA": 2, "LA": 3}
_CHANNEL = re.compile(r"_\d{4}$")  # nnU-Net's image channel suffix, _0000 for the first
LAYOUTS = ("lasc", "mbas", "nnunet")

LASC_IMAGE, LASC_CAVITY, LASC_WALL = "lgemri.nrrd", "laendo.nrrd", "lawall.nrrd"
LASC_SPACING = (0.625, 0.625, 0.625)  # used only when an NRRD header carries no spacing
MBAS_LABEL_VALUES = (0, 1, 2, 3)
READ_AHEAD = min(4, os.cpu_count() or 1)  # cases read in the background while the caller works on one
# the MBAS 2024 release names the image of case MBAS_XXX "MBAS_XXX_gt.nii.gz" and its labels "MBAS_XXX_label.nii.gz"
MBAS_IMAGE, MBAS_LABELS = "_gt.nii.gz", "_label.nii.gz"


@dataclass(frozen=True)
class Case:
    """One patient's files. ``label_paths`` maps a label role to its file; ``spacing`` is the voxel size
    (mm) along the canonical (z, y, x) axes (:mod:`c2w_fast.data.orientation`), read off the header."""

    id: str
    image_path: Path
    label_paths: dict[str, Path]
    spacing: tuple[float, float, float]
    layout: str


@dataclass(frozen=True)
class CaseData:
    """A loaded case: the image and its canonical label map (``None`` without labels)."""

    case: Case
    image: Volume
    labels: np.ndarray | None


class NoLayoutError(DataError):
    """A folder in none of the dataset layouts (callers may then read it as a plain folder of files)."""


def _check_folder(root: Path) -> None:
    """A DataError unless ``root`` is a folder: a file given for the dataset is named as one."""
    if root.is_file():
        example = f" (e.g. {root.parent.parent} for a LASC case's image)" if root.name == LASC_IMAGE else ""
        raise DataError(root, f"is a file, not a dataset folder: give the folder of the cases{example}")
    if not root.is_dir():
        raise DataError(root, "dataset folder not found")


def detect_layout(root) -> str:
    """The layout of the dataset folder ``root``, or a DataError saying what was expected."""
    root = Path(root)
    _check_folder(root)
    found = [layout for layout, present in (
        ("nnunet", lambda: (root / "dataset.json").is_file() and (root / "imagesTr").is_dir()),
        ("lasc", lambda: bool(_named(root, LASC_IMAGE))),
        ("mbas", lambda: bool(_mbas_images(root)))) if present()]
    if len(found) > 1:  # one layout's cases would be dropped silently
        raise DataError(root, f"holds cases of several layouts ({', '.join(found)}); give a folder of one "
                              "layout (training can instead name the layout to read with data.layout)")
    if not found:
        raise NoLayoutError(root, "no dataset layout recognised; expected LASC 2018 (<case>/lgemri.nrrd), "
                                  "MBAS (MBAS_XXX/MBAS_XXX_gt.nii.gz image + MBAS_XXX_label.nii.gz labels, "
                                  "as released) or nnU-Net raw (dataset.json + imagesTr/)")
    return found[0]


def discover_cases(root, layout: str = "auto", *, require_labels: bool = True) -> list[Case]:
    """All cases under ``root`` in the given layout (``auto`` detects it), sorted by id.

    With ``require_labels`` a case whose required label file is missing is an error naming
    that file. A folder with no case at all is an error too.
    """
    root = _named_root(root)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    _check_folder(root)
    found = _find(root, layout)
    if not found:
        raise DataError(root, f"no cases found for layout {layout!r}")
    folders = {image.parent for _, image, _ in found} if layout != "nnunet" else set()
    for _, image, _ in found:
        outer = next((folder for folder in image.parent.parents if folder in folders), None)
        if outer is not None:
            raise DataError(image, f"a case inside the case folder {outer}: a copy there would be read as "
                                   "another case (and could land in training and test); move it out")
    ids = [case_id for case_id, _, _ in found]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise DataError(root, f"case ids occur more than once: {duplicates}")
    orphans = _labels_without_image(root, layout) if require_labels else []  # training needs every image
    if orphans:
        label, image = orphans[0]
        more = f" (and {len(orphans) - 1} more)" if len(orphans) > 1 else ""
        raise DataError(label, f"label file without its image {image.name}{more}; a case missing its image "
                               "would drop out of the dataset silently")
    cases = []
    for case_id, image_path, label_paths in sorted(found):
        present = {role: path for role, path in label_paths.items() if path.is_file()}
        if require_labels:
            for role in _required_roles(layout):
                if role not in present:
                    what = "label file" if role == "labels" else f"{role} label file"
                    raise DataError(label_paths[role], f"{what} missing for case {case_id!r}")
        cases.append(Case(case_id, image_path, present, _canonical_spacing(image_path, layout), layout))
    return cases


def _canonical_spacing(path: Path, layout: str) -> tuple[float, float, float]:
    _, affine = read_geometry(path, assume_spacing=LASC_SPACING if layout == "lasc" else None)
    return Reorientation.of(affine).spacing(voxel_size(affine))


def _find(root: Path, layout: str) -> list[tuple[str, Path, dict[str, Path]]]:
    """``(case id, image, {role: label file})`` of the cases of ``layout`` under ``root``; for nnU-Net
    a DataError when files of imagesTr / labelsTr miss its naming (they would drop out unseen)."""
    if layout == "nnunet":
        _check_nnunet_names(root)
    return {"lasc": _find_lasc, "mbas": _find_mbas, "nnunet": _find_nnunet}[layout](root)


def _named_root(root) -> Path:
    """``root`` as a path whose folders have names: ``.`` and ``..`` resolved, as a case named after
    its folder (LASC, MBAS) would otherwise be named ``""`` or ``".."``."""
    root = Path(root)
    return root.resolve() if root.name in ("", "..") else root


def find_images(root, layout: str = "auto") -> list[tuple[str, Path]]:
    """``(case id, image file)`` of every case under ``root``, sorted by id, reading no file
    (prediction: labels may be absent and a damaged image should fail alone, not the listing).
    A case with label files but no image is listed with the image path it lacks, so that it
    fails as a case rather than dropping out unseen."""
    root = _named_root(root)
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'auto' or one of {LAYOUTS}, got {layout!r}")
    found = {(case_id, image) for case_id, image, _ in _find(root, layout)}
    found |= {(image.name.rsplit("_0000", 1)[0] if layout == "nnunet" else image.parent.name, image)
              for _, image in _labels_without_image(root, layout)}
    return sorted(found)


def load_case(case: Case) -> CaseData:
    """Read and validate one case; every problem is a DataError naming the file.

    Checks: the image is 3D and finite; each label file has the image's shape and grid
    (spacing within 0.1 %, origin and direction within 0.01 mm); label values are the
    layout's (LASC 0/1 or 0/255, MBAS 0-3, nnU-Net those of ``dataset.json``). Both come back
    rearranged to the canonical voxel arrangement (:class:`Reorientation`).
    """
    image = read_volume(case.image_path, assume_spacing=_assumed_spacing(case))
    _check_finite(image)
    canonical = Reorientation.of(image.affine)
    if not case.label_paths:
        return CaseData(case, canonical.volume(image), None)
    labels = _canonical_labels(case, _label_volumes(case, grid=image))
    return CaseData(case, canonical.volume(image), canonical.apply(labels))


def load_cases(cases: Iterable[Case], *, read_ahead: int = READ_AHEAD) -> Iterator[CaseData]:
    """:func:`load_case` of each case, in order, the next ``read_ahead`` read in background threads
    meanwhile: decompression and the numpy checks release the GIL, so reading overlaps the caller's
    work and uses more than one core. The first failing case raises when its turn comes."""
    cases = iter(cases)
    with ThreadPoolExecutor(max_workers=max(1, read_ahead), thread_name_prefix="c2w-read") as pool:
        pending = deque(pool.submit(load_case, case) for case in islice(cases, max(1, read_ahead)))
        try:
            while pending:
                data = pending.popleft().result()
                following = next(cases, None)
                if following is not None:
                    pending.append(pool.submit(load_case, following))
                yield data
        finally:  # a caller that stops early waits for no more than the reads under way
            for future in pending:
                future.cancel()


def load_labels(case: Case) -> Volume:
    """The case's canonical label map on its label files' grid, without reading the image.

    For evaluation, which needs no image: the label files are checked against each other
    (same grid) and for the layout's values, as in :func:`load_case`. Label files on different
    grids are checked against the image instead (read only then), which tells which one is off.
    """
    if not case.label_paths:
        raise DataError(case.image_path, f"no label file for case {case.id!r}")
    volumes = _label_volumes(case, grid=None)
    first = next(iter(volumes.values()))
    return Volume(_canonical_labels(case, volumes), first.affine, first.path)


def _assumed_spacing(case: Case):
    return LASC_SPACING if case.layout == "lasc" else None


def _label_volumes(case: Case, grid: Volume | None) -> dict[str, Volume]:
    """The case's label files, each on ``grid`` (default: the first label file's, or the image's
    when the label files disagree: a shifted cavity file would otherwise be blamed on the wall
    file) with allowed values."""
    volumes = {role: read_volume(path, assume_spacing=_assumed_spacing(case)) for role, path in case.label_paths.items()}
    if grid is None and not _one_grid(volumes.values()) and case.image_path.is_file():
        grid = read_volume(case.image_path, assume_spacing=_assumed_spacing(case))
    reference, what = (grid, "image") if grid is not None else (next(iter(volumes.values())), "label")
    for role, volume in volumes.items():
        check_same_grid(volume, reference, "label", what)
        _check_values(volume, _allowed_values(case, role))
    return volumes


def _one_grid(volumes: Iterable[Volume]) -> bool:
    """Whether ``volumes`` all lie on the first one's grid (:func:`check_same_grid`)."""
    first, *others = volumes
    try:
        for volume in others:
            check_same_grid(volume, first, "label", "label")
    except DataError:
        return False
    return True


def _canonical_labels(case: Case, volumes: dict[str, Volume]) -> np.ndarray:
    if case.layout == "lasc":
        if "cavity" not in volumes:
            raise DataError(case.image_path.parent / LASC_CAVITY, f"cavity label file missing for case {case.id!r} "
                                                                  "(LASC: the wall alone gives no label map)")
        # uint8 throughout: an int64 intermediate of a 640x640x88 map cost 4x the time
        labels = np.where(volumes["cavity"].array > 0, np.uint8(CANONICAL_LABELS["LA"]), np.uint8(0))
        if "wall" in volumes:
            np.copyto(labels, np.uint8(CANONICAL_LABELS["wall"]), where=volumes["wall"].array > 0)
    elif case.layout == "nnunet":
        codes = nnunet_canonical_codes(case.image_path.parent.parent / "dataset.json")
        lookup = np.zeros(max(codes) + 1, np.uint8)
        lookup[list(codes)] = list(codes.values())
        array = volumes["labels"].array  # integers index as they are: an int64 copy cost 8 bytes a voxel
        if array.dtype.kind not in "iu":  # whole-number floats (or bools): the narrowest type holding every code
            array = array.astype(np.result_type(np.min_scalar_type(min(codes)), np.min_scalar_type(max(codes))))
        labels = lookup[array]
    else:
        labels = volumes["labels"].array.astype(np.uint8, copy=False)
    return np.ascontiguousarray(labels)


def layout_labels(root, layout: str) -> dict[str, int]:
    """``{name: canonical code}`` of the labels a dataset of ``layout`` at ``root`` can hold:
    LASC has no RA; an nnU-Net dataset those its ``dataset.json`` names."""
    if layout == "lasc":
        return {name: code for name, code in CANONICAL_LABELS.items() if name != "RA"}
    if layout == "nnunet":
        codes = set(nnunet_canonical_codes(Path(root) / "dataset.json").values())
        return {name: code for name, code in CANONICAL_LABELS.items() if code in codes}
    return dict(CANONICAL_LABELS)


def unknown_label_codes(case: Case) -> set[int]:
    """Canonical codes that ``case``'s label files leave unknown rather than empty: the wall of a
    LASC case without its optional ``lawall.nrrd`` (its label map then holds no wall voxel, which
    says nothing about the case's wall). MBAS and nnU-Net cases have one file holding every label."""
    return {CANONICAL_LABELS["wall"]} if case.layout == "lasc" and "wall" not in case.label_paths else set()


def _required_roles(layout: str) -> tuple[str, ...]:
    return ("cavity",) if layout == "lasc" else ("labels",)


def _find_lasc(root: Path):
    return [(image.parent.name, image, {"cavity": _in_folder(image.parent, LASC_CAVITY),
                                        "wall": _in_folder(image.parent, LASC_WALL)})
            for image in _named(root, LASC_IMAGE)]


def _labels_without_image(root: Path, layout: str) -> list[tuple[Path, Path]]:
    """``(label file, the image it lacks)`` for every label file whose case has no image."""
    if layout == "lasc":
        pairs = [(label, _in_folder(label.parent, LASC_IMAGE))
                 for label in _named(root, LASC_CAVITY, LASC_WALL)]
    elif layout == "mbas":
        pairs = [(label, _in_folder(label.parent, f"{label.parent.name}{MBAS_IMAGE}"))
                 for label in files_under(root) if label.name.lower() == f"{label.parent.name}{MBAS_LABELS}".lower()]
    else:
        pairs = [(label, image) for _, label, image in _nnunet_labels(root, "labelsTr")]
    return sorted((label, image) for label, image in pairs if not image.is_file())


def files_under(root) -> list[Path]:
    """Every file under ``root``, sorted: symlinked folders followed (once each), hidden files and
    folders (``.*``, macOS ``._*``) skipped."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:  # a link back up the tree
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder) / name for name in files if not name.startswith(".")]
    return sorted(found)


def _named(root: Path, *names: str) -> list[Path]:
    """The files under ``root`` called one of ``names``, in any letter case (one walk)."""
    wanted = {name.lower() for name in names}
    return [path for path in files_under(root) if path.name.lower() in wanted]


def _in_folder(folder: Path, name: str) -> Path:
    """``folder / name``, spelled as the file in ``folder`` is (any letter case) when there is one."""
    return next((p for p in folder.iterdir() if p.name.lower() == name.lower()), folder / name) \
        if folder.is_dir() else folder / name


def _mbas_images(root: Path) -> list[Path]:
    return [p for p in files_under(root) if p.name.lower() == f"{p.parent.name}{MBAS_IMAGE}".lower()]


def _find_mbas(root: Path):
    return [(image.parent.name, image, {"labels": _in_folder(image.parent, f"{image.parent.name}{MBAS_LABELS}")})
            for image in _mbas_images(root)]


def _read_dataset_json(root: Path) -> dict:
    path = root / "dataset.json"
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(path, "dataset.json not found") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(path, f"cannot read dataset.json ({exc})") from exc
    if not isinstance(meta, dict):
        raise DataError(path, f"dataset.json must hold a JSON object, got {type(meta).__name__}")
    channels = meta.get("channel_names", meta.get("modality", {"0": "image"}))
    if len(channels) != 1:
        raise DataError(path, f"c2w_fast reads single-channel datasets; dataset.json lists {len(channels)} channels")
    return meta


def _nnunet_ending(root: Path) -> str:
    """The ``file_ending`` of the nnU-Net dataset at ``root`` (``.nii.gz`` when dataset.json names none)."""
    return _read_dataset_json(root).get("file_ending", ".nii.gz")


def nnunet_label_cases(folder) -> list[Case]:
    """The label files of an nnU-Net dataset's ``labelsTr`` or ``labelsTs`` ``folder`` as cases of that
    dataset, so that :func:`load_labels` maps their values by its ``dataset.json``; [] for a folder
    that is not one (evaluation against ``labelsTs`` compared the files' own values otherwise)."""
    folder = _named_root(folder)
    root = folder.parent
    if not folder.name.startswith("labels") or not (root / "dataset.json").is_file():
        return []
    _check_nnunet_names(root, (folder.name,))
    return [Case(case_id, image, {"labels": label}, _canonical_spacing(label, "nnunet"), "nnunet")
            for case_id, label, image in _nnunet_labels(root, folder.name)]


def _nnunet_labels(root: Path, folder: str) -> list[tuple[str, Path, Path]]:
    """``(case id, label file, the image it belongs to)`` for the label files of ``root / folder``:
    ``labelsTr/<case><file_ending>`` goes with ``imagesTr/<case>_0000<file_ending>`` (``labelsTs`` with
    ``imagesTs``), whether that image exists or not."""
    ending = _nnunet_ending(root)
    images = root / folder.replace("labels", "images", 1)
    return [(label.name[: -len(ending)], label, images / f"{label.name[: -len(ending)]}_0000{ending}")
            for label in sorted((root / folder).glob(f"*{ending}")) if not label.name.startswith(".")]


def _check_nnunet_names(root: Path, folders=("imagesTr", "labelsTr")) -> None:
    """A DataError listing the image files of the ``images*`` folders not named ``<case>_XXXX<file_ending>``
    (channel XXXX) and those of the ``labels*`` folders not ending in ``file_ending``: another ending
    (``.nii`` among ``.nii.gz``) or Medical Decathlon names without ``_0000`` would not be found as cases."""
    ending = _nnunet_ending(root)
    misnamed = [path for folder in folders if (root / folder).is_dir() for path in sorted((root / folder).iterdir())
                if path.is_file() and is_image_name(path) and not path.name.startswith(".")
                and not (path.name.endswith(ending)
                         and (folder.startswith("labels") or _CHANNEL.search(path.name[:-len(ending)])))]
    if misnamed:
        listed = ", ".join(f"{path.parent.name}/{path.name}" for path in misnamed[:3])
        raise DataError(root, f"{len(misnamed)} file(s) miss nnU-Net's naming for dataset.json's file_ending "
                              f"{ending!r} (images <case>_0000{ending}, labels <case>{ending}): {listed}"
                              f"{' ...' * (len(misnamed) > 3)}; they would drop out of the dataset: rename them "
                              f"or move them out")


def _find_nnunet(root: Path):
    ending = _nnunet_ending(root)
    suffix = f"_0000{ending}"
    return [(image.name[: -len(suffix)], image, {"labels": root / "labelsTr" / (image.name[: -len(suffix)] + ending)})
            for image in (root / "imagesTr").glob(f"*{suffix}") if not image.name.startswith(".")]


def _allowed_values(case: Case, role: str) -> tuple[int, ...]:
    if case.layout == "lasc":
        return (0, 1, 255)
    if case.layout == "mbas":
        return MBAS_LABEL_VALUES
    return nnunet_label_values(case.image_path.parent.parent / "dataset.json")


def nnunet_label_values(path: Path) -> tuple[int, ...]:
    """The label values ``dataset.json``'s ``labels`` allow: nnU-Net v2 ``{name: value}`` or
    ``{name: [values]}`` (regions), or v1 ``{"value": name}``; a DataError naming the file otherwise."""
    labels = _read_dataset_json(path.parent).get("labels")
    if not isinstance(labels, dict) or not labels:
        raise DataError(path, f"dataset.json needs a 'labels' table such as {{\"background\": 0, \"LA\": 1}}, "
                              f"got {labels!r}")
    values = set()
    for key, value in labels.items():
        if isinstance(value, int) and not isinstance(value, bool):
            values.add(value)
        elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            values.update(value)
        elif isinstance(value, str) and key.lstrip("-").isdigit():  # nnU-Net v1: {"1": "wall"}
            values.add(int(key))
        else:
            raise DataError(path, f"dataset.json labels: {key!r}: {value!r} is not a label value (an int, a list "
                                  "of ints, or a name under a numeric key)")
    if min(values) < 0:
        raise DataError(path, f"dataset.json labels: label values must be >= 0, got {min(values)}")
    return tuple(sorted(values))


def _check_finite(image: Volume) -> None:
    if np.issubdtype(image.array.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(image.array)))
        if bad:
            raise DataError(image.path, f"image has {bad} NaN/inf voxels")


def values_outside(array: np.ndarray, allowed) -> np.ndarray:
    """The distinct values of a label map that are not among ``allowed``, sorted; empty when every
    voxel holds one. Counting each allowed value is a few fast passes, where a histogram of the
    whole map cost several times more; the other values are listed only when there are some."""
    if sum(np.count_nonzero(array == value) for value in allowed) == array.size:
        return np.empty(0, array.dtype)
    return np.unique(array[~np.isin(array, list(allowed))])


def check_whole_labels(array: np.ndarray, path) -> None:
    """A DataError naming ``path`` unless a float ``array`` holds finite whole numbers: a label
    map, not an intensity image (integer and bool arrays always are)."""
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array)
    if not finite.all():
        raise DataError(path, f"{int((~finite).sum())} non-finite values (NaN or inf): not a label map")
    fractional = array != np.round(array)
    if fractional.any():
        raise DataError(path, f"{int(fractional.sum())} values are not whole numbers (e.g. "
                              f"{float(array[fractional][0]):g}): not a label map; give the segmentation")


def _check_values(label: Volume, allowed: tuple[int, ...]) -> None:
    """A DataError naming the file unless every voxel holds one of ``allowed``."""
    unexpected = values_outside(label.array, allowed)
    if not len(unexpected):
        return
    check_whole_labels(label.array, label.path)
    raise DataError(label.path, f"unexpected label values {[int(v) for v in unexpected[:10]]}; expected a subset of "
                                f"{list(allowed)}")


# dataset.json label names (lower case, "_" and "-" read as spaces) -> canonical code
LABEL_NAMES = {
    "background": 0,
    "wall": 1, "atrial wall": 1, "la wall": 1, "left atrial wall": 1, "left atrium wall": 1,
    "ra": 2, "right atrium": 2, "ra cavity": 2, "right atrial cavity": 2, "right atrium cavity": 2,
    "la": 3, "left atrium": 3, "la cavity": 3, "left atrial cavity": 3, "left atrium cavity": 3, "cavity": 3,
}


def nnunet_canonical_codes(path: Path) -> dict[int, int]:
    """``{file value: canonical code}`` from the label names of ``dataset.json`` at ``path``; a
    DataError naming the file for a name it cannot place or for region labels (lists of values)."""
    nnunet_label_values(path)  # the table's form checked
    codes = {}
    for key, value in _read_dataset_json(path.parent)["labels"].items():
        if isinstance(value, list):
            raise DataError(path, f"dataset.json labels: {key!r} is a region ({value}); c2w_fast needs one value "
                                  "per label (background, wall, RA, LA)")
        name, number = (value, int(key)) if isinstance(value, str) else (key, value)
        code = LABEL_NAMES.get(" ".join(name.lower().replace("_", " ").replace("-", " ").split()))
        if code is None:
            raise DataError(path, f"dataset.json label {name!r} (value {number}) is not an atrial label c2w_fast "
                                  "knows; name the labels background, wall, RA and LA (or e.g. 'left atrium', "
                                  "'LA cavity', 'atrial wall')")
        codes[number] = code
    return codes
