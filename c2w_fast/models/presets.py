"""The seeds' architectures as named :class:`UNetSpec` presets (shapes in (z, y, x)).

``c2w_resnext`` — C2W-Tune §2.2: 7 stages, 32-64-128-256-512-512-512 features, 3×3×3
kernels, grouped (ResNeXt) convs, InstanceNorm, LeakyReLU. The paper gives neither
strides, groups nor block counts; they are chosen so that a 4×1×44×256×256 ROI gives the
stage shapes benchmarked in issue 6 (2×64×44×128×128 with groups 16, 2×128×22×64×64 /
32, 2×256×11×32×32 / 32, 2×512×11×16×16 / 32): in-plane downsampling first (the ROI has
only 44 slices), cardinality ``min(32, width / 4)`` (4 channels per group), one ResNeXt
block per stage after a plain stem conv, one conv per decoder stage.

``mbas_stage1`` / ``mbas_stage2`` — the MBAS residual-encoder U-Nets of Tables 27 and 28
(nnU-Net ResEnc, ``BasicBlockD``). Where the tables are elided or inconsistent they are
completed with nnU-Net's planning rules for the stated patch and spacing; see
``docs/models.md`` for each inference and the parameter counts that confirm it.

``unet_localizer`` — the coarse plain 3D U-Net of C2W-Tune §2.1 (unspecified in the
paper): 5 stages of two conv blocks, 16-256 features.
"""
from __future__ import annotations

from c2w_fast.models.unet import UNetSpec

ARCHITECTURES: dict[str, UNetSpec] = {
    "c2w_resnext": UNetSpec(
        block="resnext",
        features=(32, 64, 128, 256, 512, 512, 512),
        strides=(1, (1, 2, 2), 2, 2, (1, 2, 2), (1, 2, 2), (1, 2, 2)),
        kernels=(3,) * 7,
        blocks_per_stage=(0, 1, 1, 1, 1, 1, 1),
        decoder_convs=(1,) * 6,
        groups=(8, 16, 32, 32, 32, 32, 32),
    ),
    "mbas_stage1": UNetSpec(
        block="residual",
        features=(32, 32, 64, 96, 96, 96),
        strides=(1, (1, 2, 2), 2, 2, (1, 2, 2), (1, 2, 2)),
        kernels=((1, 3, 3),) + ((3, 3, 3),) * 5,
        blocks_per_stage=(1, 3, 4, 6, 6, 6),
        decoder_convs=(1,) * 5,
        dropout=0.5,
    ),
    "mbas_stage2": UNetSpec(
        block="residual",
        features=(32, 64, 128, 256, 320, 320, 320),
        strides=(1, (1, 2, 2), (1, 2, 2), 2, 2, (1, 2, 2), (1, 2, 2)),
        kernels=((1, 3, 3), (1, 3, 3)) + ((3, 3, 3),) * 5,
        blocks_per_stage=(1, 3, 4, 6, 6, 6, 6),
        decoder_convs=(1,) * 6,
    ),
    "unet_localizer": UNetSpec(
        block="conv",
        features=(16, 32, 64, 128, 256),
        strides=(1, 2, 2, 2, 2),
        kernels=(3,) * 5,
        blocks_per_stage=(2,) * 5,
        decoder_convs=(2,) * 4,
        stem=False,
    ),
}
