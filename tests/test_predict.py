"""python -m c2w_fast.predict on tiny trained runs: the C2W and MBAS pipelines, geometry of any
orientation, resampling to the training grid, probability and thickness maps, bad input."""
import shutil
from contextlib import contextmanager
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
import torch
from scipy import ndimage

from c2w_fast import predict, stages, train
from c2w_fast.data.io import Volume, affine_from_spacing, read_volume, write_volume
from c2w_fast.data.phantom import make_phantom
from c2w_fast.data.plausibility import implausible_image
from c2w_fast.stages import InferenceOptions, Predictor, RoiWarning, StageLoader, StagePrediction, locate_stage
from c2w_fast.ops import ball
from c2w_fast.training import checkpoint
from training_helpers import CONFIGS, PHANTOM, RESNEXT, SPLITS, set_args, stored_as, write_phantoms

LOCALIZER = ["model.overrides.features=[4,8]", "model.overrides.strides=[1,2]", "model.overrides.kernels=[3,3]",
             "model.overrides.blocks_per_stage=[1,1]", "model.overrides.decoder_convs=[1]",
             "data.spacing=[4.0,4.0,4.0]", "train.patch_size=[8,16,16]"]
CASCADE = ["model.overrides.features=[4,8,8]", "model.overrides.strides=[1,[1,2,2],2]",
           "model.overrides.kernels=[[1,3,3],3,3]", "model.overrides.blocks_per_stage=[1,1,1]",
           "model.overrides.decoder_convs=[1,1]", "train.iterations_per_epoch=2", "train.val_patches=4"]


def _train(preset, data, out, items, *extra):
    args = ["--config", str(CONFIGS / preset), "--data", str(data), "--out", str(out), "--fold", "final",
            "--epochs", "1", *extra] + set_args(SPLITS + items)
    assert train.main(args) == 0


@pytest.fixture(scope="module")
def c2w(tmp_path_factory):
    """LASC phantoms and the C2W runs trained on them for one epoch: localiser, cavity, wall."""
    root = tmp_path_factory.mktemp("c2w")
    data = write_phantoms(root / "lasc")
    roi = ["roi.center=\"localizer\"", f"roi.localizer=\"{root / 'runs' / 'localizer'}\""]
    _train("c2w_localizer.toml", data, root / "runs" / "localizer", LOCALIZER)
    _train("c2w_cavity.toml", data, root / "runs" / "cavity", RESNEXT + roi)
    _train("c2w_wall.toml", data, root / "runs" / "wall", RESNEXT + roi, "--init-from", str(root / "runs" / "cavity"))
    return data, root / "runs"


@pytest.fixture(scope="module")
def mbas(tmp_path_factory):
    root = tmp_path_factory.mktemp("mbas")
    data = write_phantoms(root / "mbas", n=5, layout="mbas")
    _train("mbas_stage1.toml", data, root / "stage1",
           CASCADE + ["data.spacing=[4.0,3.0,3.0]", "train.patch_size=[8,16,16]"])
    _train("mbas_stage2.toml", data, root / "stage2", CASCADE + ["train.patch_size=[8,24,24]",
                                                                 f"cascade.stage1=\"{root / 'stage1'}\""])
    return data, root


def test_c2w_wall_run_predicts_cavity_and_wall_as_its_two_stages(c2w, tmp_path):
    data, runs = c2w
    assert predict.main(["--model", str(runs / "wall"), "--in", str(data), "--out", str(tmp_path / "out")]) == 0
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == [f"phantom{i:03d}.nrrd" for i in range(6)]
    wall, cavity = Predictor.load(runs / "wall"), Predictor.load(runs / "cavity")
    for name in written[:3]:
        image = read_volume(data / name[:-5] / "lgemri.nrrd")
        out = read_volume(tmp_path / "out" / name)
        assert out.shape == image.shape and np.array_equal(out.affine, image.affine) and out.array.dtype == np.uint8
        expected = np.where(wall.predict(image.array, image.spacing) == 1, 1,
                            np.where(cavity.predict(image.array, image.spacing) == 1, 3, 0))
        assert np.array_equal(out.array, expected)
    assert np.array_equal(predict.load_pipeline(runs / "wall").predict(image.array, image.spacing).labels, out.array)
    assert set(np.unique(out.array)) <= {0, 1, 3} and (out.array == 1).any()
    logits = cavity.logits(image.array, image.spacing)  # the cavity stage keeps every component
    assert logits.shape == (2, *image.shape)
    assert np.array_equal(logits.argmax(0), cavity.predict(image.array, image.spacing))


def test_mbas_cascade_stays_inside_the_dilated_stage1_region(mbas, tmp_path):
    data, runs = mbas
    assert predict.main(["--model", str(runs / "stage2"), "--in", str(data), "--out", str(tmp_path),
                         "--overlap", "0", "--batch-size", "3"]) == 0
    stage1 = Predictor.load(runs / "stage1", options=InferenceOptions(step=1.0))  # --overlap applies to both
    stage2 = Predictor.load(runs / "stage2", options=InferenceOptions(step=1.0))
    for case in ("MBAS_001", "MBAS_004"):
        image = read_volume(data / case / f"{case}_gt.nii.gz")  # the image, as the MBAS release names it
        out = read_volume(tmp_path / f"{case}.nii.gz")
        union = stage1.predict(image.array, image.spacing) > 0
        labels, count = ndimage.label(union, structure=np.ones((3, 3, 3)))
        if count:
            union = labels == 1 + np.argmax(np.bincount(labels.ravel())[1:])
        region = ndimage.binary_dilation(union, structure=ball(2))
        assert not out.array[~region].any()
        assert np.array_equal(out.array, stage2.predict(image.array, image.spacing))
        assert set(np.unique(out.array)) <= {0, 1, 2, 3}


def test_probability_and_thickness_maps(c2w, tmp_path, capsys):
    data, runs = c2w
    case = data / "phantom004" / "lgemri.nrrd"
    args = ["--model", str(runs / "wall"), "--in", str(case), "--out", str(tmp_path / "out"),
            "--probabilities", str(tmp_path / "prob"), "--thickness", str(tmp_path / "thick")]
    assert predict.main(args) == 0
    labels = read_volume(tmp_path / "out" / "phantom004.nrrd").array  # a LASC image is named after its case folder
    wall = read_volume(tmp_path / "prob" / "phantom004_wall.nrrd").array
    cavity = read_volume(tmp_path / "prob" / "phantom004_LA.nrrd").array
    assert wall.dtype == np.float32 and 0 <= wall.min() and wall.max() <= 1
    assert (wall[labels == 1] >= 0.5).all() and (cavity[labels == 3] >= 0.5).all()
    thickness = read_volume(tmp_path / "thick" / "phantom004.nrrd").array
    assert np.array_equal(thickness > 0, labels == 1)
    rows = (tmp_path / "thick" / "phantom004.csv").read_text().splitlines()
    assert rows[0] == "case,region,voxels,mean_mm,median_mm,p95_mm" and rows[1].startswith("phantom004,wall,")
    cavity_only = ["--model", str(runs / "cavity"), "--in", str(case), "--out", str(tmp_path / "out2"),
                   "--thickness", str(tmp_path / "thick2"), "--timings"]
    assert predict.main(cavity_only) == 0
    err = capsys.readouterr().err
    assert "note: --thickness needs a wall and a cavity; this pipeline predicts" in err
    assert not (tmp_path / "thick2").exists()  # no empty folder left behind
    phases = [line.split()[0] for line in err.splitlines() if line.startswith("  ") and line.rstrip().endswith("%")]
    assert phases == ["read", "preprocess", "network", "stitch", "postprocess", "write"]


def _oblique_affine(spacing, lps=False):
    angle = np.deg2rad(17.0)
    rotation = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = affine_from_spacing(spacing, origin=(12.5, -40.25, 7.0), direction=rotation @ np.diag([1, -1, 1]))
    return np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine if lps else affine


def test_oblique_nifti_and_lps_nrrd_keep_their_exact_geometry(c2w, tmp_path):
    _, runs = c2w
    phantom = make_phantom(**PHANTOM, seed=11, label_right_atrium=False)
    image = (phantom.image * 200).astype(np.int16)
    affine = _oblique_affine(PHANTOM["spacing"])
    # NIfTI with a qform only (sform code 0), as some scanners write it
    file_affine = affine @ np.array([[0, 0, 1, 0], [0, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 1]])
    nifti = nib.Nifti1Image(image.transpose(2, 1, 0), None)
    nifti.set_qform(file_affine, code=1)
    nifti.set_sform(None, code=0)
    nib.save(nifti, tmp_path / "oblique.nii.gz")
    write_volume(tmp_path / "oblique_lps.nrrd", image, _oblique_affine(PHANTOM["spacing"], lps=True))
    for name in ("oblique.nii.gz", "oblique_lps.nrrd"):
        assert predict.main(["--model", str(runs / "wall"), "--in", str(tmp_path / name),
                             "--out", str(tmp_path / "out")]) == 0
    given, written = nib.load(tmp_path / "oblique.nii.gz").header, nib.load(tmp_path / "out" / "oblique.nii.gz").header
    assert written["qform_code"] == 1 and written["sform_code"] == 0
    for key in ("quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y", "qoffset_z", "pixdim", "dim"):
        assert np.array_equal(written[key], given[key]), key
    given, written = nrrd.read_header(str(tmp_path / "oblique_lps.nrrd")), \
        nrrd.read_header(str(tmp_path / "out" / "oblique_lps.nrrd"))
    assert written["space"] == given["space"] == "left-posterior-superior"
    assert np.array_equal(written["space directions"], given["space directions"])
    assert np.array_equal(written["space origin"], given["space origin"])
    assert list(written["sizes"]) == list(given["sizes"])


ARRANGED = (("sagittal.nrrd", (2, 0, 1), (True, False, True)), ("coronal.nii.gz", (1, 0, 2), (False, True, False)))


def test_a_scan_stored_in_another_voxel_arrangement_gets_the_same_segmentation(c2w, tmp_path):
    """The pipeline rearranges each image to the arrangement its stages were trained in, and its outputs
    back: a phantom stored sagittally (NRRD, LPS) or coronally gets the axial file's labels and
    probabilities, moved with its voxels, on its own grid. Its voxels are finer across than along z
    (each stage resamples to its own grid): a voxel size left in the file's order shows."""
    data, runs = c2w
    coarse = read_volume(data / "phantom001" / "lgemri.nrrd")
    axial = Volume(coarse.array.repeat(2, 1).repeat(2, 2), coarse.affine @ np.diag([1.0, 0.5, 0.5, 1.0]))
    write_volume(tmp_path / "in" / "axial.nii.gz", axial.array, axial.affine)
    for name, order, flips in ARRANGED:
        write_volume(tmp_path / "in" / name, *stored_as(axial.array, axial.affine, order, flips))
    assert predict.main(["--model", str(runs / "wall"), "--in", str(tmp_path / "in"), "--out", str(tmp_path / "out"),
                         "--probabilities", str(tmp_path / "probs")]) == 0
    labels = read_volume(tmp_path / "out" / "axial.nii.gz").array
    assert set(np.unique(labels)) == {0, 1, 3}
    wall = read_volume(tmp_path / "probs" / "axial_wall.nii.gz").array
    for name, order, flips in ARRANGED:
        case = name.split(".")[0]
        given, written = read_volume(tmp_path / "in" / name), read_volume(tmp_path / "out" / name)
        np.testing.assert_allclose(written.affine, given.affine, atol=1e-5)
        assert np.array_equal(written.array, stored_as(labels, axial.affine, order, flips)[0]), case
        probability = read_volume(tmp_path / "probs" / name.replace(case, f"{case}_wall")).array
        np.testing.assert_allclose(probability, stored_as(wall, axial.affine, order, flips)[0], atol=1e-6)


def _strip_orientation(runs: Path, copy: Path, names) -> None:
    """``runs`` copied to ``copy`` with the voxel arrangement left out of ``names``' checkpoints, as
    c2w_fast wrote them before it recorded one."""
    shutil.copytree(runs, copy)
    for name in names:
        path = copy / name / "final" / "checkpoint_best.pt"
        payload = checkpoint.load(path)
        assert payload.pop("orientation") == "SAR"
        checkpoint.save(path, {k: v for k, v in payload.items() if k != "format"})


def test_runs_from_before_the_recorded_arrangement_predict_in_file_order(c2w, tmp_path, capsys):
    """Old checkpoints were trained on each file's own voxel order and are applied so; a pipeline
    mixing old and new runs is refused before any case, naming the old one."""
    data, runs = c2w
    axial = read_volume(data / "phantom001" / "lgemri.nrrd")
    name, order, flips = ARRANGED[0]
    sagittal = stored_as(axial.array, axial.affine, order, flips)
    write_volume(tmp_path / name, *sagittal)
    _strip_orientation(runs, tmp_path / "old", ("localizer", "cavity", "wall"))
    helpers = {"run.init_from": tmp_path / "old" / "cavity", "roi.localizer": tmp_path / "old" / "localizer"}
    use = [item for key, path in helpers.items() for item in ("--use", f"{key}={path}")]
    assert predict.main(["--model", str(tmp_path / "old" / "wall"), "--in", str(tmp_path / name),
                         "--out", str(tmp_path / "out"), *use]) == 0
    pipeline = predict.load_pipeline(tmp_path / "old" / "wall", runs=helpers)
    assert pipeline.orientation is None
    file_order = pipeline.predict(sagittal[0], Volume(*sagittal).spacing)
    assert np.array_equal(read_volume(tmp_path / "out" / name).array, file_order.labels)
    _strip_orientation(runs, tmp_path / "old_cavity", ("cavity",))
    assert predict.main(["--model", str(runs / "wall"), "--in", str(tmp_path / name), "--out", str(tmp_path / "out2"),
                         "--use", f"run.init_from={tmp_path / 'old_cavity' / 'cavity'}"]) == 2
    assert f"run.init_from = '{tmp_path / 'old_cavity' / 'cavity'}' was trained on volumes in each file's own" \
        in capsys.readouterr().err
    _strip_orientation(runs, tmp_path / "mixed", ("localizer",))
    assert predict.main(["--model", str(tmp_path / "mixed" / "wall"), "--in", str(tmp_path / name), "--out",
                         str(tmp_path / "out2"), "--use", f"roi.localizer={tmp_path / 'mixed' / 'localizer'}"]) == 2
    err = capsys.readouterr().err
    assert (f"roi.localizer = '{tmp_path / 'mixed' / 'localizer'}' was trained on volumes in each file's own voxel "
            "order") in err and "retrain the older run" in err
    assert not (tmp_path / "out2").exists()


def test_the_pipeline_takes_a_spacing_or_an_affine(c2w):
    _, runs = c2w
    pipeline = predict.load_pipeline(runs / "cavity")
    image = np.zeros((20, 40, 40), np.float32)
    for arguments in ({}, {"spacing": (2.0, 2.0, 2.0), "affine": np.eye(4)}):
        with pytest.raises(ValueError, match="give the image's spacing or its affine"):
            pipeline.predict(image, **arguments)
    with pytest.raises(ValueError, match=r"affine must be a 4 x 4 matrix, got shape \(3, 3\)"):
        pipeline.predict(image, affine=np.eye(3))
    for spacing in ((2.0, 2.0), (2.0, 2.0, 2.0, 1.0), (2.0, 0.0, 2.0)):
        with pytest.raises(ValueError, match=r"spacing must have 3 positive values \(z, y, x\) in mm"):
            pipeline.predict(image, spacing)
    flat = np.eye(4)
    flat[:3, 2] = 0.0
    with pytest.raises(ValueError, match=r"the affine's voxel size must have 3 positive values"):
        pipeline.predict(image, affine=flat)
    flat[:3, 2] = flat[:3, 1]
    with pytest.raises(ValueError, match=r"the affine's voxel axes are parallel"):
        pipeline.predict(image, affine=flat)
    with pytest.raises(ValueError, match="affine must be finite, but holds NaN or inf"):
        pipeline.predict(image, affine=np.full((4, 4), np.nan))


def test_a_tensor_image_gets_tensor_outputs_equal_to_the_numpy_ones(c2w):
    """Torch in (any layout or integer type), tensors out on the pipeline's device: the numpy call's labels
    and probabilities, and the plausibility warnings read from the tensor."""
    data, runs = c2w
    pipeline = predict.load_pipeline(runs / "wall")
    volume = read_volume(data / "phantom002" / "lgemri.nrrd")
    expected = pipeline.predict(volume.array, affine=volume.affine, probabilities=True)
    transposed = torch.from_numpy(np.ascontiguousarray(volume.array.transpose(2, 1, 0))).permute(2, 1, 0)
    for image in (torch.from_numpy(volume.array.copy()), transposed):
        got = pipeline.predict(image, affine=volume.affine, probabilities=True)
        assert isinstance(got.labels, torch.Tensor) and got.labels.dtype == torch.uint8
        assert np.array_equal(got.labels.numpy(), expected.labels)
        assert got.probabilities.keys() == expected.probabilities.keys() == {"wall", "LA"}
        for name, probability in got.probabilities.items():
            np.testing.assert_array_equal(probability.numpy(), expected.probabilities[name])
    unsigned = volume.array.astype(np.uint16)  # as many scanners store it; torch reduces no uint16 tensor
    assert np.array_equal(pipeline.predict(torch.from_numpy(unsigned), affine=volume.affine).labels.numpy(),
                          pipeline.predict(unsigned, affine=volume.affine).labels)
    for dtype in (torch.int16, torch.uint16, torch.bfloat16):
        with pytest.warns(UserWarning, match=r"the image is constant \(every voxel 7(\.0)?\)"):
            pipeline.predict(torch.full(volume.shape, 7, dtype=dtype), volume.spacing)
    with pytest.raises(ValueError, match=r"image must be 3D \(z, y, x\), got shape \(1, 20, 40, 40\)"):
        pipeline.predict(torch.zeros(1, 20, 40, 40), volume.spacing)
    with pytest.raises(TypeError, match="image must hold real intensities, got torch.complex64"):
        pipeline.predict(torch.zeros(20, 40, 40, dtype=torch.complex64), volume.spacing)


@pytest.mark.cuda
def test_a_cuda_tensor_image_is_predicted_on_the_gpu(c2w):
    data, runs = c2w
    volume = read_volume(data / "phantom002" / "lgemri.nrrd")
    options = InferenceOptions(precision="fp32")
    cpu = predict.load_pipeline(runs / "wall", options=options).predict(volume.array, affine=volume.affine)
    gpu = predict.load_pipeline(runs / "wall", device="cuda", options=options).predict(
        torch.from_numpy(volume.array).cuda(), affine=volume.affine)
    assert gpu.labels.is_cuda
    assert (gpu.labels.cpu().numpy() == cpu.labels).mean() >= 0.999


class RecordsInput(torch.nn.Module):
    def __init__(self, inner):
        super().__init__()
        self.inner, self.inputs = inner, []

    def forward(self, x):
        self.inputs.append(x.clone())
        return self.inner(x)


def test_a_case_on_another_grid_is_resampled_to_the_training_grid_and_back(c2w):
    """The cavity stage was trained at 2 mm: the same phantom given at 1 mm (each voxel repeated
    twice per axis) reaches the network exactly as the 2 mm case, and comes back at 1 mm."""
    data, runs = c2w
    predictor = StageLoader().load(runs / "cavity")
    assert predictor.pipeline.spacing == (2.0, 2.0, 2.0)  # recorded in the checkpoint
    predictor.model = RecordsInput(predictor.model).eval()
    coarse = read_volume(data / "phantom001" / "lgemri.nrrd").array.astype(np.float32)
    fine = coarse.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    coarse_labels = predictor.predict(coarse, (2.0, 2.0, 2.0))
    fine_labels = predictor.predict(fine, (1.0, 1.0, 1.0))
    first, second = predictor.model.inputs
    torch.testing.assert_close(second, first, atol=1e-5, rtol=0)
    assert fine_labels.shape == fine.shape
    upsampled = coarse_labels.repeat(2, 0).repeat(2, 1).repeat(2, 2)
    assert (fine_labels == upsampled).mean() > 0.97
    assert predictor.pipeline.stage_grid((20, 40, 40), (2.0015, 2.0, 1.999)) == ((20, 40, 40), (2.0015, 2.0, 1.999))


def test_a_stage_reuses_a_result_only_within_one_case(c2w):
    """Within one ``StageLoader.case()`` a tensor's result is reused while nothing has changed;
    a call outside one computes afresh, so a buffer refilled with the next case through numpy
    (a write torch does not see) is never taken for the last case."""
    data, runs = c2w
    predictor = StageLoader().load(runs / "cavity")
    image = read_volume(data / "phantom001" / "lgemri.nrrd").array.astype(np.float32)
    other = read_volume(data / "phantom002" / "lgemri.nrrd").array.astype(np.float32)
    spacing = (2.0, 2.0, 2.0)
    fresh, fresh_other = predictor.predict(image.copy(), spacing), predictor.predict(other.copy(), spacing)
    assert not np.array_equal(fresh, fresh_other)
    buffer = image.copy()
    x = torch.from_numpy(buffer)
    with predictor.loader.case():
        first = predictor.predict(x, spacing)
        assert predictor.predict(x, spacing) is first  # the same tensor in one case: reused
        x.copy_(torch.from_numpy(other))  # changed in place: computed again
        assert np.array_equal(predictor.predict(x, spacing).numpy(), fresh_other)
        predictor.predict(x, spacing).zero_()  # a caller's edit of the result is not handed out again
        assert np.array_equal(predictor.predict(x, spacing).numpy(), fresh_other)
    buffer[:] = image  # the next case, read into the same buffer through numpy
    assert np.array_equal(predictor.predict(x, spacing).numpy(), fresh)
    array = image.copy()
    labels = predictor.predict(array, spacing)
    array[:] = other  # arrays are never reused
    assert np.array_equal(predictor.predict(array, spacing), fresh_other)
    assert np.array_equal(labels, fresh)
    flipped = predictor.predict(np.ascontiguousarray(image[:, ::-1])[:, ::-1], spacing)  # negative strides
    assert np.array_equal(flipped, fresh)


def test_probabilities_are_background_outside_the_roi_and_the_cascade_region(c2w, mbas):
    """Outside the C2W ROI and outside MBAS stage 2's region the softmax is exactly (1, 0, ...)."""
    from c2w_fast.data.preprocess import Box, paste, resample

    data, runs = c2w
    cavity = Predictor.load(runs / "cavity")
    image = read_volume(data / "phantom001" / "lgemri.nrrd")
    x = torch.from_numpy(image.array.astype(np.float32))
    probs = cavity.run(x, image.spacing, probabilities=True).probabilities
    pipeline = cavity.pipeline
    shape, _ = pipeline.stage_grid(tuple(x.shape), image.spacing)
    box = Box.around(pipeline.roi_centre(x, image.spacing), pipeline.config.roi.size)
    inside = resample(paste(torch.ones(box.size), box, shape), tuple(x.shape))
    outside = inside == 0  # not even partly inside after resampling to the native grid
    assert outside.any()
    assert (probs[0][outside] == 1).all() and not probs[1:][:, outside].any()

    data, runs = mbas
    stage2 = Predictor.load(runs / "stage2")
    image = read_volume(data / "MBAS_001" / "MBAS_001_gt.nii.gz")
    x = torch.from_numpy(image.array.astype(np.float32))
    probs = stage2.run(x, image.spacing, probabilities=True).probabilities
    region = stage2.pipeline.region(x, image.spacing)
    assert (~region).any()
    assert (probs[0][~region] == 1).all() and not probs[1:][:, ~region].any()
    torch.testing.assert_close(probs.sum(0), torch.ones(x.shape))


def test_the_stages_of_a_case_find_the_localisers_atrium_once(c2w, monkeypatch):
    data, runs = c2w
    loader = StageLoader()
    cavity, wall = loader.load(runs / "cavity"), loader.load(runs / "wall")
    calls = []
    monkeypatch.setattr(stages, "atrium_mask", lambda labels: calls.append(1) or labels > 0)
    volume = read_volume(data / "phantom001" / "lgemri.nrrd")
    image = torch.from_numpy(volume.array.astype(np.float32))
    with loader.case():
        centres = [stage.pipeline.roi_centre(image, (2.0, 2.0, 2.0)) for stage in (cavity, wall, cavity)]
        assert len(calls) == 1 and centres[0] == centres[1] == centres[2]
        image.add_(1.0)  # another image (changed in place): found again
        cavity.pipeline.roi_centre(image, (2.0, 2.0, 2.0))
        assert len(calls) == 2
    cavity.pipeline.roi_centre(image, (2.0, 2.0, 2.0))  # another case: found again
    assert len(calls) == 3
    predict.load_pipeline(runs / "wall").predict(volume.array, volume.spacing)  # its cavity and wall stages: once
    assert len(calls) == 4


def test_an_atrium_the_localiser_misses_centres_the_roi_with_a_warning(c2w, monkeypatch):
    data, runs = c2w
    cavity = Predictor.load(runs / "cavity")
    image = read_volume(data / "phantom000" / "lgemri.nrrd")
    localizer = cavity.pipeline.helper("roi.localizer", cavity.pipeline.config.roi.localizer)
    monkeypatch.setattr(localizer, "run", lambda x, *args: StagePrediction(torch.zeros(x.shape, dtype=torch.uint8)))
    with pytest.warns(RoiWarning, match=r"the localiser \(.*localizer\) found no atrium in a case: its ROI is "
                                        r"centred on the volume") as caught:
        for _ in range(3):  # every case is named, not just the first
            centre = cavity.pipeline.roi_centre(image.array, image.spacing)
    assert len([w for w in caught if issubclass(w.category, RoiWarning)]) == 3
    shape, _ = cavity.pipeline.stage_grid(image.shape, image.spacing)
    assert centre == tuple((n - 1) / 2 for n in shape)


def test_a_case_whose_atrium_the_localiser_misses_warns_once(c2w, monkeypatch):
    """The C2W cavity and wall stages share the localiser's result, and its one warning."""
    data, runs = c2w
    monkeypatch.setattr(stages, "atrium_mask", lambda labels: torch.zeros(labels.shape, dtype=torch.bool))
    volume = read_volume(data / "phantom001" / "lgemri.nrrd")
    with pytest.warns(RoiWarning, match="localizer\\) found no atrium in a case") as caught:
        predict.load_pipeline(runs / "wall").predict(volume.array, volume.spacing)
    assert len([w for w in caught if issubclass(w.category, RoiWarning)]) == 1


def test_bad_model_folders_are_named(c2w, tmp_path, capsys):
    data, runs = c2w
    case = str(data / "phantom000" / "lgemri.nrrd")
    (tmp_path / "empty").mkdir()
    assert predict.main(["--model", str(tmp_path / "empty"), "--in", case, "--out", str(tmp_path / "o")]) == 2
    assert "no final/checkpoint_best.pt" in capsys.readouterr().err
    assert predict.main(["--model", str(runs), "--in", case, "--out", str(tmp_path / "o")]) == 2  # runs' parent
    assert "(it holds the run folders cavity, localizer, wall: name one of them)" in capsys.readouterr().err
    (tmp_path / "junk" / "final").mkdir(parents=True)
    (tmp_path / "junk" / "final" / "checkpoint_best.pt").write_bytes(b"not a checkpoint")
    assert predict.main(["--model", str(tmp_path / "junk"), "--in", case, "--out", str(tmp_path / "o")]) == 2
    assert "checkpoint_best.pt: not a readable checkpoint" in capsys.readouterr().err
    payload = checkpoint.load(runs / "cavity" / "final" / "checkpoint_best.pt")
    (tmp_path / "noconfig" / "final").mkdir(parents=True)
    checkpoint.save(tmp_path / "noconfig" / "final" / "checkpoint_best.pt",
                    {k: v for k, v in payload.items() if k not in ("config", "format")})
    assert predict.main(["--model", str(tmp_path / "noconfig"), "--in", case, "--out", str(tmp_path / "o")]) == 2
    assert "incomplete c2w_fast checkpoint, no config in it" in capsys.readouterr().err
    assert predict.main(["--model", str(runs / "wall"), "--fold", "fold_0", "--in", case,
                         "--out", str(tmp_path / "o")]) == 2
    assert "no fold_0/checkpoint_best.pt in this run folder; trained folds: final" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _copy_recording(run: Path, copy: Path, section: str, key: str, value: str) -> None:
    """``run``'s final checkpoint saved under ``copy`` with one recorded config value changed."""
    payload = checkpoint.load(run / "final" / "checkpoint_best.pt")
    payload["config"][section][key] = value
    (copy / "final").mkdir(parents=True)
    checkpoint.save(copy / "final" / "checkpoint_best.pt", {k: v for k, v in payload.items() if k != "format"})


def test_a_wall_run_whose_cavity_run_is_gone(c2w, tmp_path, capsys):
    data, runs = c2w
    _copy_recording(runs / "wall", tmp_path / "wall", "run", "init_from", str(tmp_path / "elsewhere" / "c2w_cavity"))
    case = str(data / "phantom000" / "lgemri.nrrd")
    args = ["--model", str(tmp_path / "wall"), "--in", case, "--out", str(tmp_path / "o")]
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert f"run.init_from = '{tmp_path / 'elsewhere' / 'c2w_cavity'}'" in err and "no such run folder" in err
    assert "--use KEY=PATH" in err
    assert predict.main(args + ["--no-cavity"]) == 0
    assert set(np.unique(read_volume(tmp_path / "o" / "phantom000.nrrd").array)) <= {0, 1}
    assert predict.main(args + ["--use", f"run.init_from={runs / 'cavity'}", "--out", str(tmp_path / "o2")]) == 0
    assert set(np.unique(read_volume(tmp_path / "o2" / "phantom000.nrrd").array)) <= {0, 1, 3}
    assert predict.main(args + ["--use", "roi.nothing=x"]) == 2
    assert "--use takes KEY=PATH with KEY one of run.init_from" in capsys.readouterr().err
    assert predict.main(args + ["--use", f"run.init_from={runs / 'cavity'}", "--use",
                                f"cascade.stage1={runs / 'cavity'}"]) == 2
    err = capsys.readouterr().err
    assert "--use cascade.stage1: the wall pipeline" in err and "uses no such helper run" in err


def test_a_missing_localizer_run_is_an_error_before_any_case(c2w, tmp_path, capsys):
    data, runs = c2w
    _copy_recording(runs / "cavity", tmp_path / "cavity", "roi", "localizer", str(tmp_path / "gone" / "loc"))
    args = ["--model", str(tmp_path / "cavity"), "--in", str(data), "--out", str(tmp_path / "o")]
    assert predict.main(args) == 2
    err = capsys.readouterr().err
    assert f"roi.localizer = '{tmp_path / 'gone' / 'loc'}'" in err and "failed" not in err
    assert not (tmp_path / "o").exists()
    case = str(data / "phantom001" / "lgemri.nrrd")
    assert predict.main(args[:2] + ["--in", case, "--out", str(tmp_path / "o"),
                                    "--use", f"roi.localizer={runs / 'wall'}"]) == 2  # a wall run as localiser
    assert (f"roi.localizer = '{runs / 'wall'}' is a run with run.stage = 'wall'; roi.localizer needs one with "
            "run.stage = 'localizer'") in capsys.readouterr().err
    assert predict.main(args[:2] + ["--in", case, "--out", str(tmp_path / "o"),
                                    "--use", f"roi.localizer={runs / 'localizer'}"]) == 0


def test_a_run_that_crops_around_the_ground_truth_is_refused_before_any_case(c2w, tmp_path, capsys):
    """roi.center = 'ground_truth' (the README's tiny run) needs labels that new images lack:
    an unusable model (exit 2, nothing written), also when it is the wall run's cavity helper."""
    data, runs = c2w
    _copy_recording(runs / "cavity", tmp_path / "cavity", "roi", "center", "ground_truth")
    for model, use in ((tmp_path / "cavity", []), (runs / "wall", ["--use", f"run.init_from={tmp_path / 'cavity'}"])):
        assert predict.main(["--model", str(model), "--in", str(data), "--out", str(tmp_path / "o"), *use]) == 2
        err = capsys.readouterr().err
        assert f"{tmp_path / 'cavity' / 'final'}: roi.center = 'ground_truth'" in err and "new images lack" in err
        assert "failed" not in err and not (tmp_path / "o").exists()


def test_recorded_runs_are_found_as_written_or_next_to_the_run(tmp_path):
    (tmp_path / "moved" / "localizer").mkdir(parents=True)
    (tmp_path / "moved" / "wall").mkdir()
    assert locate_stage(str(tmp_path / "moved" / "wall"), "key", None) == tmp_path / "moved" / "wall"
    # recorded where the runs were trained (a folder that no longer exists), found beside the moved run
    recorded = str(tmp_path / "trained_here" / "localizer")
    found = locate_stage(recorded, "roi.localizer", tmp_path / "moved" / "wall")
    assert found == tmp_path / "moved" / "localizer"
    (tmp_path / "moved" / "cavity" / "final").mkdir(parents=True)
    (tmp_path / "moved" / "cavity" / "final" / "checkpoint_best.pt").touch()
    recorded_file = str(tmp_path / "trained_here" / "cavity" / "final" / "checkpoint_best.pt")  # --init-from a file
    found = locate_stage(recorded_file, "run.init_from", tmp_path / "moved" / "wall")
    assert found == tmp_path / "moved" / "cavity" / "final" / "checkpoint_best.pt"
    gone = str(tmp_path / "trained_here" / "gone")
    with pytest.raises(FileNotFoundError, match=r"roi.localizer = '.*trained_here/gone'.*no such run folder"):
        locate_stage(gone, "roi.localizer", tmp_path / "moved" / "wall")


def test_a_failing_case_is_reported_and_the_others_are_written(c2w, tmp_path, capsys):
    data, runs = c2w
    folder = tmp_path / "scans"
    folder.mkdir()
    good = read_volume(data / "phantom002" / "lgemri.nrrd")
    write_volume(folder / "good.nii.gz", good.array, like=good)
    write_volume(folder / "tiny.nii.gz", good.array[7:13, 15:25, 14:26], good.affine)  # smaller than every patch
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 4, 2), np.int16), np.eye(4)), folder / "fourd.nii.gz")
    (folder / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    (folder / "broken_gt.nii.gz").write_bytes(b"skipped: a label file name")
    rgb = np.zeros((4, 3, 2), dtype=[("R", "u1"), ("G", "u1"), ("B", "u1")])
    nib.save(nib.Nifti1Image(rgb, np.eye(4)), folder / "colour.nii.gz")
    with_nan = good.array.astype(np.float32)
    with_nan[0, 0, 0] = np.nan
    write_volume(folder / "nan.nii.gz", with_nan, like=good)
    (folder / "dangling.nii.gz").symlink_to(tmp_path / "deleted.nii.gz")
    write_volume(folder / "metres.nii.gz", good.array, good.affine @ np.diag([100.0, 100.0, 100.0, 1.0]))
    write_volume(folder / "microns.nii.gz", good.array, good.affine @ np.diag([0.001, 0.001, 0.001, 1.0]))
    assert predict.main(["--model", str(runs / "wall"), "--in", str(folder), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert "wrote 2 of 9 case(s)" in err
    assert f"failed microns: {folder / 'microns.nii.gz'}: an image of (20, 40, 40) voxels of (0.002, 0.002, 0.002) " \
           "mm spans (0.04, 0.08, 0.08) mm, less than one voxel of the model's (2.0, 2.0, 2.0) mm grid" in err
    assert f"failed metres: {folder / 'metres.nii.gz'}: an image of (20, 40, 40) voxels of (200.0, 200.0, 200.0) mm " \
           "would be (2000, 4000, 4000) voxels on the model's (2.0, 2.0, 2.0) mm grid" in err
    assert "failed fourd: " in err and "expected a 3D image" in err
    assert "failed broken: " in err and "cannot read NIFTI file" in err
    assert "failed colour: " in err and "not a scalar image" in err
    assert f"failed nan: {folder / 'nan.nii.gz'}: image has 1 NaN/inf voxels" in err
    assert "failed dangling: " in err and "file not found" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "tiny.nii.gz"]
    assert read_volume(tmp_path / "out" / "tiny.nii.gz").shape == (6, 10, 12)


def test_skip_existing_finishes_an_interrupted_folder(c2w, tmp_path, capsys):
    data, runs = c2w
    out = tmp_path / "out"
    command = ["--model", str(runs / "wall"), "--in", str(data), "--out", str(out)]
    assert predict.main(command) == 0
    written = sorted(out.iterdir())
    assert len(written) >= 3
    kept, lost = written[0], written[1]
    expected = read_volume(lost).array
    kept.write_bytes(b"left alone")  # a skipped case is not read, checked or rewritten
    lost.unlink()  # as if the run had been killed before this case was written
    capsys.readouterr()
    assert predict.main([*command, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert f"skipping {len(written) - 1} case(s) whose label map is already in {out}" in err
    assert "wrote 1 of 1 case(s)" in err
    assert kept.read_bytes() == b"left alone"
    np.testing.assert_array_equal(read_volume(lost).array, expected)
    assert predict.main([*command, "--skip-existing"]) == 0
    err = capsys.readouterr().err
    assert f"skipping {len(written)} case(s)" in err and "wrote 0 of 0 case(s)" in err


def test_warnings_name_their_case_once(c2w, tmp_path, capsys):
    data, runs = c2w
    good = read_volume(data / "phantom002" / "lgemri.nrrd")
    write_volume(tmp_path / "scans" / "const.nii.gz", np.full(good.shape, 7, np.int16), like=good)
    assert predict.main(["--model", str(runs / "wall"), "--in", str(tmp_path / "scans"),
                         "--out", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert err.count("warning: const: the image is constant (every voxel 7): its prediction means nothing") == 1
    assert "UserWarning" not in err


def test_a_case_whose_other_outputs_fail_gets_no_label_map(tmp_path):
    """The label map is written last, so a case reported as failed never looks done."""
    volume = read_volume(write_volume(tmp_path / "image.nii.gz", np.zeros((4, 5, 6), np.uint8), np.eye(4)))
    (tmp_path / "thickness" / "case.nii.gz").mkdir(parents=True)  # an output that cannot be written
    outputs = predict.CaseOutputs(volume, {tmp_path / "out" / "case.nii.gz": np.ones((4, 5, 6), np.uint8),
                                           tmp_path / "thickness" / "case.nii.gz": np.zeros((4, 5, 6), np.float32)})
    with pytest.raises(OSError):
        outputs.write()
    assert not (tmp_path / "out" / "case.nii.gz").exists()


@contextmanager
def _disk_full_at(name: str):
    """``Path.mkdir`` fails for a folder called ``name`` as on a full disk; the others are made."""
    make = Path.mkdir

    def mkdir(path, *args, **kwargs):
        if path.name == name:
            raise OSError(28, "No space left on device")
        make(path, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Path, "mkdir", mkdir)
        yield


def test_output_folders_are_checked_before_any_case_runs(c2w, tmp_path, capsys):
    data, runs = c2w
    (tmp_path / "taken").write_text("a file where the output folder should go")
    base = ["--model", str(runs / "wall"), "--in", str(data)]
    assert predict.main(base + ["--out", str(tmp_path / "taken" / "preds")]) == 2
    assert f"--out {tmp_path / 'taken' / 'preds'}: cannot create the folder" in capsys.readouterr().err
    assert predict.main(base + ["--out", str(tmp_path / "o"), "--thickness", str(tmp_path / "o")]) == 2
    assert "thickness maps would overwrite the label maps" in capsys.readouterr().err
    assert predict.main(base + ["--out", str(tmp_path / "o"), "--probabilities", str(tmp_path / "o")]) == 2
    assert "--probabilities" in capsys.readouterr().err
    assert predict.main(base + ["--out", str(tmp_path / "new"), "--probabilities", str(tmp_path / "taken")]) == 2
    assert "--probabilities" in capsys.readouterr().err and not (tmp_path / "new").exists()  # nothing created
    for out, message in ((data / "preds", f"--out {data / 'preds'} is inside the dataset folder {data}, whose label "
                                          "maps share the outputs' names"),
                         (tmp_path / "pred.nii.gz", f"--out {tmp_path / 'pred.nii.gz'} is the name of an image file, "
                                                    "but --out is a folder")):
        assert predict.main(base + ["--out", str(out)]) == 2
        assert message in capsys.readouterr().err and not out.exists()
    (tmp_path / "locked").mkdir()
    with pytest.MonkeyPatch.context() as patch:  # the tests run as root, whom permissions do not stop
        patch.setattr(predict.os, "access", lambda path, mode: Path(path).name != "locked")
        assert predict.main(base + ["--out", str(tmp_path / "locked" / "preds")]) == 2
    assert capsys.readouterr().err == (f"error: --out {tmp_path / 'locked' / 'preds'}: no permission to write in "
                                       f"{tmp_path / 'locked'}\n")
    too_long = tmp_path / "th" / ("x" * 300)
    assert predict.main(base + ["--out", str(tmp_path / "made" / "preds"), "--thickness", str(too_long)]) == 2
    assert "File name too long" in capsys.readouterr().err and not (tmp_path / "th").exists()
    with _disk_full_at("th"):  # passes the checks, fails to be made (a full disk, say)
        assert predict.main(base + ["--out", str(tmp_path / "made" / "preds"), "--thickness",
                                    str(tmp_path / "th" / "maps")]) == 2
    err = capsys.readouterr().err
    assert f"--thickness {tmp_path / 'th' / 'maps'}: cannot create the folder (No space left on device)" in err
    assert not (tmp_path / "made").exists() and not (tmp_path / "th").exists()  # the folders it made are removed


def test_outputs_never_go_into_a_folder_of_input_images(c2w, tmp_path, capsys):
    data, runs = c2w
    images = tmp_path / "images"
    images.mkdir()
    source = next(data.glob("*/lgemri.nrrd"))
    (images / "case.nrrd").write_bytes(source.read_bytes())
    before = (images / "case.nrrd").read_bytes()
    for given in (images, images / "case.nrrd"):
        for option in ("--out", "--probabilities"):
            extra = [] if option == "--out" else ["--out", str(tmp_path / "o")]
            assert predict.main(["--model", str(runs / "wall"), "--in", str(given), option, str(images), *extra]) == 2
            assert "holds input images" in capsys.readouterr().err
    assert (images / "case.nrrd").read_bytes() == before and sorted(images.iterdir()) == [images / "case.nrrd"]


def test_a_prediction_without_a_cavity_keeps_its_label_map_and_notes_the_missing_thickness(tmp_path, capsys):
    labels = np.zeros((6, 8, 8), np.uint8)
    labels[2:4, 2:6, 2:6] = 1  # wall
    labels[2:4, 3:5, 3:5] = 2  # RA, but no LA
    volume = read_volume(write_volume(tmp_path / "case.nii.gz", labels, affine_from_spacing((2.0, 1.0, 1.0))))
    outputs = predict.case_outputs(volume, "case", predict.CasePrediction(labels), tmp_path / "out",
                                   thickness_dir=tmp_path / "thickness")
    assert list(outputs.arrays) == [tmp_path / "out" / "case.nii.gz"] and not outputs.tables
    assert "note: case: no thickness map, the prediction has no LA" in capsys.readouterr().err


def test_a_wall_whose_thickness_cannot_be_measured_keeps_its_label_map_with_a_note(tmp_path, capsys):
    labels = np.zeros((7, 7, 7), np.uint8)
    labels[1:6, 1:6, 1:6] = 3  # LA
    labels[3, 3, 3] = 1  # a wall voxel inside the cavity: no epicardial face
    volume = read_volume(write_volume(tmp_path / "case.nii.gz", labels, affine_from_spacing((1.0, 1.0, 1.0))))
    outputs = predict.case_outputs(volume, "case", predict.CasePrediction(labels), tmp_path / "out",
                                   thickness_dir=tmp_path / "thickness")
    assert list(outputs.arrays) == [tmp_path / "out" / "case.nii.gz"] and not outputs.tables
    assert "note: case: no thickness map, the prediction's wall cannot be measured: no wall voxel has both an " \
           "endocardial face" in capsys.readouterr().err


def test_images_loose_beside_a_datasets_cases_are_named_in_a_warning(c2w, tmp_path):
    data, _ = c2w
    shutil.copytree(data, tmp_path / "data")
    shutil.copy(data / "phantom000" / "lgemri.nrrd", tmp_path / "data" / "loose.nrrd")
    with pytest.warns(UserWarning, match=r"1 image file\(s\) beside the dataset's cases are not predicted "
                                         r"\(loose.nrrd\)"):
        cases = predict.find_inputs(tmp_path / "data")
    assert [case for case, _ in cases] == sorted(p.name for p in data.iterdir())


def test_the_wall_pipelines_cavity_stage_must_be_a_cavity_run(c2w, tmp_path, capsys):
    data, runs = c2w
    assert predict.main(["--model", str(runs / "wall"), "--in", str(data / "phantom000" / "lgemri.nrrd"), "--out",
                         str(tmp_path / "o"), "--use", f"run.init_from={runs / 'localizer'}"]) == 2
    assert f"run.init_from of {runs / 'wall'} is a 'localizer' run, not a cavity one" in capsys.readouterr().err


def test_inputs_and_options_are_checked(c2w, tmp_path, capsys):
    data, runs = c2w
    base = ["--model", str(runs / "wall"), "--out", str(tmp_path / "o")]
    assert predict.main(base + ["--in", str(tmp_path / "nothing")]) == 2
    assert "nothing: no such file or folder" in capsys.readouterr().err
    case = str(data / "phantom000" / "lgemri.nrrd")
    assert predict.main(base + ["--in", case, "--overlap", "1"]) == 2
    assert "--overlap must be in [0, 1), got 1.0" in capsys.readouterr().err
    assert predict.main(base + ["--in", case, "--mirror", "3"]) == 2
    assert "--mirror axes must be among 0, 1, 2 (z, y, x), got [3]" in capsys.readouterr().err
    pipeline = predict.load_pipeline(runs / "wall")
    with pytest.raises(ValueError, match=r"image must be 3D \(z, y, x\), got shape \(40, 40\)"):
        pipeline.predict(np.zeros((40, 40)), (2.0, 2.0))
    options = predict._options(predict.parser().parse_args(base + ["--in", case, "--overlap", "0", "--mirror"]))
    assert options.step == 1.0 and options.mirror_axes == (0, 1, 2)


def test_inputs_from_a_file_a_dataset_or_a_folder_of_images(c2w, tmp_path):
    data, _ = c2w
    assert [i for i, _ in predict.find_inputs(data)] == [f"phantom{i:03d}" for i in range(6)]
    for name in ("a.nii.gz", "a_gt.nii.gz", "b_0000.nrrd", "notes.txt"):
        (tmp_path / name).touch()
    assert predict.find_inputs(tmp_path) == [("a", tmp_path / "a.nii.gz"), ("b", tmp_path / "b_0000.nrrd")]
    assert predict.find_inputs(tmp_path / "b_0000.nrrd") == [("b", tmp_path / "b_0000.nrrd")]
    released = tmp_path / "mbas_input"  # the MBAS release's images are MBAS_XXX_gt; labels MBAS_XXX_label
    released.mkdir()
    for name in ("MBAS_001_gt.nii.gz", "MBAS_002_gt.nii.gz", "MBAS_002_label.nii.gz"):
        (released / name).touch()
    assert predict.find_inputs(released) == [("MBAS_001", released / "MBAS_001_gt.nii.gz"),
                                             ("MBAS_002", released / "MBAS_002_gt.nii.gz")]
    (tmp_path / "a.nrrd").touch()
    with pytest.raises(predict.DataError, match=r"several images give the case ids \['a'\]"):
        predict.find_inputs(tmp_path)


def test_a_moved_folder_of_runs_still_predicts(c2w, tmp_path):
    """Runs trained together and copied elsewhere find each other by name (the recorded paths
    of the copy point at folders renamed away)."""
    data, runs = c2w
    copy = tmp_path / "runs"
    shutil.copytree(runs, copy)
    hidden = runs.with_name("runs_hidden")
    runs.rename(hidden)
    try:
        case = str(data / "phantom003" / "lgemri.nrrd")
        assert predict.main(["--model", str(copy / "wall"), "--in", case, "--out", str(tmp_path / "o")]) == 0
    finally:
        hidden.rename(runs)
    assert read_volume(tmp_path / "o" / "phantom003.nrrd").shape == PHANTOM["shape"]


@pytest.mark.cuda
def test_the_gpu_pipeline_predicts_what_the_cpu_pipeline_does(mbas, c2w):
    """Everything on the GPU (stitching, resampling, largest components, dilation, ROI) at fp32
    gives the CPU's labels up to voxels where the two convolution libraries round apart."""
    for data, model, image_path in ((mbas[0], mbas[1] / "stage2", mbas[0] / "MBAS_002" / "MBAS_002_gt.nii.gz"),
                                    (c2w[0], c2w[1] / "wall", c2w[0] / "phantom001" / "lgemri.nrrd")):
        image = read_volume(image_path)
        options = InferenceOptions(precision="fp32", batch_size=3)
        cpu = predict.load_pipeline(model, options=options).predict(image.array, image.spacing)
        gpu = predict.load_pipeline(model, device="cuda", options=options).predict(image.array, image.spacing)
        assert (cpu.labels == gpu.labels).mean() >= 0.999


# --- from the mutation audit of the CLIs: ids, option checks, thickness of both atria, outputs' grid ---

def test_case_ids_keep_their_numbers_and_hidden_files_are_no_cases(tmp_path):
    """Only a 4-digit nnU-Net channel suffix is dropped (MBAS_001 stays MBAS_001); dot files (macOS ``._``
    copies, editors' leftovers) are no images."""
    for name in ("MBAS_001.nii.gz", "p_12.nrrd", "c_0000.nii.gz", ".hidden.nii.gz", "._MBAS_001.nii.gz"):
        (tmp_path / name).touch()
    assert predict.find_inputs(tmp_path) == [("MBAS_001", tmp_path / "MBAS_001.nii.gz"),
                                             ("c", tmp_path / "c_0000.nii.gz"), ("p_12", tmp_path / "p_12.nrrd")]


def test_batch_size_use_and_fold_arguments_are_checked(c2w, tmp_path):
    _, runs = c2w
    args = predict.parser().parse_args(["--model", "m", "--in", "i", "--out", "o", "--batch-size", "0"])
    with pytest.raises(predict.ModelError, match=r"^--batch-size must be >= 1, got 0$"):
        predict._options(args)
    for pair in ("run.init_from=", "run.init_from"):
        with pytest.raises(predict.ModelError, match="--use takes KEY=PATH"):
            predict._helper_runs([pair])
    with pytest.raises(predict.ModelError, match="no fold_0/checkpoint_best.pt in this run folder; trained folds"):
        predict.load_pipeline(runs / "wall", fold="0")  # --fold 0 as train takes it: fold_0


def test_thickness_of_a_prediction_with_both_atria_is_the_thickness_clis(tmp_path):
    """An MBAS-style prediction (1 wall, 2 RA, 3 LA) on an oblique grid: predict's thickness map and summary
    are what ``python -m c2w_fast.thickness`` gives for the written label map — the septum measured between
    the two chambers (2 voxels of 1.2 mm = 2.4 mm), the sectors around the LA in the file's directions."""
    from c2w_fast import thickness as thickness_cli

    labels = np.zeros((10, 16, 26), np.uint8)
    labels[1:-1, 1:-1, 1:-1] = 1
    labels[3:-3, 3:-3, 3:10] = 2
    labels[3:-3, 3:-3, 12:-3] = 3
    angle = np.deg2rad(30.0)
    direction = np.array([[np.cos(angle), 0, np.sin(angle)], [0, 1, 0], [-np.sin(angle), 0, np.cos(angle)]])
    affine = affine_from_spacing((2.0, 1.0, 1.2), origin=(-20.0, 35.5, 7.25), direction=direction @ np.diag([-1, 1, 1]))
    volume = read_volume(write_volume(tmp_path / "case.nii.gz", np.zeros(labels.shape, np.int16), affine))
    predict.case_outputs(volume, "case", predict.CasePrediction(labels), tmp_path / "out",
                         thickness_dir=tmp_path / "thick").write()
    thickness = read_volume(tmp_path / "thick" / "case.nii.gz")
    np.testing.assert_allclose(thickness.array[4:-4, 4:-4, 10:12], 2 * volume.spacing[2], rtol=1e-6)
    assert np.array_equal(thickness.affine, volume.affine)
    assert thickness_cli.main(["--wall", str(tmp_path / "out" / "case.nii.gz"), "--cavity",
                               str(tmp_path / "out" / "case.nii.gz"), "--out", str(tmp_path / "cli.nii.gz"),
                               "--csv", str(tmp_path / "cli.csv")]) == 0
    np.testing.assert_array_equal(thickness.array, read_volume(tmp_path / "cli.nii.gz").array)
    cli_rows = (tmp_path / "cli.csv").read_text().splitlines()
    assert (tmp_path / "thick" / "case.csv").read_text().splitlines() == \
        ["case," + cli_rows[0]] + ["case," + row for row in cli_rows[1:]]


def test_timings_write_probabilities_too_and_every_output_keeps_the_input_grid(c2w, tmp_path):
    """--timings (one step after the other) writes what the threaded path writes; probability and thickness
    maps of an oblique NIfTI input carry its qform/sform bit for bit, like the label map."""
    _, runs = c2w
    phantom = make_phantom(**PHANTOM, seed=12, label_right_atrium=False)
    write_volume(tmp_path / "in" / "oblique.nii.gz", (phantom.image * 200).astype(np.int16),
                 _oblique_affine(PHANTOM["spacing"]))
    given = nib.load(tmp_path / "in" / "oblique.nii.gz").header
    for folder, extra in (("plain", []), ("timed", ["--timings"])):
        assert predict.main(["--model", str(runs / "wall"), "--in", str(tmp_path / "in"), "--out",
                             str(tmp_path / folder / "out"), "--probabilities", str(tmp_path / folder / "prob"),
                             "--thickness", str(tmp_path / folder / "thick"), *extra]) == 0
    for name in ("out/oblique.nii.gz", "prob/oblique_wall.nii.gz", "prob/oblique_LA.nii.gz",
                 "thick/oblique.nii.gz"):
        timed, plain = tmp_path / "timed" / name, tmp_path / "plain" / name
        np.testing.assert_array_equal(read_volume(timed).array, read_volume(plain).array)
        written = nib.load(timed).header
        for key in ("qform_code", "sform_code", "quatern_b", "quatern_c", "quatern_d", "qoffset_x", "qoffset_y",
                    "qoffset_z", "srow_x", "srow_y", "srow_z", "pixdim", "dim"):
            assert np.array_equal(written[key], given[key]), (name, key)


# --- from a new user's walkthrough: output folders, Ctrl-C, messages, fold folders, ids, implausible images ---

def test_probability_and_thickness_folders_inside_out_are_refused(c2w, tmp_path, capsys):
    """evaluate --pred OUT searches OUT recursively: maps in OUT/probs would read as extra predictions."""
    data, runs = c2w
    out = tmp_path / "out"
    for option in ("--probabilities", "--thickness"):
        assert predict.main(["--model", str(runs / "wall"), "--in", str(data / "phantom000" / "lgemri.nrrd"),
                             "--out", str(out), option, str(out / "maps")]) == 2
        err = capsys.readouterr().err
        assert f"error: {option} {out / 'maps'} is inside the --out folder; evaluate searches --pred recursively" in err
        assert f"give it a folder beside --out (e.g. {tmp_path / 'out_maps'})" in err
        assert not out.exists()


def test_ctrl_c_keeps_the_finished_cases_and_says_how_to_finish(c2w, tmp_path, capsys, monkeypatch):
    data, runs = c2w
    out = tmp_path / "out"
    predict_case, calls = predict.Pipeline.predict, []

    def interrupted_in_the_third_case(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return predict_case(self, *args, **kwargs)

    monkeypatch.setattr(predict.Pipeline, "predict", interrupted_in_the_third_case)
    assert predict.main(["--model", str(runs / "wall"), "--in", str(data), "--out", str(out)]) == 130
    err = capsys.readouterr().err
    assert err.endswith(f"\ninterrupted: 2 of 6 case(s) have their label map in {out}; rerun the same command with "
                        "--skip-existing to predict the others\n")
    assert sorted(p.name for p in out.iterdir()) == ["phantom000.nrrd", "phantom001.nrrd"]  # both written, no partial


def test_a_folder_of_label_maps_says_they_were_skipped(tmp_path):
    for name in ("case0_label.nii.gz", "case1_seg.nrrd", "notes.txt"):
        (tmp_path / name).touch()
    with pytest.raises(predict.DataError, match=r"no NIfTI/NRRD images found \(.*\); 2 NIfTI/NRRD file\(s\) skipped "
                                                r"as label maps, by their names' suffix \(_gt, _seg, _label, "):
        predict.find_inputs(tmp_path)


def test_a_fold_folder_is_that_fold_of_its_run(c2w, tmp_path):
    """--model RUN/final is --model RUN: its helper runs found from RUN, with its fold."""
    data, runs = c2w
    pipeline = predict.load_pipeline(runs / "wall" / "final")
    assert [(s.predictor.pipeline.run_dir, s.predictor.pipeline.fold) for s in pipeline.stages] == \
        [(runs / "cavity", "final"), (runs / "wall", "final")]
    case = data / "phantom001" / "lgemri.nrrd"
    assert predict.main(["--model", str(runs / "wall" / "final"), "--in", str(case), "--out", str(tmp_path)]) == 0
    image = read_volume(case)
    np.testing.assert_array_equal(read_volume(tmp_path / "phantom001.nrrd").array,
                                  predict.load_pipeline(runs / "wall").predict(image.array, image.spacing).labels)
    with pytest.raises(predict.ModelError, match="is the checkpoint of 'final', not of 'fold_0'"):
        predict.load_pipeline(runs / "wall" / "final", fold="fold_0")


def test_a_folder_of_several_layouts_gets_a_hint_predict_can_follow(tmp_path, capsys):
    (tmp_path / "mixed" / "p0").mkdir(parents=True)
    (tmp_path / "mixed" / "p0" / "lgemri.nrrd").touch()
    (tmp_path / "mixed" / "MBAS_001").mkdir()
    (tmp_path / "mixed" / "MBAS_001" / "MBAS_001_gt.nii.gz").touch()
    assert predict.main(["--model", str(tmp_path / "run"), "--in", str(tmp_path / "mixed"),
                         "--out", str(tmp_path / "o")]) == 2
    assert (f"error: {tmp_path / 'mixed'}: holds cases of several layouts (lasc, mbas); give a folder of one layout "
            "(training can instead name the layout to read with data.layout)") in capsys.readouterr().err


def test_a_file_given_alone_has_the_id_its_folder_gives_it(tmp_path, monkeypatch):
    """A LASC case's lgemri.nrrd is named after its case folder, an MBAS MBAS_XXX_gt after MBAS_XXX, as when
    the dataset is given; an X_gt beside an X image (a label map by name) keeps its name."""
    for name in ("lasc/p7/lgemri.nrrd", "lasc/p7/laendo.nrrd", "mbas/MBAS_001/MBAS_001_gt.nii.gz",
                 "mbas/MBAS_001/MBAS_001_label.nii.gz", "flat/a.nii.gz", "flat/a_gt.nii.gz", "flat/b_gt.nii.gz"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).touch()
    for dataset, image in (("lasc", "p7/lgemri.nrrd"), ("mbas", "MBAS_001/MBAS_001_gt.nii.gz")):
        assert predict.find_inputs(tmp_path / dataset / image) == predict.find_inputs(tmp_path / dataset)
    assert [i for i, _ in predict.find_inputs(tmp_path / "lasc" / "p7")] == ["p7"]
    assert predict.find_inputs(tmp_path / "flat" / "b_gt.nii.gz") == [("b", tmp_path / "flat" / "b_gt.nii.gz")]
    assert predict.find_inputs(tmp_path / "flat" / "a_gt.nii.gz") == [("a_gt", tmp_path / "flat" / "a_gt.nii.gz")]
    monkeypatch.chdir(tmp_path / "lasc" / "p7")
    assert predict.find_inputs(Path("lgemri.nrrd")) == [("p7", Path("lgemri.nrrd"))]
    assert [i for i, _ in predict.find_inputs(Path("."))] == ["p7"]  # not "": a hidden file OUT/.nrrd
    monkeypatch.chdir(tmp_path / "mbas" / "MBAS_001")
    assert [i for i, _ in predict.find_inputs(Path("."))] == ["MBAS_001"]


def test_help_shows_the_defaults():
    text = " ".join(predict.parser().format_help().split())
    assert "--batch-size BATCH_SIZE windows per forward pass (default: 2;" in text
    assert "--device {auto,cpu,cuda} default: auto" in text


def test_a_label_map_or_an_implausible_voxel_size_is_predicted_with_a_warning(c2w, tmp_path, capsys):
    data, runs = c2w
    phantom = make_phantom(**PHANTOM, seed=13)
    image, spacing = (phantom.image * 200).astype(np.int16), PHANTOM["spacing"]  # spans (40, 80, 80) mm
    assert implausible_image(image, spacing) == []
    assert implausible_image(image, (2.0, 2.0, 0.2)) == []  # under 40 mm along one axis only: a slab
    assert implausible_image(image.astype(np.float32) / 7, spacing) == []
    for labels in (phantom.labels, torch.from_numpy(phantom.labels)):  # numpy, or a tensor where it lies
        assert implausible_image(labels, spacing) == ["the image holds only a few whole values ([0, 1, 2, 3] in a "
                                                      "sample of its voxels): a label map, not an MRI?"]
    large = np.zeros((44, 640, 640), np.float32)  # read on a strided sample
    large[10:30, 100:500, 100:500] = 3.0
    assert implausible_image(large, (2.5, 0.625, 0.625))[0].startswith("the image holds only a few whole")
    for small in ((2.0, 2.0, 0.19), (1.9, 0.95, 2.0), (2.0, 2.0, 10.5)):  # under 0.2 mm; 40 mm; over 10 mm
        assert implausible_image(image, small) == [
            f"voxels of {small} mm (from the header) make the image span "
            f"{tuple(round(n * h, 2) for n, h in zip(image.shape, small))} mm, not a heart MRI's field of view: "
            "is the header's voxel size in mm?"]
    assert predict.main(["--model", str(runs / "wall"), "--in", str(data / "phantom001" / "laendo.nrrd"),
                         "--out", str(tmp_path / "o")]) == 0
    assert "warning: laendo: the image holds only a few whole values ([0, 255] in a sample" in capsys.readouterr().err


def test_options_that_do_not_apply_are_noted(c2w, tmp_path, capsys):
    """--cuda-graph on a CPU and --no-cavity with a run other than a wall run change nothing: said so."""
    data, runs = c2w
    assert predict.main(["--model", str(runs / "cavity"), "--in", str(data / "phantom000" / "lgemri.nrrd"),
                         "--out", str(tmp_path / "o"), "--device", "cpu", "--cuda-graph", "--no-cavity"]) == 0
    err = capsys.readouterr().err
    assert "note: --cuda-graph needs a GPU; on cpu the networks run without one" in err
    assert "note: --no-cavity leaves out a wall run's cavity stage; this pipeline predicts cavity → LA=3" in err


def test_a_label_map_is_up_to_eight_whole_values():
    from c2w_fast.data.plausibility import LABEL_MAP_VALUES, label_map_values

    ramp = np.arange(40 * 40 * 40).reshape(40, 40, 40) % (LABEL_MAP_VALUES + 1)
    assert label_map_values(ramp % LABEL_MAP_VALUES) == list(range(LABEL_MAP_VALUES))
    assert label_map_values(ramp) is None  # nine values: an image
    assert label_map_values(ramp + 0.5) is None  # not whole


def test_wall_run_without_its_cavity_stage_is_not_noted_and_a_name_too_long_is_an_error(c2w, tmp_path, capsys):
    data, runs = c2w
    case = ["--in", str(data / "phantom000" / "lgemri.nrrd")]
    assert predict.main(["--model", str(runs / "wall"), *case, "--out", str(tmp_path / "o"), "--no-cavity"]) == 0
    assert "note: --no-cavity" not in capsys.readouterr().err
    assert predict.main(["--model", str(runs / "wall"), *case, "--out", str(tmp_path / ("x" * 300))]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "File name too long" in err and "Traceback" not in err


def test_a_failed_output_folder_removes_only_the_folders_predict_made(c2w, tmp_path, capsys):
    """Made deepest first, removed deepest first; a folder that existed before (empty or not) stays."""
    data, runs = c2w
    (tmp_path / "keep").mkdir()
    with _disk_full_at("c"):
        assert predict.main(["--model", str(runs / "wall"), "--in", str(data / "phantom000" / "lgemri.nrrd"),
                             "--out", str(tmp_path / "keep" / "preds"), "--probabilities",
                             str(tmp_path / "new" / "a"), "--thickness", str(tmp_path / "new" / "b" / "c")]) == 2
    assert "cannot create the folder (No space left on device)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and not list((tmp_path / "keep").iterdir())
