"""What a run records besides its checkpoints: metrics.csv and progress.png (runlog), the per-class
evaluation rows and the Table-1 summary (evaluation), and the training / validation volumes (prepare)."""
import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from c2w_fast import config as cfg
from c2w_fast.data.layouts import discover_cases, load_cases
from c2w_fast.data.preprocess import target_labels
from c2w_fast.stages import StagePipeline
from c2w_fast.training import evaluation, prepare, runlog
from training_helpers import CONFIGS, RESNEXT, write_phantoms


@pytest.fixture(scope="module")
def lasc(tmp_path_factory):
    return write_phantoms(tmp_path_factory.mktemp("lasc"), n=2)


# --- metrics.csv and progress.png -------------------------------------------------------------


def test_metrics_csv_keeps_six_digits_and_reads_back_numbers_as_floats(tmp_path):
    rows = [{"epoch": 0, "phase": "A", "lr": 1 / 3, "train_loss": 2 / 3},
            {"epoch": 1, "phase": "", "lr": 1e-7 / 3, "train_loss": math.inf, "val_dice": math.nan}]
    runlog.write_csv(tmp_path / "metrics.csv", rows)
    lines = (tmp_path / "metrics.csv").read_text().splitlines()
    assert lines[0] == "epoch,phase,lr,train_loss,val_dice"  # the union of the keys, first seen first
    assert lines[1] == "0,A,0.333333,0.666667,"  # 6 significant digits; a key a row lacks is an empty cell
    assert lines[2] == "1,,3.33333e-08,inf,nan"
    back = runlog.read_csv(tmp_path / "metrics.csv")
    assert back[0] == {"epoch": 0.0, "phase": "A", "lr": 0.333333, "train_loss": 0.666667, "val_dice": ""}
    assert back[1]["lr"] == 3.33333e-08 and back[1]["train_loss"] == math.inf and math.isnan(back[1]["val_dice"])
    assert all(isinstance(row[key], float) for row in back for key in ("epoch", "lr", "train_loss"))


def _drawn(monkeypatch, path, rows):
    """progress.png of ``rows``, and what each of its axes showed: {y label: (y scale, y limits, {line: points})}."""
    seen = {}
    real_savefig = Figure.savefig

    def savefig(figure, *args, **kwargs):
        for axes in figure.axes:
            lines = {line.get_label(): list(zip(line.get_xdata(), line.get_ydata())) for line in axes.get_lines()}
            seen[axes.get_ylabel()] = (axes.get_yscale(), axes.get_ylim(), lines)
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    runlog.plot_progress(path, rows)
    return seen


def test_progress_png_shows_the_losses_the_dice_and_the_learning_rate_per_epoch(tmp_path, monkeypatch):
    rows = [{"epoch": 0, "lr": 1e-3, "train_loss": 0.9, "val_loss": 0.8, "val_dice": 0.2},
            {"epoch": 1, "lr": 1e-4, "train_loss": 0.7},  # not validated this epoch
            {"epoch": 2, "lr": 1e-5, "train_loss": 0.5, "val_loss": math.nan, "val_dice": 0.6}]
    seen = _drawn(monkeypatch, tmp_path / "progress.png", rows)
    assert (tmp_path / "progress.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    loss_scale, _, losses = seen["loss"]
    assert losses == {"train_loss": [(0, 0.9), (1, 0.7), (2, 0.5)], "val_loss": [(0, 0.8)]}  # finite values only
    dice_scale, dice_limits, dice = seen["validation Dice"]
    assert dice == {"val_dice": [(0, 0.2), (2, 0.6)]} and dice_limits == (0, 1)
    lr_scale, _, lr = seen["learning rate"]
    assert lr_scale == "log" and list(lr.values()) == [[(0, 1e-3), (1, 1e-4), (2, 1e-5)]]


def test_progress_png_is_replaced_whole_so_a_viewer_that_has_it_open_keeps_a_complete_image(tmp_path):
    path = tmp_path / "progress.png"
    rows = [{"epoch": 0, "lr": 1e-3, "train_loss": 0.9}]
    runlog.plot_progress(path, rows)
    first = path.read_bytes()
    with open(path, "rb") as viewer:
        runlog.plot_progress(path, rows + [{"epoch": 1, "lr": 1e-4, "train_loss": 0.4}])
        assert viewer.read() == first
    assert path.read_bytes() != first


# --- per-class rows and Table 1 -----------------------------------------------------------------


def _boxes(shape=(12, 16, 16)):
    """Canonical-free class indices: three separate boxes of classes 1, 2 and 3."""
    labels = np.zeros(shape, np.uint8)
    labels[2:6, 2:6, 2:6] = 1
    labels[2:6, 9:13, 2:6] = 2
    labels[6:10, 4:12, 9:14] = 3
    return labels


def test_class_metrics_scores_class_index_c_under_the_c_th_name():
    truth = _boxes()
    prediction = np.where(truth == 2, 0, truth)  # RA missed, wall and LA exact
    rows = evaluation.class_metrics(prediction, truth, (1.0, 1.0, 1.0), ("wall", "RA", "LA"), 1.0)
    assert [r["class"] for r in rows] == ["wall", "RA", "LA"]
    assert [r["dice"] for r in rows] == [1.0, 0.0, 1.0] and [r["overlap"] for r in rows] == [1.0, 0.0, 1.0]
    assert rows[0]["hd95"] == rows[0]["assd"] == 0.0 and rows[0]["surface_dice"] == 1.0


def test_the_stage_2_region_row_is_scored_against_the_union_of_every_foreground_class():
    truth = _boxes()
    cascade = cfg.CascadeConfig(keep_largest=False, dilation_radius=0)  # the region is the predicted union itself
    rows = evaluation.class_metrics(truth, truth, (1.0, 1.0, 1.0), ("wall", "RA", "LA"), 1.0, cascade)
    assert rows[-1]["class"] == evaluation.REGION_CLASS and rows[-1]["dice"] == 1.0


class _TruthShifted:
    """A predictor that predicts the case's ground truth shifted by one voxel along z."""

    def __init__(self, config):
        self.config = config

    def predict(self, image, spacing, labels):
        return np.roll(target_labels(labels, self.config.data.target), 1, axis=0)


def test_evaluate_cases_scores_the_stage_target_at_the_configured_tolerance(lasc):
    """Phantom voxels are 2 mm, so a one-voxel shift moves every surface point by at most 2 mm: all
    within a 2.5 mm tolerance (at the default 1 mm not), while the overlap is imperfect. The LA is
    canonical code 3, class 1 of the cavity stage (canonical code 1 is the wall)."""
    config = cfg.load(CONFIGS / "c2w_cavity.toml", ["eval.tolerance_mm=2.5"])
    cases = discover_cases(lasc)
    rows = evaluation.evaluate_cases(_TruthShifted(config), cases)
    assert [(r["case"], r["class"]) for r in rows] == [(case.id, "LA") for case in cases]
    for row in rows:
        assert row["surface_dice"] == 1.0 and 0.0 < row["dice"] < 1.0 and 0.0 < row["hd95"] <= 2.0


def test_table1_is_mean_and_sample_sd_of_each_class_over_cases_with_non_finite_values_counted():
    wall = [{"class": "wall", "dice": d, "surface_dice": s, "hd95": h, "assd": a}
            for d, s, h, a in ((0.8, 0.5, 1.0, math.nan), (0.9, 0.7, math.inf, math.nan), (1.0, 0.9, 3.0, math.nan))]
    other = [{"class": "LA", "dice": 0.0, "surface_dice": 0.0, "hd95": 50.0, "assd": 9.0}]
    single = [dict(wall[0], assd=2.0)]
    text = evaluation.table1({"C2W": wall + other, "one case": single}, "wall")
    header, rule, c2w, one = text.splitlines()
    assert header.split("  ")[0].strip() == "Method" and "Wall Dice ↑" in header and "HD95 (mm) ↓" in header
    assert set(rule.replace("  ", "")) == {"-"}
    # sample sd (n - 1): dice 0.8, 0.9, 1.0 -> 0.900 ± 0.100; HD95 of the two finite values 1 and 3 -> 2.000 ± 1.414
    cells = [cell.strip() for cell in c2w.split("  ") if cell.strip()]
    assert cells == ["C2W (n=3)", "0.900 ± 0.100", "0.700 ± 0.200", "2.000 ± 1.414 (1 n/a)", "n/a"]
    cells = [cell.strip() for cell in one.split("  ") if cell.strip()]
    assert cells == ["one case (n=1)", "0.800 (1 value, no sd)", "0.500 (1 value, no sd)", "1.000 (1 value, no sd)",
                     "2.000 (1 value, no sd)"]
    assert "GT covered" not in header  # only the stage-2 region's table has it: what stage 2 can reach at most
    region = [{"class": evaluation.REGION_CLASS, "dice": 0.5, "surface_dice": 0.4, "hd95": 6.0, "assd": 2.0,
               "overlap": value} for value in (0.99, 0.97)]
    header, _, row = evaluation.table1({"stage 1": region + wall}, evaluation.REGION_CLASS).splitlines()
    assert header.split("  ")[-1].strip() == "GT covered ↑"
    assert [cell.strip() for cell in row.split("  ") if cell.strip()][-1] == "0.980 ± 0.014"


# --- training and validation volumes ----------------------------------------------------------


def _config(lasc, *items):
    return cfg.load(CONFIGS / "c2w_cavity.toml", RESNEXT + [f"data.root=\"{lasc}\"", *items])


def test_volumes_are_resampled_to_the_stage_grid_labels_by_nearest_voxel(lasc):
    """Phantoms of 2 mm voxels on a 1 mm stage grid: every label voxel becomes 2 x 2 x 2 voxels."""
    cases = discover_cases(lasc)
    config = _config(lasc, "roi.size=[]", "train.patch_size=[8,16,16]", "data.spacing=[1,1,1]")
    assert prepare.stage_spacing(config, cases) == (1.0, 1.0, 1.0)
    assert prepare.stage_spacing(_config(lasc), cases) == tuple(cases[0].spacing) == (2.0, 2.0, 2.0)
    volumes = prepare.prepare_volumes(cases, config, StagePipeline(config), training=False, desc="val")
    for volume, data in zip(volumes, load_cases(cases)):
        assert volume.id == data.case.id and volume.spacing == (1.0, 1.0, 1.0)
        assert volume.target.shape == volume.image.shape[1:] == tuple(2 * n for n in data.labels.shape)
        assert set(np.unique(volume.target)) <= {0, 1}
        assert volume.target.sum() == 8 * (data.labels == 3).sum()  # the LA, canonical code 3


def test_training_volumes_keep_the_augmentation_margin_around_the_validation_roi(lasc):
    """Validation volumes are the ROI exactly; training volumes are the loader's crop around the same
    centre, so their centre is the validation volume; the loss region is cropped and resampled alike."""
    cases = discover_cases(lasc)
    config = _config(lasc, "loss.region_mask=true", "cascade.mask_source=\"ground_truth\"", "data.spacing=[1,1,1]")
    pipeline = StagePipeline(config)
    val = prepare.prepare_volumes(cases, config, pipeline, training=False, desc="val")
    train = prepare.prepare_volumes(cases, config, pipeline, training=True, desc="train")
    crop = prepare.crop_size(config, (1.0, 1.0, 1.0))
    assert all(c >= r for c, r in zip(crop, config.roi.size)) and crop != tuple(config.roi.size)
    for v, t in zip(val, train):
        assert v.target.shape == v.region.shape == v.image.shape[1:] == tuple(config.roi.size)
        assert t.target.shape == t.region.shape == t.image.shape[1:] == crop
        centre = tuple(slice((c - r) // 2, (c - r) // 2 + r) for c, r in zip(crop, config.roi.size))
        assert np.array_equal(t.target[centre], v.target) and np.array_equal(t.region[centre], v.region)
        np.testing.assert_array_equal(t.image[(slice(None), *centre)], v.image)
        assert v.target.any() and not (v.target.astype(bool) & ~v.region).any()  # the dilated union holds the LA


def test_the_loader_crops_around_the_training_patch_when_there_is_one():
    still = ["augment.rotation_prob=0", "augment.elastic_prob=0", "augment.scaling_prob=0"]  # no margin needed
    config = cfg.load(CONFIGS / "c2w_cavity.toml", RESNEXT + still + ["train.patch_size=[8,16,16]"])
    assert prepare.crop_size(config, (1.0, 1.0, 1.0)) == (8, 16, 16)
    config = cfg.load(CONFIGS / "c2w_cavity.toml", RESNEXT + still)
    assert prepare.crop_size(config, (1.0, 1.0, 1.0)) == tuple(config.roi.size)


def test_sampled_foreground_locations_follow_the_run_seed_and_quantiles_only_channel_0(lasc):
    """More foreground voxels than the loader stores: the stored ones are drawn with ``run.seed``.
    A second input channel leaves the histogram-matching quantiles of the image channel alone."""
    cases = discover_cases(lasc)[:1]
    items = ["roi.size=[]", "train.patch_size=[8,16,16]", "data.spacing=[1,1,1]", "data.target=\"atria\""]
    drawn = []
    for seed in (1, 1, 2):
        config = _config(lasc, *items, f"run.seed={seed}")
        pipeline = StagePipeline(config)
        volume, = prepare.prepare_volumes(cases, config, pipeline, training=True, desc="train")
        drawn.append(volume.locations[1])
    assert len(drawn[0]) < volume.target.sum()  # subsampled
    assert np.array_equal(drawn[0], drawn[1]) and not np.array_equal(drawn[0], drawn[2])

    one_channel = pipeline.input_channels
    pipeline.input_channels = lambda *args: np.concatenate([one_channel(*args), 100 + one_channel(*args)])
    two, = prepare.prepare_volumes(cases, config, pipeline, training=True, desc="train")
    assert two.image.shape[0] == 2 and np.array_equal(two.quantiles, volume.quantiles)
