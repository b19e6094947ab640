"""The U-Nets of the seeds, built from the fused conv block by one builder.

``build_model("c2w_resnext", in_channels=1, num_classes=2)`` returns a :class:`UNet`;
any field of the preset's :class:`UNetSpec` can be overridden (``features=(8, 16, 32)``
with matching ``strides`` etc.). ``python -m c2w_fast.models --summary NAME`` prints the
stage shapes and parameter counts.
"""
from __future__ import annotations

from dataclasses import fields, replace

from torch import nn

from c2w_fast.models.presets import ARCHITECTURES
from c2w_fast.models.unet import UNet, UNetSpec

INITS = ("kaiming_normal", "torch")


def build_spec(name: str, **overrides) -> UNetSpec:
    """The preset ``name`` with ``overrides`` (UNetSpec fields) applied and checked."""
    if name not in ARCHITECTURES:
        raise ValueError(f"model architecture must be one of {sorted(ARCHITECTURES)}, got {name!r}")
    known = {f.name for f in fields(UNetSpec)}
    unknown = set(overrides) - known
    if unknown:
        raise ValueError(f"unknown architecture fields {sorted(unknown)}; known: {sorted(known)}")
    return replace(ARCHITECTURES[name], **overrides).checked()


def init_weights(model: nn.Module, negative_slope: float = 1e-2) -> None:
    """nnU-Net's ``InitWeights_He``: Kaiming-normal conv weights for LeakyReLU(``negative_slope``), zero biases."""
    for module in model.modules():
        if isinstance(module, (nn.Conv3d, nn.ConvTranspose3d)):
            nn.init.kaiming_normal_(module.weight, a=negative_slope)
            if module.bias is not None:
                nn.init.zeros_(module.bias)


def build_model(name: str, in_channels: int = 1, num_classes: int = 2, *, deep_supervision: bool = False,
                init: str = "kaiming_normal", **overrides) -> UNet:
    """A :class:`UNet` of preset ``name`` (see :data:`ARCHITECTURES`) with spec ``overrides``."""
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    if in_channels < 1 or num_classes < 2:
        raise ValueError(f"need in_channels >= 1 and num_classes >= 2, got {in_channels} and {num_classes}")
    model = UNet(build_spec(name, **overrides), in_channels, num_classes, deep_supervision=deep_supervision)
    if init == "kaiming_normal":
        init_weights(model)
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


__all__ = ["ARCHITECTURES", "UNet", "UNetSpec", "build_model", "build_spec", "count_parameters", "init_weights"]
