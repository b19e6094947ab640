"""One U-Net builder (encoder, decoder, segmentation heads) configured by a :class:`UNetSpec`.

Encoder: an optional stem conv (input → ``features[0]``, ``kernels[0]``), then one stage
per entry of ``features``; stage ``s`` holds ``blocks_per_stage[s]`` blocks of the spec's
``block`` type, the first of them strided by ``strides[s]`` (stage 0 may have 0 blocks
when the stem alone is that stage). The deepest stage is the bottleneck.
Decoder: per stage from the bottom, a transposed conv (kernel = stride) up to the skip's
resolution (cropped to it for odd sizes), concatenation with the skip, and
``decoder_convs[s]`` conv blocks; a 1×1×1 segmentation head after every decoder stage
when ``deep_supervision`` is on (outputs highest resolution first), else only the last.
Shapes: input (B, in_channels, D, H, W) → logits (B, num_classes, D, H, W).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
from torch import nn

from c2w_fast.models.blocks import ConvStack, ResidualBlock, ResNeXtBlock
from c2w_fast.ops.conv_norm_act import runs_geometry

BLOCK_TYPES = ("conv", "residual", "resnext")


def _integer(value, name: str) -> int:
    """``value`` as an int; a float (``16.5`` would become 16 channels) or a bool is a ValueError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} entries must be integers, got {value!r}")
    return value


def _triples(values, name: str, n: int) -> tuple[tuple[int, int, int], ...]:
    out = []
    for v in values:
        t = tuple(_integer(x, name) for x in v) if isinstance(v, (list, tuple)) else (_integer(v, name),) * 3
        if len(t) != 3 or min(t) < 1:
            raise ValueError(f"{name} entries must be an int or 3 positive ints (z, y, x), got {v!r}")
        out.append(t)
    if len(out) != n:
        raise ValueError(f"{name} needs one entry per stage ({n}), got {len(out)}")
    return tuple(out)


@dataclass(frozen=True)
class UNetSpec:
    """Architecture of a U-Net, stage by stage (entries are (z, y, x) where a triple is expected)."""

    block: str
    features: tuple[int, ...]
    strides: tuple
    kernels: tuple
    blocks_per_stage: tuple[int, ...]
    decoder_convs: tuple[int, ...]
    groups: tuple[int, ...] = ()
    stem: bool = True
    dropout: float = 0.0

    def checked(self) -> "UNetSpec":
        """The spec with triples normalised; a ValueError naming the field when inconsistent."""
        n = len(self.features)
        if self.block not in BLOCK_TYPES:
            raise ValueError(f"block must be one of {BLOCK_TYPES}, got {self.block!r}")
        for name in ("features", "blocks_per_stage", "decoder_convs", "groups"):
            for value in getattr(self, name):
                _integer(value, name)
        if n < 2 or min(self.features) < 1:
            raise ValueError(f"features needs at least 2 positive entries, got {self.features}")
        strides = _triples(self.strides, "strides", n)
        kernels = _triples(self.kernels, "kernels", n)
        if not all(runs_geometry(kernel, stride) for kernel, stride in zip(kernels, strides)):
            raise ValueError(f"kernels must be 1 or 3 and strides 1 or 2 per axis (what the fused block runs), "
                             f"got kernels {kernels} and strides {strides}")
        if len(self.blocks_per_stage) != n or min(self.blocks_per_stage[1:]) < 1 or self.blocks_per_stage[0] < 0:
            raise ValueError(f"blocks_per_stage needs {n} entries (>= 1; stage 0 may be 0 with a stem), "
                             f"got {self.blocks_per_stage}")
        if self.blocks_per_stage[0] == 0 and not self.stem:
            raise ValueError("stage 0 has no blocks, so the spec needs a stem")
        if len(self.decoder_convs) != n - 1 or min(self.decoder_convs) < 1:
            raise ValueError(f"decoder_convs needs {n - 1} entries >= 1 (one per decoder stage), "
                             f"got {self.decoder_convs}")
        groups = tuple(self.groups) or (1,) * n
        if len(groups) != n or min(groups) < 1:
            raise ValueError(f"groups needs one positive entry per stage ({n}), got {self.groups}")
        if self.block == "resnext":
            for s, (width, g) in enumerate(zip(self.features, groups)):
                if width % g:
                    raise ValueError(f"groups[{s}] = {g} does not divide features[{s}] = {width} (the width of "
                                     "the stage's ResNeXt blocks)")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        return replace(self, features=tuple(self.features), strides=strides, kernels=kernels,
                       blocks_per_stage=tuple(self.blocks_per_stage), decoder_convs=tuple(self.decoder_convs),
                       groups=groups)

    def check_input(self, size) -> None:
        """A ValueError when a (z, y, x) input of ``size`` would leave a stage (each halves an axis its
        stride is 2 along, rounding up) with a single voxel, which instance norm cannot normalise."""
        shape = tuple(size)
        for s, stride in enumerate(_triples(self.strides, "strides", len(self.features))):
            shape = tuple(-(-n // k) for n, k in zip(shape, stride))
            if math.prod(shape) < 2:
                raise ValueError(f"a {tuple(size)} input leaves encoder stage {s} with {shape} voxels, and instance "
                                 "norm needs more than one: give a larger patch (or fewer strided stages)")


def _stage(spec: UNetSpec, s: int, cin: int) -> nn.Sequential:
    cout, kernel, stride = spec.features[s], spec.kernels[s], spec.strides[s]
    blocks = []
    for i in range(spec.blocks_per_stage[s]):
        args = (cin if i == 0 else cout, cout, kernel, stride if i == 0 else 1)
        if spec.block == "conv":
            blocks.append(ConvStack(*args[:2], 1, *args[2:], dropout=spec.dropout))
        elif spec.block == "residual":
            blocks.append(ResidualBlock(*args, dropout=spec.dropout))
        else:
            blocks.append(ResNeXtBlock(*args, groups=spec.groups[s], dropout=spec.dropout))
    return nn.Sequential(*blocks)


class Encoder(nn.Module):
    """Stem + stages; ``forward`` returns every stage's output, shallowest first."""

    def __init__(self, spec: UNetSpec, in_channels: int):
        super().__init__()
        self.stem = ConvStack(in_channels, spec.features[0], 1, spec.kernels[0]) if spec.stem else None
        cin = spec.features[0] if spec.stem else in_channels
        stages = []
        for s in range(len(spec.features)):
            stages.append(_stage(spec, s, cin))
            cin = spec.features[s]
        self.stages = nn.ModuleList(stages)

    def forward(self, x) -> list[torch.Tensor]:
        if self.stem is not None:
            x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        return skips


class DecoderStage(nn.Module):
    """Transposed conv up by ``stride`` → crop to the skip → concat → ``n`` conv blocks."""

    def __init__(self, cin: int, cskip: int, stride, kernel, n: int):
        super().__init__()
        self.up = nn.ConvTranspose3d(cin, cskip, stride, stride, bias=True)
        self.convs = ConvStack(2 * cskip, cskip, n, kernel)

    def forward(self, x, skip):
        x = self.up(x)[..., : skip.shape[2], : skip.shape[3], : skip.shape[4]]
        return self.convs(torch.cat([x, skip], 1))


class UNet(nn.Module):
    """Encoder–decoder with skip connections and 1×1×1 heads; see the module docstring."""

    def __init__(self, spec: UNetSpec, in_channels: int, num_classes: int, *, deep_supervision: bool = False):
        super().__init__()
        spec = spec.checked()
        self.spec, self.in_channels, self.num_classes = spec, in_channels, num_classes
        self.deep_supervision = deep_supervision
        self.encoder = Encoder(spec, in_channels)
        f = spec.features
        # decoder stage i joins encoder stage n-2-i (its skip) with the level below it
        self.decoder = nn.ModuleList(
            DecoderStage(f[s + 1], f[s], spec.strides[s + 1], spec.kernels[s], spec.decoder_convs[s])
            for s in reversed(range(len(f) - 1)))
        n_heads = len(self.decoder) if deep_supervision else 1
        self.heads = nn.ModuleList(nn.Conv3d(f[s], num_classes, 1, bias=True) for s in range(n_heads))

    def forward(self, x):
        """Logits (B, num_classes, D', H', W') at the first stage's resolution; with deep
        supervision, a list of them from every decoder stage, highest resolution first."""
        skips = self.encoder(x)
        y = skips[-1]
        outputs = []
        for i, stage in enumerate(self.decoder):
            y = stage(y, skips[-2 - i])
            level = len(self.decoder) - 1 - i  # encoder stage (= head index) at this resolution
            if self.deep_supervision and level < len(self.heads):
                outputs.append(self.heads[level](y))
        if not self.deep_supervision:
            return self.heads[0](y)
        return outputs[::-1]

    def reset_heads(self) -> None:
        """Re-initialise every segmentation head (the C2W wall stage's new head)."""
        for head in self.heads:
            head.reset_parameters()
