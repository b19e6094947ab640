"""Segmentation losses of the seeds: soft Dice + focal (C2W) and soft Dice + cross-entropy (MBAS).

Definitions (logits z of shape (B, C, D, H, W), C >= 2; one-hot target t; region weight m = 1
inside the mask, 0 outside; with ``mask=None`` m = 1 everywhere):

* Dice probabilities p = softmax over the classes (``activation="softmax"``) or a sigmoid per
  class (``"sigmoid"``). Per (sample, class), or per class with ``batch_dice`` (sums also run
  over the batch): ``dice = 1 - (2 sum(m p t) + smooth_nr) / (sum(m p) + sum(m t) + smooth_dr)``.
  The Dice term is the mean over the classes (from class 1 if ``include_background=False``)
  and samples, leaving out the entries of samples (``batch_dice``: of a batch) with no voxel
  in the mask.
* Focal term (``dice_focal_loss``): MONAI's sigmoid focal loss per class,
  ``w * sigmoid(-z s)^gamma * bce(z, t)`` with s = 2t - 1 and ``w = alpha t + (1 - alpha)(1 - t)``
  (w = 1 when alpha is None), averaged over the masked voxels and the classes (from class 1
  if ``include_background=False``). MONAI's ``DiceFocalLoss`` builds its ``FocalLoss`` without
  ``use_softmax``, so this is its focal term even when the Dice uses a softmax.
* Cross-entropy term (``dice_ce_loss``): ``-sum_c t log softmax(z)``, over every class whatever
  ``include_background`` says (as MONAI's ``DiceCELoss``), averaged over the masked voxels.
* loss = ``lambda_dice * dice + lambda_focal * focal`` (or ``lambda_ce * ce``), a float32 scalar
  (float64 for float64 logits).

With ``mask=None`` (or an all-one mask) and the defaults these equal MONAI 1.6
``DiceFocalLoss(to_onehot_y=True, softmax=True)`` / ``DiceCELoss(to_onehot_y=True, softmax=True)``
in value and gradient. An all-zero mask gives a loss of exactly 0 and a zero gradient.
Integer labels outside [0, C) raise a ``ValueError`` in the reference and make the triton
backend's loss and gradient NaN (checked on the device, without a host sync). A (B, C, D, H, W)
target is read as given (one-hot or soft labels in [0, 1]); its values are not checked, as in MONAI.
Label-shaped targets must be integer or bool (a float one would be truncated); a float mask
must hold only 0 and 1 (checked with a host sync; bool masks need none).
The triton backend's backward is first-order: ``create_graph=True`` raises a ``RuntimeError``;
it gives no gradient to the target, so a target that requires grad runs the reference under ``auto``.

With ``across_processes=True`` under DDP, every process gathers the per-sample sums of all
processes and evaluates the loss of the whole batch, so batch Dice and masked means are those
of one process with the whole batch (see :mod:`c2w_fast.ops._processes`).

Backends: ``reference`` (plain torch, float64-capable) and ``triton`` (one fused forward
kernel, a one-program finalisation, one fused backward kernel; see
:mod:`c2w_fast.kernels.segmentation_loss`). Accuracy of the triton backend against the
float64 reference on the same inputs: ``VALUE_TOLERANCES`` and ``GRAD_TOLERANCES`` by logits dtype.
"""
from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F

from c2w_fast.ops._dispatch import Op, first_order_backward, reference_only
from c2w_fast.ops._processes import gather_rows, own_rows, process_count
from c2w_fast.ops._tolerance import Tolerance

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
ACTIVATIONS = ("softmax", "sigmoid")

# The value is computed in fp32 from the logits whatever their dtype.
VALUE_TOLERANCES = {dtype: Tolerance(rtol=2e-5, atol=1e-6) for dtype in KERNEL_DTYPES}
# The gradient is stored in the logits' dtype; bf16 leaves room for the Triton interpreter,
# whose fp32 -> bf16 casts truncate instead of rounding.
GRAD_TOLERANCES = {
    torch.float32: Tolerance(rtol=1e-4, atol=1e-5),
    torch.float16: Tolerance(rtol=2e-3, atol=1e-4),
    torch.bfloat16: Tolerance(rtol=1e-2, atol=1e-3),
}


def one_hot_target(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(B, D, H, W) or (B, 1, D, H, W) labels, or a one-hot (B, C, D, H, W), as float one-hot (B, C, D, H, W)."""
    if target.ndim == 5 and target.shape[1] == num_classes:
        return target.float() if not target.is_floating_point() else target
    labels = target[:, 0] if target.ndim == 5 else target
    labels = labels.long()
    # the range check is a host sync: under torch.compile (a graph break each) F.one_hot is left to refuse
    if labels.numel() and not torch.compiler.is_compiling():
        low, high = int(labels.min()), int(labels.max())
        if low < 0 or high >= num_classes:
            raise ValueError(f"target labels must lie in [0, {num_classes}) for {num_classes} classes, "
                             f"got values in [{low}, {high}]")
    return F.one_hot(labels, num_classes).permute(0, 4, 1, 2, 3).float()


def _sample_sums(probs, onehot, mask, per_voxel_term):
    """Per-sample rows (B, 3C + 2): sum(m p t), sum(m p), sum(m t) per class, sum(m term), voxels inside."""
    batch, voxels = probs.shape[0], probs[0, 0].numel()
    if mask is None:
        count = probs.new_full((batch,), voxels)
    else:
        probs, onehot, per_voxel_term = probs * mask, onehot * mask, per_voxel_term * mask
        count = mask.flatten(1).sum(1)
    axes = list(range(2, probs.ndim))
    return torch.cat([(probs * onehot).sum(axes), probs.sum(axes), onehot.sum(axes),
                      per_voxel_term.flatten(1).sum(1, keepdim=True), count[:, None]], 1)


def _loss_from_sums(rows, dice_first_class, term_channels, batch_dice, smooth_nr, smooth_dr,
                    lambda_dice, lambda_term):
    """The loss of the samples whose :func:`_sample_sums` are ``rows``."""
    classes = (rows.shape[1] - 2) // 3
    intersection, probs, targets = (rows[:, k * classes + dice_first_class:(k + 1) * classes] for k in range(3))
    term, count = rows[:, 3 * classes], rows[:, 3 * classes + 1]
    inside = count > 0  # samples with a region
    if batch_dice:
        intersection, probs, targets = (x.sum(0, keepdim=True) for x in (intersection, probs, targets))
        inside = inside.any(0, keepdim=True)
    denominator = probs + targets + smooth_dr
    valid = inside[:, None].expand_as(denominator)
    # entries without a region drop out; their denominator is replaced before dividing so that
    # a 0/0 (smooth_dr = 0) cannot put NaN into the gradient through the discarded branch
    dice = 1 - (2 * intersection + smooth_nr) / torch.where(valid, denominator, torch.ones_like(denominator))
    dice = torch.where(valid, dice, torch.zeros_like(dice)).sum() / valid.sum().clamp_min(1)
    return lambda_dice * dice + lambda_term * term.sum() / count.sum().clamp_min(1) / term_channels


def _prepare(logits, target, mask):
    """Logits in at least float32, the float one-hot target and the (B, 1, D, H, W) float mask."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    onehot = one_hot_target(target, logits.shape[1]).to(logits.dtype)
    mask = None if mask is None else (mask != 0)[:, None].to(logits.dtype)
    return logits, onehot, mask


def _reference_loss(logits, onehot, mask, per_voxel_term, term_channels, activation, include_background,
                    batch_dice, smooth_nr, smooth_dr, lambda_dice, lambda_term, across_processes):
    probs = logits.softmax(1) if activation == "softmax" else logits.sigmoid()
    rows = _sample_sums(probs, onehot, mask, per_voxel_term)
    rows = gather_rows(rows) if across_processes else rows
    return _loss_from_sums(rows, 0 if include_background else 1, term_channels, batch_dice, smooth_nr, smooth_dr,
                           lambda_dice, lambda_term)


def _dice_focal_reference(logits, target, mask, gamma, alpha, include_background, batch_dice,
                          smooth_nr, smooth_dr, lambda_dice, lambda_focal, activation, across_processes):
    logits, onehot, mask = _prepare(logits, target, mask)
    focal_logits, focal_target = (logits, onehot) if include_background else (logits[:, 1:], onehot[:, 1:])
    bce = F.binary_cross_entropy_with_logits(focal_logits, focal_target, reduction="none")
    focal = torch.exp(gamma * F.logsigmoid(-focal_logits * (2 * focal_target - 1))) * bce
    if alpha is not None:
        focal = focal * (focal_target * alpha + (1 - focal_target) * (1 - alpha))
    return _reference_loss(logits, onehot, mask, focal.sum(1, keepdim=True), focal.shape[1], activation,
                           include_background, batch_dice, smooth_nr, smooth_dr, lambda_dice, lambda_focal,
                           across_processes)


def _dice_ce_reference(logits, target, mask, include_background, batch_dice, smooth_nr, smooth_dr,
                       lambda_dice, lambda_ce, activation, across_processes):
    logits, onehot, mask = _prepare(logits, target, mask)
    ce = -(logits.log_softmax(1) * onehot).sum(1, keepdim=True)
    return _reference_loss(logits, onehot, mask, ce, 1, activation, include_background, batch_dice, smooth_nr,
                           smooth_dr, lambda_dice, lambda_ce, across_processes)


class _FusedSegmentationLoss(torch.autograd.Function):
    """Autograd of the triton backend: saves the inputs and the finaliser's (B, 2, C) coefficients."""

    @staticmethod
    def forward(ctx, logits, target, mask, spec, across_processes):
        from c2w_fast.kernels.segmentation_loss import loss_finalize, loss_partials

        part = loss_partials(logits, target, mask, spec)
        processes = process_count() if across_processes else 1
        if processes > 1:  # the whole batch's loss; gradients scaled for DDP's average (see _processes)
            part = gather_rows(part.sum(1, keepdim=True))
        out, coef = loss_finalize(part, spec)
        if processes > 1:
            coef = own_rows(coef, logits.shape[0]) * processes
            out[1:] *= processes
        ctx.save_for_backward(logits, target, mask, out, coef)
        ctx.spec = spec
        return out[0]

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_loss):
        from c2w_fast.kernels.segmentation_loss import loss_backward

        logits, target, mask, out, coef = ctx.saved_tensors
        return loss_backward(grad_loss, logits, target, mask, out, coef, ctx.spec), None, None, None, None


def _kernel_target(target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Labels as (B, D, H, W) integers, or the one-hot (B, C, D, H, W) as given."""
    if target.ndim == 5 and target.shape[1] == num_classes:
        return target
    labels = target[:, 0] if target.ndim == 5 else target
    return labels.long() if labels.is_floating_point() else labels


def _triton_loss(logits, target, mask, *, term, gamma, alpha, include_background, batch_dice, smooth_nr, smooth_dr,
                 lambda_dice, lambda_term, activation, across_processes):
    from c2w_fast.kernels.segmentation_loss import TERM_CE, TERM_FOCAL, LossSpec

    spec = LossSpec(term=TERM_FOCAL if term == "focal" else TERM_CE, sigmoid=activation == "sigmoid",
                    dice_first_class=0 if include_background else 1,
                    term_first_class=0 if include_background or term == "ce" else 1,
                    batch_dice=bool(batch_dice), gamma=float(gamma), alpha=None if alpha is None else float(alpha),
                    smooth_nr=float(smooth_nr), smooth_dr=float(smooth_dr), lambda_dice=float(lambda_dice),
                    lambda_term=float(lambda_term))
    return _FusedSegmentationLoss.apply(logits, _kernel_target(target, logits.shape[1]), mask, spec, across_processes)


def _dice_focal_triton(logits, target, mask, gamma, alpha, include_background, batch_dice,
                       smooth_nr, smooth_dr, lambda_dice, lambda_focal, activation, across_processes):
    return _triton_loss(logits, target, mask, term="focal", gamma=gamma, alpha=alpha,
                        include_background=include_background, batch_dice=batch_dice, smooth_nr=smooth_nr,
                        smooth_dr=smooth_dr, lambda_dice=lambda_dice, lambda_term=lambda_focal, activation=activation,
                        across_processes=across_processes)


def _dice_ce_triton(logits, target, mask, include_background, batch_dice, smooth_nr, smooth_dr,
                    lambda_dice, lambda_ce, activation, across_processes):
    return _triton_loss(logits, target, mask, term="ce", gamma=0.0, alpha=None,
                        include_background=include_background, batch_dice=batch_dice, smooth_nr=smooth_nr,
                        smooth_dr=smooth_dr, lambda_dice=lambda_dice, lambda_term=lambda_ce, activation=activation,
                        across_processes=across_processes)


DICE_FOCAL = Op("dice_focal_loss", {"reference": _dice_focal_reference, "triton": _dice_focal_triton},
                preferred={"cuda": ("triton",)})
DICE_CE = Op("dice_ce_loss", {"reference": _dice_ce_reference, "triton": _dice_ce_triton},
             preferred={"cuda": ("triton",)})


def _check(logits, target, mask, activation, backend) -> str:
    """Validate the inputs; return the backend to ask for (float64 logits run the reference under ``auto``)."""
    for name, value in (("logits", logits), ("target", target), ("mask", mask)):
        if value is not None and not isinstance(value, torch.Tensor):
            raise TypeError(f"{name} must be a torch tensor (the losses train networks), got {type(value).__name__}")
    if logits.ndim != 5 or not logits.is_floating_point():
        raise ValueError(f"logits must be floating-point (B, C, D, H, W), got {logits.dtype} {tuple(logits.shape)}")
    batch, classes, *spatial = logits.shape
    if classes < 2:
        raise ValueError(f"logits need at least 2 channels (classes), got {classes}")
    if logits.numel() == 0:
        raise ValueError(f"logits must not be empty, got shape {tuple(logits.shape)}")
    shapes = [(batch, *spatial), (batch, 1, *spatial), (batch, classes, *spatial)]
    if tuple(target.shape) not in shapes:
        raise ValueError(f"target must be labels (B, D, H, W) = {shapes[0]} or {shapes[1]}, or one-hot "
                         f"(B, C, D, H, W) = {shapes[2]}, got {tuple(target.shape)}")
    if tuple(target.shape) != shapes[2] and target.is_floating_point():  # .long() would truncate 1.5 to 1
        raise ValueError(f"target labels {tuple(target.shape)} must be an integer or bool tensor, got {target.dtype}; "
                         f"a float target must be one-hot or probabilities (B, C, D, H, W) = {shapes[2]}")
    if mask is not None and tuple(mask.shape) not in shapes[:2]:
        raise ValueError(f"mask must be (B, D, H, W) = {shapes[0]} or {shapes[1]}, got {tuple(mask.shape)}")
    if mask is not None and mask.is_floating_point():  # NaN != 0 would count as inside
        bad = mask[(mask != 0) & (mask != 1)]
        if bad.numel():
            raise ValueError(f"mask must be bool, integer or a float holding only 0 and 1, got {mask.dtype} "
                             f"with the value {bad[0].item()}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    devices = {t.device for t in (logits, target, mask) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"logits, target and mask must be on one device, got {sorted(map(str, devices))}")
    if logits.dtype not in KERNEL_DTYPES:
        return reference_only(backend, f"the triton backend takes logits in {[str(d) for d in KERNEL_DTYPES]}, "
                                       f"got {logits.dtype}")
    if target.requires_grad and torch.is_grad_enabled():  # e.g. a teacher's soft output left attached
        return reference_only(backend, "the triton backend gives no gradient to the target; detach it, or use "
                                       "backend='reference' for a gradient to a target that requires grad")
    return backend


def _check_flags(**flags) -> None:
    """include_background, batch_dice, across_processes: bools (a string such as "no" would count as True)."""
    for name, value in flags.items():
        if not isinstance(value, bool):
            raise ValueError(f"{name} must be True or False, got {value!r}")


def _check_options(**options) -> None:
    """gamma, lambdas and smoothing terms: finite numbers >= 0; alpha: None or a number in [0, 1]."""
    for name, value in options.items():
        if name == "alpha" and value is None:
            continue
        high = 1.0 if name == "alpha" else math.inf
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value <= high \
                or not math.isfinite(value):
            wanted = "None or a number in [0, 1]" if name == "alpha" else "a finite number >= 0"
            raise ValueError(f"{name} must be {wanted}, got {value!r}")


def dice_focal_loss(logits, target, mask=None, *, gamma: float = 2.0, alpha: float | None = None,
                    include_background: bool = True, batch_dice: bool = False, smooth_nr: float = 1e-5,
                    smooth_dr: float = 1e-5, lambda_dice: float = 1.0, lambda_focal: float = 1.0,
                    activation: str = "softmax", across_processes: bool = False,
                    backend: str = "auto") -> torch.Tensor:
    """Soft Dice + sigmoid focal loss, optionally inside a region mask (definitions in the module docstring).

    Args:
        logits: (B, C, D, H, W) raw scores, C >= 2; float32/float16/bfloat16 (float64: reference).
        target: integer or bool labels (B, D, H, W) or (B, 1, D, H, W) in [0, C) (float labels are
            refused), or one-hot / probabilities (B, C, D, H, W) of any dtype.
        mask: optional (B, D, H, W) (or (B, 1, D, H, W)) region; nonzero = the voxel counts; a float
            mask must hold only 0 and 1.
        gamma, alpha: focal exponent >= 0 and optional class-balance weight in [0, 1].
        smooth_nr, smooth_dr, lambda_dice, lambda_focal: finite numbers >= 0.
        activation: ``"softmax"`` or ``"sigmoid"`` for the Dice probabilities.
        across_processes: under DDP, the loss of the whole batch (every process's share, gathered
            with ``torch.distributed``): ``batch_dice`` sums, masked means and dropped entries then
            cover the global batch, so DDP's averaged gradient is the one-process gradient. Every
            process must call it with the same shapes; a no-op without a process group.
    Returns: a scalar, float32 (float64 for float64 logits). Equals MONAI
    ``DiceFocalLoss(to_onehot_y=True, softmax=True)`` for the defaults.
    """
    backend = _check(logits, target, mask, activation, backend)
    _check_options(gamma=gamma, alpha=alpha, smooth_nr=smooth_nr, smooth_dr=smooth_dr, lambda_dice=lambda_dice,
                   lambda_focal=lambda_focal)
    _check_flags(include_background=include_background, batch_dice=batch_dice, across_processes=across_processes)
    mask = mask[:, 0] if mask is not None and mask.ndim == 5 else mask
    return DICE_FOCAL.select(backend, logits.device)(logits, target, mask, gamma, alpha, include_background,
                                                     batch_dice, smooth_nr, smooth_dr, lambda_dice, lambda_focal,
                                                     activation, across_processes)


def dice_ce_loss(logits, target, mask=None, *, include_background: bool = True, batch_dice: bool = False,
                 smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, lambda_dice: float = 1.0, lambda_ce: float = 1.0,
                 activation: str = "softmax", across_processes: bool = False,
                 backend: str = "auto") -> torch.Tensor:
    """Soft Dice + cross-entropy, optionally inside a region mask (definitions in the module docstring).

    Arguments as :func:`dice_focal_loss`; the cross-entropy always uses a softmax over every class.
    Returns: a scalar, float32 (float64 for float64 logits). Equals MONAI
    ``DiceCELoss(to_onehot_y=True, softmax=True)`` for the defaults.
    """
    backend = _check(logits, target, mask, activation, backend)
    _check_options(smooth_nr=smooth_nr, smooth_dr=smooth_dr, lambda_dice=lambda_dice, lambda_ce=lambda_ce)
    _check_flags(include_background=include_background, batch_dice=batch_dice, across_processes=across_processes)
    mask = mask[:, 0] if mask is not None and mask.ndim == 5 else mask
    return DICE_CE.select(backend, logits.device)(logits, target, mask, include_background, batch_dice,
                                                  smooth_nr, smooth_dr, lambda_dice, lambda_ce, activation,
                                                  across_processes)
