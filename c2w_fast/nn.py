"""``nn.Module`` wrappers of the fused ops, drop-in for the unfused PyTorch layers.

``FusedConvNormAct`` holds a bias-free ``Conv3d`` and an affine ``InstanceNorm3d`` under the
names ``conv`` and ``norm``, so its state_dict (``conv.weight``, ``norm.weight``,
``norm.bias``) is that of ``Conv3d → InstanceNorm3d(affine=True) → LeakyReLU`` and
checkpoints load either way. The losses accept one output or a list of deep-supervision
outputs (highest resolution first) with per-output weights.
"""
from __future__ import annotations

import inspect
import itertools
import numbers
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from c2w_fast.ops._dispatch import BACKEND_CHOICES
from c2w_fast.ops.conv_norm_act import _triple, check_geometry, conv_norm_act
from c2w_fast.ops.losses import dice_ce_loss, dice_focal_loss


class FusedConvNormAct(nn.Module):
    """Conv3d (no bias, padding kernel // 2) → InstanceNorm3d(affine) → [+ residual] → LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, groups: int = 1, *,
                 activation: bool = True, eps: float = 1e-5, negative_slope: float = 0.01, backend: str = "auto"):
        super().__init__()
        kernel_size, stride = _triple(kernel_size, "kernel_size"), _triple(stride, "stride")
        check_geometry(kernel_size, stride)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride,
                              tuple(k // 2 for k in kernel_size), groups=groups, bias=False)
        self.norm = nn.InstanceNorm3d(out_channels, eps=eps, affine=True)
        self.activation = activation
        self.negative_slope = negative_slope
        if backend not in BACKEND_CHOICES:  # refused here, not at the first forward pass
            raise ValueError(f"backend must be one of {BACKEND_CHOICES}, got {backend!r}")
        self.backend = backend

    def extra_repr(self) -> str:
        return f"activation={self.activation}, negative_slope={self.negative_slope}, backend={self.backend!r}"

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        return conv_norm_act(x, self.conv.weight, self.norm.weight, self.norm.bias, stride=self.conv.stride,
                             groups=self.conv.groups, eps=self.norm.eps, negative_slope=self.negative_slope,
                             activation=self.activation, residual=residual, backend=self.backend)


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights: 1/2^i for output i, the lowest resolution dropped, normalised to sum 1."""
    weights = [0.5**i for i in range(n)]
    if n > 1:
        weights[-1] = 0.0
    total = sum(weights)
    return [w / total for w in weights]


class _SegmentationLoss(nn.Module):
    """A functional loss (``function``) over one output, or over deep-supervision outputs, weighted."""

    function: Callable

    def __init__(self, weights: Sequence[float] | None = None, **options):
        super().__init__()
        try:  # a misspelt or foreign option is an error now, not at the first forward
            inspect.signature(self.function).bind(None, None, **options)
        except TypeError as exc:
            raise TypeError(f"{type(self).__name__}: {exc}") from None
        self.weights = None if weights is None else _checked_weights(weights)
        self.options = options

    def single(self, logits, target, mask):
        return self.function(logits, target, mask, **self.options)

    def forward(self, outputs, target, mask=None):
        if isinstance(outputs, torch.Tensor):
            return self.single(outputs, target, mask)
        if not outputs:
            raise ValueError("the loss needs at least one output, got an empty list")
        weights = self.weights or deep_supervision_weights(len(outputs))
        if len(weights) != len(outputs):
            raise ValueError(f"got {len(outputs)} outputs but {len(weights)} deep-supervision weights")
        terms = [weight * self.single(logits, _resize_labels(target, logits.shape[2:]),
                                      _resize_labels(mask, logits.shape[2:]))
                 for logits, weight in zip(outputs, weights) if weight]
        return sum(terms[1:], terms[0])


def _checked_weights(weights) -> list[float]:
    """Deep-supervision weights as a list: numbers >= 0, at least one > 0."""
    if isinstance(weights, (str, bytes)) or not isinstance(weights, Sequence) \
            or not all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights):
        raise TypeError(f"weights must be a sequence of numbers (one per deep-supervision output), got {weights!r}")
    if not weights or min(weights) < 0 or max(weights) <= 0:
        raise ValueError(f"deep-supervision weights must be >= 0 with at least one > 0, got {list(weights)}")
    return [float(w) for w in weights]


def _resize_labels(labels, size):
    """(B, D, H, W) or (B, 1, D, H, W) labels or masks at the voxels of a lower-resolution output of ``size``.

    An output made by convolutions of stride s (padding kernel // 2) has ceil(n / s) voxels centred
    on input voxels 0, s, 2s, ...: those are taken (``nearest`` interpolation would pick 0, 1, 3 for
    5 -> 3, ``nearest-exact`` 1, 3, 5 for 6 -> 3). Other sizes fall back to ``nearest-exact``.
    """
    if labels is None or tuple(labels.shape[-3:]) == tuple(size):
        return labels
    strides = [_output_stride(n, m) for n, m in zip(labels.shape[-3:], size)]
    if None not in strides:
        return labels[..., ::strides[0], ::strides[1], ::strides[2]]
    squeeze = labels.ndim == 4
    resized = F.interpolate((labels[:, None] if squeeze else labels).float(), size=tuple(size), mode="nearest-exact")
    resized = resized[:, 0] if squeeze else resized
    return resized.to(labels.dtype)


def _output_stride(n: int, m: int) -> int | None:
    """The stride s of an output of m voxels from n (ceil(n / s) = m), powers of two first: the
    U-Nets' strides are 1 or 2 per stage, and 9 -> 3 is stride 4 there (ceil(ceil(9 / 2) / 2)),
    not 3."""
    candidates = itertools.chain((2 ** k for k in range(n.bit_length() + 1)), range(3, n + 1))
    return next((s for s in candidates if -(-n // s) == m), None)


class DiceFocalLoss(_SegmentationLoss):
    """Module form of :func:`c2w_fast.ops.dice_focal_loss`; ``forward(outputs, target, mask=None)``."""

    function = staticmethod(dice_focal_loss)


class DiceCELoss(_SegmentationLoss):
    """Module form of :func:`c2w_fast.ops.dice_ce_loss`; ``forward(outputs, target, mask=None)``."""

    function = staticmethod(dice_ce_loss)
