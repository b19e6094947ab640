"""Bad input: one clear DataError naming the file and the problem, never a library traceback."""
import gzip
import re
import threading

import numpy as np
import pytest

from c2w_fast.data.io import affine_from_spacing, read_volume, write_volume
from c2w_fast.data import layouts
from c2w_fast.data.layouts import discover_cases, layout_labels, load_case, load_cases, load_labels
from c2w_fast.data.phantom import write_dataset
from c2w_fast.errors import DataError

SMALL = dict(shape=(8, 32, 32), spacing=(2.5, 3.0, 3.0))


@pytest.fixture
def mbas(tmp_path):
    write_dataset(tmp_path, "mbas", 2, progress=False, **SMALL)
    return tmp_path


def case_files(root, case="MBAS_001"):
    return root / case / f"{case}_gt.nii.gz", root / case / f"{case}_label.nii.gz"  # image, labels (as released)


def test_missing_label_file(mbas):
    _, label = case_files(mbas)
    label.unlink()
    with pytest.raises(DataError, match=r"MBAS_001_label.nii.gz: label file missing for case 'MBAS_001'"):
        discover_cases(mbas)
    assert [c.label_paths for c in discover_cases(mbas, require_labels=False)][0] == {}


def test_label_shape_mismatch(mbas):
    image, label = case_files(mbas)
    write_volume(label, np.zeros((8, 32, 31), np.uint8), affine_from_spacing(SMALL["spacing"]))
    with pytest.raises(DataError, match=r"MBAS_001_label.nii.gz: label shape \(8, 32, 31\) differs from image shape"):
        load_case(discover_cases(mbas)[0])


def test_label_spacing_mismatch(mbas):
    image, label = case_files(mbas)
    write_volume(label, read_volume(label).array, affine_from_spacing((2.5, 3.0, 2.0)))
    with pytest.raises(DataError, match="MBAS_001_label.nii.gz: label spacing .* differs from image spacing"):
        load_case(discover_cases(mbas)[0])


def test_label_origin_mismatch(mbas):
    image, label = case_files(mbas)
    write_volume(label, read_volume(label).array, affine_from_spacing(SMALL["spacing"], origin=(5, 0, 0)))
    with pytest.raises(DataError, match="MBAS_001_label.nii.gz: label origin differs"):
        load_case(discover_cases(mbas)[0])


def test_non_3d_image(mbas, tmp_path):
    import nibabel as nib
    image, _ = case_files(mbas)
    nib.save(nib.Nifti1Image(np.zeros((32, 32), np.int16), np.eye(4)), str(image))
    with pytest.raises(DataError, match="MBAS_001_gt.nii.gz: .*expected a 3D image"):
        discover_cases(mbas)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_or_inf_in_image(mbas, bad):
    image, _ = case_files(mbas)
    volume = read_volume(image)
    array = volume.array.astype(np.float32)
    array[1, 2, 3] = bad
    write_volume(image, array, volume.affine)
    with pytest.raises(DataError, match="MBAS_001_gt.nii.gz: image has 1 NaN/inf voxels"):
        load_case(discover_cases(mbas)[0])


def test_unexpected_label_values(mbas):
    _, label = case_files(mbas)
    volume = read_volume(label)
    array = volume.array.copy()
    array[0, 0, :2] = (7, 9)
    write_volume(label, array, volume.affine)
    with pytest.raises(DataError, match=r"MBAS_001_label.nii.gz: unexpected label values \[7, 9\]"):
        load_case(discover_cases(mbas)[0])


@pytest.mark.parametrize("values, message", [
    ((2.5, 1.0), r"1 values are not whole numbers \(e.g. 2.5\): not a label map"),
    ((np.inf, 1.0), r"1 non-finite values \(NaN or inf\): not a label map"),
    ((np.nan, 1.0), r"1 non-finite values \(NaN or inf\): not a label map"),
    ((-1.0, 3.0), r"unexpected label values \[-1\]"),
    ((1.0, 3.0), None),  # float files holding the right values are read
])
def test_float_label_files(mbas, values, message):
    _, label = case_files(mbas)
    volume = read_volume(label)
    array = volume.array.astype(np.float32)
    array[0, 0, :2] = values
    write_volume(label, array, volume.affine)
    if message is None:
        assert load_case(discover_cases(mbas)[0]).labels[0, 0, :2].tolist() == [1, 3]
        return
    with pytest.raises(DataError, match=f"MBAS_001_label.nii.gz: {message}"):
        load_case(discover_cases(mbas)[0])


def test_corrupt_nifti(mbas):
    image, _ = case_files(mbas)
    data = gzip.decompress(image.read_bytes())
    image.write_bytes(gzip.compress(data[: len(data) // 3]))
    with pytest.raises(DataError, match="MBAS_001_gt.nii.gz: cannot read NIFTI file"):
        load_case(discover_cases(mbas)[0])


def test_corrupt_and_garbage_nrrd(tmp_path):
    write_dataset(tmp_path, "lasc", 1, progress=False, **SMALL)
    cavity = tmp_path / "phantom000" / "laendo.nrrd"
    cavity.write_bytes(cavity.read_bytes()[:200])
    with pytest.raises(DataError, match="laendo.nrrd: cannot read NRRD file"):
        load_case(discover_cases(tmp_path)[0])
    cavity.write_bytes(b"this is not an nrrd file")
    with pytest.raises(DataError, match="laendo.nrrd: cannot read NRRD file"):
        load_case(discover_cases(tmp_path)[0])


def test_missing_or_empty_dataset(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        discover_cases(tmp_path / "nowhere")
    with pytest.raises(DataError, match="no dataset layout recognised"):
        discover_cases(tmp_path)
    with pytest.raises(DataError, match="no cases found for layout 'mbas'"):
        discover_cases(tmp_path, "mbas")
    with pytest.raises(DataError, match="file not found"):
        read_volume(tmp_path / "missing.nii.gz")


def test_a_file_given_for_the_dataset_folder_is_named_as_one(tmp_path):
    write_dataset(tmp_path, "lasc", 1, progress=False, **SMALL)
    image = tmp_path / "phantom000" / "lgemri.nrrd"
    for layout in ("auto", "lasc"):
        with pytest.raises(DataError, match=f"lgemri.nrrd: is a file, not a dataset folder: give the folder of the "
                                            f"cases \\(e.g. {tmp_path} for a LASC case's image\\)$"):
            discover_cases(image, layout)
    with pytest.raises(DataError, match="laendo.nrrd: is a file, not a dataset folder: give the folder of the cases$"):
        discover_cases(tmp_path / "phantom000" / "laendo.nrrd")


def test_labels_load_without_the_image_and_are_checked_against_each_other(tmp_path):
    write_dataset(tmp_path, "lasc", 1, progress=False, **SMALL)
    case = discover_cases(tmp_path)[0]
    expected = load_case(case).labels
    case.image_path.unlink()  # evaluation needs no image
    labels = load_labels(case)
    np.testing.assert_array_equal(labels.array, expected)
    assert labels.spacing == pytest.approx(SMALL["spacing"]) and labels.path.name == "laendo.nrrd"
    wall = tmp_path / "phantom000" / "lawall.nrrd"
    write_volume(wall, read_volume(wall).array, affine_from_spacing((2.5, 3.0, 2.0)))
    with pytest.raises(DataError, match=r"lawall.nrrd: label spacing .* differs from label spacing .*\(laendo.nrrd\)"):
        load_labels(case)


def test_a_case_without_its_image_and_mixed_layouts_are_errors(tmp_path):
    write_dataset(tmp_path / "mbas", "mbas", 2, progress=False, **SMALL)
    (tmp_path / "mbas" / "MBAS_002" / "MBAS_002_gt.nii.gz").unlink()
    with pytest.raises(DataError, match="MBAS_002_label.nii.gz: label file without its image MBAS_002_gt.nii.gz"):
        discover_cases(tmp_path / "mbas")
    assert len(discover_cases(tmp_path / "mbas", require_labels=False)) == 1  # evaluation needs no image
    write_dataset(tmp_path / "lasc", "lasc", 2, progress=False, **SMALL)
    (tmp_path / "lasc" / "phantom001" / "lgemri.nrrd").unlink()
    with pytest.raises(DataError, match="laendo.nrrd: label file without its image lgemri.nrrd"):
        discover_cases(tmp_path / "lasc")
    write_dataset(tmp_path / "mixed" / "a", "mbas", 1, progress=False, **SMALL)
    write_dataset(tmp_path / "mixed" / "b", "lasc", 1, progress=False, **SMALL)
    with pytest.raises(DataError, match=r"holds cases of several layouts \(lasc, mbas\)"):
        discover_cases(tmp_path / "mixed")
    from c2w_fast.predict import find_inputs
    with pytest.raises(DataError, match="several layouts"):  # not read as a plain folder of images
        find_inputs(tmp_path / "mixed")
    assert len(discover_cases(tmp_path / "mixed", "mbas")) == 1


def test_nnunet_dataset_json_forms(tmp_path):
    import json
    write_dataset(tmp_path, "nnunet", 2, progress=False, **SMALL)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    written = load_case(discover_cases(tmp_path)[0]).labels  # {"background": 0, "wall": 1, "RA": 2, "LA": 3}
    assert set(np.unique(written)) == {0, 1, 2, 3}
    for labels in ({"0": "background", "1": "wall", "2": "RA", "3": "LA"},  # nnU-Net v1
                   {"Background": 0, "atrial_wall": 1, "Right Atrium": 2, "left-atrium": 3}):
        (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
        np.testing.assert_array_equal(load_case(discover_cases(tmp_path)[0]).labels, written)
    # values in another order are mapped by name: the file's 1 (named LA) is the LA, 3 (wall) the wall
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "LA": 1, "RA": 2,
                                                                          "wall": 3}}))
    np.testing.assert_array_equal(load_case(discover_cases(tmp_path)[0]).labels, np.array([0, 3, 2, 1])[written])
    assert layout_labels(tmp_path, "nnunet") == {"wall": 1, "RA": 2, "LA": 3}
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "LA cavity": 1}}))
    assert layout_labels(tmp_path, "nnunet") == {"LA": 3}  # the labels evaluate reports by default
    for bad, message in (({k: v for k, v in meta.items() if k != "labels"}, "needs a 'labels' table"),
                         ({**meta, "labels": {"wall": "one"}}, "'wall': 'one' is not a label value"),
                         ({**meta, "labels": {"background": 0, "wall": 1, "atria": [2, 3]}}, "'atria' is a region"),
                         ({**meta, "labels": {"background": 0, "scar": 1, "RA": 2, "LA": 3}},
                          "label 'scar' \\(value 1\\) is not an atrial label"),
                         ([1, 2], "must hold a JSON object")):
        (tmp_path / "dataset.json").write_text(json.dumps(bad))
        with pytest.raises(DataError, match=f"dataset.json: .*{message}"):
            load_case(discover_cases(tmp_path)[0])


def test_a_lasc_wall_without_its_cavity_is_named(tmp_path):
    write_dataset(tmp_path, "lasc", 1, progress=False, **SMALL)
    (tmp_path / "phantom000" / "laendo.nrrd").unlink()
    case = discover_cases(tmp_path, require_labels=False)[0]
    with pytest.raises(DataError, match="laendo.nrrd: cavity label file missing for case 'phantom000'"):
        load_labels(case)


def test_case_folders_are_found_through_links_in_any_letter_case_and_hidden_files_are_ignored(tmp_path):
    write_dataset(tmp_path / "store", "lasc", 3, progress=False, **SMALL)
    root = tmp_path / "lasc"
    root.mkdir()
    for case in ("phantom000", "phantom001"):
        (root / case).symlink_to(tmp_path / "store" / case, target_is_directory=True)
    (tmp_path / "store" / "phantom002").rename(root / "phantom002")
    for name in ("lgemri.nrrd", "laendo.nrrd"):
        (root / "phantom002" / name).rename(root / "phantom002" / name.upper().replace(".NRRD", ".nrrd"))
    (root / "loop").symlink_to(root, target_is_directory=True)  # a link back up the tree is walked once
    cases = discover_cases(root)
    assert [c.id for c in cases] == ["phantom000", "phantom001", "phantom002"]
    assert load_case(cases[2]).labels.max() == 3  # LGEMRI.nrrd / LAENDO.nrrd read
    write_dataset(tmp_path / "nn", "nnunet", 2, progress=False, **SMALL)
    (tmp_path / "nn" / "imagesTr" / "._phantom_000_0000.nii.gz").write_bytes(b"macOS metadata")
    assert [c.id for c in discover_cases(tmp_path / "nn")] == ["phantom_000", "phantom_001"]


def test_a_wall_without_its_case_and_a_case_inside_a_case_are_errors(tmp_path):
    write_dataset(tmp_path, "lasc", 2, progress=False, **SMALL)
    for name in ("lgemri.nrrd", "laendo.nrrd"):
        (tmp_path / "phantom001" / name).unlink()
    with pytest.raises(DataError, match="lawall.nrrd: label file without its image lgemri.nrrd"):
        discover_cases(tmp_path)
    write_dataset(tmp_path / "nested", "lasc", 1, progress=False, **SMALL)
    (tmp_path / "nested" / "phantom000" / "backup").mkdir()
    for name in ("lgemri.nrrd", "laendo.nrrd"):
        copy = (tmp_path / "phantom000" / name).read_bytes()
        (tmp_path / "nested" / "phantom000" / "backup" / name).write_bytes(copy)
    with pytest.raises(DataError, match="backup/lgemri.nrrd: a case inside the case folder .*phantom000"):
        discover_cases(tmp_path / "nested")



@pytest.mark.parametrize("layout", ["lasc", "mbas", "nnunet"])
def test_a_case_without_its_image_is_listed_for_prediction_to_report(tmp_path, layout):
    """find_images (predict's listing) keeps a case whose image is gone, with the path it lacks, so that
    the case fails by name instead of dropping out of a folder run."""
    from c2w_fast.data.layouts import find_images

    write_dataset(tmp_path, layout, 2, progress=False, **SMALL)
    listed = find_images(tmp_path)
    listed[1][1].unlink()
    assert find_images(tmp_path) == listed


@pytest.mark.parametrize("read_ahead", [1, 3, 10])
def test_load_cases_reads_ahead_in_order_and_raises_at_the_bad_case(tmp_path, monkeypatch, read_ahead):
    write_dataset(tmp_path, "mbas", 5, progress=False, **SMALL)
    cases = discover_cases(tmp_path)
    readers = set()

    def recording(case):
        readers.add(threading.current_thread().name)
        return load_case(case)

    monkeypatch.setattr(layouts, "load_case", recording)
    loaded = list(load_cases(cases, read_ahead=read_ahead))
    assert [d.case.id for d in loaded] == [c.id for c in cases]
    for data, case in zip(loaded, cases):
        np.testing.assert_array_equal(data.labels, load_case(case).labels)
    assert readers and all(name.startswith("c2w-read") for name in readers)  # not the caller's thread
    _, label = case_files(tmp_path, cases[2].id)
    label.write_bytes(b"damaged")
    seen = []
    with pytest.raises(DataError, match=f"{cases[2].id}_label.nii.gz: cannot read"):
        for data in load_cases(cases, read_ahead=read_ahead):
            seen.append(data.case.id)
    assert seen == [c.id for c in cases[:2]]  # the cases before the bad one came through, in order
    early = load_cases(cases, read_ahead=read_ahead)
    assert next(early).case.id == cases[0].id
    early.close()  # a caller that stops early: the pending reads are dropped, nothing hangs


def test_lasc_labels_of_0_and_1_and_the_wall_wins_where_it_overlaps_the_cavity(tmp_path):
    """LASC cavity and wall files hold 0/1 or 0/255; a voxel in both is wall (1), else cavity is LA (3)."""
    write_dataset(tmp_path, "lasc", 1, progress=False, **SMALL)
    folder = tmp_path / "phantom000"
    cavity_file, wall_file = read_volume(folder / "laendo.nrrd"), read_volume(folder / "lawall.nrrd")
    cavity = cavity_file.array > 0
    overlap = cavity.copy()
    overlap[: cavity.shape[0] // 2] = False
    assert overlap.any() and (cavity & ~overlap).any()
    wall = (wall_file.array > 0) | overlap
    write_volume(folder / "laendo.nrrd", cavity.astype(np.uint8), like=cavity_file)
    write_volume(folder / "lawall.nrrd", wall.astype(np.uint8), like=wall_file)
    labels = load_case(discover_cases(tmp_path)[0]).labels
    np.testing.assert_array_equal(labels, np.where(wall, 1, np.where(cavity, 3, 0)))


def test_two_cases_of_one_id_are_an_error(tmp_path):
    """Case folders of the same name under two parents would be one case id twice (and could land
    on both sides of a split)."""
    for part in ("a", "b"):
        write_dataset(tmp_path / part, "lasc", 1, progress=False, **SMALL)
    with pytest.raises(DataError, match=r"case ids occur more than once: \['phantom000'\]"):
        discover_cases(tmp_path)


def test_cases_in_hidden_folders_are_not_read(tmp_path):
    """A hidden folder (a write's .c2w-partial-* staging folder, .Trash) is not part of the dataset."""
    write_dataset(tmp_path, "lasc", 2, progress=False, **SMALL)
    hidden = tmp_path / ".c2w-partial-x" / "phantom007"
    hidden.mkdir(parents=True)
    for name in ("lgemri.nrrd", "laendo.nrrd"):
        hidden.joinpath(name).write_bytes((tmp_path / "phantom000" / name).read_bytes())
    assert [c.id for c in discover_cases(tmp_path)] == ["phantom000", "phantom001"]


@pytest.mark.parametrize("rename, listed", [
    ({"imagesTr/phantom_001_0000.nii.gz": "imagesTr/phantom_001_0000.nii",
      "labelsTr/phantom_001.nii.gz": "labelsTr/phantom_001.nii"},
     "2 file(s) miss nnU-Net's naming for dataset.json's file_ending '.nii.gz' (images <case>_0000.nii.gz, labels "
     "<case>.nii.gz): imagesTr/phantom_001_0000.nii, labelsTr/phantom_001.nii; they would drop out of the dataset"),
    ({"imagesTr/phantom_000_0000.nii.gz": "imagesTr/phantom_000.nii.gz", "imagesTr/phantom_001_0000.nii.gz":
      "imagesTr/phantom_001.nii.gz"}, "2 file(s) miss nnU-Net's naming for dataset.json's file_ending '.nii.gz' "
                                   "(images <case>_0000.nii.gz, labels <case>.nii.gz): imagesTr/phantom_000.nii.gz, "
                                   "imagesTr/phantom_001.nii.gz;"),  # Medical Decathlon names
])
def test_nnunet_files_that_miss_its_naming_are_named_not_dropped(tmp_path, rename, listed):
    """A case saved as .nii among .nii.gz dropped out of training, prediction and evaluation unseen; a
    Decathlon-named dataset (no _0000) gave 'no cases found'. Other files (notes) are no cases."""
    write_dataset(tmp_path, "nnunet", 2, progress=False, **SMALL)
    (tmp_path / "imagesTr" / "notes.txt").write_text("scanner settings")
    assert [c.id for c in discover_cases(tmp_path)] == ["phantom_000", "phantom_001"]
    for old, new in rename.items():
        (tmp_path / old).rename(tmp_path / new)
    for find in (discover_cases, layouts.find_images):
        with pytest.raises(DataError, match=re.escape(f"{tmp_path}: {listed}")):
            find(tmp_path)


def test_a_multi_channel_nnunet_dataset_is_refused(tmp_path):
    import json
    write_dataset(tmp_path, "nnunet", 1, progress=False, **SMALL)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "channel_names": {"0": "LGE", "1": "T2"}}))
    with pytest.raises(DataError, match="dataset.json: c2w_fast reads single-channel datasets; dataset.json lists 2"):
        discover_cases(tmp_path)


def test_float_nnunet_labels_above_255_map_by_their_value(tmp_path):
    """A float label file is narrowed to an integer type that holds every code of dataset.json
    (uint16 for 300), not to uint8, which would wrap 300 to 44."""
    import json
    write_dataset(tmp_path, "nnunet", 1, progress=False, **SMALL)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": {"background": 0, "left atrium": 300}}))
    label = tmp_path / "labelsTr" / "phantom_000.nii.gz"
    volume = read_volume(label)
    write_volume(label, (volume.array == 3) * np.float32(300), volume.affine)
    np.testing.assert_array_equal(load_case(discover_cases(tmp_path)[0]).labels, (volume.array == 3) * 3)


def test_a_negative_nnunet_label_value_is_refused(tmp_path):
    """A negative value would index the code lookup from its end (lookup[-1] is the largest
    value's slot): '-1': 'background' mapped the LA (3) to background without a word."""
    import json
    write_dataset(tmp_path, "nnunet", 1, progress=False, **SMALL)
    meta = json.loads((tmp_path / "dataset.json").read_text())
    labels = {"0": "background", "1": "wall", "2": "RA", "3": "LA", "-1": "background"}  # nnU-Net v1 form
    (tmp_path / "dataset.json").write_text(json.dumps({**meta, "labels": labels}))
    with pytest.raises(DataError, match="dataset.json labels: label values must be >= 0, got -1"):
        load_case(discover_cases(tmp_path)[0])
