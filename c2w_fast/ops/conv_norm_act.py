"""Fused 3D convolution + InstanceNorm (affine) + LeakyReLU, the block every U-Net here is built of.

``y = leaky_relu(instance_norm(conv3d(x, w)) * gamma + beta [+ residual])`` with padding
``kernel // 2`` per axis and no conv bias (the norm removes it). The residual variant adds
``residual`` after the norm and before the activation (ResNeXt / residual-encoder blocks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from c2w_fast.ops._dispatch import Op


def _triple(value, name: str) -> tuple[int, int, int]:
    values = (value,) * 3 if isinstance(value, int) else tuple(int(v) for v in value)
    if len(values) != 3:
        raise ValueError(f"{name} must be an int or 3 ints (z, y, x), got {value!r}")
    return values


def _reference(x, weight, norm_weight, norm_bias, stride, groups, eps, negative_slope, activation, residual):
    padding = tuple(k // 2 for k in weight.shape[2:])
    y = F.conv3d(x, weight, None, stride, padding, 1, groups)
    y = F.instance_norm(y, weight=norm_weight, bias=norm_bias, eps=eps)
    if residual is not None:
        y = y + residual
    return F.leaky_relu(y, negative_slope) if activation else y


CONV_NORM_ACT = Op("conv_norm_act", {"reference": _reference}, preferred={"cuda": ("triton",)})


def conv_norm_act(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, *,
                  stride=1, groups: int = 1, eps: float = 1e-5, negative_slope: float = 0.01,
                  activation: bool = True, residual: torch.Tensor | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Grouped conv3d → InstanceNorm3d(affine) → (+ residual) → LeakyReLU, differentiable.

    Args:
        x: (B, Cin, D, H, W). weight: (Cout, Cin / groups, kz, ky, kx) with kernel sizes 1 or 3.
        norm_weight, norm_bias: (Cout,) affine parameters of the instance norm.
        stride: 1 or 2, one for all axes or one per axis (z, y, x).
        residual: optional (B, Cout, D', H', W') added after the norm, before the activation.
        activation: False skips the LeakyReLU.
    Returns: (B, Cout, D', H', W') in ``x``'s dtype.
    """
    stride = _triple(stride, "stride")
    if x.ndim != 5 or weight.ndim != 5:
        raise ValueError(f"x must be (B, C, D, H, W) and weight (Cout, Cin/groups, kz, ky, kx), "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    if any(k not in (1, 3) for k in weight.shape[2:]) or any(s not in (1, 2) for s in stride):
        raise ValueError(f"kernel sizes must be 1 or 3 and strides 1 or 2, got {tuple(weight.shape[2:])} and {stride}")
    if x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"channels do not fit groups={groups}: x has {x.shape[1]}, weight {tuple(weight.shape[:2])}")
    device = x.device.type
    return CONV_NORM_ACT.select(backend, device)(x, weight, norm_weight, norm_bias, stride, groups, eps,
                                                 negative_slope, activation, residual)
