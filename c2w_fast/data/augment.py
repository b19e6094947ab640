"""Data augmentation on the GPU as torch ops, with the seeds' probabilities as presets.

Spatial (rotation, scaling, elastic deformation) transforms are composed into one
sampling grid in mm, so anisotropic voxels rotate correctly, and applied with one
``grid_sample`` per sample (image trilinear; labels and region mask nearest). The loader
crops an *initial patch* larger than the training patch (:func:`initial_patch_size`, as
nnU-Net does) so rotated and zoomed-out patches are filled with real data; samples that
draw no spatial transform are centre-cropped exactly. Then flips, and on the image's
first channel only: Gaussian noise, Gaussian blur, brightness (multiplicative scaling),
contrast, low-resolution simulation, inverse gamma, gamma (both keep mean and std) and
histogram matching to another training case's intensity quantiles.

Every sample draws its own parameters from its own seed, so a batch is reproducible
from its seeds (needed for exact resume and for DDP equivalence). Conventions follow
nnU-Net/batchgenerators: a scaling factor multiplies the sampling coordinates (> 1 shrinks
the anatomy), only in-plane with ``in_plane``; the value drawn from ``noise_variance`` is
the noise's standard deviation (batchgenerators' name and use); gamma draws below 1 half
of the time when the range allows.
Shapes: image (B, C, D, H, W) float, target (B, D, H, W) int, region (B, D, H, W) bool.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch
import torch.nn.functional as F

from c2w_fast.config import AugmentConfig

QUANTILES = torch.linspace(0, 1, 101)


def _rotation(angles) -> np.ndarray:
    """Rotation matrix in (z, y, x) coordinates: about z, then y, then x (radians)."""
    return _rotations(*(np.array([a], float) for a in angles))[0]


def _draw_angles(aug: AugmentConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    low, high = (math.radians(a) for a in aug.rotation_deg)
    if aug.in_plane:
        return rng.uniform(low, high), 0.0, 0.0
    return tuple(rng.uniform(low, high, 3))


def spatial_enabled(aug: AugmentConfig) -> bool:
    return aug.rotation_prob > 0 or aug.scaling_prob > 0 or aug.elastic_prob > 0


def initial_patch_size(patch, spacing, aug: AugmentConfig) -> tuple[int, int, int]:
    """Crop size (z, y, x) that holds every rotated / zoomed-out / deformed ``patch``.

    The extent is the largest axis-aligned box of the patch's corners over a grid of the
    configured rotation angles, widened by the most any rotation between grid points moves
    a corner (so the bound holds for every angle, not only the grid's), times the largest
    scaling (in-plane only with ``in_plane``), plus the three elastic magnitudes the
    displacement is clipped to on each side; each axis keeps the parity of ``patch`` so a
    centre crop lands on whole voxels.
    """
    patch = np.asarray(patch, int)
    if not spatial_enabled(aug):
        return tuple(int(p) for p in patch)
    half = patch * np.asarray(spacing) / 2
    extent = 2 * half
    if aug.rotation_prob > 0:
        extent = np.maximum(extent, _rotated_extent(tuple(half), tuple(aug.rotation_deg), aug.in_plane))
    if aug.scaling_prob > 0:
        extent = extent * max(aug.scaling_range[1], 1.0) ** _moved_axes(aug.in_plane)
    if aug.elastic_prob > 0:
        extent = extent + 6 * aug.elastic_magnitude_mm * _moved_axes(aug.in_plane)
    size = np.maximum(np.ceil(extent / np.asarray(spacing) - 1e-6).astype(int), patch)
    size += (size - patch) % 2
    return tuple(int(s) for s in size)


def _moved_axes(in_plane: bool) -> np.ndarray:
    """1 for the (z, y, x) axes the spatial transforms act on: y and x, and z unless ``in_plane``."""
    return np.array([0.0 if in_plane else 1.0, 1.0, 1.0])


def check_margin(crop, patch) -> None:
    """A ValueError unless ``crop`` holds ``patch`` at its centre on whole voxels (an even margin)."""
    if any(c < p or (c - p) % 2 for c, p in zip(crop, patch)):
        raise ValueError(f"the crop {tuple(crop)} must hold the patch {tuple(patch)} with an even margin on every "
                         "axis (initial_patch_size gives one)")


@functools.lru_cache(maxsize=32)
def _rotated_extent(half: tuple, rotation_deg: tuple, in_plane: bool, grid_points: int = 200_000) -> tuple:
    """Bound on the axis-aligned extent of the box of half sizes ``half`` (mm) under every rotation
    of the range: the maximum over a grid of step ``d`` per rotated axis, plus ``|corner| * k * d``,
    the most a corner moves between a rotation and its nearest grid point (``k`` axes, each off by
    at most d/2, move it by at most |corner| * d/2 each; the extent is twice the largest coordinate),
    never more than the diagonal, which no rotation exceeds. Cached: the grid takes ~0.2 s, and
    every fold of a run (its volumes, then its batches) asks for the same patch."""
    corners = np.array([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]) * np.array(half)
    lo, hi = (math.radians(a) for a in rotation_deg)
    axes = 1 if in_plane else 3
    count = max(2, int(grid_points ** (1 / axes)))
    values = np.linspace(lo, hi, count)
    step = (hi - lo) / (count - 1)
    grids = np.meshgrid(*[values] * axes, indexing="ij")
    angles = [g.ravel() for g in grids] + [np.zeros(grids[0].size)] * (3 - axes)
    extent = np.zeros(3)
    for chunk in range(0, angles[0].size, 20_000):
        rotations = _rotations(*(a[chunk:chunk + 20_000] for a in angles))  # (N, 3, 3)
        extent = np.maximum(extent, 2 * np.abs(np.einsum("nij,cj->nci", rotations, corners)).max((0, 1)))
    diagonal = 2 * np.linalg.norm(corners[0])  # no rotation needs more
    return tuple(np.minimum(extent + _moved_axes(in_plane) * diagonal / 2 * axes * step, diagonal).tolist())


def _rotations(az, ay, ax) -> np.ndarray:
    """:func:`_rotation` for arrays of angles: (N, 3, 3)."""
    one, zero = np.ones_like(az), np.zeros_like(az)
    rz = np.stack([np.stack([one, zero, zero], -1), np.stack([zero, np.cos(az), -np.sin(az)], -1),
                   np.stack([zero, np.sin(az), np.cos(az)], -1)], -2)
    ry = np.stack([np.stack([np.cos(ay), zero, np.sin(ay)], -1), np.stack([zero, one, zero], -1),
                   np.stack([-np.sin(ay), zero, np.cos(ay)], -1)], -2)
    rx = np.stack([np.stack([np.cos(ax), -np.sin(ax), zero], -1), np.stack([np.sin(ax), np.cos(ax), zero], -1),
                   np.stack([zero, zero, one], -1)], -2)
    return rx @ ry @ rz


def _grid(out_size, in_size, spacing, matrix: torch.Tensor, displacement: torch.Tensor | None, device):
    """grid_sample grid (1, D, H, W, 3) mapping output voxels to input voxels via ``matrix`` (mm)."""
    h = torch.tensor(spacing, dtype=torch.float32, device=device)
    axes = [(torch.arange(n, device=device, dtype=torch.float32) - (n - 1) / 2) * h[i] for i, n in enumerate(out_size)]
    points = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1)  # (D, H, W, 3) mm, (z, y, x)
    points = points @ matrix.T
    if displacement is not None:
        points = points + displacement
    normalised = 2 * points / (h * torch.tensor(in_size, dtype=torch.float32, device=device))
    return normalised.flip(-1)[None]  # grid_sample wants (x, y, z)


def _elastic_field(out_size, spacing, aug: AugmentConfig, generator, device) -> torch.Tensor:
    """Smooth random displacement (D, H, W, 3) in mm: Gaussian values on a control grid
    every ``elastic_sigma_mm``, clipped to three magnitudes (what :func:`initial_patch_size`
    leaves room for), interpolated trilinearly."""
    extent = [n * h for n, h in zip(out_size, spacing)]
    control = [max(2, math.ceil(e / aug.elastic_sigma_mm) + 1) for e in extent]
    coarse = torch.randn((1, 3, *control), generator=generator, device=device).clamp(-3, 3) * aug.elastic_magnitude_mm
    if aug.in_plane:
        coarse[:, 0] = 0
    field = F.interpolate(coarse, size=tuple(out_size), mode="trilinear", align_corners=True)
    return field[0].permute(1, 2, 3, 0)


def _spatial(image, target, region, patch, spacing, aug, rng, generator):
    """One sample: rotation/scaling/elastic into ``patch``, or a centre crop if none is drawn."""
    device = image.device
    rotate = rng.random() < aug.rotation_prob
    scale = rng.random() < aug.scaling_prob
    elastic = rng.random() < aug.elastic_prob
    in_size = image.shape[-3:]
    if not (rotate or scale or elastic):
        start = [(n - p) // 2 for n, p in zip(in_size, patch)]
        window = tuple(slice(s, s + p) for s, p in zip(start, patch))
        return (image[(..., *window)], target[(..., *window)],
                None if region is None else region[(..., *window)])
    matrix = np.eye(3)
    if rotate:
        matrix = _rotation(_draw_angles(aug, rng)) @ matrix
    if scale:  # sampling coordinates times s: > 1 shows more of the volume (nnU-Net's convention)
        matrix = matrix @ np.diag(rng.uniform(*aug.scaling_range) ** _moved_axes(aug.in_plane))
    displacement = _elastic_field(patch, spacing, aug, generator, device) if elastic else None
    grid = _grid(patch, in_size, spacing, torch.as_tensor(matrix, dtype=torch.float32, device=device),
                 displacement, device)
    image = F.grid_sample(image[None].float(), grid, mode="bilinear", padding_mode="zeros", align_corners=False)[0]
    labels = [target[None].float()] + ([] if region is None else [region[None].float()])
    warped = F.grid_sample(torch.stack(labels, 1), grid, mode="nearest", padding_mode="zeros", align_corners=False)[0]
    return image, warped[0].to(target.dtype), None if region is None else warped[1].bool()


def _gaussian_blur(x: torch.Tensor, sigmas) -> torch.Tensor:
    """Separable Gaussian blur of (D, H, W) ``x`` with per-axis ``sigmas`` in voxels (0 = none)."""
    out = x[None, None]
    for axis, sigma in enumerate(sigmas):
        if sigma <= 0:
            continue
        radius = max(1, int(3 * sigma + 0.5))  # scipy.ndimage.gaussian_filter with truncate=3
        t = torch.arange(-radius, radius + 1, device=x.device, dtype=torch.float32)
        kernel = torch.exp(-0.5 * (t / sigma) ** 2)
        kernel = (kernel / kernel.sum()).reshape([1, 1] + [-1 if a == axis else 1 for a in range(3)])
        pad = [0] * 6
        pad[2 * (2 - axis)] = pad[2 * (2 - axis) + 1] = radius
        out = F.conv3d(F.pad(out, pad, mode="replicate"), kernel)
    return out[0, 0]


def _draw_gamma(gamma_range, rng) -> float:
    low, high = gamma_range
    if low < 1 and rng.random() < 0.5:
        return rng.uniform(low, 1.0)
    return rng.uniform(max(low, 1.0), high)


def _gamma(x: torch.Tensor, gamma: float, invert: bool) -> torch.Tensor:
    """Gamma on the [min, max]-normalised intensities, keeping mean and std (nnU-Net ``retain_stats``)."""
    x = -x if invert else x
    mean, std = x.mean(), x.std()
    low, span = x.min(), x.max() - x.min()
    y = ((x - low) / (span + 1e-7)).pow(gamma) * span + low
    y = (y - y.mean()) / (y.std() + 1e-8) * std + mean
    return -y if invert else y


def match_histogram(x: torch.Tensor, reference_quantiles: torch.Tensor, generator=None) -> torch.Tensor:
    """Map ``x`` so its intensity distribution becomes the one whose quantiles (at
    :data:`QUANTILES`) are ``reference_quantiles``: each voxel goes to the reference quantile
    at its rank among ``x``'s values (of up to 200 000 sampled), a block of equal values to
    the quantile at the block's middle rank (the zeros of a padded patch do not all land on
    the reference minimum)."""
    flat = x.reshape(-1).float()
    sample = flat
    if sample.numel() > 200_000:
        sample = sample[torch.randint(sample.numel(), (200_000,), generator=generator, device=x.device)]
    ordered = sample.sort().values
    rank = (torch.searchsorted(ordered, flat, right=False) + torch.searchsorted(ordered, flat, right=True)) / 2
    position = rank / ordered.numel() * (len(QUANTILES) - 1)  # in quantile steps, 0 .. 100
    index = position.floor().long().clamp(0, len(QUANTILES) - 2)
    t = (position - index).clamp(0, 1)
    reference = reference_quantiles.to(x.device, torch.float32)
    return (reference[index] + t * (reference[index + 1] - reference[index])).reshape(x.shape)


def _intensity(x: torch.Tensor, aug: AugmentConfig, rng, generator, reference) -> torch.Tensor:
    """The intensity transforms of one (D, H, W) image channel, in nnU-Net's order."""
    if rng.random() < aug.noise_prob:
        std = rng.uniform(*aug.noise_variance)  # batchgenerators draws the standard deviation from it
        x = x + std * torch.randn(x.shape, generator=generator, device=x.device)
    if rng.random() < aug.blur_prob:
        sigmas = [0.0 if (aug.in_plane and axis == 0) else rng.uniform(*aug.blur_sigma) for axis in range(3)]
        x = _gaussian_blur(x, sigmas)
    if rng.random() < aug.brightness_prob:
        x = x * rng.uniform(*aug.brightness_range)
    if rng.random() < aug.contrast_prob:
        mean, low, high = x.mean(), x.min(), x.max()
        x = ((x - mean) * rng.uniform(*aug.contrast_range) + mean).clamp(low, high)
    if rng.random() < aug.lowres_prob:
        zoom = rng.uniform(*aug.lowres_scale)
        small = [n if (aug.in_plane and axis == 0) else max(1, round(n * zoom)) for axis, n in enumerate(x.shape)]
        coarse = F.interpolate(x[None, None], size=small, mode="nearest-exact")
        x = F.interpolate(coarse, size=tuple(x.shape), mode="trilinear", align_corners=False)[0, 0]
    if rng.random() < aug.inverse_gamma_prob:
        x = _gamma(x, _draw_gamma(aug.inverse_gamma_range, rng), invert=True)
    if rng.random() < aug.gamma_prob:
        x = _gamma(x, _draw_gamma(aug.gamma_range, rng), invert=False)
    if reference is not None and rng.random() < aug.histogram_match_prob:
        x = match_histogram(x, reference, generator)
    return x


def augment_batch(image: torch.Tensor, target: torch.Tensor, region: torch.Tensor | None, patch, spacing,
                  aug: AugmentConfig, seeds, references: torch.Tensor | None = None):
    """Augment a batch of initial patches into ``patch``-sized training samples, on their device.

    Args:
        image: (B, C, Di, Hi, Wi) float; channel 0 is the MR image, others (a signed
            distance) get the spatial transforms only.
        target: (B, Di, Hi, Wi) class indices. region: (B, Di, Hi, Wi) bool loss mask, or None.
        patch: output (z, y, x) size, at most the input's on every axis.
        spacing: (z, y, x) mm of the voxels. seeds: one int per sample.
        references: (B, len(QUANTILES)) intensity quantiles for histogram matching, or None.
    Returns: image (B, C, *patch) float32, target (B, *patch), region (B, *patch) or None.
    """
    check_margin(image.shape[-3:], patch)
    images, targets, regions = [], [], []
    for b, seed in enumerate(seeds):
        rng = np.random.default_rng(seed)
        generator = torch.Generator(device=image.device).manual_seed(int(seed) % 2**63)
        x, y, r = _spatial(image[b], target[b], None if region is None else region[b], patch, spacing, aug,
                           rng, generator)
        flips = [axis + 1 for axis in aug.flip_axes if rng.random() < aug.flip_prob]
        if flips:
            x, y = x.flip([a for a in flips]), y.flip([a - 1 for a in flips])
            r = None if r is None else r.flip([a - 1 for a in flips])
        x = x.float().clone()
        x[0] = _intensity(x[0], aug, rng, generator, None if references is None else references[b])
        images.append(x)
        targets.append(y)
        regions.append(r)
    return (torch.stack(images), torch.stack(targets),
            None if region is None else torch.stack(regions))
