"""Training configuration: one dataclass per TOML section, loaded, overridden and checked up front.

A config file holds the sections below (the presets, ``configs/*.toml``, are installed with the
package: ``load("c2w_wall")`` finds them by name, see :func:`config_path`); missing keys take the
dataclass defaults, unknown keys or values of the wrong type are a :class:`ConfigError`
naming ``section.key``, the expected type and the value found — before any training, as are
values out of range (:func:`check`; every float value must be finite: NaN and inf are refused).
``--set section.key=value`` overrides any value (the value is read as TOML, bare words
as strings). Sizes and spacings are (z, y, x) along the canonical voxel axes that training reads
every case in, toward superior, anterior and right (:mod:`c2w_fast.data.orientation`); spacing in mm.
"""
from __future__ import annotations

import dataclasses
import importlib.resources
import math
import os
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from c2w_fast.data.preprocess import TARGET_CLASSES

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

STAGES = ("localizer", "cavity", "wall", "scratch", "cascade1", "cascade2")


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or inconsistent."""


@dataclass
class RunConfig:
    stage: str = "cavity"          # one of STAGES
    seed: int = 0
    init_from: str = ""            # checkpoint or run folder to start from (wall: the cavity run)
    device: str = "auto"           # auto | cpu | cuda
    amp: bool = True               # bf16 autocast on a GPU (ignored on CPU)
    deterministic: bool = False    # torch.use_deterministic_algorithms (warn_only: a few CUDA ops have none)


@dataclass
class DataConfig:
    root: str = ""                 # dataset folder (LASC 2018, MBAS or nnU-Net raw)
    layout: str = "auto"
    target: str = "la_cavity"      # la_cavity | wall | atria | multiclass (TARGET_CLASSES)
    spacing: list[float] = field(default_factory=list)  # resample to (z, y, x) mm; [] = native (median recorded)
    n_test: int = 30               # held-out test patients
    n_folds: int = 5
    final_val: int = 24            # validation patients of the final retrain (0: train on all)
    split_seed: int = 0
    patients: str = ""             # CSV with columns case,patient: a patient's scans stay on one side of every split
    train_subset: int = 0          # C2W's N=70 ablation: train on this many of a fold's training cases (0: all)
    subset_seed: int = 0           # which subset (validation and test cases stay fixed)
    sdf_channel: bool = False      # beyond the paper: cavity signed distance as a 2nd input channel
    sdf_from: str = ""             # cavity run whose prediction gives that distance
    sdf_scale_mm: float = 10.0     # the channel is distance / scale, clipped to [-1, 1]


@dataclass
class RoiConfig:
    size: list[int] = field(default_factory=list)  # (z, y, x) voxels; [] = whole volume
    center: str = "localizer"      # localizer | ground_truth: whose atrium centre of mass
    localizer: str = ""            # run folder of the localizer stage


@dataclass
class ModelConfig:
    architecture: str = "c2w_resnext"
    overrides: dict[str, Any] = field(default_factory=dict)  # UNetSpec fields, e.g. features
    deep_supervision: bool = False
    init: str = "kaiming_normal"   # kaiming_normal | torch


@dataclass
class LossConfig:
    name: str = "dice_focal"       # dice_focal | dice_ce
    gamma: float = 2.0             # focal exponent
    include_background: bool = True
    batch_dice: bool = False
    smooth: float = 1e-5
    region_mask: bool = False      # cascade2: loss only inside the dilated stage-1 region


@dataclass
class OptimConfig:
    name: str = "adamw"            # adamw | sgd
    lr: float = 1e-3               # base (maximum) learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 1e-4
    momentum: float = 0.99
    nesterov: bool = True
    grad_clip: float = 0.0         # max gradient norm; 0 = off


@dataclass
class ScheduleConfig:
    kind: str = "cosine"           # cosine | poly | constant
    warmup_epochs: float = 0.0     # linear warm-up at the start of every cosine cycle
    min_lr: float = 1e-6
    poly_exponent: float = 0.9
    restarts: list[int] = field(default_factory=list)     # epochs where a new cosine cycle starts
    restart_lr: list[float] = field(default_factory=list)  # maximum LR of each new cycle


@dataclass
class UnfreezeConfig:
    enabled: bool = False
    steps: list[int] = field(default_factory=lambda: [61, 181])  # first epoch of step B, of step C
    shallow_stages: int = 3        # encoder stages from the first (stage 0 counts) frozen with the stem in step B
    new_head: bool = True          # re-initialise the segmentation heads after loading init_from


@dataclass
class TrainConfig:
    epochs: int = 1000
    batch_size: int = 4
    iterations_per_epoch: int = 0  # 0 = one pass over the training cases
    patch_size: list[int] = field(default_factory=list)  # [] = the ROI size
    sampling: str = "center"       # center | random | foreground | classes
    foreground_prob: float = 0.0   # "foreground": chance a patch is centred on the target
    class_weights: dict[str, float] = field(default_factory=dict)  # "classes": centre-class weights
    early_stopping: int = 0        # patience in validations without improvement; 0 = off
    early_stopping_from: int = 0   # first epoch (from 0) at whose end early stopping may stop the run
    select: str = "best"           # best | last: the epoch whose weights become checkpoint_best.pt, the one
                                   # evaluation and prediction use (last = nnU-Net's checkpoint_final)
    val_every: int = 1
    val_mode: str = "full"         # full: whole validation cases, Dice + HD95 | patches: pseudo Dice
    val_patches: int = 100         # patches of the "patches" validation (MBAS B.2: 100)
    best_ema: float = 0.0          # smoothing of the validation score for checkpoint_best (nnU-Net 0.9)
    num_workers: int = 2
    prefetch: int = 4


@dataclass
class AugmentConfig:
    in_plane: bool = True            # rotate about z, scale, blur and low-res in-plane only (nnU-Net's
                                     # "dummy 2D" augmentation of anisotropic patches)
    rotation_prob: float = 0.0
    rotation_deg: list[float] = field(default_factory=lambda: [-15.0, 15.0])
    scaling_prob: float = 0.0
    scaling_range: list[float] = field(default_factory=lambda: [0.7, 1.4])  # x sampling coordinates (> 1 shrinks)
    elastic_prob: float = 0.0
    elastic_sigma_mm: float = 12.0   # smoothness of the random displacement field
    elastic_magnitude_mm: float = 4.0  # std of the control points' displacement (clipped at 3 of them)
    flip_prob: float = 0.0           # per axis in flip_axes
    flip_axes: list[int] = field(default_factory=lambda: [0, 1, 2])
    noise_prob: float = 0.0
    noise_variance: list[float] = field(default_factory=lambda: [0.0, 0.1])  # the std is drawn from it
    blur_prob: float = 0.0
    blur_sigma: list[float] = field(default_factory=lambda: [0.5, 1.0])
    brightness_prob: float = 0.0     # multiplicative intensity scaling
    brightness_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    contrast_prob: float = 0.0
    contrast_range: list[float] = field(default_factory=lambda: [0.75, 1.25])
    lowres_prob: float = 0.0
    lowres_scale: list[float] = field(default_factory=lambda: [0.5, 1.0])
    gamma_prob: float = 0.0
    gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])
    inverse_gamma_prob: float = 0.0
    inverse_gamma_range: list[float] = field(default_factory=lambda: [0.7, 1.5])
    histogram_match_prob: float = 0.0  # match to another random training case's intensity quantiles


@dataclass
class CascadeConfig:
    stage1: str = ""               # run folder of cascade stage 1
    mask_source: str = "stage1"    # stage1 | ground_truth (oracle, paper Table 5)
    keep_largest: bool = True
    dilation_radius: int = 2       # voxels


@dataclass
class EvalConfig:
    tolerance_mm: float = 1.0      # Surface Dice tolerance
    step: float = 0.5              # sliding-window step as a fraction of the patch
    gaussian: bool = True          # Gaussian importance weighting of overlapping windows
    keep_largest: bool = False     # keep the largest component of every predicted class


@dataclass
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    data: DataConfig = field(default_factory=DataConfig)
    roi: RoiConfig = field(default_factory=RoiConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    unfreeze: UnfreezeConfig = field(default_factory=UnfreezeConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    cascade: CascadeConfig = field(default_factory=CascadeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    @property
    def class_names(self) -> tuple[str, ...]:
        """Foreground class names in class-index order (index 0 is background)."""
        return tuple(TARGET_CLASSES[self.data.target])

    @property
    def num_classes(self) -> int:
        return 1 + len(self.class_names)

    @property
    def in_channels(self) -> int:
        return 2 if self.data.sdf_channel else 1

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --- reading and checking -------------------------------------------------------------

def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value, tp, where: str):
    """``value`` checked against the annotation ``tp`` (ints are accepted for floats)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ConfigError(f"{where} must be a list of {_type_name(item)}, got {type(value).__name__} {value!r}")
        return [_coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ConfigError(f"{where} must be a table, got {type(value).__name__} {value!r}")
        return {str(k): _coerce(v, value_tp, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {type(value).__name__} {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {type(value).__name__} {value!r}")
        return value
    if not isinstance(value, tp):
        hint = ""
        if tp is bool and str(value).lower() in ("true", "false"):
            hint = f" (TOML writes booleans in lower case: {str(value).lower()})"
        elif tp is str and isinstance(value, (int, float)):
            hint = f' (a name is quoted: "{value}")'
        raise ConfigError(f"{where} must be {_type_name(tp)}, got {type(value).__name__} {value!r}{hint}")
    return value


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def from_dict(data: dict, *, source: str = "config", overridden: frozenset[str] = frozenset()) -> Config:
    """A :class:`Config` from nested dicts; unknown sections/keys and wrong types are errors, each
    blamed on ``source`` or, for a ``section.key`` in ``overridden``, on its ``--set``."""
    config = Config()
    sections = _section_types(Config)

    def where(name: str, key: str | None = None) -> str:
        dotted = name if key is None else f"{name}.{key}"
        by_set = dotted in overridden if key is not None else any(o.startswith(f"{name}.") for o in overridden)
        return f"--set {dotted}" if by_set else f"{source}: {dotted}"

    for name, values in data.items():
        if name not in sections:
            raise ConfigError(f"{where(name)}: unknown section [{name}]; known: {', '.join(sections)}")
        if not isinstance(values, dict):
            raise ConfigError(f"{where(name)}: [{name}] must be a table, got {values!r}")
        section = getattr(config, name)
        types = _section_types(type(section))
        for key, value in values.items():
            if key not in types:
                raise ConfigError(f"{where(name, key)}: unknown key; known in [{name}]: {', '.join(types)}")
            setattr(section, key, _coerce(value, types[key], where(name, key)))
    return config


# The presets: the repository's top-level configs/*.toml, installed as the package data of
# c2w_fast.configs (setup.py), in a wheel as in an editable install.
PRESETS_PACKAGE = "c2w_fast.configs"


def _presets_dir() -> Path:
    try:
        return Path(str(importlib.resources.files(PRESETS_PACKAGE)))
    except ModuleNotFoundError:  # an editable install made before the presets were package data
        raise ConfigError(f"the presets are not installed ({PRESETS_PACKAGE} is missing): re-run "
                          "`pip install -e .` in the repository, or give --config a file path") from None


def presets() -> list[str]:
    """Names of the installed presets (``c2w_cavity``, ``c2w_wall``, ...), sorted."""
    return sorted(p.stem for p in _presets_dir().glob("*.toml"))


def preset_path(name: str) -> Path:
    """The file of the installed preset ``name`` (``c2w_wall`` or ``c2w_wall.toml``); an unknown
    name is a :class:`ConfigError` listing the presets."""
    stem = name[:-len(".toml")] if name.endswith(".toml") else name
    path = _presets_dir() / f"{stem}.toml"
    if "/" in stem or "\\" in stem or not path.is_file():
        raise ConfigError(f"{name}: no such config file, nor a preset of that name; "
                          f"presets: {', '.join(presets())}")
    return path


def config_path(path) -> Path:
    """The file ``--config`` names: ``path`` itself when it is a file (a file always wins) or is
    written as a path (a folder in it, or a leading ``.``: ``./c2w_wall.toml``), else the
    installed preset of that bare name (``c2w_wall`` or ``c2w_wall.toml``), with a warning when
    the working folder holds ``c2w_wall.toml``, which is then not read."""
    text = str(path)
    if Path(text).is_file() or "/" in text or os.sep in text or text.startswith("."):
        return Path(text)
    local = Path(f"{text}.toml")
    if text.endswith(".toml") or not local.is_file():
        return preset_path(text)
    try:
        preset = preset_path(text)
    except ConfigError as exc:
        raise ConfigError(f"{exc}; for ./{local} in this folder write --config ./{local}") from None
    warnings.warn(f"--config {text} is the installed preset; ./{local} in this folder is not read "
                  f"(write --config ./{local} for it)", stacklevel=2)
    return preset


def load(path, overrides: list[str] = ()) -> Config:
    """Read a TOML config file or preset (:func:`config_path`), apply ``section.key=value``
    overrides and check the result."""
    path = config_path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found (or name a preset without a folder: "
                          f"{', '.join(presets())})") from None
    except (OSError, UnicodeDecodeError) as exc:  # a folder, no permission, a binary file
        raise ConfigError(f"{path}: cannot read the config file ({getattr(exc, 'strerror', None) or exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML ({exc})") from None
    overridden = frozenset(apply_override(data, item) for item in overrides)
    config = from_dict(data, source=str(path), overridden=overridden)
    check(config)
    return config


def parse_value(text: str):
    """A ``--set`` value read as TOML (``3``, ``1e-3``, ``true``, ``[1, 2]``); bare words stay strings."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_override(data: dict, item: str) -> str:
    """Set ``section.key[.subkey]=value`` in the nested dict ``data``; returns ``section.key``."""
    if "=" not in item:
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    path, text = item.split("=", 1)
    keys = path.strip().split(".")
    if len(keys) < 2 or not all(keys):
        raise ConfigError(f"--set expects section.key=value, got {item!r}")
    node = data
    for key in keys[:-1]:
        node = node.setdefault(key, {})
        if not isinstance(node, dict):
            raise ConfigError(f"--set {path}: {key} is not a table")
    node[keys[-1]] = parse_value(text.strip())
    return ".".join(keys[:2])


def _choice(value, choices, where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(map(str, choices))}, got {value!r}")


def _positive_triple(values, where: str, allow_empty: bool = True) -> None:
    if not values and allow_empty:
        return
    if len(values) != 3 or not all(_within(v, 0, None, True) for v in values):
        raise ConfigError(f"{where} must have 3 positive values (z, y, x), all finite, got {values}")


def _interval(low, high, low_open: bool) -> str:
    return f"{'(' if low_open else '['}{low}, {'inf)' if high is None else f'{high}]'}"


def _within(value, low, high, low_open: bool) -> bool:
    """``value`` finite and in the interval (high None: unbounded); NaN never is."""
    above = value > low if low_open else value >= low
    return math.isfinite(value) and above and (high is None or value <= high)


def _range(values, where: str, bounds) -> None:
    """``values`` is [min, max] with min <= max, both in ``bounds`` = (lowest, highest, lowest excluded)."""
    if len(values) != 2 or not (all(_within(v, *bounds) for v in values) and values[0] <= values[1]):
        raise ConfigError(f"{where} must be [min, max] with min <= max in {_interval(*bounds)}, got {values}")


# Augmentation ranges [min, max] (the *_range, *_deg, *_variance, *_sigma, *_scale lists) with bounds other
# than [0, inf), as in BOUNDS: angles within a turn either way, scales and gammas positive.
AUGMENT_RANGES = {"rotation_deg": (-360, 360, False), "scaling_range": (0, None, True), "lowres_scale": (0, None, True),
                  "gamma_range": (0, None, True), "inverse_gamma_range": (0, None, True)}


# Numeric bounds: key -> (lowest, highest, whether the lowest is excluded); None = unbounded.
BOUNDS = {
    "data.sdf_scale_mm": (0, None, True),
    "optim.lr": (0, None, True), "optim.weight_decay": (0, None, False), "optim.momentum": (0, 1, False),
    "optim.grad_clip": (0, None, False),
    "schedule.warmup_epochs": (0, None, False), "schedule.min_lr": (0, None, False),
    "schedule.poly_exponent": (0, None, True),
    "loss.gamma": (0, None, False), "loss.smooth": (0, None, False),
    "unfreeze.shallow_stages": (0, None, False),
    "train.iterations_per_epoch": (0, None, False), "train.early_stopping": (0, None, False),
    "train.early_stopping_from": (0, None, False), "train.val_patches": (1, None, False),
    "train.num_workers": (0, None, False), "train.prefetch": (1, None, False),
    "cascade.dilation_radius": (0, None, False),
    "eval.tolerance_mm": (0, None, True), "eval.step": (0, 1, True),
    "augment.elastic_sigma_mm": (0, None, True), "augment.elastic_magnitude_mm": (0, None, False),
    "run.seed": (0, 2**32 - 1, False), "data.split_seed": (0, 2**32 - 1, False),  # what every generator takes
}


def value_at(config: Config, key: str):
    """The value of ``section.key`` in ``config``."""
    section, name = key.split(".")
    return getattr(getattr(config, section), name)


def _check_bounds(config: Config) -> None:
    for key, (low, high, low_open) in BOUNDS.items():
        value = value_at(config, key)
        if not _within(value, low, high, low_open):
            raise ConfigError(f"{key} must be in {_interval(low, high, low_open)}, got {value}")
    optim, schedule = config.optim, config.schedule
    if not all(0 <= b < 1 for b in optim.betas):
        raise ConfigError(f"optim.betas must be two values in [0, 1), got {optim.betas}")
    if any(not (math.isfinite(v) and v > 0) for v in schedule.restart_lr):
        raise ConfigError(f"schedule.restart_lr must be positive learning rates, got {schedule.restart_lr}")


def _check_finite(config: Config) -> None:
    """Every number of a float field (also inside lists and tables) is finite: NaN passes comparisons."""
    for section in dataclasses.fields(config):
        values = getattr(config, section.name)
        for key, tp in _section_types(type(values)).items():
            value = getattr(values, key)
            items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else [value]
            if float in (tp, *typing.get_args(tp)) and not all(math.isfinite(v) for v in items):
                raise ConfigError(f"{section.name}.{key} must be finite, got {value}")


def check(config: Config) -> None:
    """Cross-field checks of values whose types are already right; a ConfigError on the first problem."""
    from c2w_fast.data.layouts import LAYOUTS
    from c2w_fast.models import ARCHITECTURES, INITS, build_spec

    run, data, train, aug = config.run, config.data, config.train, config.augment
    _choice(run.stage, STAGES, "run.stage")
    _choice(run.device, ("auto", "cpu", "cuda"), "run.device")
    _choice(data.layout, ("auto", *LAYOUTS), "data.layout")
    _choice(data.target, tuple(TARGET_CLASSES), "data.target")
    _positive_triple(data.spacing, "data.spacing")
    _positive_triple(config.roi.size, "roi.size")
    _positive_triple(train.patch_size, "train.patch_size")
    _choice(config.roi.center, ("localizer", "ground_truth"), "roi.center")
    _choice(config.model.architecture, tuple(ARCHITECTURES), "model.architecture")
    try:
        stages = len(build_spec(config.model.architecture, **config.model.overrides).features)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"model.overrides: {exc}") from None
    if config.unfreeze.enabled and not 0 <= config.unfreeze.shallow_stages < stages:
        raise ConfigError(f"unfreeze.shallow_stages must be in 0..{stages - 1}: the encoder has {stages} stages and "
                          f"step B trains those after the first shallow_stages, got {config.unfreeze.shallow_stages}")
    _choice(config.model.init, INITS, "model.init")
    _choice(config.loss.name, ("dice_focal", "dice_ce"), "loss.name")
    _choice(config.optim.name, ("adamw", "sgd"), "optim.name")
    _choice(config.schedule.kind, ("cosine", "poly", "constant"), "schedule.kind")
    _choice(train.sampling, ("center", "random", "foreground", "classes"), "train.sampling")
    _choice(train.val_mode, ("full", "patches"), "train.val_mode")
    _choice(train.select, ("best", "last"), "train.select")
    _choice(config.cascade.mask_source, ("stage1", "ground_truth"), "cascade.mask_source")
    if data.n_folds < 2 or data.n_test < 0 or data.final_val < 0 or data.train_subset < 0:
        raise ConfigError(f"need data.n_folds >= 2, data.n_test >= 0, data.final_val >= 0 and data.train_subset >= 0, "
                          f"got {data.n_folds}, {data.n_test}, {data.final_val}, {data.train_subset}")
    for name in ("epochs", "batch_size", "val_every"):
        if getattr(train, name) < 1:
            raise ConfigError(f"train.{name} must be >= 1, got {getattr(train, name)}")
    if not train.patch_size and not config.roi.size:
        raise ConfigError("train.patch_size is needed when there is no ROI (roi.size = [])")
    if len(config.optim.betas) != 2:
        raise ConfigError(f"optim.betas must be 2 values, got {config.optim.betas}")
    _check_bounds(config)
    _check_finite(config)
    if len(config.schedule.restarts) != len(config.schedule.restart_lr):
        raise ConfigError(f"schedule.restarts and schedule.restart_lr need one LR per restart, got "
                          f"{config.schedule.restarts} and {config.schedule.restart_lr}")
    restarts = config.schedule.restarts
    if restarts != sorted(set(restarts)) or any(e < 1 for e in restarts):
        raise ConfigError(f"schedule.restarts must be increasing epochs >= 1, got {config.schedule.restarts}")
    steps = config.unfreeze.steps
    if config.unfreeze.enabled and (len(steps) != 2 or not 0 < steps[0] <= steps[1]):
        raise ConfigError(f"unfreeze.steps must be [first epoch of step B, first epoch of step C] with "
                          f"0 < B <= C, got {steps}")
    if train.class_weights and train.sampling != "classes":
        raise ConfigError(f"train.class_weights weight the patch centres of train.sampling = 'classes' only, got "
                          f"sampling {train.sampling!r}: set train.sampling = 'classes', or drop the weights "
                          "(--set 'train.class_weights={}')")
    if train.sampling == "classes":
        unknown = set(train.class_weights) - set(config.class_names)
        if unknown or not train.class_weights or min(train.class_weights.values()) < 0:
            raise ConfigError(f"train.class_weights must give non-negative weights to classes of target "
                              f"{data.target!r} ({', '.join(config.class_names)}), got {train.class_weights}")
    for f in dataclasses.fields(AugmentConfig):
        value = getattr(aug, f.name)
        if f.name.endswith("_prob") and not 0 <= value <= 1:
            raise ConfigError(f"augment.{f.name} must be a probability in [0, 1], got {value}")
        if f.name.endswith(("_range", "_deg", "_variance", "_sigma", "_scale")) and isinstance(value, list):
            _range(value, f"augment.{f.name}", AUGMENT_RANGES.get(f.name, (0, None, False)))
    if not 0 <= train.foreground_prob <= 1 or not 0 <= train.best_ema < 1:
        raise ConfigError(f"train.foreground_prob must be in [0, 1] and train.best_ema in [0, 1), got "
                          f"{train.foreground_prob}, {train.best_ema}")
    if any(a not in (0, 1, 2) for a in aug.flip_axes):
        raise ConfigError(f"augment.flip_axes must be axes among 0, 1, 2 (z, y, x), got {aug.flip_axes}")
    if run.stage == "wall" and not run.init_from:
        raise ConfigError("stage 'wall' fine-tunes the cavity model: set run.init_from (or --init-from) "
                          "to the cavity run folder or checkpoint")
    if config.roi.size and config.roi.center == "localizer" and not config.roi.localizer:
        raise ConfigError("roi.center = 'localizer' needs roi.localizer (the localizer run folder); "
                          "or use roi.center = 'ground_truth'")
    if config.loss.region_mask and config.cascade.mask_source == "stage1" and not config.cascade.stage1:
        raise ConfigError("loss.region_mask with cascade.mask_source = 'stage1' needs cascade.stage1 "
                          "(the stage-1 run folder)")
    if data.sdf_channel and not data.sdf_from:
        raise ConfigError("data.sdf_channel needs data.sdf_from (the cavity run whose prediction gives the distance)")


# Config keys that name another run: the one a stage starts from, and the helpers it runs.
HELPER_KEYS = ("run.init_from", "roi.localizer", "cascade.stage1", "data.sdf_from")
PATH_KEYS = ("data.root", "data.patients", *HELPER_KEYS)


# What a helper run must have been trained for: key -> (config field of the helper, required value).
HELPER_KINDS = {"roi.localizer": ("run.stage", "localizer"), "cascade.stage1": ("run.stage", "cascade1"),
                "data.sdf_from": ("data.target", "la_cavity")}


def used_helpers(config: Config) -> dict[str, str]:
    """The helper runs a stage runs on every case, in training and prediction: key -> recorded path
    (the localiser for the ROI, cascade stage 1 for the loss region, the cavity run for the distance channel)."""
    used = {"roi.localizer": bool(config.roi.size) and config.roi.center == "localizer",
            "cascade.stage1": config.loss.region_mask and config.cascade.mask_source == "stage1",
            "data.sdf_from": config.data.sdf_channel}
    return {key: value_at(config, key) for key, needed in used.items() if needed}


def check_helper_kind(key: str, helper: Config, where: str, kind: tuple[str, Any] | None = None) -> None:
    """A ConfigError when ``helper``, the config of the run ``key`` names (``where``), was trained
    for something else than ``kind`` = (field, value), by default ``HELPER_KINDS[key]``: a cavity
    run given as the localiser."""
    field, wanted = kind or HELPER_KINDS[key]
    found = value_at(helper, field)
    if found != wanted:
        raise ConfigError(f"{where} is a run with {field} = {found!r}; {key} needs one with {field} = {wanted!r}")


def oracle_settings(config: Config) -> list[str]:
    """The settings with which a stage reads each case's ground truth (the oracle ROI centre or
    cascade region), which training and evaluation have and prediction of new images has not."""
    used = {"roi.center": bool(config.roi.size) and config.roi.center == "ground_truth",
            "cascade.mask_source": config.loss.region_mask and config.cascade.mask_source == "ground_truth"}
    return [f"{key} = 'ground_truth'" for key, oracle in used.items() if oracle]


def absolute_paths(config: Config) -> Config:
    """Relative paths of the config made absolute (from the working directory, as a run reads
    them), so that ``--resume`` and ``predict`` work from any directory."""
    for key in PATH_KEYS:
        value = value_at(config, key)
        if value and not Path(value).is_absolute():
            section, name = key.split(".")
            setattr(getattr(config, section), name, str(Path(value).resolve()))
    return config


# Keys ``--resume`` may change (``--epochs``, ``--device``, ``--data`` for a moved dataset, whose
# cases must still be the run's split); every other value is the run's own.
RESUMABLE_KEYS = ("train.epochs", "run.device", "data.root")


def differences(old: Config, new: Config, ignore=()) -> list[str]:
    """``section.key: old -> new`` for every value that differs, leaving out the keys in ``ignore``."""
    a, b = old.to_dict(), new.to_dict()
    return [f"{section}.{key}: {a[section][key]!r} -> {b[section][key]!r}"
            for section in a for key in a[section]
            if f"{section}.{key}" not in ignore and a[section][key] != b[section][key]]


# --- writing -------------------------------------------------------------------------

def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def _toml_key(key: str) -> str:
    return key if key.replace("_", "").replace("-", "").isalnum() else _toml_value(key)


def dumps(config: Config) -> str:
    """The config as TOML text that :func:`load` reads back to an equal Config."""
    lines = []
    for section, values in config.to_dict().items():
        lines.append(f"[{section}]")
        lines += [f"{_toml_key(k)} = {_toml_value(v)}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
