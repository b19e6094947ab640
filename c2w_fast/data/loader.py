"""Training batches from preprocessed volumes held in memory, produced by background workers.

:class:`BatchSource` is a map-style dataset whose item ``i`` is the batch of global
iteration ``i``: which cases, where the patches sit and the seeds of their
augmentation all derive from ``(seed, i, sample)``, so any worker, any restart and any
number of DDP ranks produce the same samples (rank ``r`` of ``W`` takes samples
``r·B/W … (r+1)·B/W − 1`` of the global batch of ``B``). Workers only crop (numpy);
augmentation runs on the GPU afterwards (:mod:`c2w_fast.data.augment`).
:func:`batches` wraps it in a ``DataLoader`` (workers, pinned memory, prefetching) and
:class:`DevicePrefetcher` copies the next batch to the GPU on a side stream while the
current one computes, so the GPU does not wait for data.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from c2w_fast.data.augment import check_margin
from c2w_fast.data.preprocess import Box, crop
from c2w_fast.data.sampling import SamplingPolicy


@dataclass
class TrainingVolume:
    """One preprocessed case in the stage's grid; arrays are (z, y, x) after the channel axis."""

    id: str
    image: np.ndarray                 # (C, D, H, W) float32, channel 0 z-scored
    target: np.ndarray                # (D, H, W) uint8 class indices
    region: np.ndarray | None         # (D, H, W) bool loss mask (MBAS stage 2), or None
    spacing: tuple[float, float, float]
    locations: dict[int, np.ndarray]  # class index -> (N, 3) voxel indices, for sampling
    quantiles: np.ndarray             # intensity quantiles of channel 0, for histogram matching


def _seed(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def sample_seed(seed: int, iteration: int, sample: int) -> int:
    """The augmentation seed of one sample of one global iteration."""
    return int(np.random.SeedSequence([seed, 4, iteration, sample]).generate_state(1, np.uint64)[0] >> 1)


class BatchSource(torch.utils.data.Dataset):
    """Item ``i``: this rank's crops of global iteration ``i`` as tensors (see module docstring).

    With ``iterations_per_epoch`` = 0 an epoch is one pass over the volumes in a
    permutation drawn per epoch; otherwise each batch draws its cases at random.
    """

    def __init__(self, volumes: list[TrainingVolume], *, batch_size: int, crop_size, policy: SamplingPolicy,
                 seed: int, iterations_per_epoch: int = 0, rank: int = 0, world_size: int = 1,
                 histogram_references: bool = False, patch_size=None):
        if not volumes:
            raise ValueError("BatchSource needs at least one training volume")
        if batch_size % world_size:
            raise ValueError(f"train.batch_size ({batch_size}) must be divisible by the number of processes "
                             f"({world_size})")
        self.volumes, self.batch_size, self.crop_size = volumes, batch_size, tuple(crop_size)
        self.patch_size = tuple(patch_size or crop_size)
        check_margin(self.crop_size, self.patch_size)  # the training patch is the crop's centre
        self.policy, self.seed, self.rank, self.world_size = policy, seed, rank, world_size
        self.one_pass = iterations_per_epoch == 0
        self.iterations_per_epoch = (math.ceil(len(volumes) / batch_size) if self.one_pass
                                     else iterations_per_epoch)
        self.histogram_references = histogram_references

    def __len__(self) -> int:
        return 2**62

    def cases_of(self, iteration: int) -> list[int]:
        """Volume indices of the global batch of ``iteration``."""
        n = len(self.volumes)
        if not self.one_pass:
            return list(_seed(self.seed, 1, iteration).integers(n, size=self.batch_size))
        epoch, it = divmod(iteration, self.iterations_per_epoch)
        order = _seed(self.seed, 2, epoch).permutation(n)
        return [int(order[(it * self.batch_size + j) % n]) for j in range(self.batch_size)]

    def __getitem__(self, iteration: int) -> dict:
        per_rank = self.batch_size // self.world_size
        samples = range(self.rank * per_rank, (self.rank + 1) * per_rank)
        chosen = self.cases_of(iteration)
        images, targets, regions, seeds, references = [], [], [], [], []
        for j in samples:
            volume = self.volumes[chosen[j]]
            rng = _seed(self.seed, 3, iteration, j)
            # the centre keeps the training patch inside the volume; the larger crop around it
            # (room for rotations and zooms) may reach outside and is padded
            centre = self.policy.centre(volume.target.shape, self.patch_size, volume.locations, rng)
            box = Box.around(centre, self.crop_size)
            images.append(crop(volume.image, box))
            targets.append(crop(volume.target, box))
            if volume.region is not None:
                regions.append(crop(volume.region, box))
            seeds.append(sample_seed(self.seed, iteration, j))
            if self.histogram_references:  # another case's intensities (its own when it is the only one)
                others = [i for i in range(len(self.volumes)) if i != chosen[j]] or [chosen[j]]
                references.append(self.volumes[others[int(rng.integers(len(others)))]].quantiles)
        batch = {"image": torch.from_numpy(np.stack(images)), "target": torch.from_numpy(np.stack(targets)),
                 "seeds": torch.tensor(seeds, dtype=torch.int64), "iteration": iteration}
        if regions:
            batch["region"] = torch.from_numpy(np.stack(regions))
        if references:
            batch["references"] = torch.from_numpy(np.stack(references))
        return batch


def batches(source: BatchSource, start: int, stop: int, *, num_workers: int = 2, prefetch: int = 4,
            pin_memory: bool = False):
    """A DataLoader yielding the batches of global iterations ``start … stop − 1`` in order."""
    return torch.utils.data.DataLoader(
        source, batch_size=None, sampler=range(start, stop), num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=prefetch if num_workers > 0 else None, persistent_workers=False)


class DevicePrefetcher:
    """Iterates ``loader``'s batches already moved to ``device``; on CUDA the copy of batch
    ``i + 1`` overlaps the compute on batch ``i`` (side stream, pinned memory)."""

    def __init__(self, loader, device: torch.device):
        self.iterator = iter(loader)
        self.device = device
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.next = self._load()

    def _move(self, batch: dict) -> dict:
        # the seeds stay on the CPU: reading them back from a GPU would synchronise every step
        return {k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) and k != "seeds" else v
                for k, v in batch.items()}

    def _load(self):
        try:
            batch = next(self.iterator)
        except StopIteration:
            return None
        if self.stream is None:
            return self._move(batch)
        with torch.cuda.stream(self.stream):
            return self._move(batch)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.next is None:
            raise StopIteration
        if self.stream is not None:
            torch.cuda.current_stream(self.device).wait_stream(self.stream)
            for value in self.next.values():
                if isinstance(value, torch.Tensor) and value.is_cuda:  # the seeds stay on the CPU
                    value.record_stream(torch.cuda.current_stream(self.device))
        batch, self.next = self.next, self._load()
        return batch
