"""Fibrosis burden of the atrial wall from LGE intensities: image-intensity ratio, label map and percentages.

    python -m c2w_fast.fibrosis --image lge.nii.gz --wall pred.nii.gz --cavity pred.nii.gz --out fibrosis.nii.gz

**Definition.** The image-intensity ratio of a wall voxel is ``IIR = I(v) / mean(I over
the blood pool)``; the blood pool is the LA cavity (the whole cavity unless told which part
is the LA) eroded by one voxel (a ball of radius 1 voxel: the 6-neighbourhood), which keeps
wall partial volume out of the mean — the whole LA cavity when nothing is left after
erosion. The LA alone, as in the IIR literature, also keeps the coil's intensity bias
across the RA out of the mean. Non-finite intensities in the wall or the blood pool are
refused. A wall voxel is *fibrosis* when
``IIR >= fibrosis`` (default 1.2) and *dense scar* when ``IIR >= dense`` (default 1.32;
dense scar is also fibrosis). Burden = 100 · voxels above a threshold / wall voxels (%),
over the whole wall and each sector of :mod:`c2w_fast.regions`.

**Label map.** 0 outside the wall, 1 wall below the fibrosis threshold, 2 fibrosis below
the dense threshold, 3 dense scar.
"""
from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass

import numpy as np
import torch

from c2w_fast.cli import path_argument
from c2w_fast.data.io import check_same_grid, read_volume, write_csv, write_volume
from c2w_fast.data.plausibility import label_map_values
from c2w_fast.errors import DataError, plain_warnings
from c2w_fast.ops import binary_erosion
from c2w_fast.regions import (atrial_masks, check_outputs, interrupted, mask_parser, masks_from_arguments,
                              region_values, report)

FIBROSIS_IIR, DENSE_SCAR_IIR = 1.2, 1.32
HEALTHY, FIBROSIS, DENSE_SCAR = 1, 2, 3


@dataclass
class Fibrosis:
    """Fibrosis of one wall: per-voxel IIR and classes (of the masks' kind), blood-pool mean, burdens (%)."""

    iir: np.ndarray | torch.Tensor     # float32 (z, y, x), 0 outside the wall
    labels: np.ndarray | torch.Tensor  # uint8: 0 outside, 1 wall, 2 fibrosis, 3 dense scar
    sectors: np.ndarray | torch.Tensor  # uint8 sector codes (c2w_fast.regions.SECTORS)
    blood_pool_mean: float

    def summary(self) -> list[dict]:
        """Rows ``region, voxels, fibrosis_percent, dense_scar_percent, mean_iir`` for the wall and each sector."""
        labels, rows = torch.as_tensor(self.labels), []
        for name, (classes, iir) in region_values(labels > 0, self.sectors, labels, self.iir):
            n = len(classes)
            share = (lambda k: 100.0 * int(torch.count_nonzero(classes >= k)) / n if n else float("nan"))
            rows.append({"region": name, "voxels": n, "fibrosis_percent": share(FIBROSIS),
                         "dense_scar_percent": share(DENSE_SCAR),
                         "mean_iir": float(iir.double().mean()) if n else float("nan")})
        return rows

    @property
    def fibrosis_percent(self) -> float:
        return self.summary()[0]["fibrosis_percent"]

    @property
    def dense_scar_percent(self) -> float:
        return self.summary()[0]["dense_scar_percent"]


def blood_pool(cavity):
    """The cavity eroded by one voxel, or the cavity itself when the erosion leaves nothing."""
    core = binary_erosion(cavity, 1)
    return core if core.any() else cavity


def _intensities(image, mask: torch.Tensor) -> torch.Tensor:
    """float32 intensities of ``image`` (numpy, or torch on any device) at ``mask``'s voxels, on the mask's
    device: gathered where the image lies, so that the whole volume is neither copied to float nor moved."""
    if isinstance(image, torch.Tensor):
        return image[mask.to(image.device)].float().to(mask.device)
    return torch.from_numpy(np.asarray(image)[mask.cpu().numpy()].astype(np.float32)).to(mask.device)


def fibrosis_burden(image, wall, cavity, spacing=None, *, affine=None, fibrosis: float = FIBROSIS_IIR,
                    dense: float = DENSE_SCAR_IIR, la_cavity=None) -> Fibrosis:
    """IIR, classes and burden of ``wall`` in ``image`` (module docstring).

    Args:
        image: (z, y, x) LGE intensities (numpy, or torch; moved to the masks' device).
        wall, cavity: (z, y, x) masks; cavity voxels that are also wall count as wall.
        spacing, affine: the grid, which orients the sectors; see :func:`c2w_fast.regions.atrial_masks`.
        fibrosis, dense: IIR thresholds, 0 < fibrosis <= dense.
        la_cavity: the LA cavity: its blood pool normalises the IIR and its centroid centres the
            sectors; default ``cavity``.
    """
    if not 0 < fibrosis <= dense:
        raise ValueError(f"thresholds must satisfy 0 < fibrosis <= dense, got fibrosis={fibrosis}, dense={dense}")
    masks = atrial_masks(wall, cavity, spacing, affine=affine, la_cavity=la_cavity)
    w = masks.wall
    if tuple(np.shape(image)) != tuple(w.shape):
        raise ValueError(f"image must be (z, y, x) of the masks' shape {tuple(w.shape)}, got {tuple(np.shape(image))}")
    wall_values, pool_values = _intensities(image, w), _intensities(image, blood_pool(masks.la_cavity))
    for name, values in (("wall", wall_values), ("blood pool", pool_values)):
        bad = int(torch.count_nonzero(~torch.isfinite(values)))
        if bad:
            raise ValueError(f"the image has {bad} non-finite values (NaN or inf) in the {name}")
    mean = float(pool_values.double().mean())
    if not mean > 0:
        raise ValueError(f"the blood-pool mean intensity must be positive, got {mean}")
    ratio = wall_values / mean
    classes = torch.full_like(ratio, HEALTHY, dtype=torch.uint8)
    classes[ratio >= fibrosis] = FIBROSIS
    classes[ratio >= dense] = DENSE_SCAR
    iir = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
    iir[w] = ratio
    labels = torch.zeros(w.shape, dtype=torch.uint8, device=w.device)
    labels[w] = classes
    return Fibrosis(masks.out(iir), masks.out(labels), masks.out(masks.sectors()), mean)


def main(argv=None) -> int:
    plain_warnings()
    parser = mask_parser("python -m c2w_fast.fibrosis", __doc__)
    parser.add_argument("--image", required=True, type=path_argument, help="LGE-MRI image the masks were drawn on")
    parser.add_argument("--out", required=True, type=path_argument,
                        help="label map to write: 1 wall, 2 fibrosis, 3 dense scar")
    parser.add_argument("--csv", type=path_argument, help="summary CSV (whole wall and sectors)")
    parser.add_argument("--iir-map", type=path_argument, help="also write the image-intensity ratio of the wall voxels")
    parser.add_argument("--fibrosis", type=float, default=FIBROSIS_IIR, help="IIR threshold of fibrosis (1.2)")
    parser.add_argument("--dense", type=float, default=DENSE_SCAR_IIR, help="IIR threshold of dense scar (1.32)")
    args = parser.parse_args(argv)
    if not 0 < args.fibrosis <= args.dense:
        parser.error(f"thresholds must satisfy 0 < --fibrosis <= --dense, got {args.fibrosis} and {args.dense}")
    try:
        check_outputs({"--out": args.out, "--iir-map": args.iir_map, "--csv": args.csv},
                      {"--image": args.image, "--wall": args.wall, "--cavity": args.cavity}, ("--out", "--iir-map"))
        if args.image.resolve() in (args.wall.resolve(), args.cavity.resolve()):
            raise DataError(args.image, "is also a label file (--wall / --cavity): --image is the LGE-MRI image "
                                        "the masks were drawn on")
        masks, on_device = masks_from_arguments(args)
        image = read_volume(args.image)
        check_same_grid(image, masks.grid, "image", "wall")
        if (values := label_map_values(image.array)) is not None:  # an IIR of label codes means nothing
            warnings.warn(f"{args.image}: holds only a few whole values ({values} in a sample of its voxels): a "
                          "label map, not the LGE-MRI image? --image is the image the masks were drawn on",
                          stacklevel=1)
        try:
            result = fibrosis_burden(image.array, **on_device, affine=masks.grid.affine, fibrosis=args.fibrosis,
                                     dense=args.dense)
        except ValueError as exc:  # about the image's values: named, for scripts that loop over cases
            raise DataError(args.image, str(exc)) from exc
        write_volume(args.out, result.labels.cpu().numpy(), like=masks.grid)
        if args.iir_map:
            write_volume(args.iir_map, result.iir.cpu().numpy(), like=masks.grid)
        rows = result.summary()
        if args.csv:
            write_csv(args.csv, rows)
    except (DataError, ValueError, OSError) as exc:  # OSError: an output that cannot be written
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return interrupted()
    print(f"blood-pool mean intensity {result.blood_pool_mean:.4g}")
    return report(rows, lambda row: f"{row['region']:10s} {row['voxels']:8d} voxels  fibrosis "
                  f"{row['fibrosis_percent']:5.1f} %  dense scar {row['dense_scar_percent']:5.1f} %  "
                  f"mean IIR {row['mean_iir']:.2f}")


if __name__ == "__main__":
    sys.exit(main())
