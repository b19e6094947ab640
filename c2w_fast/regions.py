"""Atrial wall regions for clinical summaries: wall/cavity masks from label files and six sectors around the LA.

**Sectors.** Each wall voxel goes to the sector of the patient direction in which it lies
from the LA centroid (the mean position of the LA-cavity voxels): with ``w`` the voxel's
world offset from the centroid in RAS+ mm (through the image's affine, so the file's
orientation does not matter), the sector is the largest of ``|w_R|, |w_A|, |w_S|`` with
its sign — ``right``/``left`` (for the LA: septal/lateral), ``anterior``/``posterior``,
``superior``/``inferior`` (roof/floor). Sector codes are 1..6 in :data:`SECTORS` order.

**Masks from files** (the CLIs of :mod:`c2w_fast.thickness` and :mod:`c2w_fast.fibrosis`):
the wall is the voxels of ``--wall`` with one of ``--wall-label`` (default: nonzero), the
cavity those of ``--cavity`` with one of ``--cavity-label`` (default: nonzero) that are not
wall. When both options name the same file the defaults are the canonical codes: wall 1,
cavity 2 and 3. When the cavity holds both the RA (2) and the LA (3) codes, the RA is one
chamber and the rest of the cavity the other (for the septum's thickness); else the cavity is
one chamber (an LA labelled in parts stays one). The LA (the centroid, the fibrosis blood
pool): the cavity voxels labelled 3 when the cavity holds several labels, 3 among them; else
the whole cavity. Label files must hold finite whole numbers (an intensity image given as a
label file is refused).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from c2w_fast.cli import INTERRUPTED, may_write_in, nearest_existing, path_argument
from c2w_fast.data.io import (Volume, affine_from_spacing, check_affine, check_same_grid, image_format, is_image_name,
                              read_volume, same_spacing, voxel_size)
from c2w_fast.data.layouts import CANONICAL_LABELS, check_whole_labels
from c2w_fast.data.plausibility import IMAGE_VALUES, sampled_values
from c2w_fast.errors import DataError
from c2w_fast.ops._volume import check_mask

SECTORS = ("right", "left", "anterior", "posterior", "superior", "inferior")


@dataclass
class AtrialMasks:
    """Checked wall, cavity (minus the wall) and LA masks as torch tensors on one device."""

    wall: torch.Tensor
    cavity: torch.Tensor
    la_cavity: torch.Tensor
    affine: np.ndarray  # (z, y, x) index -> RAS mm
    numpy: bool         # the caller passed numpy arrays: results go back as numpy

    @property
    def spacing(self) -> tuple[float, float, float]:
        return voxel_size(self.affine)

    def sectors(self) -> torch.Tensor:
        return wall_sectors(self.wall, la_centroid(self.la_cavity), self.affine)

    def out(self, tensor: torch.Tensor):
        """A result in the caller's kind."""
        return tensor.cpu().numpy() if self.numpy else tensor


def _grid_affine(spacing, affine) -> np.ndarray:
    """The (z, y, x) index → RAS mm affine from ``affine`` or ``spacing``; both must agree when both are given."""
    if affine is None:
        if spacing is None:
            raise ValueError("need the spacing (z, y, x) in mm or the affine of the masks' grid")
        return affine_from_spacing(spacing)
    affine = check_affine(affine)
    if spacing is not None and not same_spacing(voxel_size(affine), spacing):
        raise ValueError(f"spacing {tuple(spacing)} disagrees with the affine's voxel size "
                         f"{tuple(np.round(voxel_size(affine), 6))}: give one of them")
    return affine


def atrial_masks(wall, cavity, spacing=None, *, affine=None, la_cavity=None) -> AtrialMasks:
    """Validate (z, y, x) masks of one shape, take cavity voxels that are also wall as wall, and
    the grid from ``affine`` or ``spacing`` (mm; then z → S, y → A, x → R); ``la_cavity``
    defaults to the cavity. A ValueError names an empty or misshapen mask."""
    wall_mask, cavity_mask = check_mask(wall, "wall", (3,)), check_mask(cavity, "cavity", (3,))
    masks = {"cavity": cavity_mask}
    if la_cavity is not None:
        masks["la_cavity"] = check_mask(la_cavity, "la_cavity", (3,))
    for name, mask in masks.items():
        if tuple(mask.shape) != tuple(wall_mask.shape):
            raise ValueError(f"wall and {name} must have the same shape, got {tuple(wall_mask.shape)} and "
                             f"{tuple(mask.shape)}")
    affine = _grid_affine(spacing, affine)
    w = torch.as_tensor(wall_mask)
    c = torch.as_tensor(cavity_mask).to(w.device) & ~w
    if not w.any():
        raise ValueError("the wall mask is empty")
    if not c.any():
        hint = ("; every cavity voxel is also wall: for one label map pass wall=labels == 1, cavity=labels >= 2"
                if torch.as_tensor(cavity_mask).any() else "")
        raise ValueError(f"the cavity mask is empty (outside the wall){hint}")
    la = c if la_cavity is None else torch.as_tensor(masks["la_cavity"]).to(w.device) & c
    if not la.any():
        raise ValueError("the LA cavity is empty (outside the wall)")
    return AtrialMasks(w, c, la, affine, isinstance(wall_mask, np.ndarray))


def la_centroid(la_cavity) -> np.ndarray:
    """(z, y, x) voxel position of the centroid of a non-empty LA-cavity mask."""
    points = torch.nonzero(torch.as_tensor(la_cavity)).double()
    if len(points) == 0:
        raise ValueError("the LA cavity is empty: no centroid to place the sectors around")
    return points.mean(0).cpu().numpy()


def wall_sectors(wall, centroid, affine) -> torch.Tensor:
    """Sector code (1..6, :data:`SECTORS`; 0 outside the wall) of every voxel of ``wall`` (z, y, x)."""
    wall = torch.as_tensor(wall)
    points = torch.nonzero(wall)
    offsets = (points.double() - torch.as_tensor(centroid, dtype=torch.float64, device=points.device))
    world = offsets @ torch.as_tensor(np.asarray(affine, float)[:3, :3].T, device=points.device)  # RAS mm
    axis = world.abs().argmax(1)
    negative = world.gather(1, axis[:, None])[:, 0] < 0
    sectors = torch.zeros(wall.shape, dtype=torch.uint8, device=wall.device)
    sectors[tuple(points.T)] = (1 + 2 * axis + negative.long()).to(torch.uint8)
    return sectors


def region_values(wall, sectors, *maps) -> list[tuple[str, list[torch.Tensor]]]:
    """``("wall", values)`` then ``(sector name, values)`` for every sector, ``values`` the 1-D values of each
    of ``maps`` at the region's voxels: gathered once at the wall (``sectors`` are 0 elsewhere), so that a
    summary makes no full-volume copy per region."""
    wall = torch.as_tensor(wall)
    codes = torch.as_tensor(sectors)[wall]
    values = [torch.as_tensor(m)[wall] for m in maps]
    return [(name, [v[codes == code] if code else v for v in values]) for code, name in enumerate(("wall", *SECTORS))]


def report(rows: list[dict], describe) -> int:
    """A CLI's end: ``describe(row)`` printed per row; exit status 0 (also when a reader such as
    ``head`` closed the pipe early: the outputs are written by then)."""
    try:
        for row in rows:
            print(describe(row))
        sys.stdout.flush()
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
    return 0


def interrupted() -> int:
    """A CLI's end on Ctrl-C: one line instead of a traceback; exit status :data:`~c2w_fast.cli.INTERRUPTED`."""
    print("\ninterrupted: each output is written whole or not at all; run the command again for all of them",
          file=sys.stderr)
    return INTERRUPTED


# --- masks from label files ---------------------------------------------------------------------

@dataclass
class WallMasks:
    """Boolean (z, y, x) masks read from label files, on one grid, and that grid's volume."""

    wall: np.ndarray
    cavity: np.ndarray
    la_cavity: np.ndarray
    chambers: np.ndarray | None  # uint8 labels of the cavity (one per chamber), 0 elsewhere; None unless asked
    grid: Volume


def parse_values(text: str | None, option: str) -> tuple[int, ...] | None:
    """``"2,3"`` → (2, 3); None stays None (= nonzero)."""
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{option} must be comma-separated integers such as 2,3, got {text!r}") from None
    if not values:
        raise ValueError(f"{option} must name at least one label value, got {text!r}")
    return values


def _select(volume: Volume, values) -> np.ndarray:
    return volume.array != 0 if values is None else np.isin(volume.array, values)


def _check_canonical(volume: Volume) -> None:
    """A DataError unless a one-file label map read with the default codes holds only 0..3: an
    integer-typed scan (many LGE images are) would otherwise be read as labels."""
    low, high = volume.array.min(), volume.array.max()
    if low < 0 or high > max(CANONICAL_LABELS.values()):
        raise DataError(volume.path, f"holds values from {low:g} to {high:g}, but a label map of both masks holds "
                                     "0 background, 1 wall, 2 RA, 3 LA: is it an image? give the segmentation, or "
                                     "name its codes with --wall-label and --cavity-label")


def _chamber_labels(cavity: np.ndarray, labels: np.ndarray, present) -> np.ndarray:
    """The cavity's chambers as uint8 labels, 0 elsewhere: the RA 2 and the rest (the LA and any parts of it
    labelled apart) 1 when the cavity's values ``present`` hold both codes; else the whole cavity 1."""
    chambers = cavity.astype(np.uint8)
    if CANONICAL_LABELS["LA"] in present and CANONICAL_LABELS["RA"] in present:
        chambers[cavity & (labels == CANONICAL_LABELS["RA"])] = 2
    return chambers


def _check_not_image(volume: Volume, option: str) -> None:
    """A DataError when a label file read as "nonzero" (no ``--*-label`` given) holds the many values of an
    intensity image: its nonzero voxels would be nearly the whole volume."""
    values = sampled_values(volume.array)
    if len(values) > IMAGE_VALUES:
        raise DataError(volume.path, f"holds {len(values)} distinct values in a sample of its voxels, from "
                                     f"{values[0]:g} to {values[-1]:g}: an image, not a label map? give {option} "
                                     "the segmentation")


def _whole_map_hint(wall_volume: Volume, wall_values) -> str:
    """Why a wall file can swallow the cavity: a label map of several codes read as one mask."""
    codes = np.unique(wall_volume.array)
    codes = codes[codes != 0]
    if wall_values is not None or len(codes) < 2:
        return ""
    shown = ", ".join(f"{c:g}" for c in codes[:8]) + (f", ... ({len(codes)} codes)" if len(codes) > 8 else "")
    return (f"; every nonzero voxel of {wall_volume.path.name} counts as wall, and it holds the codes "
            f"{shown}: is it a label map of both masks? name the wall's code with "
            f"--wall-label (e.g. --wall-label {CANONICAL_LABELS['wall']})")


def read_wall_masks(wall_path, cavity_path, wall_values=None, cavity_values=None, *, chambers=False) -> WallMasks:
    """Wall, cavity and LA masks (and with ``chambers`` the chamber labels) from label files (module
    docstring); DataError for a bad file or grid."""
    wall_volume = read_volume(wall_path)
    same = Path(cavity_path).resolve() == Path(wall_path).resolve()
    cavity_volume = wall_volume if same else read_volume(cavity_path)
    check_same_grid(cavity_volume, wall_volume, "cavity", "wall")
    for volume in ((wall_volume,) if same else (wall_volume, cavity_volume)):  # one file: checked once
        check_whole_labels(volume.array, volume.path)
    if same and wall_values is None and cavity_values is None:
        _check_canonical(wall_volume)
    elif not same:
        for volume, values, option in ((wall_volume, wall_values, "--wall"),
                                       (cavity_volume, cavity_values, "--cavity")):
            if values is None:
                _check_not_image(volume, option)
    if same:
        wall_values = wall_values or (CANONICAL_LABELS["wall"],)
        cavity_values = cavity_values or (CANONICAL_LABELS["RA"], CANONICAL_LABELS["LA"])
    wall = _select(wall_volume, wall_values)
    cavity = _select(cavity_volume, cavity_values) & ~wall
    if not wall.any():
        raise DataError(wall_path, f"no wall voxels (values {wall_values or 'nonzero'})")
    if not cavity.any():
        raise DataError(cavity_path, f"no cavity voxels outside the wall (values {cavity_values or 'nonzero'})"
                                     f"{_whole_map_hint(wall_volume, wall_values)}")
    present = np.unique(cavity_volume.array[cavity])
    la_code = CANONICAL_LABELS["LA"]
    la_cavity = cavity & (cavity_volume.array == la_code) if len(present) > 1 and la_code in present else cavity
    chamber_map = _chamber_labels(cavity, cavity_volume.array, present) if chambers else None
    return WallMasks(wall, cavity, la_cavity, chamber_map, wall_volume)


def mask_parser(prog: str, doc: str) -> argparse.ArgumentParser:
    """A CLI's parser (description: ``doc``'s first paragraph, epilog: the rest after the usage)
    with the mask options ``--wall``, ``--cavity``, ``--wall-label``, ``--cavity-label``, ``--device``."""
    paragraphs = doc.split("\n\n")
    parser = argparse.ArgumentParser(prog=prog, description=paragraphs[0], epilog="\n\n".join(paragraphs[2:]),
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--wall", required=True, type=path_argument, help="label file holding the wall")
    parser.add_argument("--cavity", required=True, type=path_argument,
                        help="label file holding the cavity (may be --wall)")
    parser.add_argument("--wall-label", help="wall values in --wall, e.g. 1 (default: nonzero; 1 if one file)")
    parser.add_argument("--cavity-label",
                        help="cavity values in --cavity, e.g. 2,3 (default: nonzero; 2,3 if one file)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the computation runs (auto: a GPU when there is one)")
    return parser


def masks_from_arguments(args, names=("wall", "cavity", "la_cavity")) -> tuple[WallMasks, dict[str, torch.Tensor]]:
    """The masks the options name, and those of ``names`` as tensors on ``--device``."""
    from c2w_fast.infer import resolve_device

    device = resolve_device(args.device)
    masks = read_wall_masks(args.wall, args.cavity, parse_values(args.wall_label, "--wall-label"),
                            parse_values(args.cavity_label, "--cavity-label"), chambers="chambers" in names)
    return masks, {name: torch.from_numpy(getattr(masks, name)).to(device) for name in names}


def check_outputs(outputs: dict[str, Path | None], inputs: dict[str, Path], volumes=("--out",)) -> None:
    """Before any work: a ValueError for an output that is an input file or another output, is a
    folder, has a file where its folder should be or a folder this user cannot write in, or has no
    image suffix (``volumes``) or one (the others: CSV tables)."""
    taken: dict[Path, str] = {}
    for option, path in inputs.items():
        taken[path.resolve()] = f"{taken[path.resolve()]} and {option}" if path.resolve() in taken else option
    for option, path in outputs.items():
        if path is None:
            continue
        if path.resolve() in taken:
            raise ValueError(f"{option} {path} is also {taken[path.resolve()]}: it would be overwritten; "
                             "write the output elsewhere")
        taken[path.resolve()] = option
        if path.is_dir():
            raise ValueError(f"{option} {path} is a folder, not a file")
        blocker = nearest_existing(path.parent)
        if not blocker.is_dir():
            raise ValueError(f"{option} {path}: {blocker} is a file, not a folder")
        if not may_write_in(blocker):
            raise ValueError(f"{option} {path}: no permission to write in {blocker}")
        if option in volumes:
            image_format(path)
        elif is_image_name(path):
            raise ValueError(f"{option} {path} is an image file name, but {option} writes a CSV table "
                             f"(e.g. {path.name.split('.')[0]}.csv)")
