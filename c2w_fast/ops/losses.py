"""Segmentation losses of the seeds: soft Dice + focal (C2W) and soft Dice + cross-entropy (MBAS).

Both follow MONAI 1.6's ``DiceFocalLoss`` / ``DiceCELoss`` with ``to_onehot_y=True,
softmax=True`` when ``mask`` is None, and accept a boolean region ``mask`` (B, D, H, W)
that gates every voxel's contribution (MBAS stage 2: the loss only inside the dilated
stage-1 region): Dice sums run over masked voxels and the focal / CE terms average over
them. An all-zero mask gives a loss of 0 with zero gradients.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from c2w_fast.ops._dispatch import Op


def one_hot_target(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, D, H, W) or (B, 1, D, H, W) integer labels, or a one-hot (B, C, ...), as float one-hot (B, C, ...)."""
    if target.ndim == 5 and target.shape[1] == num_classes and num_classes > 1 and target.is_floating_point():
        return target
    if target.ndim == 5 and target.shape[1] == 1:
        target = target[:, 0]
    if target.ndim != 4:
        raise ValueError(f"target must be (B, D, H, W), (B, 1, D, H, W) or one-hot (B, C, D, H, W), "
                         f"got {tuple(target.shape)}")
    return F.one_hot(target.long(), num_classes).permute(0, 4, 1, 2, 3).float()


def _soft_dice(probs, onehot, mask, include_background, batch_dice, smooth_nr, smooth_dr):
    if mask is not None:
        probs = probs * mask
        onehot = onehot * mask
    if not include_background:
        probs, onehot = probs[:, 1:], onehot[:, 1:]
    axes = [0, *range(2, probs.ndim)] if batch_dice else list(range(2, probs.ndim))
    intersection = (probs * onehot).sum(axes)
    denominator = probs.sum(axes) + onehot.sum(axes)
    return (1 - (2 * intersection + smooth_nr) / (denominator + smooth_dr)).mean()


def _masked_mean(per_voxel, mask):
    if mask is None:
        return per_voxel.mean()
    return (per_voxel * mask).sum() / mask.sum().clamp_min(1) / (per_voxel.numel() // mask.numel())


def _dice_focal_reference(logits, target, mask, gamma, alpha, include_background, batch_dice,
                          smooth_nr, smooth_dr, lambda_dice, lambda_focal):
    logits = logits.float()
    onehot = one_hot_target(target, logits.shape[1])
    mask = None if mask is None else mask[:, None].float()
    dice = _soft_dice(logits.softmax(1), onehot, mask, include_background, batch_dice, smooth_nr, smooth_dr)
    focal_logits, focal_target = (logits, onehot) if include_background else (logits[:, 1:], onehot[:, 1:])
    # MONAI's DiceFocalLoss builds its FocalLoss without use_softmax: the focal term is the
    # per-channel sigmoid focal loss even when the Dice term uses a softmax.
    bce = F.binary_cross_entropy_with_logits(focal_logits, focal_target, reduction="none")
    focal = torch.exp(gamma * F.logsigmoid(-focal_logits * (2 * focal_target - 1))) * bce
    if alpha is not None:
        focal = focal * (focal_target * alpha + (1 - focal_target) * (1 - alpha))
    return lambda_dice * dice + lambda_focal * _masked_mean(focal, mask)


def _dice_ce_reference(logits, target, mask, include_background, batch_dice, smooth_nr, smooth_dr,
                       lambda_dice, lambda_ce):
    logits = logits.float()
    onehot = one_hot_target(target, logits.shape[1])
    mask = None if mask is None else mask[:, None].float()
    dice = _soft_dice(logits.softmax(1), onehot, mask, include_background, batch_dice, smooth_nr, smooth_dr)
    ce = -(logits.log_softmax(1) * onehot).sum(1, keepdim=True)
    return lambda_dice * dice + lambda_ce * _masked_mean(ce, mask)


DICE_FOCAL = Op("dice_focal_loss", {"reference": _dice_focal_reference}, preferred={"cuda": ("triton",)})
DICE_CE = Op("dice_ce_loss", {"reference": _dice_ce_reference}, preferred={"cuda": ("triton",)})


def _check(logits, mask):
    if logits.ndim != 5:
        raise ValueError(f"logits must be (B, C, D, H, W), got {tuple(logits.shape)}")
    if mask is not None and tuple(mask.shape) != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"mask must be (B, D, H, W) = {(logits.shape[0], *logits.shape[2:])}, got {tuple(mask.shape)}")


def dice_focal_loss(logits, target, mask=None, *, gamma: float = 2.0, alpha: float | None = None,
                    include_background: bool = True, batch_dice: bool = False, smooth_nr: float = 1e-5,
                    smooth_dr: float = 1e-5, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                    backend: str = "auto") -> torch.Tensor:
    """Soft Dice + softmax focal loss (MONAI ``DiceFocalLoss(to_onehot_y=True, softmax=True)``), optionally masked."""
    _check(logits, mask)
    return DICE_FOCAL.select(backend, logits.device.type)(logits, target, mask, gamma, alpha, include_background,
                                                          batch_dice, smooth_nr, smooth_dr, lambda_dice, lambda_focal)


def dice_ce_loss(logits, target, mask=None, *, include_background: bool = True, batch_dice: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 backend: str = "auto") -> torch.Tensor:
    """Soft Dice + cross-entropy (MONAI ``DiceCELoss(to_onehot_y=True, softmax=True)``), optionally masked."""
    _check(logits, mask)
    return DICE_CE.select(backend, logits.device.type)(logits, target, mask, include_background, batch_dice,
                                                       smooth_nr, smooth_dr, lambda_dice, lambda_ce)
