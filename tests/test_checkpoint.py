"""Checkpoints: atomic, self-describing, and loading into another architecture is a clear error."""
import os
from pathlib import Path

import pytest
import torch

from c2w_fast import config as cfg
from c2w_fast.training import checkpoint
from training_helpers import CONFIGS, RESNEXT


def _config(*overrides):
    return cfg.load(CONFIGS / "c2w_cavity.toml", RESNEXT + list(overrides))


def _save(tmp_path, config, name="cavity.pt"):
    model = checkpoint.build_from_config(config)
    path = checkpoint.save(tmp_path / name, {"model": model.state_dict(), "config": config.to_dict(),
                                             "architecture": checkpoint.architecture_of(model, "c2w_resnext")})
    return model, path


def test_save_is_atomic_and_load_model_round_trips(tmp_path):
    config = _config()
    model, path = _save(tmp_path, config)
    assert [p.name for p in tmp_path.iterdir()] == ["cavity.pt"]  # no temporary file left behind
    loaded, loaded_config = checkpoint.load_model(path)
    assert loaded_config == config
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_new_head_is_reinitialised_and_the_rest_transferred(tmp_path):
    torch.manual_seed(0)
    cavity, path = _save(tmp_path, _config())
    wall = checkpoint.build_from_config(_config("data.target=\"wall\""))
    checkpoint.initialise_from(wall, path, new_head=True)
    for (k, a), (_, b) in zip(cavity.state_dict().items(), wall.state_dict().items()):
        assert torch.equal(a, b) != k.startswith("heads."), k


def test_extra_distance_channel_starts_as_the_checkpoint(tmp_path, rng):
    torch.manual_seed(1)
    cavity, path = _save(tmp_path, _config())
    two = checkpoint.build_from_config(_config("data.sdf_channel=true", "data.sdf_from=\"x\""))
    checkpoint.initialise_from(two, path, new_head=False)
    x = torch.from_numpy(rng.normal(size=(1, 1, 16, 24, 24)).astype("float32"))
    with torch.no_grad():
        torch.testing.assert_close(two(torch.cat([x, torch.randn_like(x)], 1)), cavity(x))


@pytest.mark.parametrize("override, message", [
    ("model.overrides.features=[4,8,32]", r"features: checkpoint \[4, 8, 16\], this run \[4, 8, 32\]"),
    ("model.deep_supervision=true", r"deep_supervision: checkpoint False, this run True"),
    ("model.overrides.block=\"residual\"", r"block: checkpoint resnext, this run residual"),
])
def test_another_architecture_is_refused_by_name(tmp_path, override, message):
    _, path = _save(tmp_path, _config())
    other = checkpoint.build_from_config(_config(override))
    with pytest.raises(checkpoint.CheckpointError, match="checkpoint of another architecture — .*" + message):
        checkpoint.initialise_from(other, path, new_head=True)


def test_a_lazy_load_reads_the_same_payload(tmp_path):
    model, path = _save(tmp_path, _config())
    eager, lazy = checkpoint.load(path), checkpoint.load(path, lazy=True)
    assert lazy["config"] == eager["config"] and lazy["architecture"] == eager["architecture"]
    for key, value in eager["model"].items():
        assert torch.equal(lazy["model"][key], value), key


@pytest.mark.parametrize("lazy", [False, True])
def test_unreadable_and_foreign_files(tmp_path, lazy):
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(checkpoint.CheckpointError, match="junk.pt: not a readable checkpoint"):
        checkpoint.load(tmp_path / "junk.pt", lazy=lazy)
    torch.save({"state_dict": {}}, tmp_path / "other.pt")
    with pytest.raises(checkpoint.CheckpointError, match="other.pt: not a checkpoint of c2w_fast's training"):
        checkpoint.load(tmp_path / "other.pt", lazy=lazy)
    with pytest.raises(checkpoint.CheckpointError, match="missing.pt: checkpoint not found"):
        checkpoint.load(tmp_path / "missing.pt", lazy=lazy)


def test_weights_that_disagree_with_the_recorded_architecture_are_a_clear_error(tmp_path):
    model, path = _save(tmp_path, _config())
    payload = checkpoint.load(path)
    name = next(iter(payload["model"]))
    del payload["model"][name]
    checkpoint.save(path, payload)
    with pytest.raises(checkpoint.CheckpointError, match=f"cavity.pt: its weights do not fit .*{name}"):
        checkpoint.load_model(path)


def test_weights_holding_nan_or_inf_are_refused_for_prediction_resuming_and_initialising(tmp_path):
    """A diverged run's weights predict an empty label map without a word: refused, naming the tensors."""
    model, path = _save(tmp_path, _config())
    payload = checkpoint.load(path)
    names = [name for name, tensor in payload["model"].items() if tensor.is_floating_point()]
    payload["model"][names[1]].view(-1)[0] = float("nan")
    payload["model"][names[4]].view(-1)[-1] = float("-inf")
    checkpoint.save(path, payload)
    message = f"cavity.pt: 2 of its weight tensors hold NaN or inf \\({names[1]}, {names[4]}\\): did the run diverge"
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_model(path)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.initialise_from(checkpoint.build_from_config(_config("data.target=\"wall\"")), path, new_head=True)
    with pytest.raises(checkpoint.CheckpointError, match=message):
        checkpoint.load_weights(model, payload["model"], path)
    for name in names[5:7]:
        payload["model"][name].fill_(float("nan"))
    with pytest.raises(checkpoint.CheckpointError, match=f"4 of its weight tensors hold NaN or inf \\({names[1]}, "
                                                        f"{names[4]}, {names[5]}, \\.\\.\\.\\)"):
        checkpoint.load_weights(model, payload["model"], path)


class _FailsToPickle:
    """A payload entry whose pickling fails part-way through ``torch.save``, as a full disk would."""

    def __reduce__(self):
        raise RuntimeError("disk full")


def test_a_failed_save_leaves_the_previous_checkpoint_intact(tmp_path):
    model, path = _save(tmp_path, _config())
    before = path.read_bytes()
    payload = checkpoint.load(path)
    with pytest.raises(RuntimeError, match="disk full"):
        checkpoint.save(path, {**payload, "trainer": _FailsToPickle()})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["cavity.pt"]
    loaded, _ = checkpoint.load_model(path)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="needs Linux's /proc/self/maps")
def test_a_lazy_load_maps_the_file_instead_of_reading_it(tmp_path):
    _, path = _save(tmp_path, _config(), name="checkpoint_latest.pt")

    def mapped():
        return str(path.resolve()) in Path("/proc/self/maps").read_text()

    eager = checkpoint.load(path)
    assert not mapped()
    latest = checkpoint.load_latest(tmp_path)
    assert not mapped()
    lazy = checkpoint.load_latest(tmp_path, lazy=True)  # what reading a run's trainer state uses
    assert mapped()
    del eager, latest, lazy


def test_a_missing_latest_checkpoint_is_not_found_and_a_damaged_one_points_to_the_best(tmp_path):
    config = _config()
    model = checkpoint.build_from_config(config)
    payload = {"model": model.state_dict(), "config": config.to_dict(), "epoch": 7,
               "architecture": checkpoint.architecture_of(model, "c2w_resnext")}
    checkpoint.save(tmp_path / "checkpoint_best.pt", payload)
    with pytest.raises(checkpoint.CheckpointError) as missing:
        checkpoint.load_latest(tmp_path)
    assert str(missing.value) == f"{tmp_path / 'checkpoint_latest.pt'}: checkpoint not found"
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"")
    with pytest.raises(checkpoint.CheckpointError, match=r"not a readable checkpoint .*checkpoint_best.pt \(after "
                                                         r"epoch 7\) is intact: copy it over checkpoint_latest.pt"):
        checkpoint.load_latest(tmp_path)


def test_a_stage_whose_recorded_architecture_differs_from_its_config_is_refused(tmp_path):
    """The weights would fit (dropout has none), but the config builds another network than the one trained."""
    _, path = _save(tmp_path, _config())
    payload = checkpoint.load(path)
    payload["architecture"]["spec"]["dropout"] = 0.5
    checkpoint.save(path, payload)
    with pytest.raises(checkpoint.CheckpointError,
                       match="checkpoint of another architecture — dropout: checkpoint 0.5, this run 0.0"):
        checkpoint.load_model(path)


def test_a_new_head_may_have_another_number_of_classes_and_only_a_new_head_may(tmp_path):
    torch.manual_seed(2)
    cavity, path = _save(tmp_path, _config())  # background + LA
    multiclass = checkpoint.build_from_config(_config("data.target=\"multiclass\""))  # background + wall, RA, LA
    with pytest.raises(checkpoint.CheckpointError,
                       match="checkpoint of another architecture — num_classes: checkpoint 2, this run 4"):
        checkpoint.initialise_from(multiclass, path, new_head=False)
    checkpoint.initialise_from(multiclass, path, new_head=True)
    ours = multiclass.state_dict()
    for key, value in cavity.state_dict().items():
        if not key.startswith("heads."):
            assert torch.equal(ours[key], value), key
    assert multiclass(torch.zeros(1, 1, 16, 24, 24)).shape[1] == 4


def test_a_checkpoint_with_more_input_channels_than_the_model_is_refused(tmp_path):
    two = checkpoint.build_from_config(_config("data.sdf_channel=true", "data.sdf_from=\"x\""))
    path = checkpoint.save(tmp_path / "two.pt", {"model": two.state_dict(), "config": _config().to_dict(),
                                                "architecture": checkpoint.architecture_of(two, "c2w_resnext")})
    one = checkpoint.build_from_config(_config())
    with pytest.raises(checkpoint.CheckpointError,
                       match="checkpoint of another architecture — in_channels: checkpoint 2, this run 1"):
        checkpoint.initialise_from(one, path, new_head=True)


def test_initialising_from_weights_with_a_tensor_too_many_is_refused(tmp_path):
    model, path = _save(tmp_path, _config())
    payload = checkpoint.load(path)
    payload["model"]["decoder.extra.weight"] = torch.zeros(1)
    checkpoint.save(path, payload)
    other = checkpoint.build_from_config(_config())
    with pytest.raises(checkpoint.CheckpointError,
                       match=r"weights do not fit this model \(missing \[\], unexpected \['decoder.extra.weight'\]\)"):
        checkpoint.initialise_from(other, path, new_head=False)
