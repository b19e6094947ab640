"""Synthetic LGE-MRI phantoms of the atria with exact labels, for tests, demos and benchmarks.

Anatomy is built from spheres and capsules whose signed distances are exact outside
each structure, so the wall — the shell ``0 <= d(cavity) < t`` — has a known local
thickness ``t`` (1.5-3 mm, varying around the atrium). A phantom holds:

* the left atrium: a two-lobed body, four pulmonary-vein stubs and the appendage;
* the right atrium with caval stubs, kept a few mm apart from the left so each wall's
  thickness stays exact;
* distractors with blood-pool intensity: the descending aorta and the left ventricle
  (with its nulled myocardium), inside a torso with lungs;
* intensities of LGE-MRI: bright blood pool (~0.6), dark nulled wall (~0.18) with a
  thin epicardial fat layer, and planted enhancement patches in the LA wall (~1.0,
  image-intensity ratio ~1.7 to the blood pool), then a smooth bias field and Rician noise.

Geometry and intensities are in mm and fractions of the blood-pool level, so any grid
works; the anatomy shrinks for fields of view smaller than the atria (``scale``). Only
sub-boxes around each structure are evaluated, which keeps a 44x640x640 case well
under 2 s on 2 cores (``python bench/run_phantom.py``).

CLI: ``python -m c2w_fast.data.phantom --layout mbas --n 12 --out /tmp/mbas_synth``.
"""
from __future__ import annotations

import argparse
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from c2w_fast.cli import INTERRUPTED, path_argument
from c2w_fast.data.io import affine_from_spacing, check_spacing, write_volume
from c2w_fast.data.layouts import (CANONICAL_LABELS, LASC_CAVITY, LASC_IMAGE, LASC_WALL, MBAS_IMAGE, MBAS_LABELS,
                                   NoLayoutError, detect_layout, discover_cases)
from c2w_fast.errors import DataError, plain_warnings

GEOMETRIES = {  # layout -> (shape, spacing) of the real datasets
    "mbas": ((44, 640, 640), (2.5, 0.625, 0.625)),
    "lasc": ((88, 640, 640), (0.625, 0.625, 0.625)),
    "nnunet": ((44, 640, 640), (2.5, 0.625, 0.625)),
}
BLOOD, WALL, ENHANCED, FAT, MYOCARDIUM = 0.6, 0.18, 1.0, 0.5, 0.12
TORSO, LUNG, AIR = 0.3, 0.06, 0.02
FAT_MM = 1.5
_BIG = np.float32(1e3)


@dataclass(frozen=True)
class Phantom:
    """One synthetic case. Arrays are (z, y, x); ``spacing`` is in mm."""

    image: np.ndarray          # float32, blood pool ~0.6 before bias and noise
    labels: np.ndarray         # uint8, canonical codes: 1 wall, 2 RA cavity, 3 LA cavity
    enhancement: np.ndarray    # bool, LA-wall voxels inside the planted LGE patches
    thickness_mm: np.ndarray | None  # float32 design thickness at wall voxels, 0 elsewhere
    spacing: tuple[float, float, float]
    blood_pool: float = BLOOD


@dataclass(frozen=True)
class _Capsule:
    """Points within ``r`` mm of the segment a-b (a sphere when a == b); coordinates (z, y, x) mm."""

    a: np.ndarray
    b: np.ndarray
    r: float

    def extent(self, pad: float) -> tuple[np.ndarray, np.ndarray]:
        return np.minimum(self.a, self.b) - self.r - pad, np.maximum(self.a, self.b) + self.r + pad

    def sdf(self, z, y, x) -> np.ndarray:
        d = self.b - self.a
        length2 = float(d @ d)
        pz, py, px = z - self.a[0], y - self.a[1], x - self.a[2]
        if length2 > 0:
            h = np.clip((pz * d[0] + py * d[1] + px * d[2]) / length2, 0.0, 1.0)
            pz, py, px = pz - h * d[0], py - h * d[1], px - h * d[2]
        return (np.sqrt(pz * pz + py * py + px * px) - self.r).astype(np.float32)

    def distance_to(self, other: "_Capsule") -> float:
        """Surface-to-surface distance (negative when overlapping), by sampling both axes."""
        t = np.linspace(0, 1, 33)[:, None]
        p, q = self.a + t * (self.b - self.a), other.a + t * (other.b - other.a)
        return float(np.min(np.linalg.norm(p[:, None] - q[None], axis=-1))) - self.r - other.r

    def shifted(self, offset: np.ndarray) -> "_Capsule":
        return _Capsule(self.a + offset, self.b + offset, self.r)


def _sphere(c, r) -> _Capsule:
    c = np.asarray(c, float)
    return _Capsule(c, c, float(r))


def _capsule(a, b, r) -> _Capsule:
    return _Capsule(np.asarray(a, float), np.asarray(b, float), float(r))


class _Grid:
    """Voxel <-> mm mapping of the volume, centred on its middle voxel."""

    def __init__(self, shape, spacing):
        self.shape = tuple(int(n) for n in shape)
        self.spacing = np.asarray(spacing, float)
        self.centre = (np.asarray(self.shape) - 1) / 2

    def axes_mm(self, box: tuple[slice, ...]):
        """Broadcastable (z, y, x) mm coordinates of the voxels in ``box``."""
        return tuple(((np.arange(s.start, s.stop) - c) * h).astype(np.float32).reshape(
            [-1 if a == axis else 1 for a in range(3)])
            for axis, (s, c, h) in enumerate(zip(box, self.centre, self.spacing)))

    def box(self, low_mm, high_mm) -> tuple[slice, ...] | None:
        low = np.floor(np.asarray(low_mm) / self.spacing + self.centre).astype(int)
        high = np.ceil(np.asarray(high_mm) / self.spacing + self.centre).astype(int) + 1
        low, high = np.maximum(low, 0), np.minimum(high, self.shape)
        return None if np.any(high <= low) else tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def _union_sdf(grid: _Grid, box, parts, reach: float) -> np.ndarray:
    """min over ``parts`` of their SDF inside ``box``; exact where it is below ``reach`` mm."""
    field = np.full([s.stop - s.start for s in box], _BIG, np.float32)
    for part in parts:
        sub = grid.box(*part.extent(reach))
        if sub is None:
            continue
        sub = tuple(slice(max(s.start, b.start), min(s.stop, b.stop)) for s, b in zip(sub, box))
        if any(s.stop <= s.start for s in sub):
            continue
        local = tuple(slice(s.start - b.start, s.stop - b.start) for s, b in zip(sub, box))
        np.minimum(field[local], part.sdf(*grid.axes_mm(sub)), out=field[local])
    return field


def _anatomy(rng: np.random.Generator, scale: float, wall_max: float):
    """Primitives (mm, z/y/x) of the left atrium, right atrium and distractors."""
    j = lambda spread: rng.uniform(-spread, spread, 3)  # noqa: E731
    la_c = (np.array([0.0, 12.0, 12.0]) + j(4) * np.array([0.5, 1, 1])) * scale
    la = [_sphere(la_c, rng.uniform(18, 22) * scale),
          _sphere(la_c + (np.array([1, 6, 12]) + j(3)) * scale, rng.uniform(12, 16) * scale)]
    for zs in (1, -1):  # pulmonary-vein stubs: superior/inferior, left/right
        for xs in (1, -1):
            start = la_c + np.array([7 * zs, 8, 11 * xs]) * scale
            end = la_c + (np.array([15 * zs, 29, 33 * xs]) + j(3)) * scale
            la.append(_capsule(start, end, rng.uniform(6.0, 8.0) * scale))
    la.append(_capsule(la_c + np.array([5, -11, 17]) * scale, la_c + (np.array([12, -29, 29]) + j(3)) * scale,
                       rng.uniform(5.5, 7.5) * scale))  # appendage
    ra_c = la_c + (np.array([-3, -21, -58]) + j(3)) * scale
    ra = [_sphere(ra_c, rng.uniform(19, 23) * scale),
          _capsule(ra_c + np.array([11, 0, -3]) * scale, ra_c + np.array([47, 3, -6]) * scale, 11 * scale),
          _capsule(ra_c + np.array([-11, 0, -3]) * scale, ra_c + np.array([-47, 1, -4]) * scale, 12.5 * scale)]
    ra = _move_apart(ra, la, gap=2 * wall_max + 2 * FAT_MM + 2.0, direction=ra_c - la_c)
    aorta = _capsule(la_c + np.array([-90, 45, 11]) * scale, la_c + np.array([90, 45, 11]) * scale,
                     rng.uniform(12, 16) * scale)
    aorta = _move_apart([aorta], la + ra, gap=wall_max + 4.0, direction=np.array([0.0, 1.0, 0.0]))[0]
    lv = _sphere(la_c + (np.array([-36, -53, 22]) + j(4)) * scale, rng.uniform(28, 35) * scale)
    lv = _move_apart([lv], la + ra, gap=wall_max + 10.0, direction=lv.a - la_c)[0]
    return la_c, la, ra_c, ra, aorta, lv


def _move_apart(moving, fixed, gap: float, direction: np.ndarray):
    """Translate the ``moving`` group along ``direction`` until it is ``gap`` mm from ``fixed``."""
    unit = direction / np.linalg.norm(direction)
    shortfall = gap - min(m.distance_to(f) for m in moving for f in fixed)
    if shortfall <= 0:
        return moving
    return [m.shifted(unit * (shortfall + 0.5)) for m in moving]


def _thickness_field(grid: _Grid, box, centre, wall_mm, phase: float) -> np.ndarray:
    """Design wall thickness (mm) varying smoothly with the azimuth around ``centre``."""
    z, y, x = grid.axes_mm(box)
    angle = np.arctan2(y - centre[1], x - centre[2]) + 0.02 * (z - centre[0])
    low, high = wall_mm
    return (low + (high - low) * (0.5 + 0.5 * np.sin(2 * angle + phase))).astype(np.float32)


def _torso(grid: _Grid, rng: np.random.Generator, scale: float) -> np.ndarray:
    """In-plane torso/lung/air intensities with a smooth texture, (y, x)."""
    _, y, x = grid.axes_mm((slice(0, 1), slice(0, grid.shape[1]), slice(0, grid.shape[2])))
    y, x = y[0], x[0]
    body = ((y / (150 * scale)) ** 2 + (x / (185 * scale)) ** 2) < 1
    lungs = np.zeros_like(body)
    for side in (1, -1):
        lungs |= (((y - 15 * scale) / (75 * scale)) ** 2 + ((x - side * 95 * scale) / (55 * scale)) ** 2) < 1
    texture = sum(rng.uniform(0.01, 0.03) * np.cos(rng.uniform(0.02, 0.08) * (y * np.cos(a) + x * np.sin(a))
                                                    + rng.uniform(0, 2 * np.pi))
                  for a in rng.uniform(0, np.pi, 4))
    return np.where(body, np.where(lungs, LUNG, TORSO + texture), AIR).astype(np.float32)


def _bias_and_noise(image: np.ndarray, grid: _Grid, rng: np.random.Generator, noise: float, bias: float) -> None:
    """Multiply a smooth separable bias field, then add Rician noise of ``noise`` × blood pool, in place."""
    factors = []
    for n in grid.shape:
        u = np.linspace(-1, 1, n)
        factors.append(np.exp(bias * (rng.uniform(-1, 1) * u + rng.uniform(-0.5, 0.5) * u * u)).astype(np.float32))
    plane = factors[1][:, None] * factors[2][None, :]
    for k in range(grid.shape[0]):
        image[k] *= factors[0][k] * plane
    if noise <= 0:
        return
    sigma = np.float32(noise * BLOOD)
    real = rng.standard_normal(image.shape, dtype=np.float32)
    real *= sigma
    real += image
    np.square(real, out=real)
    imag = rng.standard_normal(image.shape, dtype=np.float32)
    imag *= sigma
    np.square(imag, out=imag)
    real += imag
    np.sqrt(real, out=image)


def auto_scale(shape, spacing) -> float:
    """Anatomy scale that fits the atria into the field of view (1.0 for real geometries)."""
    fov = np.asarray(shape) * np.asarray(spacing)
    return float(min(1.0, fov[0] / 55.0, fov[1] / 180.0, fov[2] / 180.0))


def make_phantom(shape=GEOMETRIES["mbas"][0], spacing=GEOMETRIES["mbas"][1], *, seed: int = 0,
                 label_right_atrium: bool = True, wall_mm=(1.5, 3.0), n_patches: int = 3,
                 noise: float = 0.06, bias: float = 0.2, scale: float | None = None,
                 with_thickness: bool = False) -> Phantom:
    """A synthetic LGE-MRI case of the atria; identical for identical arguments.

    Args:
        shape: (z, y, x) voxels. spacing: (z, y, x) mm.
        seed: picks anatomy, patches, bias and noise.
        label_right_atrium: MBAS-style labels (wall of both atria, RA, LA); False gives
            LASC-style labels (LA cavity and LA wall only; the RA is still in the image).
        wall_mm: (min, max) wall thickness in mm.
        n_patches: LGE enhancement patches planted on the LA wall.
        noise: Rician noise sigma as a fraction of the blood-pool intensity.
        bias: strength of the smooth multiplicative bias field (0 = none).
        scale: anatomy size factor; default :func:`auto_scale`.
        with_thickness: also return the per-voxel design thickness of the wall.
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"shape must be 3 positive sizes (z, y, x), got {shape}")
    spacing = check_spacing(spacing)
    if not 0 < wall_mm[0] <= wall_mm[1]:
        raise ValueError(f"wall_mm must be (min, max) with 0 < min <= max, got {wall_mm}")
    if not (np.isfinite(noise) and noise >= 0 and np.isfinite(bias) and bias >= 0):
        raise ValueError(f"noise and bias must be finite numbers >= 0, got {noise} and {bias}")
    rng = np.random.default_rng(seed)
    grid = _Grid(shape, spacing)
    scale = auto_scale(shape, spacing) if scale is None else float(scale)
    la_c, la, ra_c, ra, aorta, lv = _anatomy(rng, scale, wall_mm[1])

    image = np.empty(shape, np.float32)
    image[:] = _torso(grid, rng, scale)[None]
    labels = np.zeros(shape, np.uint8)
    enhancement = np.zeros(shape, bool)
    thickness = np.zeros(shape, np.float32) if with_thickness else None

    reach = wall_mm[1] + FAT_MM + 1.0
    parts = la + ra + [aorta, lv]
    lows, highs = zip(*(p.extent(reach if p is not lv else 9.0) for p in parts))
    box = grid.box(np.min(lows, axis=0), np.max(highs, axis=0))
    if box is not None:
        sub = image[box]
        for vessel, shell, shell_value in ((aorta, 2.0, WALL), (lv, 8.0, MYOCARDIUM)):
            d = _union_sdf(grid, box, [vessel], shell + 1.0)
            sub[(d >= 0) & (d < shell)] = shell_value
            sub[d < 0] = BLOOD
        atria = []
        for centre, atrium, phase in ((la_c, la, rng.uniform(0, 2 * np.pi)), (ra_c, ra, rng.uniform(0, 2 * np.pi))):
            d = _union_sdf(grid, box, atrium, reach)
            t = _thickness_field(grid, box, centre, wall_mm, phase)
            atria.append((d, t))
            sub[(d >= t) & (d < t + FAT_MM)] = FAT
        (d_la, t_la), (d_ra, t_ra) = atria
        la_cavity, ra_cavity = d_la < 0, (d_ra < 0) & (d_la >= 0)
        la_wall = (d_la >= 0) & (d_la < t_la)
        ra_wall = (d_ra >= 0) & (d_ra < t_ra) & ~la_wall
        patches = _patches(grid, box, la_wall, rng, n_patches, scale)
        sub[la_wall | ra_wall] = WALL
        sub[patches] = ENHANCED
        sub[la_cavity | ra_cavity] = BLOOD
        lab = labels[box]
        lab[la_wall | (ra_wall & label_right_atrium)] = CANONICAL_LABELS["wall"]
        if label_right_atrium:
            lab[ra_cavity] = CANONICAL_LABELS["RA"]
        lab[la_cavity] = CANONICAL_LABELS["LA"]
        enhancement[box] = patches
        if thickness is not None:
            thickness[box] = np.where(la_wall, t_la, np.where(ra_wall & label_right_atrium, t_ra, 0))
        sigma = [0.4 / h if 0.4 / h >= 0.3 else 0 for h in spacing]  # partial-volume blur, 0.4 mm
        image[box] = ndimage.gaussian_filter(sub, sigma, mode="nearest")
    _bias_and_noise(image, grid, rng, noise, bias)
    return Phantom(image, labels, enhancement, thickness, spacing)


def _patches(grid: _Grid, box, la_wall: np.ndarray, rng, n: int, scale: float) -> np.ndarray:
    """LA-wall voxels within 4-8 mm (× scale) of ``n`` random wall points."""
    hits = np.argwhere(la_wall)
    if n == 0 or len(hits) == 0:
        return np.zeros_like(la_wall)
    offset = np.array([s.start for s in box])
    centres = [_sphere((hits[i] + offset - grid.centre) * grid.spacing, rng.uniform(4, 8) * scale)
               for i in rng.choice(len(hits), size=min(n, len(hits)), replace=False)]
    return la_wall & (_union_sdf(grid, box, centres, 0.0) < 0)


def _to_stored_dtype(image: np.ndarray, layout: str) -> np.ndarray:
    """LASC images are stored as uint8 (as in the challenge data), the others as int16."""
    if layout == "lasc":
        return np.clip(np.rint(image * 200), 0, 255).astype(np.uint8)
    return np.clip(np.rint(image * 1000), 0, np.iinfo(np.int16).max).astype(np.int16)


def _case_files(out: Path, layout: str, i: int) -> tuple[str, dict[str, Path]]:
    """Case id and ``{role: file}`` (image, cavity, wall or labels) of the ``i``-th case of a layout."""
    if layout == "lasc":
        case_id = f"phantom{i:03d}"
        return case_id, {role: out / case_id / name for role, name in
                         (("image", LASC_IMAGE), ("cavity", LASC_CAVITY), ("wall", LASC_WALL))}
    if layout == "mbas":
        case_id = f"MBAS_{i + 1:03d}"
        return case_id, {"image": out / case_id / f"{case_id}{MBAS_IMAGE}",
                         "labels": out / case_id / f"{case_id}{MBAS_LABELS}"}
    case_id = f"phantom_{i:03d}"
    return case_id, {"image": out / "imagesTr" / f"{case_id}_0000.nii.gz",
                     "labels": out / "labelsTr" / f"{case_id}.nii.gz"}


def _check_no_other_layout(out: Path, layout: str) -> None:
    """A ValueError when ``out`` holds a dataset of another layout: the two would make one folder that
    the other tools refuse (a folder of several layouts)."""
    if not out.is_dir():
        return
    try:
        found = detect_layout(out)
    except NoLayoutError:
        return
    except DataError as exc:  # already several layouts
        raise ValueError(str(exc)) from None
    if found != layout:
        raise ValueError(f"{out} holds a {found} dataset; write the {layout} phantoms to another folder")


def _check_resolved(phantom: Phantom, layout: str, shape, spacing) -> None:
    """A ValueError when the grid cannot hold the atria: a label class without a voxel (voxels larger than
    the atria) or a wall filling most of the volume (a field of view smaller than them)."""
    extent = tuple(round(n * float(h), 1) for n, h in zip(shape, spacing))
    counts = np.bincount(phantom.labels.ravel(), minlength=4)
    classes = [name for name, code in CANONICAL_LABELS.items() if layout != "lasc" or name != "RA"]
    missing = [name for name in classes if not counts[CANONICAL_LABELS[name]]]
    why = (f"no {', '.join(missing)} voxel" if missing else "the wall fills most of the volume"
           if counts[CANONICAL_LABELS["wall"]] > phantom.labels.size / 2 else None)
    if why is not None:
        raise ValueError(f"{shape} voxels of {tuple(float(h) for h in spacing)} mm (a field of view of {extent} mm) "
                         f"cannot hold the atria: {why}; give --shape and --spacing of a heart MRI (e.g. "
                         "--shape 40 96 96 --spacing 1.25 1.25 1.25)")


def _earlier_cases(out: Path, layout: str, written: list[str]) -> list[str]:
    """The ids of the ``layout`` cases in ``out`` besides the ``written`` ones (an nnU-Net folder has
    none before its dataset.json is written)."""
    if layout == "nnunet" and not (out / "dataset.json").is_file():
        return []
    return sorted({case.id for case in discover_cases(out, layout, require_labels=False)} - set(written))


def write_dataset(out, layout: str = "mbas", n: int = 12, *, shape=None, spacing=None, seed: int = 0,
                  progress: bool = True, overwrite: bool = False, **phantom_kwargs) -> list[str]:
    """Write ``n`` phantom cases to ``out`` in a dataset layout; returns the case ids.

    ``lasc``: ``<case>/lgemri.nrrd`` (uint8), ``laendo.nrrd`` and ``lawall.nrrd`` (0/255);
    ``mbas``: ``MBAS_XXX/MBAS_XXX_gt.nii.gz`` (the image, as released) and ``MBAS_XXX_label.nii.gz`` (0-3);
    ``nnunet``: ``imagesTr/``, ``labelsTr/`` and ``dataset.json``. Case i uses seed ``seed + i``.
    A FileExistsError before anything is written when a file of these exists (the MBAS names
    are the real release's), unless ``overwrite``.
    """
    from tqdm import tqdm

    if layout not in GEOMETRIES:
        raise ValueError(f"layout must be one of {sorted(GEOMETRIES)}, got {layout!r}")
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    default_shape, default_spacing = GEOMETRIES[layout]
    shape = tuple(shape or default_shape)
    spacing = check_spacing(spacing or default_spacing)
    out = Path(out)
    cases = [_case_files(out, layout, i) for i in range(n)]
    existing = [path for _, files in cases for path in files.values() if path.exists()]
    existing += [out / "dataset.json"] if layout == "nnunet" and (out / "dataset.json").exists() else []
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists ({len(existing)} of the files to write do); "
                              "write the phantoms to another folder")
    _check_no_other_layout(out, layout)
    affine = affine_from_spacing(spacing, origin=tuple(-(np.asarray(shape) - 1) / 2 * spacing)[::-1])
    for i, (_, files) in enumerate(tqdm(cases, desc=f"phantoms ({layout})", unit="case", disable=not progress)):
        phantom = make_phantom(shape, spacing, seed=seed + i, label_right_atrium=layout != "lasc", **phantom_kwargs)
        _check_resolved(phantom, layout, shape, spacing)
        write_volume(files["image"], _to_stored_dtype(phantom.image, layout), affine)
        if layout == "lasc":
            write_volume(files["cavity"], (phantom.labels == CANONICAL_LABELS["LA"]) * np.uint8(255), affine)
            write_volume(files["wall"], (phantom.labels == CANONICAL_LABELS["wall"]) * np.uint8(255), affine)
        else:
            write_volume(files["labels"], phantom.labels, affine)
    written = [case_id for case_id, _ in cases]
    others = _earlier_cases(out, layout, written)
    if others:  # --overwrite with fewer cases than an earlier run wrote
        warnings.warn(f"{out} also holds {len(others)} case(s) of an earlier run ({', '.join(others[:3])}"
                      f"{', ...' * (len(others) > 3)}): the dataset is all {n + len(others)}; delete them or write "
                      "to an empty folder for these alone", stacklevel=2)
    if layout == "nnunet":
        (out / "dataset.json").write_text(json.dumps({
            "channel_names": {"0": "LGE-MRI"},
            "labels": {"background": 0, **CANONICAL_LABELS},
            "numTraining": n + len(others),
            "file_ending": ".nii.gz",
        }, indent=2) + "\n")
    return written


def main(argv=None) -> None:
    plain_warnings()
    parser = argparse.ArgumentParser(prog="python -m c2w_fast.data.phantom",
                                     description="Write a synthetic LGE-MRI dataset of the atria in a dataset layout.")
    parser.add_argument("--layout", choices=sorted(GEOMETRIES), default="mbas",
                        help="dataset layout and geometry to write (default mbas)")
    parser.add_argument("--n", type=int, default=12, help="number of cases (default 12)")
    parser.add_argument("--out", required=True, type=path_argument, help="output folder")
    parser.add_argument("--shape", type=int, nargs=3, metavar=("Z", "Y", "X"),
                        help="voxels; default: the layout's real geometry (MBAS 44 640 640, LASC 88 640 640)")
    parser.add_argument("--spacing", type=float, nargs=3, metavar=("Z", "Y", "X"),
                        help="mm; default: the layout's (MBAS 2.5 0.625 0.625, LASC 0.625 isotropic)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first case; case i uses seed + i (default 0)")
    parser.add_argument("--noise", type=float, default=0.06, help="Rician sigma / blood pool (default 0.06)")
    parser.add_argument("--overwrite", action="store_true", help="replace case files that exist in --out")
    args = parser.parse_args(argv)
    if not (math.isfinite(args.noise) and args.noise >= 0) or args.seed < 0:
        parser.error(f"--noise must be a finite number >= 0 and --seed >= 0, got {args.noise} and {args.seed}")
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file; give a folder (created when missing)")
    try:
        ids = write_dataset(args.out, args.layout, args.n, shape=args.shape, spacing=args.spacing,
                            seed=args.seed, noise=args.noise, overwrite=args.overwrite)
    except ValueError as exc:
        parser.error(str(exc))
    except OSError as exc:  # a file in the way: existing cases, --out under a file
        parser.error(f"--out {args.out}: {exc.strerror or exc}" if not isinstance(exc, FileExistsError)
                     else f"--out {args.out}: {exc} (or --overwrite)")
    except KeyboardInterrupt:
        parser.exit(INTERRUPTED, "\ninterrupted: the last case may lack some of its files; run the command again with "
                         "--overwrite\n")
    print(f"wrote {len(ids)} {args.layout} case{'s' * (len(ids) != 1)} to {args.out}")


if __name__ == "__main__":
    main()
