"""Loader: batches depend only on (seed, iteration), not on workers, restarts or the number of ranks."""
import numpy as np
import pytest
import torch

from c2w_fast.data.loader import BatchSource, DevicePrefetcher, TrainingVolume, batches
from c2w_fast.data.sampling import SamplingPolicy, class_locations


def _volumes(rng, n=5):
    out = []
    for i in range(n):
        target = (rng.random((10, 16, 16)) > 0.8).astype(np.uint8)
        out.append(TrainingVolume(f"case{i}", rng.normal(size=(1, 10, 16, 16)).astype(np.float32), target,
                                  rng.random((10, 16, 16)) > 0.5, (1.0, 1.0, 1.0), class_locations(target, 2, rng),
                                  np.linspace(-2, 2, 101).astype(np.float32) + i))
    return out


def _source(volumes, **kw):
    options = dict(batch_size=4, crop_size=(6, 8, 8), policy=SamplingPolicy("foreground", 0.5), seed=3,
                   histogram_references=True)
    options.update(kw)
    return BatchSource(volumes, **options)


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) if isinstance(a[k], torch.Tensor) else a[k] == b[k]
                                        for k in a)


def test_batches_are_a_function_of_the_iteration_only(rng):
    source = _source(_volumes(rng))
    serial = list(batches(source, 5, 11, num_workers=0))
    parallel = list(batches(source, 5, 11, num_workers=2, prefetch=2))
    assert len(serial) == 6 and all(_equal(a, b) for a, b in zip(serial, parallel))
    assert _equal(source[7], serial[2]) and not torch.equal(source[7]["image"], source[8]["image"])
    first = serial[0]
    assert first["image"].shape == (4, 1, 6, 8, 8) and first["target"].shape == (4, 6, 8, 8)
    assert first["region"].dtype == torch.bool and first["references"].shape == (4, 101)


def test_ranks_split_the_global_batch(rng):
    volumes = _volumes(rng)
    whole = _source(volumes)[4]
    parts = [_source(volumes, rank=r, world_size=2)[4] for r in range(2)]
    for key in ("image", "target", "region", "seeds", "references"):
        assert torch.equal(torch.cat([p[key] for p in parts]), whole[key])
    with pytest.raises(ValueError, match="must be divisible by the number of processes"):
        _source(volumes, batch_size=3, world_size=2)


def test_one_pass_epochs_visit_every_case(rng):
    volumes = _volumes(rng, n=7)
    source = _source(volumes, batch_size=2, iterations_per_epoch=0)
    assert source.iterations_per_epoch == 4
    for epoch in range(3):
        seen = [c for it in range(4) for c in source.cases_of(epoch * 4 + it)]
        assert set(seen) == set(range(7))
    assert source.cases_of(0) != source.cases_of(4)  # a new permutation every epoch


def test_crops_come_from_the_chosen_volume(rng):
    volumes = _volumes(rng)
    source = _source(volumes, policy=SamplingPolicy("center"), crop_size=(10, 16, 16))
    batch = source[2]
    for b, case in enumerate(source.cases_of(2)):
        assert np.array_equal(batch["image"][b].numpy(), volumes[case].image)
        assert np.array_equal(batch["target"][b].numpy(), volumes[case].target)


def test_device_prefetcher_yields_every_batch_in_order(rng):
    source = _source(_volumes(rng))
    got = list(DevicePrefetcher(batches(source, 0, 3, num_workers=0), torch.device("cpu")))
    assert [b["iteration"] for b in got] == [0, 1, 2]


def test_random_patches_move_over_the_volume_even_when_the_crop_is_larger(rng):
    """The centre keeps the training patch inside; the crop around it (room for rotations) may not fit."""
    volumes = _volumes(rng)  # 10 x 16 x 16
    source = _source(volumes, policy=SamplingPolicy("random"), crop_size=(12, 20, 20), patch_size=(6, 8, 8))
    starts = set()
    for it in range(40):
        batch = source[it]
        for b, case in enumerate(source.cases_of(it)):
            patch = batch["image"][b, 0, 3:9, 6:14, 6:14].numpy()  # the crop's centre: the training patch
            hits = [(z, y, x) for z in range(5) for y in range(9) for x in range(9)
                    if np.array_equal(volumes[case].image[0, z:z + 6, y:y + 8, x:x + 8], patch)]
            assert len(hits) == 1  # inside the volume, no padding
            starts.add(hits[0])
    assert len({s[1] for s in starts}) > 4 and len({s[2] for s in starts}) > 4
    with pytest.raises(ValueError, match="even margin on every axis"):
        _source(volumes, crop_size=(12, 20, 21), patch_size=(6, 8, 8))


def test_histogram_references_come_from_another_case(rng):
    volumes = _volumes(rng, n=3)
    source = _source(volumes)
    for it in range(30):
        batch = source[it]
        for b, case in enumerate(source.cases_of(it)):
            assert not np.array_equal(batch["references"][b].numpy(), volumes[case].quantiles)
    alone = _source(volumes[:1], batch_size=2)[0]  # one case: its own
    assert np.array_equal(alone["references"][0].numpy(), volumes[0].quantiles)


def test_samples_of_one_batch_draw_their_own_patches(rng):
    """Each sample has its own generator: four random patches of the one volume are not all the
    same one (5 x 9 x 9 = 405 positions, so that happens with probability 405^-3)."""
    volume = _volumes(rng, n=1)
    source = _source(volume, policy=SamplingPolicy("random"), histogram_references=False)
    batch = source[0]
    assert not all(torch.equal(batch["image"][0], batch["image"][b]) for b in range(1, 4))
