"""bench/run_inference.py's verdict rules: the ≥3× target counts only when ours gives ours-at-fp32's labels
(Dice and volume per label, not only voxel agreement) and MONAI's post-processing ran on the GPU, and
one failing row or check is recorded in its row while the others still run."""
import argparse
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture
def bench(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import run_inference

    return run_inference


def blocks(label_voxels: dict[int, int], shape=(20, 200, 100)) -> np.ndarray:
    """A label map with ``label_voxels[label]`` voxels of each label, in that order from the start."""
    flat = np.zeros(int(np.prod(shape)), np.uint8)
    start = 0
    for label, count in label_voxels.items():
        flat[start:start + count] = label
        start += count
    return flat.reshape(shape)


def test_dice_per_label_matches_a_hand_count_and_leaves_out_the_background(bench):
    ours = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    reference = np.array([0, 1, 1, 0, 2, 3, 3, 0])
    compared = bench.compare_labels(ours, reference)
    assert compared["agreement"] == 5 / 8
    assert set(compared["labels"]) == {1, 2, 3}  # background is no label to judge
    assert compared["labels"][1] == {"voxels": 3, "reference_voxels": 2, "dice": 2 * 2 / 5}
    assert compared["labels"][2] == {"voxels": 2, "reference_voxels": 1, "dice": 2 * 1 / 3}
    assert compared["labels"][3] == {"voxels": 0, "reference_voxels": 2, "dice": 0.0}
    assert bench.dice_text(compared, (1, 3, 5)) == "1: 0.800, 2: 0.667, 3: 0.000, 5: absent"
    assert bench.unjudged(compared, (1, 3, 5)) == [
        "label 1 too small (3 and 2 voxels)", "label 2 too small (2 and 1 voxels)",
        "label 3 too small (0 and 2 voxels)", "label 5 absent from both"]


def test_a_path_losing_a_few_percent_of_a_label_fails_though_voxels_and_dice_look_fine(bench):
    reference = blocks({1: 5000, 2: 3000})
    lossy = reference.copy()
    lossy.flat[4800:5000] = 0  # 4 % of label 1 lost: 99.95 % of voxels equal, Dice 0.98
    compared = bench.compare_labels(lossy, reference)
    assert compared["agreement"] >= bench.AGREEMENT_TOLERANCE and compared["labels"][1]["dice"] > 0.97
    assert bench.label_problems(compared) == ["label 1 4800 voxels vs 5000 in ours fp32 (-4.0 %), allowed ±2 %"]
    flipped = reference.copy()  # boundary flips both ways: the volumes stay
    flipped.flat[4990:5000], flipped.flat[5000:5010] = 2, 1
    assert bench.label_problems(bench.compare_labels(flipped, reference)) == []
    scrambled = reference.copy()
    scrambled.flat[:400] = 2
    scrambled.flat[5000:5400] = 1
    assert bench.label_problems(bench.compare_labels(scrambled, reference)) == [
        "label 1 Dice 0.920 vs ours fp32 (< 0.95)", "label 2 Dice 0.867 vs ours fp32 (< 0.95)"]
    spilled = reference.copy()
    spilled.flat[10000:20000] = 3  # a class the reference lacks, over 2.5 % of the voxels
    assert bench.label_problems(bench.compare_labels(spilled, reference)) == [
        "97.50 % of voxels equal to ours fp32's (< 98 %)", "label 3 Dice 0.000 vs ours fp32 (< 0.95)",
        "label 3 10000 voxels vs 0 in ours fp32, allowed ±2 %"]
    halved = reference.copy()
    halved.flat[2400:5000] = 0
    assert bench.peer_problems(bench.compare_labels(halved, reference)) == [  # a class lost, vs MONAI
        "label 1 2400 voxels vs 5000 in MONAI's, more than 2x apart"]
    assert bench.peer_problems(compared) == []  # a boundary that differs, vs MONAI: information


def setting_rows(bench, ours_labels, *, speedup=4.0, absent_label=None):
    """A setting's rows as end_to_end_rows leaves them: the fast bf16 row's labels are ``ours_labels``."""
    reference = blocks({1: 5000, 2: 3000, 3: 2000})
    codes = bench.LABELS["mbas"] if absent_label is None else (*bench.LABELS["mbas"], absent_label)
    rows = [{"method": bench.REFERENCE, "median_s": 2.0}, {"method": "ours bf16", "median_s": 1.0},
            {"method": "MONAI bf16", "median_s": speedup}, {"method": "ours bf16, folder", "median_s": 0.5}]
    outputs = {bench.REFERENCE: reference, "ours bf16": ours_labels, "MONAI bf16": reference,
               "ours bf16, folder": reference}
    bench.compare_setting(rows, outputs, codes)
    return rows


def test_the_target_is_met_only_when_the_outputs_agree_and_monai_ran_on_the_gpu(bench):
    same = blocks({1: 5000, 2: 3000, 3: 2000})
    best, text = bench.verdict(setting_rows(bench, same), None)
    assert best["method"] == "ours bf16" and text == ">=3x met (4.00x)"  # the folder row is not the candidate
    assert bench.verdict(setting_rows(bench, same, speedup=2.0), None)[1] == ">=3x NOT met (2.00x)"
    lossy = same.copy()
    lossy.flat[4800:5000] = 0
    assert bench.verdict(setting_rows(bench, lossy), None)[1] == \
        "NOT met (4.00x): outputs differ: label 1 4800 voxels vs 5000 in ours fp32 (-4.0 %), allowed ±2 %"
    assert bench.verdict(setting_rows(bench, same), "ModuleNotFoundError: No module named 'cucim'")[1] == \
        "no verdict: MONAI's post-processing ran on the host (cuCIM unusable: ModuleNotFoundError: No module named " \
        "'cucim')"
    assert bench.verdict(setting_rows(bench, same, absent_label=4), None)[1] == \
        ">=3x met (4.00x); not judged: label 4 absent from both"  # said, not counted as agreeing


def test_a_failed_reference_or_peer_row_gives_no_verdict(bench):
    rows = setting_rows(bench, blocks({1: 5000, 2: 3000, 3: 2000}))
    rows[2] = {"method": "MONAI bf16", "error": "RuntimeError: CUDA error"}
    assert bench.verdict(rows, None)[1] == "no verdict: MONAI bf16 failed"
    assert bench.verdict([{"method": bench.REFERENCE, "error": "x"}, rows[2]], None) == \
        (None, "no verdict: every row of ours failed")


def test_one_failing_method_is_recorded_in_its_row_and_the_others_run(bench, monkeypatch, capsys, tmp_path):
    written, engines = {}, []
    labels = blocks({1: 5000, 2: 3000, 3: 2000})

    def method_row(args, runs, kind, overlap, engine, settings, paths, device, out):
        engines.append(engine)
        if len(engines) == 2:  # "ours fp32", after the reference
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB\ndetails")
        written[out / paths[1].name] = labels
        return {"median_s": 3.0 if engine == "monai" else 1.0, **{f"{p}_s": 0.1 for p in bench.PHASES}}

    def folder_row(args, model, overlap, paths, device, out, *, cuda_graph, precision):
        written[out / paths[1].name] = labels
        return {"median_s": 0.9}

    monkeypatch.setattr(bench, "method_row", method_row)
    monkeypatch.setattr(bench, "folder_row", folder_row)
    monkeypatch.setattr(bench, "read_volume", lambda path: SimpleNamespace(array=written[path]))
    args = argparse.Namespace(overlaps=[0.5], pipelines=["mbas"], cpu_smoke=False, no_cuda_graph=True)
    rows, bars = [], []
    runs = {"mbas_stage2": Path("runs/mbas_stage2")}
    paths = [Path("volume_0.nii.gz"), Path("volume_1.nii.gz")]
    bench.end_to_end_rows(args, runs, paths, torch.device("cpu"), tmp_path / "out", rows, bars, None)
    assert [row["method"] for row in rows] == [bench.REFERENCE, "ours fp32", "MONAI fp32",
                                               "ours fp32, folder (I/O overlapped, mean)"]
    assert rows[1]["error"] == "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"
    assert "Traceback" in capsys.readouterr().err
    assert len(bars) == 2 and rows[2]["speedup_vs_monai"] == 1.0 and rows[3]["labels_agree"] == "yes"
    assert rows[0]["target"] == ">=3x met (3.00x)"  # the candidate that ran: ours at fp32

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # the session's time limit stops everything (run_until_stopped saves the rows)

    monkeypatch.setattr(bench, "method_row", interrupted)
    with pytest.raises(KeyboardInterrupt):
        bench.end_to_end_rows(args, runs, paths, torch.device("cpu"), tmp_path / "again", rows, bars, None)
    assert len(rows) == 4


@pytest.mark.parametrize("patch", [(20, 256, 256), (28, 256, 224), (8, 32, 32), (7, 25, 9)])
@pytest.mark.parametrize("overlap", [0.5, 0.0, 0.25])
def test_the_network_check_volume_gets_the_same_windows_from_both_engines(bench, patch, overlap):
    """Ours is checked against MONAI on a volume where both place the same windows (with our Gaussian)."""
    from monai.data.utils import dense_patch_slices
    from monai.inferers.utils import _get_scan_interval

    from c2w_fast.infer import window_positions

    shape = tuple(bench.same_windows_volume(patch, overlap, "cpu").shape[1:])
    monai = dense_patch_slices(shape, patch, _get_scan_interval(shape, patch, 3, (overlap,) * 3))
    assert window_positions(shape, patch, 1 - overlap) == [tuple(s.start for s in window) for window in monai]


def test_a_failing_monai_network_row_leaves_ours_and_says_what_was_not_checked(bench, monkeypatch, tmp_path):
    import monai.inferers

    torch.set_num_threads(1)
    runs = bench.make_runs(tmp_path, smoke=True)
    args = argparse.Namespace(overlaps=[0.5], cpu_smoke=True, batch_size=2, no_cuda_graph=True)
    rows = []
    bench.network_rows(args, runs, torch.device("cpu"), rows)
    assert rows[0]["method"] == "ours" and rows[0]["agrees"] == "yes"  # vs MONAI given the same windows
    assert rows[1]["max_abs_logit_diff_vs_ours"] > 0  # MONAI's own Gaussian: information

    def fails(*args, **kwargs):
        raise RuntimeError("cuDNN error: CUDNN_STATUS_NOT_SUPPORTED")

    monkeypatch.setattr(monai.inferers, "sliding_window_inference", fails)
    rows = []
    bench.network_rows(args, runs, torch.device("cpu"), rows)
    assert [row["method"] for row in rows] == ["ours", "MONAI"]
    assert "median_ms" in rows[0] and "ratio" not in rows[0]
    assert rows[0]["agrees"] == "not checked: RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"
    assert rows[1]["error"] == "RuntimeError: cuDNN error: CUDNN_STATUS_NOT_SUPPORTED"
