"""Read and write 3D medical images (NIfTI with nibabel, NRRD with pynrrd).

Whatever the file's own axis order, arrays come back in (z, y, x) order — slices first —
and geometry as one 4x4 ``affine`` that maps a (z, y, x) voxel index to a world position
in RAS+ millimetres. Spacing (mm, z/y/x), origin and direction are read off that affine,
and writing uses it, so a read → write round trip keeps shape, values, spacing, origin
and direction exactly.

World convention: RAS+ (NIfTI's); NRRD files in LPS (the usual ``left-posterior-superior``
space) are converted on read and written back in LPS. A NIfTI file written ``like`` a NIfTI
volume reuses that volume's header geometry (qform and sform with their codes), so the
output's header matches the input's bit for bit.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from c2w_fast.errors import DataError
from c2w_fast.ops import _volume

NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")

# (z, y, x) index <-> file (i, j, k) = (x, y, z) index: reverse the three axes.
_REVERSE_AXES = np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=float)
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# NIfTI's spatial unit code; "unknown" is read as mm, as every viewer does
_NIFTI_UNITS_TO_MM = {"meter": 1000.0, "mm": 1.0, "micron": 1e-3}
# NRRD units are free text; these are the spellings of the units scanners and toolkits write.
_NRRD_UNITS_TO_MM = {"": 1.0, "mm": 1.0, "millimeter": 1.0, "millimeters": 1.0, "cm": 10.0, "m": 1000.0,
                     "meter": 1000.0, "meters": 1000.0, "um": 1e-3, "\u00b5m": 1e-3, "micron": 1e-3, "microns": 1e-3}
_NRRD_SPACES_TO_RAS = {
    "right-anterior-superior": np.eye(4), "RAS": np.eye(4),
    "left-posterior-superior": _LPS_TO_RAS, "LPS": _LPS_TO_RAS,
    "left-anterior-superior": np.diag([-1.0, 1.0, 1.0, 1.0]), "LAS": np.diag([-1.0, 1.0, 1.0, 1.0]),
}


@dataclass(frozen=True)
class Volume:
    """A 3D image: ``array`` in (z, y, x) order and ``affine`` from (z, y, x) index to RAS mm."""

    array: np.ndarray
    affine: np.ndarray
    path: Path | None = field(default=None, compare=False)
    header: Any = field(default=None, compare=False, repr=False)  # nibabel header of a NIfTI file

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm, (z, y, x)."""
        return voxel_size(self.affine)

    @property
    def origin(self) -> tuple[float, float, float]:
        """RAS position (mm) of the centre of voxel (0, 0, 0)."""
        return tuple(float(v) for v in self.affine[:3, 3])

    @property
    def direction(self) -> np.ndarray:
        """3x3 matrix whose columns are the unit RAS directions of the z, y and x axes."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)


def affine_from_spacing(spacing, origin=(0.0, 0.0, 0.0), direction=None) -> np.ndarray:
    """The (z, y, x)-index affine of a grid with ``spacing`` (mm, z/y/x), RAS ``origin`` and
    ``direction`` (columns: unit RAS vectors of z, y, x; default: z→S, y→A, x→R)."""
    spacing = check_spacing(spacing)
    direction = np.array([[0, 0, 1], [0, 1, 0], [1, 0, 0]], float) if direction is None else np.asarray(direction, float)
    affine = np.eye(4)
    affine[:3, :3] = direction * np.asarray(spacing)
    affine[:3, 3] = origin
    return affine


SPACING_RTOL = 1e-3  # voxel sizes within 0.1 % are the same grid (float32 headers round them)
ORIGIN_ATOL_MM = 1e-2


def voxel_size(affine) -> tuple[float, float, float]:
    """The voxel size (mm) along each index axis of a (z, y, x) index → RAS mm ``affine``: its columns' lengths."""
    return tuple(float(s) for s in np.linalg.norm(np.asarray(affine, dtype=float)[:3, :3], axis=0))


def same_spacing(a, b) -> bool:
    return bool(np.allclose(a, b, rtol=SPACING_RTOL, atol=0))


def check_same_grid(volume: Volume, reference: Volume, name: str, reference_name: str) -> None:
    """A DataError naming ``volume``'s file unless it lies on ``reference``'s grid: the same shape,
    spacing within 0.1 % and origin and directions within 0.01 mm (the same shape alone is not
    enough: a flipped or shifted file would be misread)."""
    where = f"({reference.path.name})" if reference.path is not None else "(in memory)"
    if volume.shape != reference.shape:
        raise DataError(volume.path, f"{name} shape {volume.shape} differs from {reference_name} shape "
                                     f"{reference.shape} {where}")
    if not same_spacing(volume.spacing, reference.spacing):
        raise DataError(volume.path, f"{name} spacing {_mm(volume.spacing)} differs from {reference_name} spacing "
                                     f"{_mm(reference.spacing)} {where}")
    differing = {}  # only what differs, so a shifted file's message isn't buried in two equal matrices
    if not np.allclose(volume.affine[:3, 3], reference.affine[:3, 3], rtol=0, atol=ORIGIN_ATOL_MM):
        differing["origin"] = f"{_mm(volume.origin)} vs {_mm(reference.origin)}"
    if not np.allclose(volume.affine[:3, :3], reference.affine[:3, :3], rtol=0, atol=ORIGIN_ATOL_MM):
        differing["direction"] = f"{_rounded(volume.direction)} vs {_rounded(reference.direction)}"
    if differing:
        details = ", ".join(f"{key} {values}" for key, values in differing.items())
        raise DataError(volume.path, f"{name} {' and '.join(differing)} differ{'s' if len(differing) == 1 else ''} "
                                     f"from the {reference_name}'s {where}: {details}")


def _rounded(matrix: np.ndarray) -> list:
    return (matrix.round(4) + 0.0).tolist()  # + 0.0: no "-0.0" entries


def _mm(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ") mm"


def check_spacing(spacing, name: str = "spacing") -> tuple[float, float, float]:
    """``spacing`` as three positive finite floats (z, y, x) in mm, or a clear ValueError.

    Unlike the ops (where ``None`` means 1 mm), a file's geometry needs a real spacing.
    """
    if spacing is None:
        raise ValueError(f"{name} must have 3 positive values (z, y, x) in mm, got None")
    return _volume.check_spacing(spacing, 3, name)


def is_image_name(path) -> bool:
    """Whether ``path`` ends in a NIfTI or NRRD suffix (any case)."""
    return str(path).lower().endswith(NIFTI_SUFFIXES + NRRD_SUFFIXES)


def image_format(path) -> str:
    """``"nifti"`` or ``"nrrd"`` from the file name, or a DataError."""
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise DataError(path, f"unknown image format; expected one of {NIFTI_SUFFIXES + NRRD_SUFFIXES}")


def _check_readable(path: Path) -> None:
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "the file is empty (0 bytes): an interrupted copy or download?")


def read_volume(path, *, assume_spacing=None) -> Volume:
    """Read a 3D NIfTI or NRRD file as a :class:`Volume` in (z, y, x) order.

    ``assume_spacing`` (mm, z/y/x) is used only for NRRD files that carry no spacing at
    all (some LASC 2018 files); otherwise such a file is an error.
    Raises :class:`DataError` naming the file for a missing, unreadable or non-3D file.
    """
    path = Path(path)
    fmt = image_format(path)
    _check_readable(path)
    header = None
    try:
        if fmt == "nifti":
            array, affine, header = _read_nifti(path)
        else:
            array, affine = _read_nrrd(path, assume_spacing)
    except DataError:
        raise
    except Exception as exc:  # nibabel/pynrrd/zlib raise many types for damaged files
        raise DataError(path, f"cannot read {fmt.upper()} file ({type(exc).__name__}: {exc})") from exc
    if array.dtype.kind == "c":
        raise DataError(path, f"complex voxels ({array.dtype}) are not a magnitude image; save the magnitude")
    if array.dtype.kind not in "biuf":
        raise DataError(path, f"voxels of type {array.dtype} (e.g. RGB) are not a scalar image; expected "
                              "integer, float or boolean voxels")
    _check_geometry(path, affine)
    # big-endian files come back in native byte order, which torch and the extensions need
    return Volume(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")), affine, path, header)


def check_affine(affine) -> np.ndarray:
    """``affine`` ((z, y, x) index → RAS mm) as a float 4 x 4 matrix, or a ValueError naming what is wrong:
    another shape, NaN or inf anywhere, a voxel size that is not > 0, voxel axes parallel or nearly so."""
    affine = np.asarray(affine, dtype=float)
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be a 4 x 4 matrix, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise ValueError("affine must be finite, but holds NaN or inf")
    check_spacing(voxel_size(affine), "the affine's voxel size")
    if parallel_axes(affine):
        raise ValueError("the affine's voxel axes are parallel (its direction matrix is singular)")
    return affine


def parallel_axes(affine) -> bool:
    """Whether the voxel axes of ``affine`` (each of a size > 0) are parallel or nearly so: they span no
    3D grid (a damaged header or a hand-made affine)."""
    axes = np.asarray(affine, dtype=float)[:3, :3]
    return abs(np.linalg.det(axes / np.linalg.norm(axes, axis=0))) < 1e-3


def _check_geometry(path: Path, affine: np.ndarray) -> None:
    """A DataError naming the file when its ``affine`` fails :func:`check_affine` (a damaged header)."""
    try:
        check_affine(affine)
    except ValueError as exc:
        raise DataError(path, f"the header's geometry is unusable: {exc}; rewrite the file with its true voxel "
                              "size and orientation") from exc


def read_header(path, *, assume_spacing=None) -> tuple[tuple[int, ...], tuple[float, float, float]]:
    """Shape (z, y, x) and spacing (mm) of an image file without reading its voxels."""
    shape, affine = read_geometry(path, assume_spacing=assume_spacing)
    return shape, voxel_size(affine)


def read_geometry(path, *, assume_spacing=None) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape (z, y, x) and affine (as :attr:`Volume.affine`) of an image file without reading its voxels."""
    path = Path(path)
    fmt = image_format(path)
    _check_readable(path)
    try:
        if fmt == "nifti":
            import nibabel as nib
            image = nib.load(str(path))
            shape = _squeeze_trailing(tuple(int(s) for s in image.header.get_data_shape()))[::-1]
            affine = _nifti_affine(image, path)
        else:
            import nrrd
            header = nrrd.read_header(str(path))
            shape = tuple(int(s) for s in header["sizes"])[::-1]
            affine = _nrrd_affine(header, path, assume_spacing)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(path, f"cannot read {fmt.upper()} header ({type(exc).__name__}: {exc})") from exc
    if len(shape) != 3:
        raise DataError(path, f"expected a 3D image, got shape {shape[::-1]} in file order")
    _check_geometry(path, affine)
    return shape, affine


def write_volume(path, array, affine=None, *, like: Volume | None = None, compress: bool = True) -> Path:
    """Write ``array`` (z, y, x) to NIfTI or NRRD (by suffix) with ``affine`` or ``like``'s geometry.

    Booleans are written as uint8. The parent folder is created. Returns the path.
    A NIfTI file written ``like`` a volume read from NIfTI keeps that file's qform/sform.
    The file appears whole or not at all (:func:`write_atomically`).
    """
    path = Path(path)
    fmt = image_format(path)
    suffix = str(path)[-len(next(s for s in (*NIFTI_SUFFIXES, *NRRD_SUFFIXES)[::-1]
                                 if str(path).lower().endswith(s))):]
    if suffix not in (suffix.lower(), suffix.upper()):  # nibabel lower-cases some mixed-case suffixes
        raise ValueError(f"{path}: write to a suffix in one case ({suffix.lower()} or {suffix.upper()}), "
                         "so that the file lands where asked")
    array = _storable(np.asarray(array), path)
    if array.ndim != 3:
        raise ValueError(f"array must be 3D (z, y, x), got shape {array.shape}")
    header = None
    if affine is None:
        if like is None:
            raise ValueError("write_volume needs an affine or a `like` volume for the geometry")
        if like.shape != array.shape:
            raise ValueError(f"array shape {array.shape} differs from the reference volume's {like.shape}")
        affine, header = like.affine, like.header
    affine = np.asarray(affine, dtype=float)
    if fmt == "nifti":
        return write_atomically(path, lambda target: _write_nifti(target, array, affine, header))
    return write_atomically(path, lambda target: _write_nrrd(target, array, affine, compress))


STAGING_PREFIX = ".c2w-partial-"  # write_atomically's hidden folder beside the file it writes


def write_atomically(path, write) -> Path:
    """``write(target)`` into a hidden folder beside ``path`` under ``path``'s name, then renamed over
    ``path``: a failed write never leaves a truncated file (nor a changed old one; a killed one
    may leave the hidden ``.c2w-partial-*`` folder, which the folder searches skip and a training
    removes from its fold folder when it next locks it). A symlink is
    followed (its target is replaced) and an old file's permissions are kept. Files ``write``
    puts beside its target (a detached NRRD header's data file) are moved in before it."""
    final = Path(path).resolve()
    final.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=final.parent))
    try:
        write(staging / final.name)
        if final.exists():
            shutil.copymode(final, staging / final.name)
        for companion in sorted(set(staging.iterdir()) - {staging / final.name}):
            os.replace(companion, final.parent / companion.name)
        os.replace(staging / final.name, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return Path(path)


def write_csv(path, rows: list[dict], *, columns: list[str] | None = None, float_digits: int | None = None) -> Path:
    """``rows`` as CSV, written whole or not at all (:func:`write_atomically`). Columns: ``columns``,
    else the union of the rows' keys in first-seen order; floats with ``float_digits`` significant
    digits when given."""
    columns = list(dict.fromkeys(key for row in rows for key in row)) if columns is None else columns
    form = (lambda v: f"{v:.{float_digits}g}" if isinstance(v, float) else v) if float_digits else (lambda v: v)

    def write(target):
        with open(target, "w", newline="") as handle:
            writer = csv.DictWriter(handle, columns, restval="", lineterminator="\n")
            writer.writeheader()
            writer.writerows({key: form(value) for key, value in row.items()} for row in rows)

    return write_atomically(path, write)


def _storable(array: np.ndarray, path: Path) -> np.ndarray:
    """``array`` in a type every NIfTI/NRRD reader takes: bool as uint8, float16 as float32,
    64-bit integers as int32 when their values fit (argmax gives int64 labels)."""
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.dtype == np.float16:
        return array.astype(np.float32)
    if array.dtype.kind in "iu" and array.dtype.itemsize == 8:
        info = np.iinfo(np.int32)
        if array.size and (array.min() < info.min or array.max() > info.max):
            raise ValueError(f"{path}: values [{array.min()}, {array.max()}] do not fit the int32 an image file "
                             "stores; convert the array first")
        return array.astype(np.int32)
    if array.dtype.kind not in "iuf":
        raise ValueError(f"{path}: cannot store voxels of type {array.dtype}; give integers, floats or booleans")
    return array


def _squeeze_trailing(shape: tuple[int, ...]) -> tuple[int, ...]:
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    return shape


def _read_nifti(path: Path) -> tuple[np.ndarray, np.ndarray, Any]:
    import nibabel as nib

    image = nib.load(str(path))
    array = np.asanyarray(image.dataobj)
    array = array.reshape(_squeeze_trailing(array.shape))
    if array.ndim != 3:
        raise DataError(path, f"expected a 3D image, got {array.ndim}D with shape {array.shape} in file order")
    return array.transpose(2, 1, 0), _nifti_affine(image, path), image.header


def _nifti_affine(image, path: Path) -> np.ndarray:
    """(z, y, x)-index RAS affine in mm of a nibabel image (its header's spatial unit applied)."""
    _check_nifti_voxel_size(image, path)
    to_mm = _NIFTI_UNITS_TO_MM.get(image.header.get_xyzt_units()[0], 1.0)
    return np.diag([to_mm, to_mm, to_mm, 1.0]) @ image.affine @ _REVERSE_AXES


def _check_nifti_voxel_size(image, path: Path) -> None:
    """A DataError for a zero voxel size where the geometry comes from pixdim (no sform).

    nibabel replaces a zero ``pixdim`` by 1 when it loads a header, so a file whose voxel
    size was never written would silently be read as 1 mm and every mm metric be wrong.
    """
    if image.header["sform_code"] > 0:
        return
    from nibabel.openers import ImageOpener

    with ImageOpener(str(path)) as stream:
        written = type(image.header).from_fileobj(stream, check=False)["pixdim"][1:4]
    if np.any(written == 0):
        sizes = ", ".join(f"{v:g}" for v in written)
        raise DataError(path, f"the header's voxel size (pixdim {sizes}, x/y/z) has a zero and no sform gives "
                              "the geometry; rewrite the file with its true voxel size")


def _write_nifti(path: Path, array: np.ndarray, affine: np.ndarray, like_header=None) -> None:
    import nibabel as nib

    data = array.transpose(2, 1, 0)
    if isinstance(like_header, nib.Nifti1Header):
        like_shape = tuple(like_header.get_data_shape())
        if like_shape[:3] == data.shape:  # the reference's trailing singleton axes (read_volume drops them) kept
            data = data.reshape(like_shape)
        # geometry fields (qform, sform, codes, pixdim) exactly as read; scaling and display range reset
        kind = nib.Nifti2Image if isinstance(like_header, nib.Nifti2Header) else nib.Nifti1Image
        image = kind(data, None, header=like_header.copy())
        image.header["cal_min"] = image.header["cal_max"] = 0
    else:
        file_affine = affine @ _REVERSE_AXES  # the permutation is its own inverse
        image = nib.Nifti1Image(data, file_affine)
        image.header.set_xyzt_units("mm", "sec")
        image.set_qform(file_affine, code=1)
        image.set_sform(file_affine, code=1)
    image.set_data_dtype(array.dtype)
    nib.save(image, str(path))


def _nrrd_affine(header: dict, path: Path, assume_spacing) -> np.ndarray:
    """(z, y, x)-index RAS affine from an NRRD header (file axes are x, y, z)."""
    if header.get("dimension", len(header.get("sizes", ()))) != 3:
        raise DataError(path, f"expected a 3D image, got sizes {[int(n) for n in header.get('sizes', [])]}")
    if "space directions" in header:
        rows = header["space directions"]
        if any(r is None or not np.all(np.isfinite(np.asarray(r, dtype=float))) for r in rows):
            raise DataError(path, "space directions contain a non-spatial axis; expected a 3D image")
        file_axes = np.asarray(rows, dtype=float).T  # columns: world step of file axes i, j, k
        space = header.get("space", "left-posterior-superior")
        if space not in _NRRD_SPACES_TO_RAS:
            raise DataError(path, f"unsupported NRRD space {space!r}")
        origin = np.asarray(header.get("space origin", np.zeros(3)), dtype=float)
        to_mm = _nrrd_unit_to_mm(header, "space units", path)
        affine = np.eye(4)
        affine[:3, :3] = file_axes * to_mm
        affine[:3, 3] = origin * to_mm
        affine = _NRRD_SPACES_TO_RAS[space] @ affine
        return affine @ _REVERSE_AXES
    # Without directions, ITK and Slicer place file axes i, j, k along L, P, S; so do we.
    spacings = np.asarray(header.get("spacings", [np.nan] * 3), dtype=float)
    if np.all(np.isfinite(spacings)):
        return _LPS_TO_RAS @ affine_from_spacing(tuple(spacings[::-1] * _nrrd_unit_to_mm(header, "units", path)))
    if assume_spacing is not None:
        return _LPS_TO_RAS @ affine_from_spacing(assume_spacing)
    found = f"'spacings' {spacings.tolist()}" if "spacings" in header else "no 'spacings'"
    raise DataError(path, f"NRRD header has no 'space directions' and {found}; spacing unknown")


def _nrrd_unit_to_mm(header: dict, field: str, path: Path) -> float:
    """Millimetres per unit of the header's ``field`` (one unit for all three axes; none written: mm)."""
    units = [str(u).strip().lower() for u in header.get(field, [])]
    if len(set(units)) > 1 or any(u not in _NRRD_UNITS_TO_MM for u in units):
        raise DataError(path, f"NRRD {field} {header[field]} are not one length unit this reader knows "
                              f"({', '.join(u for u in _NRRD_UNITS_TO_MM if u)})")
    return _NRRD_UNITS_TO_MM[units[0]] if units else 1.0


def _read_nrrd(path: Path, assume_spacing) -> tuple[np.ndarray, np.ndarray]:
    import nrrd

    header = nrrd.read_header(str(path))
    affine = _nrrd_affine(header, path, assume_spacing)
    array, _ = nrrd.read(str(path), index_order="C")
    return array, affine


def _write_nrrd(path: Path, array: np.ndarray, affine: np.ndarray, compress: bool) -> None:
    import nrrd

    lps = _LPS_TO_RAS @ (affine @ _REVERSE_AXES)  # LPS world of file axes (x, y, z)
    header: dict[str, Any] = {
        "space": "left-posterior-superior",
        "space directions": lps[:3, :3].T,
        "space origin": lps[:3, 3],
        "space units": ["mm", "mm", "mm"],
        "kinds": ["domain", "domain", "domain"],
        "encoding": "gzip" if compress else "raw",
    }
    nrrd.write(str(path), np.ascontiguousarray(array), header, index_order="C")
