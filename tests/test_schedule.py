"""Learning-rate schedules: the C2W stage-wise cosine with restarts and MBAS's poly decay."""
import math

import pytest

from c2w_fast import config as cfg
from c2w_fast.training.schedule import learning_rate
from training_helpers import CONFIGS


def lrs(config, ipe=1):
    return [learning_rate(config, e, i, ipe) for e in range(config.train.epochs) for i in range(ipe)]


def test_c2w_wall_schedule_peaks_decay_tenfold_at_each_unfreezing_step():
    config = cfg.load(CONFIGS / "c2w_wall.toml")
    values = lrs(config)
    warmup = int(config.schedule.warmup_epochs)
    # every cycle reaches its peak at the end of its warm-up: 1e-3, 1e-4, 1e-5 (paper §2.6)
    for start, peak in ((0, 1e-3), (61, 1e-4), (181, 1e-5)):
        assert values[start + warmup - 1] == pytest.approx(peak)
        assert max(values[start:start + 60]) == pytest.approx(peak)
        assert values[start] == pytest.approx(peak / warmup)  # linear warm-up from peak / warmup
    # each cycle ends at its floor just before the next restart (min_lr, capped by the peak)
    assert values[60] == pytest.approx(1e-6) and values[999] == pytest.approx(1e-6)
    assert values[180] == pytest.approx(1e-6)


def test_c2w_stage1_cosine_with_50_epoch_warmup_from_1e3_to_1e6():
    config = cfg.load(CONFIGS / "c2w_cavity.toml")
    values = lrs(config, ipe=3)
    assert values[:150] == pytest.approx([1e-3 * (i + 1) / 150 for i in range(150)])
    t = [(i - 150) / (3000 - 150 - 1) for i in range(150, 3000)]
    assert values[150:] == pytest.approx([1e-6 + (1e-3 - 1e-6) * 0.5 * (1 + math.cos(math.pi * x)) for x in t])


def test_mbas_poly_schedule_is_equation_1_per_iteration():
    config = cfg.load(CONFIGS / "mbas_stage1.toml")
    config.train.epochs = 4
    values = lrs(config, ipe=250)
    total = 4 * 250
    assert values == pytest.approx([1e-2 * (1 - t / total) ** 0.9 for t in range(total)])


def test_constant_schedule():
    config = cfg.Config()
    config.schedule.kind, config.train.epochs = "constant", 3
    assert set(lrs(config, 2)) == {config.optim.lr}


def test_a_restart_below_min_lr_stays_at_its_peak_and_fractional_warmup_rounds_to_iterations():
    config = cfg.Config()
    config.schedule.kind, config.train.epochs, config.optim.lr = "cosine", 4, 1e-3
    config.schedule.restarts, config.schedule.restart_lr = [2], [1e-7]
    config.schedule.min_lr, config.schedule.warmup_epochs = 1e-6, 0.5
    values = lrs(config, ipe=4)  # warm-up: round(0.5 * 4) = 2 iterations per cycle
    assert values[:2] == pytest.approx([1e-3 / 2, 1e-3])
    assert values[7] == pytest.approx(1e-6)  # the first cycle ends at min_lr
    # the restart's peak (1e-7) is below min_lr: the floor is capped by the peak, nothing rises above it
    assert values[8:] == pytest.approx([1e-7 / 2] + [1e-7] * 7, rel=1e-12, abs=0)


def test_a_run_shorter_than_a_restart_ends_its_last_cycle_at_the_floor():
    """C2W's wall schedule cut to 100 epochs: the restart at 181 never comes, so the cycle from 61 is
    the last one and decays to min_lr at epoch 99."""
    config = cfg.load(CONFIGS / "c2w_wall.toml", ["train.epochs=100"])
    values = lrs(config)
    warmup = int(config.schedule.warmup_epochs)
    assert values[61 + warmup - 1] == pytest.approx(1e-4) and max(values[61:]) == pytest.approx(1e-4)
    assert values[99] == pytest.approx(config.schedule.min_lr)
    assert all(a >= b for a, b in zip(values[61 + warmup - 1:], values[61 + warmup:]))


def _cosine(epochs, warmup_epochs, restarts=(), restart_lr=()):
    config = cfg.Config()
    config.schedule.kind, config.train.epochs, config.optim.lr = "cosine", epochs, 1e-3
    config.schedule.restarts, config.schedule.restart_lr = list(restarts), list(restart_lr)
    config.schedule.warmup_epochs = warmup_epochs
    return config


def test_a_fractional_warmup_rounds_to_the_nearest_iteration_not_down():
    values = lrs(_cosine(2, 0.4), ipe=4)  # round(0.4 * 4) = round(1.6) = 2 warm-up iterations
    assert values[:2] == pytest.approx([1e-3 / 2, 1e-3])


def test_a_warmup_longer_than_its_cycle_spans_the_cycle_and_reaches_the_peak_at_its_end():
    values = lrs(_cosine(4, 3, restarts=[2], restart_lr=[1e-4]))  # 2-epoch cycles, 3-epoch warm-up
    assert values == pytest.approx([1e-3 / 2, 1e-3, 1e-4 / 2, 1e-4])


def test_one_step_after_the_warmup_is_the_floor_and_a_one_step_cycle_without_warmup_its_peak():
    """2 epochs of 1 iteration with a 1-epoch warm-up: peak, then the floor (it stayed at the peak);
    with no warm-up, one-epoch cycles train at their peaks rather than at the floor."""
    config = _cosine(2, 1)
    assert lrs(config) == pytest.approx([1e-3, config.schedule.min_lr])
    assert lrs(_cosine(2, 0, restarts=[1], restart_lr=[1e-4])) == pytest.approx([1e-3, 1e-4])
    assert lrs(_cosine(3, 1))[1:] == pytest.approx([1e-3, config.schedule.min_lr])  # two steps: the cosine's ends


def test_unfreezing_steps_and_unfreezing_switched_off():
    from c2w_fast.training import checkpoint, unfreeze
    from training_helpers import RESNEXT

    config = cfg.load(CONFIGS / "c2w_wall.toml", RESNEXT)
    first_b, first_c = config.unfreeze.steps
    assert [unfreeze.phase(config, e) for e in (0, first_b - 1, first_b, first_c - 1, first_c, 999)] == \
        ["A", "A", "B", "B", "C", "C"]
    off = cfg.load(CONFIGS / "c2w_wall.toml", RESNEXT + ["unfreeze.enabled=false"])
    assert {unfreeze.phase(off, e) for e in range(off.train.epochs)} == {None}
    model = checkpoint.build_from_config(off)
    unfreeze.apply(model, "A", off.unfreeze.shallow_stages)
    assert not all(p.requires_grad for p in model.parameters())
    unfreeze.apply(model, unfreeze.phase(off, 0), off.unfreeze.shallow_stages)
    assert all(p.requires_grad for p in model.parameters())


def test_poly_decay_takes_the_configured_exponent():
    config = cfg.load(CONFIGS / "mbas_stage1.toml", ["schedule.poly_exponent=2.0", "train.epochs=2"])
    assert lrs(config, ipe=5) == pytest.approx([1e-2 * (1 - t / 10) ** 2 for t in range(10)])


def test_unfreezing_a_network_without_a_stem_freezes_its_shallow_stages():
    from c2w_fast.training import checkpoint, unfreeze
    from training_helpers import RESNEXT

    config = cfg.load(CONFIGS / "c2w_wall.toml", RESNEXT + ["model.overrides.stem=false",
                                                            "model.overrides.blocks_per_stage=[1,1,1]"])
    model = checkpoint.build_from_config(config)
    assert model.encoder.stem is None
    for step, frozen in (("A", ("encoder.stages.0.", "encoder.stages.1.")), ("B", ("encoder.stages.0.",)), ("C", ())):
        unfreeze.apply(model, step, shallow_stages=1)
        assert {name for name, p in model.named_parameters() if not p.requires_grad} == \
            {name for name, _ in model.named_parameters() if name.startswith(frozen)}, step
