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
nnU-Net/batchgenerators: a scaling factor > 1 enlarges the anatomy; noise variance is
drawn from ``noise_variance``; gamma draws below 1 half of the time when the range allows.
Shapes: image (B, C, D, H, W) float, target (B, D, H, W) int, region (B, D, H, W) bool.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from c2w_fast.config import AugmentConfig

QUANTILES = torch.linspace(0, 1, 101)


def _rotation(angles) -> np.ndarray:
    """Rotation matrix in (z, y, x) coordinates: about z, then y, then x (radians)."""
    az, ay, ax = angles
    rz = np.array([[1, 0, 0], [0, math.cos(az), -math.sin(az)], [0, math.sin(az), math.cos(az)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rx = np.array([[math.cos(ax), -math.sin(ax), 0], [math.sin(ax), math.cos(ax), 0], [0, 0, 1]])
    return rx @ ry @ rz


def _draw_angles(aug: AugmentConfig, rng: np.random.Generator) -> tuple[float, float, float]:
    low, high = (math.radians(a) for a in aug.rotation_deg)
    if aug.in_plane:
        return rng.uniform(low, high), 0.0, 0.0
    return tuple(rng.uniform(low, high, 3))


def spatial_enabled(aug: AugmentConfig) -> bool:
    return aug.rotation_prob > 0 or aug.scaling_prob > 0 or aug.elastic_prob > 0


def initial_patch_size(patch, spacing, aug: AugmentConfig) -> tuple[int, int, int]:
    """Crop size (z, y, x) that holds every rotated / zoomed-out / deformed ``patch``.

    The extent is the largest axis-aligned box of the patch under 512 rotations drawn from
    the configured range (plus the range's end points), divided by the smallest scaling,
    plus three elastic magnitudes; each axis keeps the parity of ``patch`` so a
    centre crop lands on whole voxels.
    """
    patch = np.asarray(patch, int)
    if not spatial_enabled(aug):
        return tuple(int(p) for p in patch)
    half = patch * np.asarray(spacing) / 2
    corners = np.array([[sz, sy, sx] for sz in (-1, 1) for sy in (-1, 1) for sx in (-1, 1)]) * half
    extent = 2 * half
    if aug.rotation_prob > 0:
        rng = np.random.default_rng(0)
        lo, hi = aug.rotation_deg
        ends = [(math.radians(a), 0.0, 0.0) if aug.in_plane else (math.radians(a),) * 3 for a in (lo, hi)]
        for angles in ends + [_draw_angles(aug, rng) for _ in range(512)]:
            extent = np.maximum(extent, 2 * np.abs(corners @ _rotation(angles).T).max(0))
    if aug.scaling_prob > 0:
        extent = extent / min(aug.scaling_range[0], 1.0)
    if aug.elastic_prob > 0:
        extent = extent + 6 * aug.elastic_magnitude_mm * np.array([0.0 if aug.in_plane else 1.0, 1.0, 1.0])
    size = np.maximum(np.ceil(extent / np.asarray(spacing) - 1e-6).astype(int), patch)
    size += (size - patch) % 2
    return tuple(int(s) for s in size)


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
    every ``elastic_sigma_mm``, interpolated trilinearly."""
    extent = [n * h for n, h in zip(out_size, spacing)]
    control = [max(2, math.ceil(e / aug.elastic_sigma_mm) + 1) for e in extent]
    coarse = torch.randn((1, 3, *control), generator=generator, device=device) * aug.elastic_magnitude_mm
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
    if scale:
        matrix = matrix / rng.uniform(*aug.scaling_range)
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
    """Map ``x`` so its quantiles (at :data:`QUANTILES`) become ``reference_quantiles`` (piecewise linear)."""
    flat = x.reshape(-1)
    if flat.numel() > 200_000:
        flat = flat[torch.randint(flat.numel(), (200_000,), generator=generator, device=x.device)]
    source = torch.quantile(flat.float(), QUANTILES.to(x.device))
    reference = reference_quantiles.to(x.device, torch.float32)
    index = torch.searchsorted(source, x.reshape(-1).contiguous()).clamp(1, len(source) - 1)
    x0, x1 = source[index - 1], source[index]
    t = ((x.reshape(-1) - x0) / (x1 - x0).clamp_min(1e-8)).clamp(0, 1)
    return (reference[index - 1] + t * (reference[index] - reference[index - 1])).reshape(x.shape)


def _intensity(x: torch.Tensor, aug: AugmentConfig, rng, generator, reference) -> torch.Tensor:
    """The intensity transforms of one (D, H, W) image channel, in nnU-Net's order."""
    if rng.random() < aug.noise_prob:
        std = math.sqrt(rng.uniform(*aug.noise_variance))
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
    if any(n < p for n, p in zip(image.shape[-3:], patch)):
        raise ValueError(f"initial patch {tuple(image.shape[-3:])} is smaller than the patch {tuple(patch)}")
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
