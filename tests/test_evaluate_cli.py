"""python -m c2w_fast.evaluate on phantom files: matching, CSV rows, summaries and problem cases."""
import csv
import math
import os
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from c2w_fast import metrics
from c2w_fast.data.io import affine_from_spacing, read_volume, write_volume
from c2w_fast.data.phantom import write_dataset
from c2w_fast import evaluate
from c2w_fast.evaluate import case_id, find_label_files, main, parse_labels

SHAPE, SPACING = (12, 48, 48), (2.5, 1.5, 1.5)


def read_rows(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def shifted(labels, dx):
    return np.roll(labels, dx, axis=2)


@pytest.fixture(scope="module")
def mbas(tmp_path_factory):
    """Three MBAS phantom cases and predictions: two good (differently named), one missing, one
    extra, and a second dataset folder of flat ``_gt`` files."""
    root = tmp_path_factory.mktemp("cli")
    ids = write_dataset(root / "gt", "mbas", 3, shape=SHAPE, spacing=SPACING, progress=False, noise=0)
    preds = root / "pred"
    for i, (identifier, name) in enumerate(zip(ids[:2], ["{}.nii.gz", "{}_pred.nrrd"])):
        gt = read_volume(root / "gt" / identifier / f"{identifier}_label.nii.gz")
        write_volume(preds / name.format(identifier), shifted(gt.array, i + 1), like=gt)
    write_volume(preds / "MBAS_999.nii.gz", np.zeros(SHAPE, np.uint8), affine_from_spacing(SPACING))
    return root, ids


def test_case_ids_from_file_names(tmp_path):
    assert case_id(tmp_path / "MBAS_001_gt.nii.gz") == ("MBAS_001", True)
    assert case_id(tmp_path / "MBAS_001.nii.gz") == ("MBAS_001", False)
    assert case_id(tmp_path / "p7_Pred.nrrd") == ("p7", True)
    assert case_id(tmp_path / "_gt.nii") == ("_gt", False)
    (tmp_path / "imagesTr").mkdir()
    (tmp_path / "MBAS_001").mkdir()
    for name in ("a.nii.gz", "a_gt.nii.gz", "b_seg.nrrd", "b_label.nii", "imagesTr/c_0000.nii.gz", "notes.txt",
                 "MBAS_001/MBAS_001_gt.nii.gz", "MBAS_001/MBAS_001_label.nii.gz"):  # an MBAS case as released
        (tmp_path / name).touch()
    files, problems = find_label_files(tmp_path)
    assert files == {"a": tmp_path / "a_gt.nii.gz", "MBAS_001": tmp_path / "MBAS_001" / "MBAS_001_label.nii.gz"}
    assert set(problems) == {"b"} and "ambiguous" in problems["b"]


def test_parse_labels():
    assert parse_labels("wall=1, RA=2,LA=3") == {"wall": 1, "RA": 2, "LA": 3}
    with pytest.raises(ValueError, match="wall=1,RA=2,LA=3"):
        parse_labels("wall:1")


def test_mbas_dataset_rows_summaries_and_problems(mbas, capsys):
    root, ids = mbas
    out = root / "metrics.csv"
    status = main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", str(out), "--quiet",
                   "--workers", "2"])
    assert status == 1  # MBAS_003 has no prediction and MBAS_999 no ground truth
    rows = read_rows(out)
    per_case = [r for r in rows if r["status"] == "ok"]
    assert [(r["case"], r["label"]) for r in per_case] == [(i, l) for i in ids[:2] for l in ("wall", "RA", "LA")]
    for i, identifier in enumerate(ids[:2]):
        gt = read_volume(root / "gt" / identifier / f"{identifier}_label.nii.gz").array
        expected = metrics.evaluate_labels(shifted(gt, i + 1), gt, {"wall": 1, "RA": 2, "LA": 3}, SPACING)
        for row in (r for r in per_case if r["case"] == identifier):
            for name, value in expected[row["label"]].as_dict().items():
                assert float(row[name]) == pytest.approx(value, rel=1e-5)
    wall = [float(r["hd95"]) for r in per_case if r["label"] == "wall"]
    summary = {(r["case"], r["label"]): r for r in rows if r["case"] in ("mean", "sd", "n")}
    assert float(summary["mean", "wall"]["hd95"]) == pytest.approx(np.mean(wall), rel=1e-5)
    assert float(summary["sd", "wall"]["hd95"]) == pytest.approx(np.std(wall, ddof=1), rel=1e-5)
    assert summary["n", "wall"]["dice"] == "2"
    problems = {r["case"]: r["status"] for r in rows if r["status"] not in ("ok", "")}
    assert problems["MBAS_003"] == "missing prediction"
    assert problems["MBAS_999"].startswith("missing ground truth")
    printed = capsys.readouterr().out
    assert "evaluated 2 of 4 cases" in printed and "MBAS_003: missing prediction" in printed
    # --predicted-only: a ground-truth case without a prediction is left out, not a problem
    status = main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", str(out), "--quiet",
                   "--predicted-only"])
    assert status == 1  # MBAS_999 still has no ground truth
    problems = {r["case"]: r["status"] for r in read_rows(out) if r["status"] not in ("ok", "")}
    assert set(problems) == {"MBAS_999"} and "evaluated 2 of 3 cases" in capsys.readouterr().out


def test_flat_folders_voxel_convention_and_mismatched_grids(mbas, tmp_path):
    root, ids = mbas
    gt_dir, pred_dir = tmp_path / "gt", tmp_path / "pred"
    for identifier in ids:
        gt = read_volume(root / "gt" / identifier / f"{identifier}_label.nii.gz")
        write_volume(gt_dir / f"{identifier}_gt.nii.gz", gt.array, like=gt)
    good = read_volume(gt_dir / f"{ids[0]}_gt.nii.gz")
    write_volume(pred_dir / f"{ids[0]}.nii.gz", good.array, like=good)
    write_volume(pred_dir / f"{ids[1]}.nii.gz", good.array[:, :-1], affine_from_spacing(SPACING))
    write_volume(pred_dir / f"{ids[2]}.nii.gz", good.array, affine_from_spacing((2.5, 1.5, 1.2)))
    out = tmp_path / "m.csv"
    status = main(["--pred", str(pred_dir), "--gt", str(gt_dir), "--labels", "LA=3", "--convention", "voxel",
                   "--out", str(out), "--quiet"])
    rows = read_rows(out)
    assert status == 1
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 1 and float(ok[0]["dice"]) == 1.0 and float(ok[0]["hd95"]) == 0.0
    problems = {r["case"]: r["status"] for r in rows if r["status"] not in ("ok", "")}
    assert "prediction shape (12, 47, 48) differs from ground truth shape" in problems[ids[1]]
    assert "prediction spacing (2.5, 1.5, 1.2) mm differs from ground truth spacing" in problems[ids[2]]
    flipped = good.affine @ np.diag([1.0, 1.0, -1.0, 1.0])  # the same anatomy stored in the other x order
    flipped[:3, 3] = good.affine[:3, :3] @ [0, 0, good.shape[2] - 1] + good.affine[:3, 3]
    write_volume(tmp_path / "flipped" / f"{ids[0]}.nii.gz", good.array[:, :, ::-1], flipped)
    assert main(["--pred", str(tmp_path / "flipped"), "--gt", str(gt_dir), "--predicted-only", "--out", str(out),
                 "--quiet"]) == 1
    assert "prediction origin and direction differ from the ground truth's" in read_rows(out)[-1]["status"]
    assert math.isnan(float([r for r in rows if r["case"] == "sd"][0]["dice"]))  # one case: no sd


def test_runs_as_a_module_and_rejects_bad_arguments(mbas, tmp_path):
    root, _ = mbas
    result = subprocess.run([sys.executable, "-m", "c2w_fast.evaluate", "--pred", str(root / "pred"), "--gt",
                             str(root / "nowhere"), "--out", str(tmp_path / "x.csv")], capture_output=True, text=True)
    assert result.returncode == 2 and "is not a folder" in result.stderr
    with pytest.raises(SystemExit):
        main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", "x.csv", "--labels", "wall"])
    with pytest.raises(SystemExit):
        main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", "x.csv", "--labels", "wall=1,wall=2"])
    for bad in (["--labels", "wall=1,LA=1"], ["--labels", "wall=0"], ["--labels", "wall=-1"], ["--workers", "0"]):
        with pytest.raises(SystemExit):
            main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", str(tmp_path / "x.csv"), *bad])
    label_map = next((root / "pred").iterdir())
    before = label_map.read_bytes()
    for out in (tmp_path, label_map):  # a folder, an input label map: refused before any case is evaluated
        with pytest.raises(SystemExit):
            main(["--pred", str(root / "pred"), "--gt", str(root / "gt"), "--out", str(out)])
    assert label_map.read_bytes() == before
    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path, "is a folder; give the CSV file to write"),
                         (tmp_path / "file" / "x.csv", ": its folder cannot be made, or this user cannot write in it")):
        result = subprocess.run([sys.executable, "-m", "c2w_fast.evaluate", "--pred", str(root / "pred"), "--gt",
                                 str(root / "gt"), "--out", str(out)], capture_output=True, text=True)
        assert result.returncode == 2 and f"error: --out {out}{' ' * (out == tmp_path)}{message}" in result.stderr
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert main(["--pred", str(tmp_path / "a"), "--gt", str(tmp_path / "b"), "--out", str(tmp_path / "x.csv")]) == 2


def test_lasc_dataset_is_read_through_its_layout(tmp_path, capsys):
    """Canonical codes from the LASC files, the default labels those LASC holds (no RA rows of
    NaN), and a symlinked folder of predictions followed."""
    ids = write_dataset(tmp_path / "lasc", "lasc", 2, shape=(10, 40, 40), spacing=(1.25, 1.25, 1.25),
                        progress=False, noise=0)
    for identifier in ids:  # LASC stores cavity and wall separately; the layout gives canonical codes
        cavity = read_volume(tmp_path / "lasc" / identifier / "laendo.nrrd")
        wall = read_volume(tmp_path / "lasc" / identifier / "lawall.nrrd").array > 0
        labels = np.where(wall, 1, np.where(cavity.array > 0, 3, 0)).astype(np.uint8)
        write_volume(tmp_path / "elsewhere" / f"{identifier}_pred.nii.gz", labels, like=cavity)
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "run").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "lasc"), "--out", str(out), "--quiet"]) == 0
    assert "RA" not in capsys.readouterr().out
    ok = [r for r in read_rows(out) if r["status"] == "ok"]
    assert [(r["case"], r["label"]) for r in ok] == [(i, l) for i in ids for l in ("wall", "LA")]
    assert all(float(r["dice"]) == 1.0 and float(r["hd"]) == 0.0 for r in ok)


def test_nothing_predicted_a_label_the_dataset_cannot_hold_and_an_image_as_prediction(tmp_path, capsys):
    ids = write_dataset(tmp_path / "lasc", "lasc", 1, shape=(10, 40, 40), spacing=(1.25, 1.25, 1.25),
                        progress=False)
    (tmp_path / "empty").mkdir()
    args = ["--gt", str(tmp_path / "lasc"), "--out", str(tmp_path / "m.csv"), "--quiet"]
    assert main(["--pred", str(tmp_path / "empty"), "--predicted-only", *args]) == 2
    assert "empty: no label maps here" in capsys.readouterr().err
    image = read_volume(tmp_path / "lasc" / ids[0] / "lgemri.nrrd")  # the scan given as its own prediction
    write_volume(tmp_path / "pred" / f"{ids[0]}.nii.gz", image.array, like=image)
    assert main(["--pred", str(tmp_path / "pred"), "--labels", "wall=1,RA=2", *args]) == 2
    assert "--labels RA=2: this dataset's label maps hold only wall=1,LA=3" in capsys.readouterr().err
    assert main(["--pred", str(tmp_path / "pred"), *args]) == 0
    values = np.setdiff1d(image.array, [0, 1, 3])
    assert f"also holds {len(values)} values from {values[0]} to {values[-1]}, neither evaluated nor label " \
           "codes (0, 1, 3): is it a label map?" in capsys.readouterr().err


# --- from the mutation audit of the CLIs: options reaching the metrics, summaries, odd inputs ---

SMALL = (2.0, 1.0, 1.5)


def _la_spike_case():
    """A label map (1 wall, 3 LA) and a prediction whose LA grows a 3×2×4-voxel spike into the wall: the
    directed 95th percentiles differ (pred → gt reaches the spike, gt → pred is ~0), so max and pooled
    HD95, the surfel and voxel conventions and Surface Dice at 1 and 2 mm all give different values."""
    gt = np.zeros((8, 14, 20), np.uint8)
    gt[1:7, 1:13, 1:19] = 1
    gt[2:6, 2:12, 2:10] = 3
    pred = gt.copy()
    pred[3:6, 6:8, 10:14] = 3
    return pred, gt


def _write_pair(folder_gt, folder_pred, identifier, pred, gt):
    write_volume(folder_gt / f"{identifier}_gt.nii.gz", gt, affine_from_spacing(SMALL))
    write_volume(folder_pred / f"{identifier}.nii.gz", pred, affine_from_spacing(SMALL))


def test_tolerance_convention_and_percentile_rule_reach_the_metrics(tmp_path):
    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", pred, gt)
    chosen = {"tolerance_mm": 2.0, "convention": "voxel", "percentile_rule": "pooled"}
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", "LA=3", "--tolerance",
                 "2", "--convention", "voxel", "--percentile-rule", "pooled", "--out", str(out), "--quiet"]) == 0
    row = next(r for r in read_rows(out) if r["status"] == "ok")
    expected = metrics.evaluate_labels(pred, gt, {"LA": 3}, SMALL, **chosen)["LA"].as_dict()
    assert {m: float(row[m]) for m in expected} == pytest.approx(expected, rel=1e-5)
    defaults = {"tolerance_mm": 1.0, "convention": "surfel", "percentile_rule": "max"}
    for option, default in defaults.items():  # each option on its own changes the row: the check can fail
        assert metrics.evaluate_labels(pred, gt, {"LA": 3}, SMALL, **{**chosen, option: default})["LA"] != \
            metrics.evaluate_labels(pred, gt, {"LA": 3}, SMALL, **chosen)["LA"], option
    # 0 mm is a tolerance (faces that coincide); NaN and negative ones are refused before any case
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--tolerance", "0",
                 "--out", str(out), "--quiet"]) == 0
    for bad in ("nan", "-1"):
        with pytest.raises(SystemExit):
            main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--tolerance", bad,
                  "--out", str(tmp_path / "bad.csv")])
    assert not (tmp_path / "bad.csv").exists()


def _two_cases_one_without_la(tmp_path) -> dict[str, dict]:
    """Evaluates c1 (an LA with a spike) and c2 (the same predicted without its LA) for LA=3; the CSV rows by case."""
    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", pred, gt)
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c2", np.where(gt == 3, 0, gt).astype(np.uint8), gt)
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", "LA=3",
                 "--out", str(out), "--quiet"]) == 0
    return {r["case"]: r for r in read_rows(out)}


def test_summaries_count_only_finite_values(tmp_path):
    """A case predicted without an LA has an infinite HD (surface-distance's convention): the mean and sd
    are over the finite values and ``n`` counts them, while its Dice of 0 counts."""
    rows = _two_cases_one_without_la(tmp_path)
    assert math.isinf(float(rows["c2"]["hd"])) and float(rows["c2"]["dice"]) == 0.0
    assert float(rows["mean"]["hd"]) == pytest.approx(float(rows["c1"]["hd"]))  # c1's alone
    assert rows["n"]["hd"] == "1" and rows["n"]["dice"] == "2"
    assert float(rows["mean"]["dice"]) == pytest.approx(float(rows["c1"]["dice"]) / 2, rel=1e-5)


def test_labels_of_any_code_float_label_maps_and_values_that_are_label_codes(tmp_path, capsys):
    """Plain folders hold whatever codes --labels names (scar=4); a float map of whole numbers is a label
    map, one of fractions is a problem; codes of the ground truth that were not asked for (wall, RA)
    are no reason to warn, a value that is no code is."""
    gt = np.zeros((6, 10, 12), np.uint8)
    gt[1:5, 2:8, 2:10] = 1
    gt[2:4, 3:7, 3:9] = 4
    _write_pair(tmp_path / "gt", tmp_path / "pred", "scar", gt, gt)
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", "scar=4",
                 "--out", str(out), "--quiet"]) == 0
    (row,) = [r for r in read_rows(out) if r["status"] == "ok"]
    assert (row["label"], float(row["dice"]), float(row["hd"])) == ("scar", 1.0, 0.0)  # identical masks

    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt2", tmp_path / "pred2", "whole", pred.astype(np.float32), gt)
    fraction = pred.astype(np.float32)
    fraction[0, 0, 0] = 0.5
    _write_pair(tmp_path / "gt2", tmp_path / "pred2", "fraction", fraction, gt)
    other = pred.copy()
    other[0, 0, :2] = (2, 7)  # RA is a label code; 7 is not
    _write_pair(tmp_path / "gt2", tmp_path / "pred2", "other", other, gt)
    capsys.readouterr()
    assert main(["--pred", str(tmp_path / "pred2"), "--gt", str(tmp_path / "gt2"), "--labels", "LA=3",
                 "--out", str(out), "--quiet"]) == 1
    rows = {r["case"]: r for r in read_rows(out)}
    assert rows["whole"]["status"] == "ok"
    assert float(rows["whole"]["dice"]) == pytest.approx(metrics.dice(pred == 3, gt == 3), rel=1e-5)
    assert rows["fraction"]["status"].endswith("1 values are not whole numbers (e.g. 0.5): not a label map; "
                                               "give the segmentation")
    err = capsys.readouterr().err
    assert "other.nii.gz also holds 7, neither evaluated nor label codes (0, 1, 2, 3)" in err
    assert "whole.nii.gz also holds" not in err
    huge = pred.astype(np.float64) * -1e10  # whole numbers beyond int32: refused, not wrapped into other codes
    _write_pair(tmp_path / "gt3", tmp_path / "pred3", "huge", huge, gt)
    assert main(["--pred", str(tmp_path / "pred3"), "--gt", str(tmp_path / "gt3"), "--labels", "LA=3",
                 "--out", str(out), "--quiet"]) == 1
    (row,) = [r for r in read_rows(out) if r["case"] == "huge"]
    assert row["status"].endswith("huge.nii.gz: holds whole values as large as 3e+10: not label codes; give the "
                                  "segmentation")
    err = capsys.readouterr().err
    assert "2.14748e+09" not in err and "no prediction or ground truth holds it" not in err  # no case scored


def test_an_ambiguous_prediction_is_reported_as_such(tmp_path):
    """Two label files of one case: a problem row naming both (exit 1), not 'missing prediction' nor
    'no label maps here'."""
    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt", tmp_path / "unused", "b", pred, gt)
    for name in ("b_seg.nii.gz", "b_label.nii.gz"):
        write_volume(tmp_path / "pred" / name, pred, affine_from_spacing(SMALL))
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out), "--quiet"]) == 1
    rows = read_rows(out)
    assert not [r for r in rows if r["status"] == "ok"]
    (row,) = [r for r in rows if r["status"]]
    assert row["case"] == "b" and row["status"].startswith("prediction ambiguous: ")


def test_upper_case_extensions_and_labels_that_name_nothing(tmp_path):
    (tmp_path / "CASE7.NII.GZ").touch()
    (tmp_path / "case8_SEG.NRRD").touch()
    assert find_label_files(tmp_path) == ({"CASE7": tmp_path / "CASE7.NII.GZ", "case8": tmp_path / "case8_SEG.NRRD"},
                                          {})
    for text in ("", ",", " , "):
        with pytest.raises(ValueError, match="--labels names no label"):
            parse_labels(text)


# --- from a new user's walkthrough: unknown labels, summaries, odd ground truth, help, Ctrl-C, grid messages ---


def _lasc_with_perfect_predictions(tmp_path, n):
    """``n`` small LASC phantoms and, under ``tmp_path / "pred"``, their label maps as predictions."""
    ids = write_dataset(tmp_path / "lasc", "lasc", n, shape=(10, 40, 40), spacing=(1.25, 1.25, 1.25),
                        progress=False, noise=0)
    for identifier in ids:
        cavity = read_volume(tmp_path / "lasc" / identifier / "laendo.nrrd")
        wall = read_volume(tmp_path / "lasc" / identifier / "lawall.nrrd").array > 0
        labels = np.where(wall, 1, np.where(cavity.array > 0, 3, 0)).astype(np.uint8)
        write_volume(tmp_path / "pred" / f"{identifier}.nii.gz", labels, like=cavity)
    return ids


def test_a_lasc_case_without_its_wall_file_has_no_wall_score(tmp_path, capsys):
    """lawall.nrrd is optional: without it the wall is unknown, not empty; it is not scored 0 but
    reported in the status and left out of the summary, and said once when no case has it."""
    ids = _lasc_with_perfect_predictions(tmp_path, 2)
    (tmp_path / "lasc" / ids[0] / "lawall.nrrd").unlink()
    out = tmp_path / "m.csv"
    args = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "lasc"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    rows = {(r["case"], r["label"]): r for r in read_rows(out)}
    assert rows[ids[0], "wall"]["status"] == "no wall ground truth" and rows[ids[0], "wall"]["dice"] == ""
    assert rows[ids[0], "LA"]["status"] == "ok" and rows[ids[1], "wall"]["status"] == "ok"
    assert float(rows["mean", "wall"]["dice"]) == 1.0 and rows["n", "wall"]["dice"] == "1"
    assert "1 case without wall ground truth" in capsys.readouterr().out
    (tmp_path / "lasc" / ids[1] / "lawall.nrrd").unlink()
    assert main(args) == 0
    assert {r["status"] for r in read_rows(out) if r["label"] == "wall" and r["case"] in ids} == \
        {"no wall ground truth"}
    said = [line for line in capsys.readouterr().out.splitlines() if "wall" in line]
    assert said == ["  wall: no case has wall ground truth"]


def test_the_printed_summary_counts_values_left_out_and_prints_no_sd_of_nan(tmp_path, capsys):
    """Two cases, one predicted without an LA (infinite HD): the HD summary is c1's alone, says that one
    value was left out, and its one value has no sd, which is said (not printed as 0 or nan)."""
    rows = _two_cases_one_without_la(tmp_path)
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  LA: ")]
    dice = [float(rows[c]["dice"]) for c in ("c1", "c2")]
    assert f"dice {np.mean(dice):.3f} ± {np.std(dice, ddof=1):.3f}, " in line  # both finite: no count
    assert f"hd {float(rows['c1']['hd']):.3f} (1 value, no sd; 1 n/a)" in line and "nan" not in line


def test_a_ground_truth_holding_other_values_gets_a_warning(tmp_path, capsys):
    """A 0/255 mask in a plain ground-truth folder scores 0 everywhere: warned as a prediction would be."""
    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", (pred == 3).astype(np.uint8), np.where(gt == 3, 255, 0))
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", "LA=1",
                 "--out", str(tmp_path / "m.csv"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "c1_gt.nii.gz also holds 255, neither evaluated nor label codes (0, 1, 2, 3): is it a label map?" in err
    assert "c1.nii.gz also holds" not in err


def test_default_labels_leave_out_those_no_file_holds(tmp_path, capsys):
    """No ground truth and no prediction holds RA: no RA rows of NaN by default; a prediction holding
    it, or --labels naming it, keeps them."""
    pred, gt = _la_spike_case()  # wall and LA
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", pred, gt)
    out = tmp_path / "m.csv"
    args = ["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert {r["label"] for r in read_rows(out)} == {"wall", "LA"}  # c1's rows and the summary rows
    assert "RA" not in capsys.readouterr().out
    capsys.readouterr()
    assert main([*args, "--labels", "wall=1,RA=2,LA=3"]) == 0
    assert [r["label"] for r in read_rows(out) if r["case"] == "c1"] == ["wall", "RA", "LA"]
    assert capsys.readouterr().err == ("warning: --labels RA=2: no prediction or ground truth holds it, so its rows "
                                       "are n/a; is the code right?\n")
    pred[0, 0, 0] = 2
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", pred, gt)
    assert main(args) == 0
    assert [r["label"] for r in read_rows(out) if r["case"] == "c1"] == ["wall", "RA", "LA"]


def test_help_explains_the_metric_options_and_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "surfel: surface elements" in text and "voxel: boundary voxel centres" in text
    assert "max: the larger of the two directed" in text and "pooled: the 95th percentile" in text
    assert f"cases evaluated at once (default {min(4, os.cpu_count() or 1)}" in text


def test_ctrl_c_stops_at_the_cases_under_way_with_one_line_and_status_130(tmp_path, monkeypatch, capsys):
    """Interrupted at the first case (one worker): the queued cases do not start, no traceback, no CSV."""
    pred, gt = _la_spike_case()
    for identifier in ("c1", "c2", "c3", "c4"):
        _write_pair(tmp_path / "gt", tmp_path / "pred", identifier, pred, gt)
    started, cancelled = [], threading.Event()

    class Pool(ThreadPoolExecutor):  # tells when the queued cases are cancelled
        def shutdown(self, wait=True, *, cancel_futures=False):
            super().shutdown(wait=False, cancel_futures=cancel_futures)
            cancelled.set()
            super().shutdown(wait=wait)

    def interrupted_at_c1(identifier, *_):
        started.append(identifier)
        if identifier == "c1":
            raise KeyboardInterrupt
        assert cancelled.wait(60)  # under way until the main thread has dropped the queued cases (no race)
        return [], None, []

    monkeypatch.setattr(evaluate, "ThreadPoolExecutor", Pool)
    monkeypatch.setattr(evaluate, "_evaluate_case", interrupted_at_c1)
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--out", str(out), "--quiet",
                 "--workers", "1"]) == 130
    assert started in (["c1"], ["c1", "c2"]) and not out.exists()
    assert capsys.readouterr().err.strip() == f"interrupted: {out} not written"


def test_a_shifted_lasc_cavity_file_is_the_one_blamed(tmp_path):
    """laendo.nrrd moved 5 mm, lawall.nrrd on the image's grid: the message names laendo.nrrd (the
    image tells which label file is off), not the wall file checked against it."""
    ids = _lasc_with_perfect_predictions(tmp_path, 1)
    cavity = read_volume(tmp_path / "lasc" / ids[0] / "laendo.nrrd")
    moved = cavity.affine.copy()
    moved[:3, 3] += 5.0
    write_volume(tmp_path / "lasc" / ids[0] / "laendo.nrrd", cavity.array, moved)
    out = tmp_path / "m.csv"
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "lasc"), "--out", str(out), "--quiet"]) == 1
    (row,) = [r for r in read_rows(out) if r["status"]]
    assert row["status"].startswith(f"{tmp_path / 'lasc' / ids[0] / 'laendo.nrrd'}: label origin differs "
                                    "from the image's (lgemri.nrrd)")


def test_an_nnunet_label_folder_is_read_with_its_datasets_label_table(tmp_path, capsys):
    """--gt DATASET/labelsTs (or labelsTr): the files' values are the dataset's own codes, mapped to the
    predictions' canonical ones by its dataset.json; they were compared as they are (wall Dice ~0.1
    for right predictions). A file of another ending there is named, not reported as missing."""
    import json

    ids = write_dataset(tmp_path / "nn", "nnunet", 2, shape=SHAPE, spacing=SPACING, progress=False, noise=0)
    meta = json.loads((tmp_path / "nn" / "dataset.json").read_text())
    own = {"background": 0, "left_atrium": 1, "LA_wall": 2, "Right-Atrium": 3}  # canonical 3, 1, 2
    (tmp_path / "nn" / "dataset.json").write_text(json.dumps({**meta, "labels": own}))
    to_own = np.array([0, 2, 3, 1], np.uint8)  # canonical code -> the dataset's value
    for identifier in ids:
        label = read_volume(tmp_path / "nn" / "labelsTr" / f"{identifier}.nii.gz")
        write_volume(tmp_path / "pred" / f"{identifier}.nii.gz", label.array, like=label)  # canonical: a perfect one
        write_volume(label.path, to_own[label.array], like=label)
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "nn" / "labelsTr"),
                 "--out", str(tmp_path / "scores.csv"), "--quiet"]) == 0
    rows = [row for row in read_rows(tmp_path / "scores.csv") if row["case"] in ids]
    assert sorted({row["label"] for row in rows}) == ["LA", "RA", "wall"] and len(rows) == 6
    assert all(float(row["dice"]) == 1.0 for row in rows)
    os.rename(tmp_path / "nn" / "labelsTr" / f"{ids[0]}.nii.gz", tmp_path / "nn" / "labelsTr" / f"{ids[0]}.nii")
    assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "nn" / "labelsTr"),
                 "--out", str(tmp_path / "again.csv"), "--quiet"]) == 2
    assert f"1 file(s) miss nnU-Net's naming for dataset.json's file_ending '.nii.gz' (images <case>_0000.nii.gz, " \
           f"labels <case>.nii.gz): labelsTr/{ids[0]}.nii;" in capsys.readouterr().err


def test_backend_triton_evaluates_the_files_on_the_gpu(tmp_path, monkeypatch):
    """``--backend triton``: the label maps read on the CPU are copied to the GPU and scored there, equal to
    the C++ backend (without a GPU: the copies are counted, not made, and the kernels run in Triton's
    interpreter, which would take the CPU maps too)."""
    import torch

    copies, simulated = [], not torch.cuda.is_available()
    if simulated:
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.Tensor, "cuda", lambda self: copies.append(self.shape) or self)
    pred, gt = _la_spike_case()
    _write_pair(tmp_path / "gt", tmp_path / "pred", "c1", pred, gt)
    rows = {}
    for backend in ("cpu", "triton"):
        out = tmp_path / f"{backend}.csv"
        assert main(["--pred", str(tmp_path / "pred"), "--gt", str(tmp_path / "gt"), "--labels", "LA=3,wall=1",
                     "--backend", backend, "--out", str(out), "--quiet"]) == 0
        rows[backend] = [r for r in read_rows(out) if r["status"] == "ok"]
    assert len(rows["cpu"]) == 2
    assert not simulated or copies == [gt.shape] * 2  # the prediction and the ground truth
    for ours, expected in zip(rows["triton"], rows["cpu"], strict=True):
        assert {m: float(ours[m]) for m in evaluate.METRICS} == \
            pytest.approx({m: float(expected[m]) for m in evaluate.METRICS}, rel=1e-6)
