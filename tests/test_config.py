"""Configs: presets hold the seeds' values; bad keys, types and combinations fail before training."""
import tomllib
import typing
import warnings
from pathlib import Path

import pytest

from c2w_fast import config as cfg
from training_helpers import CONFIGS

PRESETS = sorted(CONFIGS.glob("*.toml"))


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_every_preset_loads_and_round_trips(path, tmp_path):
    config = cfg.load(path)
    again = tmp_path / "config.toml"
    again.write_text(cfg.dumps(config))
    assert cfg.load(again) == config


def test_c2w_presets_carry_the_papers_values():
    cavity, wall, scratch = (cfg.load(CONFIGS / f"c2w_{s}.toml") for s in ("cavity", "wall", "scratch"))
    for c in (cavity, wall, scratch):
        assert (c.optim.name, c.optim.lr, c.optim.betas, c.optim.weight_decay) == ("adamw", 1e-3, [0.9, 0.999], 1e-4)
        assert (c.loss.name, c.train.batch_size, c.train.epochs) == ("dice_focal", 4, 1000)
        assert c.roi.size == [44, 256, 256] and c.model.architecture == "c2w_resnext"
        assert (c.data.n_test, c.data.n_folds, c.data.final_val) == (30, 5, 24)
    assert (cavity.schedule.kind, cavity.schedule.warmup_epochs, cavity.schedule.min_lr) == ("cosine", 50, 1e-6)
    assert wall.unfreeze.enabled and wall.unfreeze.steps == [61, 181] and wall.unfreeze.new_head
    assert wall.schedule.restarts == [61, 181] and wall.schedule.restart_lr == [1e-4, 1e-5]
    assert wall.train.early_stopping_from == 181 and wall.data.target == scratch.data.target == "wall"
    assert not scratch.unfreeze.enabled and not scratch.run.init_from


def test_mbas_presets_carry_tables_27_and_28():
    s1, s2 = cfg.load(CONFIGS / "mbas_stage1.toml"), cfg.load(CONFIGS / "mbas_stage2.toml")
    for c in (s1, s2):
        assert (c.optim.name, c.optim.lr, c.optim.momentum, c.optim.weight_decay) == ("sgd", 1e-2, 0.99, 3e-5)
        assert (c.schedule.kind, c.schedule.poly_exponent) == ("poly", 0.9)
        assert (c.train.epochs, c.train.iterations_per_epoch, c.train.batch_size) == (1000, 250, 2)
        assert (c.loss.name, c.loss.smooth, c.model.init) == ("dice_ce", 1e-5, "kaiming_normal")
        a = c.augment
        assert (a.elastic_prob, a.rotation_prob, a.rotation_deg, a.scaling_prob, a.scaling_range) == \
            (0.0, 0.2, [-180.0, 180.0], 0.2, [0.7, 1.4])
        assert (a.noise_prob, a.noise_variance, a.blur_prob, a.blur_sigma) == (0.1, [0.0, 0.1], 0.1, [0.5, 1.0])
        assert (a.brightness_prob, a.brightness_range, a.contrast_prob, a.contrast_range) == \
            (0.15, [0.75, 1.25], 0.15, [0.75, 1.25])
        assert (a.lowres_prob, a.lowres_scale, a.gamma_prob, a.inverse_gamma_prob) == (0.125, [0.5, 1.0], 0.1, 0.3)
    assert s1.train.select == s2.train.select == "last"  # B.2 / Table 17: the final checkpoint is reported
    assert s1.data.spacing == [2.5, 0.9737, 0.9737] and s1.train.patch_size == [28, 256, 224]
    assert (s1.train.sampling, s1.train.foreground_prob, s1.loss.batch_dice) == ("foreground", 0.25, False)
    assert s1.cascade.keep_largest and s1.cascade.dilation_radius == 2
    assert s2.train.patch_size == [20, 256, 256] and s2.loss.batch_dice and s2.loss.region_mask
    assert s2.train.class_weights == {"wall": 0.5, "RA": 0.25, "LA": 0.25}
    assert (s2.cascade.dilation_radius, s2.data.target) == (2, "multiclass")


def _load(tmp_path, text, overrides=()):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return cfg.load(path, list(overrides))


@pytest.mark.parametrize("text, message", [
    ("[train]\nepoch = 3\n", r"c.toml: train.epoch: unknown key; known in \[train\]: epochs"),
    ("[trian]\n", r"unknown section \[trian\]"),
    ("[train]\nepochs = \"ten\"\n", r"c.toml: train.epochs must be an integer, got str 'ten'"),
    ("[train]\nepochs = 2.5\n", r"train.epochs must be an integer, got float"),
    ("[optim]\nlr = true\n", r"optim.lr must be a number, got bool"),
    ("[roi]\nsize = [1, 2]\n", r"roi.size must have 3 positive values"),
    ("[data]\ntarget = \"aorta\"\n", r"data.target must be one of"),
    ("[augment]\nnoise_prob = 1.5\n", r"augment.noise_prob must be a probability"),
    ("[run]\nstage = \"wall\"\n", r"stage 'wall' fine-tunes the cavity model"),
    ("[roi]\nsize = [4, 4, 4]\nlocalizer = \"\"\n", r"roi.localizer"),
    ("[model]\noverrides = {features = [1, 2]}\n", r"model.overrides: strides needs one entry per stage"),
    ("[train]\nsampling = \"classes\"\nclass_weights = {RA = 1.0}\n",
     r"train.class_weights must give non-negative weights to classes of target 'la_cavity' \(LA\)"),
    ("[train]\nepochs = \n", r"not valid TOML"),
    ("[eval]\nstep = 0\n", r"eval.step must be in \(0, 1\], got 0.0"),
    ("[train]\niterations_per_epoch = -2\n", r"train.iterations_per_epoch must be in \[0, inf\)"),
    ("[optim]\nweight_decay = -1\n", r"optim.weight_decay must be in \[0, inf\)"),
    ("[optim]\nlr = nan\n", r"optim.lr must be in \(0, inf\), got nan"),
    ("[optim]\nbetas = [1.5, 0.9]\n", r"optim.betas must be two values in \[0, 1\)"),
    ("[schedule]\nmin_lr = -1\n", r"schedule.min_lr must be in \[0, inf\)"),
    ("[train]\nnum_workers = -1\n", r"train.num_workers must be in \[0, inf\)"),
    ("[train]\nval_patches = 0\n", r"train.val_patches must be in \[1, inf\)"),
    ("[data]\nlayout = \"foo\"\n", r"data.layout must be one of auto, lasc, mbas, nnunet"),
])
def test_bad_configs_fail_with_the_key_named(tmp_path, text, message):
    with pytest.raises(cfg.ConfigError, match=message):
        _load(tmp_path, text, ["train.patch_size=[8, 8, 8]"])


def _float_keys():
    """``(section.key, a TOML value of the field's shape)`` for every float field of the config."""
    shapes = {float: "{}", list[float]: "[{0}, {0}, {0}]", dict[str, float]: "{{LA = {}}}"}
    for section, cls in typing.get_type_hints(cfg.Config).items():
        for key, tp in typing.get_type_hints(cls).items():
            if tp in shapes:
                yield f"{section}.{key}", shapes[tp]


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
@pytest.mark.parametrize("key, shape", [pytest.param(key, shape, id=key) for key, shape in _float_keys()])
def test_every_float_value_must_be_finite(tmp_path, key, shape, value):
    """NaN passes every comparison: no float value, in a list or table either, gets through."""
    with pytest.raises(cfg.ConfigError, match=rf"^{key} must "):
        _load(tmp_path, "", ["train.patch_size=[8, 8, 8]", "train.sampling=\"classes\"", "train.class_weights.LA=1",
                             f"{key}={shape.format(value)}"])


@pytest.mark.parametrize("item, message", [
    ("data.spacing=[nan, 1, 1]", r"data.spacing must have 3 positive values \(z, y, x\), all finite, got \[nan, 1"),
    ("data.spacing=[inf, 1, 1]", r"data.spacing must have 3 positive values"),
    ("data.spacing=[0, 1, 1]", r"data.spacing must have 3 positive values"),
    ("augment.brightness_range=[nan, nan]", r"augment.brightness_range must be finite, got \[nan, nan\]"),
    ("augment.rotation_deg=[nan, nan]", r"augment.rotation_deg must be finite"),
    ("augment.rotation_deg=[-10, 400]", r"augment.rotation_deg must be \[min, max\] with min <= max in \[-360, 360\]"),
    ("augment.elastic_sigma_mm=nan", r"augment.elastic_sigma_mm must be in \(0, inf\), got nan"),
    ("augment.elastic_sigma_mm=-3", r"augment.elastic_sigma_mm must be in \(0, inf\), got -3.0"),
    ("augment.elastic_magnitude_mm=-1", r"augment.elastic_magnitude_mm must be in \[0, inf\)"),
    ("augment.scaling_range=[0, 0]", r"augment.scaling_range must be \[min, max\] with min <= max in \(0, inf\)"),
    ("augment.gamma_range=[0, 0]", r"augment.gamma_range must be \[min, max\] with min <= max in \(0, inf\)"),
    ("augment.inverse_gamma_range=[0, 1]", r"augment.inverse_gamma_range must be \[min, max\]"),
    ("augment.lowres_scale=[0, 1]", r"augment.lowres_scale must be \[min, max\]"),
    ("augment.noise_variance=[0.2, 0.1]", r"augment.noise_variance must be \[min, max\] with min <= max in \[0, inf\)"),
    ("augment.blur_sigma=[-1, 1]", r"augment.blur_sigma must be \[min, max\]"),
    ("train.class_weights={LA = nan}", r"train.class_weights must be finite, got \{'LA': nan\}"),
])
def test_nan_and_nonsense_values_are_refused_with_the_key_named(tmp_path, item, message):
    with pytest.raises(cfg.ConfigError, match=message):
        _load(tmp_path, "", ["train.patch_size=[8, 8, 8]", item])


def test_set_overrides_parse_toml_values_and_bare_words(tmp_path):
    config = _load(tmp_path, "[roi]\ncenter = \"ground_truth\"\n", [
        "train.epochs=7", "optim.lr=3e-4", "run.amp=false", "roi.size=[8, 16, 16]", "run.stage=scratch",
        "model.overrides.features=[8,16,32,32,64,64,64]", "train.sampling=classes", "train.class_weights.LA=1.0"])
    assert (config.train.epochs, config.optim.lr, config.run.amp, config.roi.size) == (7, 3e-4, False, [8, 16, 16])
    assert config.run.stage == "scratch" and config.model.overrides["features"][0] == 8
    assert config.train.class_weights == {"LA": 1.0}
    with pytest.raises(cfg.ConfigError, match="expects section.key=value"):
        _load(tmp_path, "", ["epochs=3"])


def test_a_folder_given_as_config_is_a_clear_error(tmp_path):
    with pytest.raises(cfg.ConfigError, match="cannot read the config file"):
        cfg.load(tmp_path)


# --- presets by name: installed with the package (setup.py maps configs/ to c2w_fast.configs) ---

def test_the_installed_presets_are_the_configs_folder():
    assert cfg.presets() == [p.stem for p in PRESETS]
    for path in PRESETS:
        assert cfg.preset_path(path.stem).read_text() == path.read_text()


@pytest.mark.parametrize("name", ["c2w_wall", "c2w_wall.toml"])
def test_a_preset_loads_by_name_from_any_directory(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert cfg.config_path(name) == cfg.preset_path("c2w_wall")
    assert cfg.load(name) == cfg.load(CONFIGS / "c2w_wall.toml")
    assert cfg.load(name, ["train.epochs=3"]).train.epochs == 3


@pytest.mark.parametrize("name", ["c2w_wall", "c2w_wall.toml"])
def test_an_existing_file_wins_over_a_preset_of_that_name(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).write_text("[run]\nstage = \"scratch\"\n[train]\nepochs = 7\npatch_size = [8, 8, 8]\n")
    assert cfg.config_path(name) == Path(name)
    config = cfg.load(name)
    assert (config.run.stage, config.train.epochs) == ("scratch", 7)


def test_a_bare_name_beside_an_edited_copy_loads_the_preset_and_says_so(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c2w_wall.toml").write_text("[run]\nstage = \"scratch\"\n")
    with pytest.warns(UserWarning, match=r"c2w_wall is the installed preset; ./c2w_wall.toml in this folder is not "
                                         r"read \(write --config ./c2w_wall.toml for it\)"):
        assert cfg.config_path("c2w_wall") == cfg.preset_path("c2w_wall")


def test_a_bare_name_of_no_preset_beside_a_file_of_that_name_is_one_error_with_the_path_to_write(tmp_path,
                                                                                                  monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "myconf.toml").write_text("[run]\nstage = \"scratch\"\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "is the installed preset" warning before the error
        with pytest.raises(cfg.ConfigError, match=r"myconf: no such config file, nor a preset of that name; presets: "
                                                  r".*; for ./myconf.toml in this folder write --config ./myconf.toml$"):
            cfg.load("myconf")


def test_class_weights_without_class_sampling_are_refused_before_training():
    # they would be unused, and the training loop mapped their names to classes anyway (a crash after the
    # run folder was written for a name outside the target's classes)
    with pytest.raises(cfg.ConfigError, match=r"train.class_weights weight the patch centres of train.sampling = "
                                              r"'classes' only, got sampling 'foreground'.*class_weights=\{\}"):
        cfg.load("c2w_cavity", ["train.sampling=foreground", "train.class_weights.wall=0.5"])
    with pytest.raises(cfg.ConfigError, match="train.class_weights weight"):
        cfg.load("mbas_stage2", ["data.target=wall", "train.sampling=foreground"])
    config = cfg.load("mbas_stage2", ["data.target=wall", "train.sampling=foreground", "train.class_weights={}"])
    assert config.train.class_weights == {}


@pytest.mark.parametrize("item, hint", [("run.amp=True", r"must be bool, got str 'True' \(TOML writes booleans in "
                                                         r"lower case: true\)"),
                                        ("run.init_from=2024", r'must be str, got int 2024 \(a name is quoted: "2024"\)')])
def test_a_value_of_the_wrong_type_that_toml_reads_otherwise_gets_a_hint(tmp_path, item, hint):
    with pytest.raises(cfg.ConfigError, match=hint):
        _load(tmp_path, "", [item])


@pytest.mark.parametrize("shallow", [-1, 7, 10])
def test_step_b_must_leave_some_of_the_encoder_training(shallow):
    with pytest.raises(cfg.ConfigError, match=rf"unfreeze.shallow_stages must be in 0..6: the encoder has 7 stages "
                                              rf"and step B trains those after the first shallow_stages, got {shallow}"):
        cfg.load("c2w_wall", ["run.init_from=\"cavity\"", f"unfreeze.shallow_stages={shallow}"])
    assert cfg.load("c2w_wall", ["run.init_from=\"cavity\"", "unfreeze.shallow_stages=6"]).unfreeze.shallow_stages == 6


def test_an_unknown_name_lists_the_presets(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    listed = ", ".join(p.stem for p in PRESETS)
    with pytest.raises(cfg.ConfigError, match=r"c2w_wal: no such config file, nor a preset of that name; "
                                              rf"presets: {listed}$"):
        cfg.load("c2w_wal")
    with pytest.raises(cfg.ConfigError, match="presets: c2w_cavity"):
        cfg.preset_path("../configs/c2w_wall")


def test_a_folder_named_like_a_preset_does_not_hide_it_and_dot_slash_is_a_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c2w_wall").mkdir()  # e.g. a run folder: --config c2w_wall --out c2w_wall
    assert cfg.load("c2w_wall") == cfg.load(CONFIGS / "c2w_wall.toml")
    with pytest.raises(cfg.ConfigError, match=r"^c2w_wall.toml: config file not found"):
        cfg.load("./c2w_wall.toml")  # written as a path: never the preset
    from c2w_fast import train
    assert train.parser().parse_args(["--config", "./c2w_wall.toml", "--out", "run"]).config == "./c2w_wall.toml"


def test_an_install_without_the_presets_package_says_to_reinstall(tmp_path, monkeypatch):
    import importlib.resources

    def missing(package):
        raise ModuleNotFoundError(f"No module named {package!r}")

    monkeypatch.setattr(importlib.resources, "files", missing)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cfg.ConfigError, match=r"the presets are not installed .* re-run `pip install -e \.`"):
        cfg.load("c2w_wall")


@pytest.mark.parametrize("path", ["configs/c2w_wal.toml", "/abs/c2w_wall.toml"])
def test_a_missing_path_keeps_its_error_and_mentions_the_presets(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cfg.ConfigError, match=rf"^{path}: config file not found \(or name a preset without a "
                                              rf"folder: {', '.join(p.stem for p in PRESETS)}\)$"):
        cfg.load(path)


def test_train_takes_a_preset_name_and_its_help_names_every_preset(tmp_path, monkeypatch):
    from c2w_fast import train
    monkeypatch.chdir(tmp_path)
    args = train.parser().parse_args(["--config", "c2w_wall", "--out", "run", "--init-from", "cavity"])
    config = train._config(args)
    assert config.run.stage == "wall" and config.run.init_from == str(tmp_path / "cavity")
    text = train.parser().format_help()
    assert all(p.stem in text for p in PRESETS)


# --- from the mutation audit of the CLIs and configs: types, bounds and --set at their edges ---

@pytest.mark.parametrize("text, items, message", [
    ("", ["train.epochs=true"], r"^--set train.epochs must be an integer, got bool True$"),
    ("", ["roi.size=5"], r"^--set roi.size must be a list of int, got int 5$"),
    ("", ["train.class_weights=[1.0]"], r"^--set train.class_weights must be a table, got list \[1.0\]$"),
    ("", ["run.amp=\"yes\""], r"^--set run.amp must be bool, got str 'yes'$"),
    ("", ["data.root=3"], r'^--set data.root must be str, got int 3 \(a name is quoted: "3"\)$'),
    ("eval = 3\n", [], r"c.toml: eval: \[eval\] must be a table, got 3$"),
    ("[train]\nepochs = 3\n", ["train.epochs.x=1"], r"^--set train.epochs.x: epochs is not a table$"),
    ("", ["train.=3"], r"^--set expects section.key=value, got 'train.=3'$"),
    # a nested --set is blamed on the --set, not on the file
    ("", ["train.class_weights.LA=x"], r"^--set train.class_weights.LA must be a number, got str 'x'$"),
])
def test_values_of_the_wrong_kind_are_named_with_where_they_came_from(tmp_path, text, items, message):
    """A bool is not an integer, a scalar not a list, a list not a table, a string not a bool, a number not a
    string, a section must be a table and --set cannot descend into a value: each a ConfigError naming the key."""
    with pytest.raises(cfg.ConfigError, match=message):
        _load(tmp_path, text, ["train.patch_size=[8, 8, 8]", *items])


@pytest.mark.parametrize("items, message", [
    (["roi.size=[8, 8, 8, 8]"], r"roi.size must have 3 positive values"),
    (["optim.momentum=1.5"], r"optim.momentum must be in \[0, 1\], got 1.5"),
    (["optim.betas=[1.0, 0.9]"], r"optim.betas must be two values in \[0, 1\)"),
    (["train.prefetch=0"], r"train.prefetch must be in \[1, inf\), got 0"),
    (["cascade.dilation_radius=-1"], r"cascade.dilation_radius must be in \[0, inf\), got -1"),
    (["eval.step=1.5"], r"eval.step must be in \(0, 1\], got 1.5"),
    (["data.n_folds=1"], r"need data.n_folds >= 2"),
    (["train.val_every=0"], r"train.val_every must be >= 1, got 0"),
    (["train.best_ema=1"], r"train.best_ema in \[0, 1\), got 0.0, 1.0"),
    (["schedule.restarts=[5]"], r"schedule.restarts and schedule.restart_lr need one LR per restart"),
    (["schedule.restarts=[5]", "schedule.restart_lr=[0]"], r"schedule.restart_lr must be positive learning rates"),
    (["schedule.restarts=[5, 3]", "schedule.restart_lr=[1e-4, 1e-5]"], r"schedule.restarts must be increasing"),
    (["schedule.restarts=[3, 3]", "schedule.restart_lr=[1e-4, 1e-5]"], r"schedule.restarts must be increasing"),
    (["schedule.restarts=[0]", "schedule.restart_lr=[1e-4]"], r"schedule.restarts must be increasing epochs >= 1"),
    (["augment.flip_axes=[0, 3]"], r"augment.flip_axes must be axes among 0, 1, 2"),
    (["loss.region_mask=true"], r"loss.region_mask with cascade.mask_source = 'stage1' needs cascade.stage1"),
    (["data.sdf_channel=true"], r"data.sdf_channel needs data.sdf_from"),
    (["train.epochs"], r"^--set expects section.key=value, got 'train.epochs'$"),
    (["run.seed=-5"], r"run.seed must be in \[0, 4294967295\], got -5"),
    (["data.split_seed=4294967296"], r"data.split_seed must be in \[0, 4294967295\], got 4294967296"),
    (["roi.size=[]", "train.patch_size=[]"], r"train.patch_size is needed when there is no ROI"),
    (["unfreeze.enabled=true", "unfreeze.steps=[5]"], r"unfreeze.steps must be \[first epoch of step B, first epoch"),
    (["unfreeze.enabled=true", "unfreeze.steps=[5, 3]"], r"with 0 < B <= C, got \[5, 3\]"),
    (["unfreeze.enabled=true", "unfreeze.steps=[0, 3]"], r"with 0 < B <= C, got \[0, 3\]"),
])
def test_values_just_outside_their_bounds_are_refused(tmp_path, items, message):
    with pytest.raises(cfg.ConfigError, match=message):
        _load(tmp_path, "", ["train.patch_size=[8, 8, 8]", *items])


@pytest.mark.parametrize("items", [
    ["eval.step=1"],                                       # stride 1.0: the MBAS fast mode, (0, 1] closed above
    ["augment.brightness_range=[1.0, 1.0]"],               # [min, max] with min <= max: one value is a range
    ["optim.momentum=1", "optim.betas=[0, 0.999]", "train.best_ema=0", "train.prefetch=1"],
    ["cascade.dilation_radius=0", "data.n_folds=2", "train.val_every=1"],
    ["schedule.restarts=[1, 5]", "schedule.restart_lr=[1e-4, 1e-5]"],
    ["data.target=\"multiclass\"", "train.sampling=\"classes\"", "train.class_weights={wall = 1.0, RA = 0.0}"],
    ["loss.region_mask=true", "cascade.mask_source=\"ground_truth\""],
    ["unfreeze.enabled=true", "unfreeze.steps=[3, 3]"],   # B = C: step B skipped
    ["roi.size=[]", "train.patch_size=[8, 8, 8]"],
    ["run.seed=0", "data.split_seed=4294967295"],
])
def test_values_on_their_bounds_are_accepted(tmp_path, items):
    config = _load(tmp_path, "", ["train.patch_size=[8, 8, 8]", *items])
    for item in items:
        key, value = item.split("=", 1)
        assert cfg.value_at(config, key) == cfg.parse_value(value)


def test_set_values_and_keys_may_be_spaced(tmp_path):
    """``--set "run.stage = scratch"``: a bare word is stripped like a TOML value."""
    config = _load(tmp_path, "", ["train.patch_size=[8, 8, 8]", "run.stage = scratch", " train.epochs =  7 "])
    assert (config.run.stage, config.train.epochs) == ("scratch", 7)


def test_dumps_quotes_what_toml_would_misread():
    """Backslashes and quotes in a path (a Windows dataset folder) and a table key with a space round-trip."""
    config = cfg.load(CONFIGS / "c2w_cavity.toml")
    config.data.root = 'D:\\scans\\"LASC" 2018'
    config.train.class_weights = {"left atrium": 1.0}  # read back unchecked: the quoting is what is tested
    again = cfg.from_dict(tomllib.loads(cfg.dumps(config)))
    assert again.data.root == 'D:\\scans\\"LASC" 2018' and again == config


def test_a_ground_truth_centre_without_an_roi_is_no_oracle():
    """roi.center only matters with an ROI: a whole-volume stage reads no labels to predict."""
    config = cfg.Config()
    config.roi.center = "ground_truth"
    assert cfg.oracle_settings(config) == []
    config.roi.size = [8, 8, 8]
    assert cfg.oracle_settings(config) == ["roi.center = 'ground_truth'"]


@pytest.mark.parametrize("argv, message", [
    (["--out", "run"], r"^--config is required \(or --resume to continue a run\)$"),
    (["--resume", "--out", "run", "--set", "train.epochs=3"], r"^--resume continues with the run's saved config"),
    (["--resume", "--out", "run", "--config", "c2w_wall"], r"^--resume continues with the run's saved config"),
    (["--resume", "--out", "run", "--init-from", "cavity"], r"^--resume continues with the run's saved config"),
])
def test_train_arguments_that_cannot_go_together(argv, message, tmp_path, monkeypatch):
    """A resumed run keeps its saved config (only --epochs, --device and --data may change); without --resume
    a config is needed. Refused before the run folder is looked at."""
    from c2w_fast import train
    monkeypatch.chdir(tmp_path)
    with pytest.raises(cfg.ConfigError, match=message):
        train._config(train.parser().parse_args(argv))
