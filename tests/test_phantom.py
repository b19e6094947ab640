"""Synthetic phantoms: deterministic, anatomically consistent labels, exact wall thickness."""
import numpy as np
import pytest
from scipy import ndimage

from c2w_fast.data.layouts import CANONICAL_LABELS, discover_cases, load_case
from c2w_fast.data.phantom import AIR, _to_stored_dtype, main, make_phantom, write_dataset

SMALL = dict(shape=(24, 96, 96), spacing=(2.5, 1.5, 1.5))
WALL, RA, LA = CANONICAL_LABELS["wall"], CANONICAL_LABELS["RA"], CANONICAL_LABELS["LA"]


def test_same_seed_same_phantom_other_seed_other_phantom():
    a, b, c = make_phantom(**SMALL, seed=3), make_phantom(**SMALL, seed=3), make_phantom(**SMALL, seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.labels, c.labels)


@pytest.mark.parametrize("seed", [0, 1])
def test_mbas_labels_enhancement_and_intensities(seed):
    p = make_phantom(**SMALL, seed=seed)
    assert p.image.dtype == np.float32 and p.labels.dtype == np.uint8 and p.image.shape == SMALL["shape"]
    assert set(np.unique(p.labels)) == {0, WALL, RA, LA}
    assert p.enhancement.any() and np.all(p.labels[p.enhancement] == WALL)
    blood = p.image[ndimage.binary_erosion(p.labels == LA, iterations=2)].mean()
    healthy_wall = p.image[(p.labels == WALL) & ~p.enhancement].mean()
    assert abs(blood / p.blood_pool - 1) < 0.25 and healthy_wall < 0.6 * blood
    assert np.isfinite(p.image).all() and p.image.min() >= 0


def test_lasc_labels_have_no_right_atrium():
    p = make_phantom(**SMALL, seed=2, label_right_atrium=False)
    assert set(np.unique(p.labels)) == {0, WALL, LA}


def test_cavity_is_enclosed_by_the_wall():
    # On a grid finer than the thinnest wall (1.5 mm) no 6-neighbour step can skip the wall.
    p = make_phantom((64, 112, 112), (0.75, 0.75, 0.75), seed=5, scale=0.4)
    cavity = p.labels == LA
    dilated = ndimage.binary_dilation(cavity, ndimage.generate_binary_structure(3, 1))
    neighbours = p.labels[dilated & ~cavity]
    assert np.all(neighbours == WALL)


def test_wall_thickness_matches_the_design_thickness():
    spacing = (0.625, 0.625, 0.625)
    p = make_phantom((72, 96, 96), spacing, seed=7, scale=0.45, with_thickness=True, label_right_atrium=False)
    wall = p.labels == WALL
    outside_distance = ndimage.distance_transform_edt(p.labels != LA, sampling=spacing)
    # Every wall voxel lies within its design thickness of the cavity, and the outermost
    # wall voxels reach it: thickness is exact up to one voxel diagonal.
    diagonal = float(np.linalg.norm(spacing))
    assert np.all(outside_distance[wall] <= p.thickness_mm[wall] + diagonal)
    outer = wall & ndimage.binary_dilation(~wall & (p.labels != LA))
    assert np.median(p.thickness_mm[outer] - outside_distance[outer]) < diagonal
    assert 1.5 <= p.thickness_mm[wall].min() and p.thickness_mm[wall].max() <= 3.0


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="spacing must have 3 positive values"):
        make_phantom((8, 8, 8), (1.0, 0, 1.0))
    with pytest.raises(ValueError, match="shape must be 3 positive sizes"):
        make_phantom((8, 8), (1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="wall_mm"):
        make_phantom((8, 8, 8), (1, 1, 1), wall_mm=(3, 1))


@pytest.mark.parametrize("layout", ["lasc", "mbas", "nnunet"])
def test_written_datasets_are_discovered_and_load_back(tmp_path, layout):
    ids = write_dataset(tmp_path, layout, 3, progress=False, **SMALL)
    cases = discover_cases(tmp_path)
    assert [c.id for c in cases] == sorted(ids) and {c.layout for c in cases} == {layout}
    assert cases[0].spacing == pytest.approx(SMALL["spacing"])
    data = load_case(cases[1])
    expected = make_phantom(**SMALL, seed=1, label_right_atrium=layout != "lasc").labels
    np.testing.assert_array_equal(data.labels, expected)
    assert data.image.shape == SMALL["shape"]


def test_cli_writes_a_dataset(tmp_path, capsys):
    main(["--layout", "mbas", "--n", "2", "--out", str(tmp_path), "--shape", "16", "64", "64",
          "--spacing", "3", "2", "2"])
    assert "wrote 2 mbas cases" in capsys.readouterr().out
    assert (tmp_path / "MBAS_002" / "MBAS_002_gt.nii.gz").is_file()  # the image, as the MBAS release names it
    assert (tmp_path / "MBAS_002" / "MBAS_002_label.nii.gz").is_file()
    with pytest.raises(SystemExit):
        main(["--layout", "mbas", "--n", "0", "--out", str(tmp_path)])
    with pytest.raises(SystemExit):
        main(["--layout", "mbas", "--n", "1", "--out", str(tmp_path), "--noise", "nan"])
    with pytest.raises(SystemExit):
        main(["--layout", "mbas", "--n", "1", "--out", str(tmp_path / "MBAS_001" / "MBAS_001_gt.nii.gz")])


@pytest.mark.parametrize("layout", ["lasc", "mbas", "nnunet"])
def test_existing_case_files_are_not_replaced_unless_asked(tmp_path, layout, capsys):
    """MBAS phantoms carry the real release's names: writing into a real dataset must not replace it."""
    write_dataset(tmp_path, layout, 1, progress=False, **SMALL)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    with pytest.raises(FileExistsError, match="exists"):
        write_dataset(tmp_path, layout, 2, progress=False, **SMALL)
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == before  # nothing written
    args = ["--layout", layout, "--n", "1", "--out", str(tmp_path), "--shape", *map(str, SMALL["shape"]),
            "--spacing", *map(str, SMALL["spacing"])]
    with pytest.raises(SystemExit):
        main(args)
    err = capsys.readouterr().err
    assert "exists" in err and "--overwrite" in err
    main(args + ["--overwrite"])
    assert sorted(before) == sorted(p for p in tmp_path.rglob("*") if p.is_file())
    (tmp_path / "a_file").write_text("")
    with pytest.raises(SystemExit):  # --out under a file: an argument error, not a traceback
        main(["--n", "1", "--out", str(tmp_path / "a_file" / "x")])


def test_zero_wall_and_negative_noise_or_bias_are_refused():
    for kwargs in (dict(wall_mm=(0.0, 2.0)), dict(noise=-0.1), dict(bias=-0.1)):
        with pytest.raises(ValueError, match="wall_mm|noise and bias"):
            make_phantom((8, 8, 8), (1.0, 1.0, 1.0), **kwargs)


@pytest.mark.parametrize("layout", ["lasc", "nnunet"])
def test_written_cases_are_centred_on_the_world_origin(tmp_path, layout):
    """The middle voxel, index (n - 1) / 2 on each axis, of a written phantom lies at RAS (0, 0, 0)."""
    shape, spacing = (9, 40, 60), (2.5, 1.5, 1.0)  # even and odd sizes, a field of view that holds the atria
    write_dataset(tmp_path, layout, 1, progress=False, shape=shape, spacing=spacing)
    case = discover_cases(tmp_path)[0]
    affine = load_case(case).image.affine
    np.testing.assert_allclose(affine @ [*((np.array(shape) - 1) / 2), 1.0], [0, 0, 0, 1], atol=1e-4)


def test_stored_intensities_saturate_at_the_file_type_instead_of_wrapping():
    """LASC stores 200 x the intensity as uint8 (1.4 → 280 → 255, not 24), the others 1000 x as int16."""
    image = np.array([-0.1, 0.5, 1.4, 40.0], np.float32)
    assert _to_stored_dtype(image, "lasc").tolist() == [0, 100, 255, 255]
    assert _to_stored_dtype(image, "mbas").tolist() == [0, 500, 1400, 32767]


def test_the_anatomy_is_centred_on_the_middle_voxel():
    """The torso is an ellipse about the volume's middle voxel ((n - 1) / 2): without noise and bias
    the air around it is mirror-symmetric in y and x (the atria, off-centre, lie inside the body)."""
    p = make_phantom((3, 64, 64), (20.0, 6.0, 6.0), seed=0, noise=0.0, bias=0.0)
    air = p.image == np.float32(AIR)
    assert 0 < air.mean() < 0.5
    np.testing.assert_array_equal(air, air[:, ::-1, :])
    np.testing.assert_array_equal(air, air[:, :, ::-1])


def test_a_folder_of_another_layout_or_a_grid_without_room_for_the_atria_is_refused_before_writing(tmp_path, capsys):
    """Phantoms of two layouts in one folder make a dataset every other tool refuses; voxels larger than the
    atria leave classes without a voxel, and a field of view smaller than them is mostly wall."""
    write_dataset(tmp_path, "lasc", 1, progress=False, shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match=f"^{tmp_path} holds a lasc dataset; write the mbas phantoms to another "
                                         "folder$"):
        write_dataset(tmp_path, "mbas", 1, progress=False, shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))
    for spacing, layout, why in (((50.0, 50.0, 50.0), "mbas", "no wall, RA, LA voxel"),
                                 ((0.1, 0.1, 0.1), "lasc", "the wall fills most of the volume")):
        with pytest.raises(SystemExit):
            main(["--out", str(tmp_path / "new"), "--layout", layout, "--n", "1", "--shape", "20", "40", "40",
                  "--spacing", *map(str, spacing)])
        assert f"cannot hold the atria: {why}; give --shape and --spacing of a heart MRI" in capsys.readouterr().err
    assert sorted(tmp_path.rglob("*")) == before
    mixed = tmp_path / "new"
    write_dataset(mixed / "lasc", "lasc", 1, progress=False, shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))
    write_dataset(mixed / "mbas", "mbas", 1, progress=False, shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))
    for layout in ("lasc", "mbas"):  # two layouts side by side, as a user might copy them into one folder
        for path in (mixed / layout).iterdir():
            path.rename(mixed / path.name)
    with pytest.raises(ValueError, match="holds cases of several layouts"):
        write_dataset(mixed, "nnunet", 1, progress=False, shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0))


def test_ctrl_c_says_how_to_complete_the_dataset(tmp_path, capsys, monkeypatch):
    import c2w_fast.data.phantom as phantom

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(phantom, "make_phantom", interrupted)
    with pytest.raises(SystemExit) as stop:
        main(["--out", str(tmp_path), "--n", "2", "--shape", "20", "40", "40", "--spacing", "2", "2", "2"])
    assert stop.value.code == 130
    assert capsys.readouterr().err.endswith("\ninterrupted: the last case may lack some of its files; run the "
                                            "command again with --overwrite\n")


@pytest.mark.parametrize("option, value", [("--noise", "-1"), ("--noise", "nan"), ("--seed", "-5")])
def test_noise_and_seed_are_checked_by_their_option_names(option, value, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path / "d"), option, value])
    assert "--noise must be a finite number >= 0 and --seed >= 0" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_overwriting_with_fewer_cases_warns_of_the_earlier_ones_and_counts_them_in_dataset_json(tmp_path):
    import json

    geometry = dict(shape=(20, 40, 40), spacing=(2.0, 2.0, 2.0), progress=False)
    write_dataset(tmp_path, "nnunet", 6, **geometry)
    with pytest.warns(UserWarning, match=r"also holds 4 case\(s\) of an earlier run \(phantom_002, phantom_003, "
                                         r"phantom_004, \.\.\.\): the dataset is all 6; delete them or write to an "
                                         "empty folder"):
        assert write_dataset(tmp_path, "nnunet", 2, overwrite=True, **geometry) == ["phantom_000", "phantom_001"]
    assert json.loads((tmp_path / "dataset.json").read_text())["numTraining"] == len(discover_cases(tmp_path)) == 6


def test_the_cli_counts_one_case_in_the_singular(tmp_path, capsys):
    main(["--out", str(tmp_path), "--n", "1", "--shape", "20", "40", "40", "--spacing", "2", "2", "2"])
    assert capsys.readouterr().out == f"wrote 1 mbas case to {tmp_path}\n"
