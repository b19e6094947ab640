"""Wall thickness: phantoms of known design thickness, an exact slab, a brute-force reference of the
face distances, the sectors, bad input and the CLI."""
import csv
import itertools
from pathlib import Path

import numpy as np
import pytest
import torch

from c2w_fast import regions
from c2w_fast import thickness as thickness_cli
from c2w_fast.data.io import affine_from_spacing, read_volume, write_volume
from c2w_fast.data.phantom import make_phantom
from c2w_fast.regions import SECTORS, read_wall_masks, wall_sectors
from c2w_fast.thickness import wall_thickness


@pytest.mark.parametrize("shape, spacing", [((40, 96, 96), (1.25, 1.25, 1.25)), ((48, 128, 128), (0.625,) * 3),
                                            ((24, 96, 96), (2.5, 1.25, 1.25))])
def test_phantom_thickness_is_within_half_a_voxel_diagonal(shape, spacing, rng):
    """For 95 % of the wall voxels |estimate - design| <= half a voxel diagonal, and the mean over the
    wall and over every sector is within that bound of the design mean (see the module docstring
    for why the maximum cannot be bounded by less than about a voxel)."""
    phantom = make_phantom(shape, spacing, seed=int(rng.integers(1000)), label_right_atrium=False, with_thickness=True)
    wall, cavity = phantom.labels == 1, phantom.labels == 3
    result = wall_thickness(wall, cavity, spacing)
    bound = 0.5 * float(np.linalg.norm(spacing))
    design = phantom.thickness_mm
    error = np.abs(result.thickness[wall] - design[wall])
    assert np.percentile(error, 95) <= bound
    rows = result.summary()
    assert rows[0]["region"] == "wall" and rows[0]["voxels"] == wall.sum()
    assert abs(rows[0]["mean_mm"] - design[wall].mean()) <= bound
    for code, row in enumerate(rows[1:], start=1):
        assert row["region"] == SECTORS[code - 1]
        in_sector = result.sectors == code
        if in_sector.any():
            assert abs(row["mean_mm"] - design[in_sector].mean()) <= bound
    assert (result.thickness[~wall] == 0).all()


@pytest.mark.parametrize("axis", [0, 1, 2])
def test_a_flat_wall_is_its_voxel_count_times_the_step(axis, rng):
    """Cavity, then n wall voxels, then outside along one axis: the faces sit half a step before the
    first and after the last wall voxel, so every wall voxel measures exactly n · h."""
    spacing = (2.5, 0.7, 0.9)
    n = int(rng.integers(1, 5))
    shape = [6, 7, 8]
    shape[axis] = 3 + n + 2
    position = np.indices(shape)[axis]
    cavity, wall = position < 3, (position >= 3) & (position < 3 + n)
    result = wall_thickness(wall, cavity, spacing)
    np.testing.assert_allclose(result.thickness[wall], n * spacing[axis], rtol=1e-6)


def brute_force_thickness(wall, chambers, spacing):
    """Every face centre listed, every distance computed, in float64; ``chambers`` labels the cavity."""
    spacing = np.asarray(spacing, float)
    out = np.full(wall.shape, np.inf)
    nearest_endo = np.full(wall.shape, np.inf)
    for chamber in np.unique(chambers[chambers > 0]):
        inside = (chambers == chamber) & ~wall
        faces = {"endo": [], "opposite": []}
        for axis, index, side in itertools.product(range(3), zip(*np.nonzero(wall)), (-1, 1)):
            other = list(index)
            other[axis] += side
            if not 0 <= other[axis] < wall.shape[axis] or wall[tuple(other)]:
                continue
            centre = (np.asarray(index) + np.asarray(other)) / 2 * spacing
            faces["endo" if inside[tuple(other)] else "opposite"].append(centre)
        if not faces["endo"] or not faces["opposite"]:
            continue
        for index in zip(*np.nonzero(wall)):
            point = np.asarray(index) * spacing
            endo, opposite = (np.min(np.linalg.norm(np.asarray(faces[k]) - point, axis=1)) for k in faces)
            if endo < nearest_endo[index]:
                nearest_endo[index], out[index] = endo, endo + opposite
    return np.where(wall, out, 0.0)


@pytest.mark.parametrize("chambers", [1, 2])
def test_matches_a_brute_force_reference_on_random_masks(chambers, rng):
    for _ in range(3):
        shape = tuple(int(n) for n in rng.integers(3, 9, size=3))
        p = [0.4, 0.3, 0.3] if chambers == 1 else [0.3, 0.3, 0.2, 0.2]
        labels = rng.choice(len(p), size=shape, p=p)  # 0 outside, 1 wall, 2 (and 3) cavity chambers
        spacing = tuple(float(s) for s in rng.uniform(0.5, 2.5, size=3))
        wall, cavity = labels == 1, labels >= 2
        result = wall_thickness(wall, cavity, spacing, chambers=np.where(cavity, labels, 0))
        np.testing.assert_allclose(result.thickness, brute_force_thickness(wall, np.where(cavity, labels, 0), spacing),
                                   rtol=1e-6)


@pytest.mark.parametrize("septum", [1, 2, 3])
def test_the_septum_between_two_chambers_measures_its_width(septum, tmp_path):
    """RA cavity | septum | LA cavity, all inside an outer wall: the septum has no epicardium, and
    measures as wide as it is from either chamber (one label map: 1 wall, 2 RA, 3 LA)."""
    spacing = (2.0, 1.0, 0.8)
    labels = np.zeros((12, 14, 16 + septum), np.uint8)
    labels[1:-1, 1:-1, 1:-1] = 1                     # the wall around both chambers
    labels[3:-3, 3:-3, 3:8] = 2                      # RA
    labels[3:-3, 3:-3, 8 + septum:8 + septum + 5] = 3  # LA, `septum` wall voxels away
    affine = affine_from_spacing(spacing)
    write_volume(tmp_path / "labels.nii.gz", labels, affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "labels.nii.gz"), "--cavity", str(tmp_path / "labels.nii.gz"),
                               "--out", str(tmp_path / "t.nii.gz")]) == 0
    thickness = read_volume(tmp_path / "t.nii.gz").array
    np.testing.assert_allclose(thickness[4:-4, 4:-4, 8:8 + septum], septum * spacing[2], rtol=1e-6)
    # an LA labelled in parts (3 and 4) stays one chamber: the same map as with one LA label
    parts = labels.copy()
    parts[3:-3, 3:-3, 8 + septum + 2:8 + septum + 5][parts[3:-3, 3:-3, 8 + septum + 2:8 + septum + 5] == 3] = 4
    write_volume(tmp_path / "parts.nii.gz", parts, affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "parts.nii.gz"), "--cavity", str(tmp_path / "parts.nii.gz"),
                               "--cavity-label", "2,3,4", "--out", str(tmp_path / "p.nii.gz")]) == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "p.nii.gz").array, thickness)
    # as one chamber, the septum would measure to the far epicardium instead
    one = wall_thickness(labels == 1, labels >= 2, spacing).thickness
    assert (one[4:-4, 4:-4, 8:8 + septum] > (septum + 1) * spacing[2]).all()


def test_chamber_labels_are_read_as_uint8_and_only_when_asked(tmp_path):
    """One label map with both atria: the RA is chamber 2, the LA chamber 1, as uint8 (a byte a voxel); the
    fibrosis CLI, which needs no chambers, gets none."""
    labels = np.zeros((6, 7, 10), np.uint8)
    labels[1:5, 1:6, 1:9] = 1
    labels[2:4, 2:5, 2:4], labels[2:4, 2:5, 5:8] = 2, 3
    write_volume(tmp_path / "labels.nii.gz", labels, affine_from_spacing((1.0, 1.0, 1.0)))
    assert read_wall_masks(tmp_path / "labels.nii.gz", tmp_path / "labels.nii.gz").chambers is None
    chambers = read_wall_masks(tmp_path / "labels.nii.gz", tmp_path / "labels.nii.gz", chambers=True).chambers
    assert chambers.dtype == np.uint8
    np.testing.assert_array_equal(chambers, np.select([labels == 2, labels == 3], [2, 1], 0))


def test_sectors_follow_the_dominant_patient_direction(rng):
    angle = 0.4
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1]])
    affine = affine_from_spacing((2.0, 1.0, 0.5), origin=(3, 4, 5), direction=direction)
    wall = rng.random((9, 10, 11)) < 0.3
    centroid = np.array([4.2, 5.1, 4.9])
    sectors = wall_sectors(torch.from_numpy(wall), centroid, affine).numpy()
    for index in itertools.islice(zip(*np.nonzero(wall)), 200):
        world = affine[:3, :3] @ (np.asarray(index) - centroid)
        axis = int(np.argmax(np.abs(world)))
        expected = ("right", "left", "anterior", "posterior", "superior", "inferior")[2 * axis + (world[axis] < 0)]
        assert SECTORS[sectors[index] - 1] == expected
    assert (sectors[~wall] == 0).all()


def test_tensors_in_tensors_out_and_bad_input():
    phantom = make_phantom((20, 48, 48), (2.0, 2.0, 2.0), seed=3, label_right_atrium=False)
    wall, cavity = phantom.labels == 1, phantom.labels == 3
    result = wall_thickness(torch.from_numpy(wall), torch.from_numpy(cavity), (2.0, 2.0, 2.0))
    assert isinstance(result.thickness, torch.Tensor) and result.thickness.dtype == torch.float32
    np.testing.assert_array_equal(result.thickness.numpy(), wall_thickness(wall, cavity, (2.0, 2.0, 2.0)).thickness)
    with pytest.raises(ValueError, match="the cavity mask is empty"):
        wall_thickness(wall, np.zeros_like(cavity), (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="every cavity voxel is also wall: for one label map pass wall=labels == 1"):
        wall_thickness(phantom.labels, phantom.labels, (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match="the wall mask is empty"):
        wall_thickness(np.zeros_like(wall), cavity, (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"wall must be 3D \(z, y, x\), got shape \(48, 48\)"):
        wall_thickness(wall[0], cavity[0], (2.0, 2.0))
    with pytest.raises(ValueError, match="wall and cavity must have the same shape"):
        wall_thickness(wall, cavity[1:], (2.0, 2.0, 2.0))
    with pytest.raises(ValueError, match=r"need the spacing \(z, y, x\) in mm or the affine"):
        wall_thickness(wall, cavity)
    with pytest.raises(ValueError, match="wall and la_cavity must have the same shape"):
        wall_thickness(wall, cavity, (2.0, 2.0, 2.0), la_cavity=cavity[1:])
    with pytest.raises(ValueError, match=r"spacing \(1.0, 1.0, 1.0\) disagrees with the affine's voxel size"):
        wall_thickness(wall, cavity, (1.0, 1.0, 1.0), affine=affine_from_spacing((2.0, 2.0, 2.0)))
    with pytest.raises(ValueError, match="chambers must give every cavity voxel a nonzero chamber label"):
        wall_thickness(wall, cavity, (2.0, 2.0, 2.0), chambers=np.zeros(wall.shape, np.int64))
    # a wall that touches no cavity voxel (a one-voxel gap), or that the cavity encloses
    gap = np.zeros((9, 9, 9), bool)
    gap[2:7, 2:7, 2:7] = True
    core = np.zeros_like(gap)
    core[4, 4, 4] = True
    with pytest.raises(ValueError, match="no wall voxel has both an endocardial face"):
        wall_thickness(gap & ~np.pad(np.ones((3, 3, 3), bool), 3), core, (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="no wall voxel has both an endocardial face"):
        wall_thickness(core, gap & ~core, (1.0, 1.0, 1.0))


def test_cli_on_one_label_map_and_on_lasc_files(tmp_path, capsys, monkeypatch):
    spacing = (2.0, 1.5, 1.5)
    phantom = make_phantom((24, 64, 64), spacing, seed=5)
    affine = affine_from_spacing(spacing, origin=(1, 2, 3))
    write_volume(tmp_path / "labels.nii.gz", phantom.labels, affine)
    args = ["--wall", str(tmp_path / "labels.nii.gz"), "--cavity", str(tmp_path / "labels.nii.gz"),
            "--out", str(tmp_path / "t.nii.gz"), "--csv", str(tmp_path / "t.csv")]
    assert thickness_cli.main(args) == 0
    expected = wall_thickness(phantom.labels == 1, phantom.labels >= 2, affine=affine,
                              la_cavity=phantom.labels == 3, chambers=phantom.labels)
    written = read_volume(tmp_path / "t.nii.gz")
    np.testing.assert_array_equal(written.array, expected.thickness)
    assert np.array_equal(written.affine, affine)
    with open(tmp_path / "t.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["region"] for r in rows] == ["wall", *SECTORS]
    assert float(rows[0]["mean_mm"]) == pytest.approx(expected.summary()[0]["mean_mm"])
    assert "wall " in capsys.readouterr().out
    # LASC style: a 0/255 cavity file and a separate wall file
    write_volume(tmp_path / "laendo.nrrd", (phantom.labels == 3) * np.uint8(255), affine)
    write_volume(tmp_path / "lawall.nrrd", (phantom.labels == 1).astype(np.uint8), affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "lawall.nrrd"), "--cavity", str(tmp_path / "laendo.nrrd"),
                               "--out", str(tmp_path / "t2.nrrd")]) == 0
    # bad input
    assert thickness_cli.main(args[:4] + ["--wall-label", "7", "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "no wall voxels (values (7,))" in capsys.readouterr().err
    write_volume(tmp_path / "other.nii.gz", phantom.labels[1:], affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "labels.nii.gz"), "--cavity", str(tmp_path / "other.nii.gz"),
                               "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "other.nii.gz: cavity shape (23, 64, 64) differs from wall shape" in capsys.readouterr().err
    scan = np.round(phantom.image / phantom.image.max() * 183).astype(np.int16)  # an integer-typed LGE scan
    write_volume(tmp_path / "scan.nii.gz", scan, affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "scan.nii.gz"), "--cavity", str(tmp_path / "scan.nii.gz"),
                               "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "scan.nii.gz: holds values from 0 to " in capsys.readouterr().err
    (tmp_path / "taken").write_text("a file where a folder should be")
    assert thickness_cli.main(args[:4] + ["--out", str(tmp_path / "t3.nii.gz"),
                                          "--csv", str(tmp_path / "taken" / "t.csv")]) == 2
    assert "taken is a file, not a folder" in capsys.readouterr().err
    assert thickness_cli.main(args[:4] + ["--out", str(tmp_path / "t3.nii.gz"),
                                          "--csv", str(tmp_path / "t.nii.gz")]) == 2
    assert capsys.readouterr().err == (f"error: --csv {tmp_path / 't.nii.gz'} is an image file name, but --csv "
                                       "writes a CSV table (e.g. t.csv)\n")
    (tmp_path / "locked").mkdir()
    monkeypatch.setattr(regions.os, "access", lambda path, mode: Path(path).name != "locked")  # tests run as root
    assert thickness_cli.main(args[:4] + ["--out", str(tmp_path / "t3.nii.gz"),
                                          "--csv", str(tmp_path / "locked" / "new" / "t.csv")]) == 2
    assert capsys.readouterr().err == (f"error: --csv {tmp_path / 'locked' / 'new' / 't.csv'}: no permission to "
                                       f"write in {tmp_path / 'locked'}\n")
    monkeypatch.undo()
    assert not (tmp_path / "t3.nii.gz").exists()  # refused before anything was computed or written
    before = (tmp_path / "labels.nii.gz").read_bytes()
    assert thickness_cli.main(args[:4] + ["--out", str(tmp_path / "labels.nii.gz")]) == 2
    assert "is also --wall and --cavity: it would be overwritten" in capsys.readouterr().err
    assert (tmp_path / "labels.nii.gz").read_bytes() == before
    # a wall that never touches the cavity: the error names the wall file
    apart = np.zeros((8, 8, 16), np.uint8)
    apart[2:5, 2:5, 2:5], apart[2:5, 2:5, 10:13] = 1, 2
    write_volume(tmp_path / "apart.nii.gz", apart, affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "apart.nii.gz"), "--cavity", str(tmp_path / "apart.nii.gz"),
                               "--out", str(tmp_path / "x.nii.gz")]) == 2
    assert "apart.nii.gz: no wall voxel has both an endocardial face" in capsys.readouterr().err


@pytest.mark.cuda
def test_gpu_thickness_equals_the_cpu_at_full_size():
    phantom = make_phantom((44, 640, 640), (2.5, 0.625, 0.625), seed=2)
    wall, cavity = phantom.labels == 1, phantom.labels >= 2
    chambers = np.where(cavity, phantom.labels, 0)
    cpu = wall_thickness(wall, cavity, (2.5, 0.625, 0.625), chambers=chambers)
    gpu = wall_thickness(torch.from_numpy(wall).cuda(), torch.from_numpy(cavity).cuda(), (2.5, 0.625, 0.625),
                         chambers=torch.from_numpy(chambers).cuda())
    np.testing.assert_allclose(gpu.thickness.cpu().numpy(), cpu.thickness, rtol=1e-6)
    np.testing.assert_array_equal(gpu.sectors.cpu().numpy(), cpu.sectors)


# --- from the mutation audit of the CLIs: summary statistics, sectors of an oblique file, odd label files ---

def test_summary_statistics_per_region_by_hand():
    """Wall values 1..20 mm in the right sector and one 40 mm voxel in the left one. Wall: 21 voxels, mean
    250/21, median the 11th value (11), p95 at position 0.95·20 = 19 of the sorted values (20). Right: 20
    voxels, mean = median = 10.5, p95 at 0.95·19 = 18.05, between 19 and 20: 19.05. Left: 40 throughout.
    The other sectors hold no voxel: NaN."""
    values = np.array([*range(1, 21), 40], np.float32)[None, None]
    sectors = np.array([1] * 20 + [2], np.uint8)[None, None]
    rows = {row["region"]: row for row in thickness_cli.Thickness(values, sectors).summary()}
    assert list(rows) == ["wall", *SECTORS]
    expected = {"wall": (21, 250 / 21, 11.0, 20.0), "right": (20, 10.5, 10.5, 19.05), "left": (1, 40.0, 40.0, 40.0)}
    for region, (voxels, mean, median, p95) in expected.items():
        row = rows[region]
        assert row["voxels"] == voxels
        assert (row["mean_mm"], row["median_mm"], row["p95_mm"]) == pytest.approx((mean, median, p95), rel=1e-12)
    for region in SECTORS[2:]:
        stats = [rows[region][key] for key in ("mean_mm", "median_mm", "p95_mm")]
        assert rows[region]["voxels"] == 0 and np.isnan(stats).all()


def two_atria(septum=2):
    """1 wall around an RA (2) and a larger LA (3) side by side along x, ``septum`` wall voxels apart: the LA's
    centroid lies far from the whole cavity's."""
    labels = np.zeros((10, 16, 17 + septum + 7), np.uint8)
    labels[1:-1, 1:-1, 1:-1] = 1
    labels[3:-3, 3:-3, 3:10] = 2
    labels[3:-3, 3:-3, 10 + septum:-3] = 3
    return labels


def oblique_affine(spacing):
    """Rotated 30° about y with z reversed and an origin away from 0: index axes are no patient axes."""
    angle = np.deg2rad(30.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    return affine_from_spacing(spacing, origin=(-20.0, 35.5, 7.25), direction=rotation @ np.diag([-1, 1, 1]))


def reference_sector_counts(wall, la, affine):
    """Wall voxels per sector, by hand: the RAS offset of each from the LA's mean voxel position, its
    largest component and that component's sign."""
    world = (np.argwhere(wall) - np.argwhere(la).mean(0)) @ np.asarray(affine)[:3, :3].T
    axis = np.abs(world).argmax(1)
    codes = 1 + 2 * axis + (world[np.arange(len(world)), axis] < 0)
    return {name: int((codes == code).sum()) for code, name in enumerate(SECTORS, start=1)}


def test_cli_sectors_follow_the_files_affine_around_the_la(tmp_path):
    """One label map with both atria on an oblique grid: the CSV's sectors are those of the file's RAS
    directions around the LA alone (not of the index axes, not around the whole cavity)."""
    labels = two_atria()
    write_volume(tmp_path / "labels.nii.gz", labels, oblique_affine((2.0, 1.0, 1.2)))
    affine = read_volume(tmp_path / "labels.nii.gz").affine  # as stored (float32 in the header)
    assert thickness_cli.main(["--wall", str(tmp_path / "labels.nii.gz"), "--cavity", str(tmp_path / "labels.nii.gz"),
                               "--out", str(tmp_path / "t.nii.gz"), "--csv", str(tmp_path / "t.csv")]) == 0
    with open(tmp_path / "t.csv") as handle:
        voxels = {row["region"]: int(row["voxels"]) for row in csv.DictReader(handle)}
    expected = reference_sector_counts(labels == 1, labels == 3, affine)
    assert voxels == {"wall": int((labels == 1).sum()), **expected}
    # the sectors around the whole cavity or along the index axes differ: the check can fail
    assert expected != reference_sector_counts(labels == 1, labels >= 2, affine)
    assert expected != reference_sector_counts(labels == 1, labels == 3, affine_from_spacing((2.0, 1.0, 1.2)))
    assert np.array_equal(read_volume(tmp_path / "t.nii.gz").affine, affine)


def test_cli_label_file_checks(tmp_path, capsys, monkeypatch):
    """One label map read with the default codes holds 0..3 only (not -1, not 4); the same file named two
    ways is one file; a --csv that is a folder is refused before anything is written."""
    labels = two_atria()
    affine = affine_from_spacing((2.0, 1.0, 1.2))
    for bad, shown in ((-1, "-1 to 3"), (4, "0 to 4")):
        odd = labels.astype(np.int16)
        odd[0, 0, 0] = bad
        write_volume(tmp_path / "odd.nii.gz", odd, affine)
        assert thickness_cli.main(["--wall", str(tmp_path / "odd.nii.gz"), "--cavity", str(tmp_path / "odd.nii.gz"),
                                   "--out", str(tmp_path / "x.nii.gz")]) == 2
        assert f"odd.nii.gz: holds values from {shown}, but a label map of both masks" in capsys.readouterr().err
    write_volume(tmp_path / "labels.nii.gz", labels, affine)
    monkeypatch.chdir(tmp_path)
    assert thickness_cli.main(["--wall", "labels.nii.gz", "--cavity", str(tmp_path / "labels.nii.gz"),
                               "--out", "t.nii.gz"]) == 0
    np.testing.assert_array_equal(read_volume(tmp_path / "t.nii.gz").array,
                                  wall_thickness(labels == 1, labels >= 2, affine=read_volume("labels.nii.gz").affine,
                                                 la_cavity=labels == 3, chambers=labels).thickness)
    (tmp_path / "folder.csv").mkdir()
    assert thickness_cli.main(["--wall", "labels.nii.gz", "--cavity", "labels.nii.gz", "--out", "t2.nii.gz",
                               "--csv", "folder.csv"]) == 2
    assert "--csv folder.csv is a folder, not a file" in capsys.readouterr().err
    assert not (tmp_path / "t2.nii.gz").exists() and not any((tmp_path / "folder.csv").iterdir())


# --- from the mutation audit of the library: the chamber labels' checks ---

def test_chambers_must_be_integer_labels_of_the_masks_shape():
    wall = np.zeros((4, 5, 8), bool)
    wall[:, :, 3] = True
    cavity = np.zeros_like(wall)
    cavity[:, :, :3] = True
    result = wall_thickness(wall, cavity, (1.0, 1.0, 1.0), chambers=cavity.astype(np.int16) * 3)
    assert isinstance(result.thickness, np.ndarray) and isinstance(result.sectors, np.ndarray)  # numpy in, numpy out
    np.testing.assert_allclose(result.thickness[wall], 1.0)  # one wall voxel across
    for chambers in (cavity.astype(np.float32), cavity.copy(), np.ones((4, 5, 7), np.int64)):
        with pytest.raises(ValueError, match="chambers must be integer labels of the masks' shape"):
            wall_thickness(wall, cavity, (1.0, 1.0, 1.0), chambers=chambers)
