"""Checkpoints: atomic, self-describing, and loading into another architecture is a clear error."""
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
