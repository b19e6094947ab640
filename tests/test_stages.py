"""c2w_fast.stages on hand-made stages whose networks' outputs are known voxel by voxel: the C2W ROI around
the localiser's atrium pasted back, the MBAS cascade region, the stage grid, per-case result sharing,
RoiWarning, the signed-distance channel and the checks of the images a stage takes."""
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from c2w_fast import config as configs
from c2w_fast.data.orientation import CANONICAL
from c2w_fast.data.preprocess import Box
from c2w_fast.ops import ball, signed_distance
from c2w_fast.stages import InferenceOptions, Predictor, RoiWarning, StageLoader, cavity_distance
from c2w_fast.training import checkpoint

SPACING = (2.0, 2.0, 2.0)


class Bright(nn.Module):
    """Logits 0 for the background and 10 x (first input channel) for class ``label``: ``label`` where the
    z-scored image is above its mean. Voxel by voxel, so windows, their overlap and padding change nothing."""

    def __init__(self, classes: int = 2, label: int = 1):
        super().__init__()
        self.classes, self.label, self.inputs = classes, label, []

    def forward(self, x):
        self.inputs.append(x.detach().clone())
        logits = torch.full((x.shape[0], self.classes, *x.shape[2:]), -100.0, dtype=x.dtype, device=x.device)
        logits[:, 0] = 0.0
        logits[:, self.label] = 10 * x[:, 0]
        return logits


@pytest.fixture
def add_run(tmp_path, monkeypatch):
    """``add_run(name, model, config, spacing, fold)``: a run folder ``tmp_path/name`` (config.toml,
    ``fold``/checkpoint_best.pt) that :class:`StageLoader` loads as this model and config, trained at
    ``spacing`` (``checkpoint.load_stage``, which it imports when it loads, answers from memory)."""
    saved = {}
    monkeypatch.setattr(checkpoint, "load_stage", lambda path: saved[Path(path).parent.parent.name,
                                                                     Path(path).parent.name])

    def add(name, model, config, spacing=None, fold="final"):
        (tmp_path / name / fold).mkdir(parents=True)
        (tmp_path / name / "config.toml").touch()
        (tmp_path / name / fold / "checkpoint_best.pt").touch()
        saved[name, fold] = checkpoint.TrainedStage(model, config, spacing, CANONICAL)
        return tmp_path / name

    return add


def _config(preset, *items):
    return configs.load(preset, list(items))


def _blobs(shape=(16, 24, 24)):
    """An image (0 background, 1 bright): the atrium, a 6 x 10 x 8 box, and a small bright spot far from it."""
    image = np.zeros(shape, np.float32)
    image[3:9, 10:20, 2:10] = 1.0
    image[13:15, 1:3, 20:22] = 1.0
    return image


def _c2w(add_run, localizer_spacing=(4.0, 4.0, 4.0), *localizer_items):
    """A cavity stage (2 mm grid, ROI 4 x 6 x 6) placed by a localiser (whole volume at ``localizer_spacing``)."""
    localizer = add_run("localizer", Bright(), _config(
        "c2w_localizer", f"data.spacing={list(localizer_spacing)}", "train.patch_size=[8,8,8]", *localizer_items))
    cavity = add_run("cavity", Bright(), _config(
        "c2w_cavity", "roi.size=[4,6,6]", f"roi.localizer=\"{localizer}\"", f"data.spacing={list(SPACING)}"))
    return StageLoader(options=InferenceOptions(step=1.0)).load(cavity)


def _localizer_centre(image):
    """Centre of mass (native voxels) of the largest bright component: where the localiser puts the ROI."""
    components, _ = ndimage.label(image > 0, structure=np.ones((3, 3, 3)))
    largest = components == 1 + np.argmax(np.bincount(components.ravel())[1:])
    return ndimage.center_of_mass(largest)


def test_c2w_cavity_stage_predicts_inside_the_roi_around_the_localisers_atrium(add_run):
    """The ROI (stage grid = native grid here) is centred on the centre of mass of the localiser's largest
    component, rounded; the cavity stage's labels are its network's inside the ROI and background outside."""
    cavity = _c2w(add_run)
    image = _blobs()
    centre = _localizer_centre(image)
    assert cavity.pipeline.roi_centre(image, SPACING) == pytest.approx(centre)
    box = Box.around(centre, (4, 6, 6))
    inside = np.zeros(image.shape, bool)
    inside[tuple(slice(s, s + n) for s, n in zip(box.start, box.size))] = True
    labels = cavity.predict(image, SPACING)
    assert labels.dtype == np.uint8 and labels.shape == image.shape
    np.testing.assert_array_equal(labels, (image > 0) & inside)
    probabilities = cavity.run(torch.from_numpy(image), SPACING, probabilities=True).probabilities
    assert (probabilities[0][torch.from_numpy(~inside)] == 1).all()


def test_the_roi_centre_is_carried_to_the_stage_grid_with_voxel_centres_aligned(add_run):
    """A 1 mm case for a 2 mm cavity stage: native voxel p (centre at p + 0.5 voxels of 1 mm) is at
    (p + 0.5) / 2 - 0.5 in the stage grid. The localiser keeps all its components here: the centre is its
    largest one's all the same."""
    cavity = _c2w(add_run, (1.0, 1.0, 1.0), "eval.keep_largest=false")
    image = _blobs((16, 24, 24))
    centre = _localizer_centre(image)
    stage_centre = cavity.pipeline.roi_centre(image, (1.0, 1.0, 1.0))
    assert stage_centre == pytest.approx(tuple((c + 0.5) / 2 - 0.5 for c in centre))


def test_a_case_without_atrium_centres_the_roi_on_the_volume_with_a_warning(add_run):
    cavity = _c2w(add_run)
    image = np.zeros((16, 24, 24), np.float32)
    with pytest.warns(RoiWarning, match="found no atrium in a case"):
        centre = cavity.pipeline.roi_centre(image, (1.0, 1.0, 1.0))
    assert centre == (3.5, 5.5, 5.5)  # the middle of the 8 x 12 x 12 voxels of the 2 mm grid


def test_a_ground_truth_roi_is_centred_on_the_la_or_else_on_every_label_and_warns_without_any(add_run):
    cavity = add_run("cavity", Bright(), _config("c2w_cavity", "roi.size=[4,6,6]", "roi.center=\"ground_truth\"",
                                                 f"data.spacing={list(SPACING)}"))
    pipeline = StageLoader().load(cavity).pipeline
    labels = np.zeros((16, 24, 24), np.uint8)
    labels[2:4, 2:4, 2:4] = 1  # wall
    labels[10:12, 14:18, 4:6] = 3  # LA
    assert pipeline.roi_centre(np.zeros(labels.shape), SPACING, labels) == pytest.approx((10.5, 15.5, 4.5))
    labels[labels == 3] = 2  # no LA: every label
    assert pipeline.roi_centre(np.zeros(labels.shape), SPACING, labels) == \
        pytest.approx(ndimage.center_of_mass(labels > 0))
    with pytest.warns(RoiWarning, match="the labels found no atrium in a case"):
        assert pipeline.roi_centre(np.zeros(labels.shape), SPACING, np.zeros_like(labels)) == (7.5, 11.5, 11.5)


def test_mbas_stage2_predicts_inside_the_dilated_largest_stage1_component(add_run):
    """Stage 1's union → its largest 26-connected component → dilated by a ball of radius 2 voxels: stage 2's
    labels (here LA where the image is bright) are zero outside that region, its softmax (1, 0, 0, 0)."""
    stage1 = add_run("stage1", Bright(), _config("mbas_stage1", f"data.spacing={list(SPACING)}",
                                                 "train.patch_size=[8,8,8]"))
    stage2 = add_run("stage2", Bright(4, 3), _config("mbas_stage2", f"cascade.stage1=\"{stage1}\"",
                                                     "train.patch_size=[8,8,8]", "eval.keep_largest=false"))
    predictor = StageLoader(options=InferenceOptions(step=1.0)).load(stage2)
    image = _blobs()
    components, _ = ndimage.label(image > 0, structure=np.ones((3, 3, 3)))
    region = ndimage.binary_dilation(components == 1, structure=ball(2))  # the atrium box is component 1
    labels = predictor.predict(image, SPACING)
    np.testing.assert_array_equal(labels, np.where(region & (image > 0), 3, 0))
    x = torch.from_numpy(image)
    np.testing.assert_array_equal(predictor.pipeline.region(image, SPACING), region)
    assert isinstance(predictor.pipeline.region(image, SPACING), np.ndarray)
    assert isinstance(predictor.pipeline.region(x, SPACING), torch.Tensor)
    probabilities = predictor.run(x, SPACING, probabilities=True).probabilities
    outside = torch.from_numpy(~region)
    assert (probabilities[0][outside] == 1).all() and not probabilities[1:][:, outside].any()
    # a stage 1 trained on the classes (1 wall, 2 RA, 3 LA) gives its union too: here the RA
    multiclass = add_run("stage1_multiclass", Bright(4, 2), _config(
        "mbas_stage1", "data.target=\"multiclass\"", f"data.spacing={list(SPACING)}", "train.patch_size=[8,8,8]"))
    on_classes = add_run("stage2_on_classes", Bright(4, 3), _config(
        "mbas_stage2", f"cascade.stage1=\"{multiclass}\"", "train.patch_size=[8,8,8]"))
    np.testing.assert_array_equal(StageLoader().load(on_classes).pipeline.region(image, SPACING), region)
    ground_truth = np.zeros(image.shape, np.uint8)
    ground_truth[13:15, 1:3, 20:22] = 2
    oracle = add_run("oracle", Bright(4, 3), _config("mbas_stage2", "cascade.mask_source=\"ground_truth\"",
                                                    "train.patch_size=[8,8,8]"))
    oracle_region = StageLoader().load(oracle).pipeline.region(image, SPACING, ground_truth)
    np.testing.assert_array_equal(oracle_region, ndimage.binary_dilation(ground_truth > 0, structure=ball(2)))


def test_one_tensor_within_one_case_is_reused_only_for_the_same_spacing_labels_and_outputs(add_run):
    cavity = _c2w(add_run)
    x = torch.from_numpy(_blobs())
    labels = np.zeros(x.shape, np.uint8)
    with cavity.loader.case():
        first = cavity.run(x, SPACING)
        assert cavity.run(x, SPACING) is first and first.probabilities is None
        with_probabilities = cavity.run(x, SPACING, probabilities=True)
        assert with_probabilities.probabilities is not None
        assert cavity.run(x, SPACING) is with_probabilities  # the probabilities kept serve a call without
        other = cavity.run(x, (1.0, 1.0, 1.0))  # another spacing: another grid, computed again
        assert other is not with_probabilities and cavity.run(x, (1.0, 1.0, 1.0)) is other
        assert cavity.run(x, (1.0, 1.0, 1.0), labels) is not other  # other labels: computed again


def test_a_tensor_case_gives_tensors_and_an_array_case_arrays(add_run):
    cavity = _c2w(add_run)
    image = _blobs()
    for given, kind in ((image, np.ndarray), (torch.from_numpy(image), torch.Tensor)):
        assert isinstance(cavity.predict(given, SPACING), kind)
        assert isinstance(cavity.logits(given, SPACING), kind)
        assert isinstance(cavity.pipeline.input_channels(given, SPACING), kind)


def test_the_network_sees_the_roi_of_the_volume_z_scored_with_the_whole_volumes_statistics(add_run):
    cavity = _c2w(add_run)
    image = _blobs()
    cavity.predict(image, SPACING)
    box = Box.around(_localizer_centre(image), (4, 6, 6))
    roi = image[tuple(slice(s, s + n) for s, n in zip(box.start, box.size))]
    expected = (roi - image.mean(dtype=np.float64)) / image.std(dtype=np.float64)
    np.testing.assert_allclose(cavity.model.inputs[-1][0, 0].numpy(), expected, rtol=1e-5)
    fine = image.repeat(2, 0).repeat(2, 1).repeat(2, 2)  # the same case at 1 mm: resampled to the 2 mm grid first
    cavity.predict(fine, (1.0, 1.0, 1.0))
    np.testing.assert_allclose(cavity.model.inputs[-1][0, 0].numpy(), expected, rtol=1e-5)


def test_the_stage_grid_takes_the_configs_spacing_over_the_recorded_one(add_run):
    cavity = add_run("cavity", Bright(), _config("c2w_cavity", "data.spacing=[2.0,2.0,2.0]", "roi.size=[]",
                                                 "train.patch_size=[8,8,8]"), spacing=(4.0, 4.0, 4.0))
    native = add_run("native", Bright(), _config("c2w_cavity", "roi.size=[]", "train.patch_size=[8,8,8]"),
                     spacing=(4.0, 4.0, 4.0))
    loader = StageLoader()
    assert loader.load(cavity).pipeline.stage_grid((16, 24, 24), (1.0, 1.0, 1.0)) == ((8, 12, 12), (2.0, 2.0, 2.0))
    assert loader.load(native).pipeline.stage_grid((16, 24, 24), (1.0, 1.0, 1.0)) == ((4, 6, 6), (4.0, 4.0, 4.0))


def test_the_stage_grid_refuses_a_volume_thinner_than_one_model_voxel_along_any_axis(add_run):
    cavity = add_run("cavity", Bright(), _config("c2w_cavity", "data.spacing=[2.0,2.0,2.0]", "roi.size=[]",
                                                 "train.patch_size=[8,8,8]"))
    pipeline = StageLoader().load(cavity).pipeline
    with pytest.raises(ValueError, match="less than one voxel of the model's"):
        pipeline.stage_grid((16, 24, 1), (1.0, 1.0, 1.0))  # 1 mm across x, the model's voxels are 2 mm
    assert pipeline.stage_grid((16, 24, 2), (1.0, 1.0, 1.0)) == ((8, 12, 1), SPACING)
    with pytest.raises(ValueError, match="is the header's voxel size in mm"):
        pipeline.stage_grid((1024, 2048, 2048), (2.0, 2.0, 2.0 / 1.1))  # 2^31 x 1.1 voxels


@pytest.mark.parametrize("image, error, message", [
    (np.zeros((4, 5)), ValueError, r"image must be 3D \(z, y, x\), got shape \(4, 5\)"),
    (np.zeros((1, 4, 5, 6)), ValueError, r"image must be 3D \(z, y, x\), got shape \(1, 4, 5, 6\)"),
    (np.zeros((4, 5, 6), np.complex64), TypeError, "image must hold real intensities, got torch.complex64"),
    (np.array([np.inf, -np.inf, np.nan, 1.0], np.float32).reshape(1, 2, 2), ValueError, "image has 3 NaN/inf voxels"),
])
def test_images_a_stage_cannot_take_are_refused(add_run, image, error, message):
    cavity = _c2w(add_run)
    with pytest.raises(error, match=message):
        cavity.predict(image, SPACING)


def test_a_spacing_that_is_no_voxel_size_is_refused(add_run):
    cavity = _c2w(add_run)
    for call in (cavity.predict, cavity.logits, cavity.run):
        with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm"):
            call(_blobs(), (2.0, 0.0, 2.0))


def test_a_predictor_runs_its_network_in_eval_mode_with_the_options_window_settings():
    model = nn.Sequential(nn.Conv3d(1, 2, 1), nn.Dropout3d(0.5))
    config = _config("c2w_cavity", "roi.size=[]", "train.patch_size=[8,8,8]", "eval.step=0.75", "eval.gaussian=false")
    predictor = Predictor(model.train(), config)
    assert not predictor.model.training
    assert predictor.window_settings() == dict(step=0.75, gaussian=False, batch_size=2)
    options = InferenceOptions(step=1.0, batch_size=3, mirror_axes=(1, 2), precision="bf16")
    predictor = Predictor(model, config, loader=StageLoader(options=options))
    assert predictor.window_settings() == dict(step=1.0, gaussian=False, batch_size=3)
    assert predictor.runner.flips == [(), (3,), (4,), (3, 4)] and predictor.runner.dtype == torch.bfloat16


@pytest.mark.parametrize("kind", [np.asarray, torch.from_numpy])
def test_cavity_distance_is_the_signed_distance_in_scale_units_clipped(kind):
    """Negative inside, positive outside, / scale_mm, clipped to [-1, 1]; no cavity: +1 (outside) everywhere."""
    cavity = np.zeros((6, 20, 20), bool)
    cavity[2:4, 5:15, 5:15] = True
    spacing = (3.0, 1.0, 1.0)
    distance = cavity_distance(kind(cavity), spacing, 4.0)
    reference = np.clip(np.asarray(signed_distance(cavity, spacing=spacing)) / 4.0, -1, 1)
    np.testing.assert_allclose(np.asarray(distance), reference, rtol=1e-6)
    assert np.asarray(distance).dtype == np.float32 and (np.abs(reference) < 1).any() and (reference == 1).any()
    empty = cavity_distance(kind(np.zeros((2, 3, 4), bool)), spacing, 4.0)
    assert type(empty) is type(kind(cavity)) and np.array_equal(np.asarray(empty), np.ones((2, 3, 4), np.float32))


def test_keep_largest_keeps_each_class_largest_component_only_when_configured(add_run):
    image = _blobs()
    components, _ = ndimage.label(image > 0, structure=np.ones((3, 3, 3)))
    loader = StageLoader(options=InferenceOptions(step=1.0))
    for keep in (True, False):
        run = add_run(f"keep_{keep}", Bright(), _config("c2w_cavity", "roi.size=[]", "train.patch_size=[8,8,8]",
                                                        f"eval.keep_largest={str(keep).lower()}"))
        np.testing.assert_array_equal(loader.load(run).predict(image, SPACING), components == 1 if keep else image > 0)


def test_the_window_is_the_training_patch_else_the_roi(add_run):
    loader = StageLoader()
    patch = add_run("patch", Bright(), _config("c2w_cavity", "roi.size=[4,6,6]", "roi.center=\"ground_truth\"",
                                               "train.patch_size=[8,8,8]"))
    roi = add_run("roi", Bright(), _config("c2w_cavity", "roi.size=[4,6,6]", "roi.center=\"ground_truth\""))
    assert loader.load(patch).pipeline.patch_size == (8, 8, 8)
    assert loader.load(roi).pipeline.patch_size == (4, 6, 6)


def test_a_helper_stage_comes_from_the_fold_of_the_stage_that_uses_it(add_run):
    """A fold_0 cavity run's localiser is the localiser's fold_0 where it has one, else its final run."""
    fold0, final = Bright(), Bright()
    add_run("localizer", final, _config("c2w_localizer", "train.patch_size=[8,8,8]"))
    localizer = add_run("localizer", fold0, _config("c2w_localizer", "train.patch_size=[8,8,8]"), fold="fold_0")
    config = _config("c2w_cavity", "roi.size=[4,6,6]", f"roi.localizer=\"{localizer}\"")
    add_run("cavity", Bright(), config)
    cavity = add_run("cavity", Bright(), config, fold="fold_0")
    loader = StageLoader()
    assert loader.load(cavity, "fold_0").pipeline.helper("roi.localizer", str(localizer)).model is fold0
    assert loader.load(cavity).pipeline.helper("roi.localizer", str(localizer)).model is final
    # a wall run's fold_0 whose cavity run has only its final run: that cavity's localiser is the final one too
    final_only = add_run("cavity_final_only", Bright(), config)
    assert loader.load(final_only, "fold_0").pipeline.helper("roi.localizer", str(localizer)).model is final


def test_the_distance_channel_is_the_cavity_stages_signed_distance_cropped_to_the_roi(add_run):
    """C2W wall stage with ``data.sdf_channel``: channel 1 is the cavity run's prediction as a signed distance
    in mm / ``sdf_scale_mm``, clipped, cropped to the same ROI as the image; a case without atrium warns once
    although the wall and cavity stages both place their ROI with the localiser."""
    cavity = _c2w(add_run)
    wall = add_run("wall", Bright(), _config(
        "c2w_wall", "roi.size=[4,6,6]", f"roi.localizer=\"{cavity.pipeline.run_dir.parent / 'localizer'}\"",
        f"data.spacing={list(SPACING)}", "data.sdf_channel=true", f"data.sdf_from=\"{cavity.pipeline.run_dir}\"",
        "data.sdf_scale_mm=4.0"))
    wall = cavity.loader.load(wall)
    image = _blobs()
    wall.predict(image, SPACING)
    distance = np.clip(np.asarray(signed_distance(cavity.predict(image, SPACING) > 0, spacing=SPACING)) / 4.0, -1, 1)
    box = Box.around(_localizer_centre(image), (4, 6, 6))
    seen = wall.model.inputs[-1][0]
    np.testing.assert_allclose(seen[1].numpy(), distance[tuple(slice(s, s + n) for s, n in zip(box.start, box.size))],
                               rtol=1e-6)
    assert (seen[1] < 0).all() and (seen[1] > -1).any()  # the ROI lies in the cavity, its centre deeper than 4 mm
    with pytest.warns(RoiWarning) as caught:
        wall.logits(np.zeros(image.shape, np.float32), SPACING)
    assert len([w for w in caught if issubclass(w.category, RoiWarning)]) == 1


def test_helper_pipelines_lists_the_helpers_of_helpers_and_refuses_a_cycle(add_run, tmp_path):
    cavity = _c2w(add_run)
    wall = add_run("wall", Bright(), _config(
        "c2w_wall", "roi.size=[4,6,6]", f"roi.localizer=\"{tmp_path / 'localizer'}\"", "data.sdf_channel=true",
        f"data.sdf_from=\"{tmp_path / 'cavity'}\""))
    helpers = cavity.loader.load(wall).pipeline.helper_pipelines()
    assert [h.run_dir.name for h in helpers] == ["localizer", "cavity", "localizer"]  # the cavity run's own too
    looped = add_run("looped", Bright(), _config("c2w_localizer", "roi.size=[4,6,6]",
                                                 f"roi.localizer=\"{tmp_path / 'looped'}\""))
    with pytest.raises(ValueError, match=re.escape(f"the helper runs form a cycle: {looped} -> {looped}")):
        StageLoader().load(looped).pipeline.helper_pipelines()


def test_a_run_folder_without_the_fold_names_each_checkpoint_it_looked_for_once(tmp_path):
    from c2w_fast.stages import resolve_checkpoint

    (tmp_path / "fold_1").mkdir()
    (tmp_path / "fold_1" / "checkpoint_best.pt").touch()
    (tmp_path / "empty").mkdir()
    for fold, looked_for in (("final", "final"), (None, "final"), ("fold_2", "fold_2 or final")):
        paths = " or ".join(f"{name}/checkpoint_best.pt" for name in looked_for.split(" or "))
        with pytest.raises(FileNotFoundError, match=re.escape(f"no {paths} in this run folder;")):
            resolve_checkpoint(tmp_path, fold)
        with pytest.raises(FileNotFoundError, match=re.escape(f"no {paths} in this run folder (is this")):
            resolve_checkpoint(tmp_path / "empty", fold)
