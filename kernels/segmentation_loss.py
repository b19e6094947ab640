"""Fused segmentation losses (soft Dice + sigmoid focal, soft Dice + cross-entropy): Triton kernels and launchers.

Logits are read in place as (B, C, N), N = D * H * W, from a contiguous or a channels-last
(B, C, D, H, W) tensor. Targets are integer labels (B, N) or a one-hot / soft (B, C, N)
tensor; the optional region mask is (B, N), nonzero = inside.

Forward (two launches): ``_loss_forward_kernel`` (:func:`loss_partials`) streams the voxels
once (softmax or sigmoid, one-hot of the labels, region mask) and writes, per program, its
partial sums for each sample: the Dice sums sum(m p t), sum(m p), sum(m t) per class, the
focal or cross-entropy sum, the count of voxels inside the mask and the count of labels
outside [0, C).
``_loss_finalize_kernel`` (:func:`loss_finalize`, one program) adds the partials in a fixed
order (deterministic), evaluates the loss and the per-(sample, class) Dice derivative
coefficients for the backward. Between the two, the caller may gather the partial sums of
several processes (DDP), see :mod:`c2w_fast.ops._processes`.

Backward (one launch): ``_loss_backward_kernel`` recomputes the probabilities tile by tile
and writes dL/dlogits in the logits' dtype and layout.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from c2w_fast.kernels import cdiv, interpreting, next_power_of_2

TERM_FOCAL = 0  # MONAI's sigmoid focal loss, per channel
TERM_CE = 1  # softmax cross-entropy over all channels
MAX_SAMPLE_ELEMENTS = 2**31 - 1  # offsets inside one sample are int32


@triton.jit
def _load_tile(logits_ptr, target_ptr, mask_ptr, b, n, N, C, s_b, s_c, s_n, t_b, t_c, t_n,
               LABELS: tl.constexpr, HAS_MASK: tl.constexpr, BLOCK_C: tl.constexpr):
    """Logits z and target t as fp32 [BLOCK_C, BLOCK_N], voxel weight m and bad-label flags [BLOCK_N]."""
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    n_ok = n < N
    ok = c_ok[:, None] & n_ok[None, :]
    b64 = b.to(tl.int64)
    z = tl.load(logits_ptr + b64 * s_b + c[:, None] * s_c + n[None, :] * s_n, mask=ok, other=0.0).to(tl.float32)
    if LABELS:
        label = tl.load(target_ptr + b64 * t_b + n * t_n, mask=n_ok, other=0)  # compared unnarrowed: no wrap
        t = (c[:, None] == label[None, :]).to(tl.float32)
        bad = (n_ok & ((label < 0) | (label >= C))).to(tl.float32)
    else:
        t = tl.load(target_ptr + b64 * t_b + c[:, None] * t_c + n[None, :] * t_n, mask=ok, other=0).to(tl.float32)
        bad = tl.zeros(n.shape, dtype=tl.float32)
    if HAS_MASK:
        m = (tl.load(mask_ptr + b64 * N + n, mask=n_ok, other=0) != 0).to(tl.float32)
    else:
        m = n_ok.to(tl.float32)
    return z, t, m, bad, c, c_ok


@triton.jit
def _softmax(z, c_ok):
    """Softmax over the channel axis of [BLOCK_C, BLOCK_N], the channel maximum and log(sum(exp(z - max)))
    [BLOCK_N]: the log-normaliser is their sum, kept apart so that cross-entropy need not subtract two
    large numbers when the logits are large."""
    z = tl.where(c_ok[:, None], z, float("-inf"))
    top = tl.max(z, axis=0)
    e = tl.exp(z - top[None, :])
    total = tl.sum(e, axis=0)
    return e / total[None, :], top, tl.log(total)


@triton.jit
def _log1p_exp_neg_abs(u):
    """log(1 + exp(-|u|)), accurate where exp(-|u|) is below float32's epsilon (1 + it rounds to 1):
    log1p through log(w) * v / (w - 1) with w = 1 + v, exact where w == 1."""
    v = tl.exp(-tl.abs(u))
    w = 1.0 + v
    return tl.where(w == 1.0, v, tl.log(w) * (v / tl.where(w == 1.0, 1.0, w - 1.0)))  # no 0 / 0 where unused


@triton.jit
def _log_sigmoid(u):
    """log(sigmoid(u)) without overflow for large |u|."""
    return tl.minimum(u, 0.0) - _log1p_exp_neg_abs(u)


@triton.jit
def _focal_parts(z, t, gamma, alpha, HAS_ALPHA: tl.constexpr):
    """MONAI's sigmoid focal loss per element: (weight * modulating factor, binary cross-entropy)."""
    bce = tl.maximum(z, 0.0) - z * t + _log1p_exp_neg_abs(z)
    factor = tl.exp(gamma * _log_sigmoid(-z * (2.0 * t - 1.0)))
    if HAS_ALPHA:
        factor = factor * (t * alpha + (1.0 - t) * (1.0 - alpha))
    return factor, bce


@triton.jit
def _loss_forward_kernel(logits_ptr, target_ptr, mask_ptr, part_ptr, N, C,
                         s_b, s_c, s_n, t_b, t_c, t_n, gamma, alpha,
                         LABELS: tl.constexpr, HAS_MASK: tl.constexpr, SIGMOID: tl.constexpr,
                         TERM: tl.constexpr, HAS_ALPHA: tl.constexpr, TERM_FIRST_CLASS: tl.constexpr,
                         BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """Partial sums of program program_id(0) over its voxel tiles of sample program_id(1)."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    n_programs = tl.num_programs(0)
    # elementwise accumulators, reduced across the tile once at the end
    sum_pt = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    sum_p = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    sum_t = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    sum_term = tl.zeros((BLOCK_N,), dtype=tl.float32)
    count = tl.zeros((BLOCK_N,), dtype=tl.float32)
    bad_labels = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for start in range(pid * BLOCK_N, N, n_programs * BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        z, t, m, bad, c, c_ok = _load_tile(logits_ptr, target_ptr, mask_ptr, b, n, N, C, s_b, s_c, s_n,
                                           t_b, t_c, t_n, LABELS, HAS_MASK, BLOCK_C)
        if SIGMOID:
            p = tl.where(c_ok[:, None], tl.sigmoid(z), 0.0)
            if TERM == 1:
                _, top, log_total = _softmax(z, c_ok)
        else:
            p, top, log_total = _softmax(z, c_ok)
        pm = p * m[None, :]
        sum_pt += pm * t
        sum_p += pm
        sum_t += t * m[None, :]
        if TERM == 0:
            factor, bce = _focal_parts(z, t, gamma, alpha, HAS_ALPHA)
            keep = c_ok & (c >= TERM_FIRST_CLASS)
            per_voxel = tl.sum(tl.where(keep[:, None], factor * bce, 0.0), axis=0)
        else:
            per_voxel = tl.sum(t * (top[None, :] - z), axis=0) + log_total * tl.sum(t, axis=0)
        sum_term += per_voxel * m
        count += m
        bad_labels += bad
    row = part_ptr + (b * n_programs + pid).to(tl.int64) * (3 * C + 3)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    tl.store(row + c, tl.sum(sum_pt, axis=1), mask=c_ok)
    tl.store(row + C + c, tl.sum(sum_p, axis=1), mask=c_ok)
    tl.store(row + 2 * C + c, tl.sum(sum_t, axis=1), mask=c_ok)
    tl.store(row + 3 * C, tl.sum(sum_term, axis=0))
    tl.store(row + 3 * C + 1, tl.sum(count, axis=0))
    tl.store(row + 3 * C + 2, tl.sum(bad_labels, axis=0))


@triton.jit
def _loss_finalize_kernel(part_ptr, out_ptr, coef_ptr, B, P, C, smooth_nr, smooth_dr, lambda_dice, lambda_term,
                          term_channels, DICE_FIRST_CLASS: tl.constexpr, BATCH_DICE: tl.constexpr,
                          BLOCK_B: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """Loss value, term scale and Dice coefficients from the partial rows (B, P, 3C + 3); one program.

    Writes out = (loss, term_scale) and coef (B, 2, C) = (a, b) with dL_dice/dp = m * (a * t + b).
    Dice entries of samples (batch: of a batch) with no voxel in the mask are left out of the mean.
    The rows are added BLOCK_P at a time in a fixed order (deterministic), into [BLOCK_B, BLOCK_P(, BLOCK_C)]
    accumulators reduced once after the loop (Triton 3.6's thread-locality pass fails on a
    reduction inside the loop here).
    """
    b = tl.arange(0, BLOCK_B)
    c = tl.arange(0, BLOCK_C)
    b_ok = b < B
    ok = b_ok[:, None] & (c < C)[None, :]
    acc_pt = tl.zeros((BLOCK_B, BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_p = tl.zeros((BLOCK_B, BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_t = tl.zeros((BLOCK_B, BLOCK_P, BLOCK_C), dtype=tl.float32)
    acc_term = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    acc_count = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    acc_bad = tl.zeros((BLOCK_B, BLOCK_P), dtype=tl.float32)
    width = 3 * C + 3
    for p0 in range(0, P, BLOCK_P):
        p = p0 + tl.arange(0, BLOCK_P)
        row = part_ptr + (b[:, None] * P + p[None, :]) * width  # [BLOCK_B, BLOCK_P]
        row_ok = b_ok[:, None] & (p < P)[None, :]
        cells = row[:, :, None] + c[None, None, :]
        cells_ok = row_ok[:, :, None] & (c < C)[None, None, :]
        acc_pt += tl.load(cells, mask=cells_ok, other=0.0)
        acc_p += tl.load(cells + C, mask=cells_ok, other=0.0)
        acc_t += tl.load(cells + 2 * C, mask=cells_ok, other=0.0)
        acc_term += tl.load(row + 3 * C, mask=row_ok, other=0.0)
        acc_count += tl.load(row + 3 * C + 1, mask=row_ok, other=0.0)
        acc_bad += tl.load(row + 3 * C + 2, mask=row_ok, other=0.0)
    sum_pt = tl.sum(acc_pt, axis=1)
    sum_p = tl.sum(acc_p, axis=1)
    sum_t = tl.sum(acc_t, axis=1)
    term = tl.sum(acc_term, axis=1)
    count = tl.sum(acc_count, axis=1)
    bad = tl.sum(acc_bad, axis=1)
    total = tl.sum(count, axis=0)
    any_inside = (count * 0.0 + total) > 0  # [BLOCK_B]; the whole batch has a voxel in the mask
    class_ok = (c >= DICE_FIRST_CLASS) & (c < C)
    if BATCH_DICE:
        intersection = tl.sum(sum_pt, axis=0)[None, :]
        denominator = (tl.sum(sum_p, axis=0) + tl.sum(sum_t, axis=0))[None, :] + smooth_dr
        valid = class_ok[None, :] & (any_inside & (b == 0))[:, None]  # one entry per class
    else:
        intersection = sum_pt
        denominator = sum_p + sum_t + smooth_dr
        valid = class_ok[None, :] & ok & (count > 0)[:, None]
    entries = tl.sum(tl.sum(valid.to(tl.float32), axis=1), axis=0)
    numerator = 2.0 * intersection + smooth_nr
    dice = tl.sum(tl.sum(tl.where(valid, 1.0 - numerator / denominator, 0.0), axis=1), axis=0)
    dice = dice / tl.maximum(entries, 1.0)
    weight = lambda_dice / tl.maximum(entries, 1.0)
    if BATCH_DICE:
        valid = class_ok[None, :] & ok & any_inside[:, None]  # every sample gets its class's coefficients
    coef_a = tl.where(valid, -2.0 * weight / denominator, 0.0)
    coef_b = tl.where(valid, weight * numerator / (denominator * denominator), 0.0)
    coef = coef_ptr + b[:, None] * 2 * C + c[None, :]
    tl.store(coef, coef_a, mask=ok)
    tl.store(coef + C, coef_b, mask=ok)
    term_scale = tl.where(total > 0, lambda_term / (tl.maximum(total, 1.0) * term_channels), 0.0)
    loss = lambda_dice * dice + tl.sum(term, axis=0) * term_scale
    # labels outside [0, C) make the loss and, through the term scale, every gradient NaN, so that
    # gradient checks (GradScaler, clipping with error_if_nonfinite) stop the step too
    any_bad = tl.sum(bad, axis=0) > 0
    loss = tl.where(any_bad, float("nan"), loss)
    term_scale = tl.where(any_bad, float("nan"), term_scale)
    tl.store(out_ptr, loss)
    tl.store(out_ptr + 1, term_scale)


@triton.jit
def _loss_backward_kernel(logits_ptr, target_ptr, mask_ptr, coef_ptr, out_ptr, grad_out_ptr, grad_ptr, N, C,
                          s_b, s_c, s_n, t_b, t_c, t_n, gamma, alpha,
                          LABELS: tl.constexpr, HAS_MASK: tl.constexpr, SIGMOID: tl.constexpr,
                          TERM: tl.constexpr, HAS_ALPHA: tl.constexpr, TERM_FIRST_CLASS: tl.constexpr,
                          BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """dL/dlogits for the voxel tiles of program program_id(0) in sample program_id(1), in the logits' layout."""
    pid = tl.program_id(0)
    b = tl.program_id(1)
    n_programs = tl.num_programs(0)
    c = tl.arange(0, BLOCK_C)
    c_ok = c < C
    upstream = tl.load(grad_out_ptr).to(tl.float32)
    term_scale = tl.load(out_ptr + 1) * upstream
    coef_a = tl.load(coef_ptr + b * 2 * C + c, mask=c_ok, other=0.0) * upstream
    coef_b = tl.load(coef_ptr + b * 2 * C + C + c, mask=c_ok, other=0.0) * upstream
    for start in range(pid * BLOCK_N, N, n_programs * BLOCK_N):
        n = start + tl.arange(0, BLOCK_N)
        z, t, m, bad, c, c_ok = _load_tile(logits_ptr, target_ptr, mask_ptr, b, n, N, C, s_b, s_c, s_n,
                                           t_b, t_c, t_n, LABELS, HAS_MASK, BLOCK_C)
        grad_p = m[None, :] * (coef_a[:, None] * t + coef_b[:, None])
        if SIGMOID or TERM == 0:
            sig = tl.where(c_ok[:, None], tl.sigmoid(z), 0.0)
            anti = tl.where(c_ok[:, None], tl.sigmoid(-z), 0.0)  # 1 - sig, which rounds to 0 for confident logits
        if SIGMOID:
            grad = grad_p * sig * anti
            if TERM == 1:
                softmax, _, _ = _softmax(z, c_ok)
        else:
            softmax, _, _ = _softmax(z, c_ok)
            grad = softmax * (grad_p - tl.sum(softmax * grad_p, axis=0)[None, :])
        if TERM == 0:
            factor, bce = _focal_parts(z, t, gamma, alpha, HAS_ALPHA)
            sign = 2.0 * t - 1.0
            # sig - t as (1 - t) sig - t (1 - sig): exact where sig rounds to 1
            focal = factor * ((1.0 - t) * sig - t * anti - gamma * sign * tl.sigmoid(z * sign) * bce)
            keep = c_ok & (c >= TERM_FIRST_CLASS)
            grad += tl.where(keep[:, None], focal, 0.0) * (term_scale * m)[None, :]
        else:
            grad += (softmax * tl.sum(t, axis=0)[None, :] - t) * (term_scale * m)[None, :]
        offs = b.to(tl.int64) * s_b + c[:, None] * s_c + n[None, :] * s_n
        tl.store(grad_ptr + offs, grad.to(grad_ptr.dtype.element_ty), mask=c_ok[:, None] & (n < N)[None, :])


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LossSpec:
    """Every option of the fused loss: which terms, activations and reductions."""

    term: int  # TERM_FOCAL or TERM_CE
    sigmoid: bool  # Dice probabilities from a sigmoid per channel instead of a softmax
    dice_first_class: int  # 1 leaves the background channel out of the Dice mean
    term_first_class: int  # 1 leaves it out of the focal term (CE always uses every channel)
    batch_dice: bool
    gamma: float
    alpha: float | None
    smooth_nr: float
    smooth_dr: float
    lambda_dice: float
    lambda_term: float


def _voxel_stride(t: torch.Tensor) -> int | None:
    """The stride between consecutive (z, y, x)-flattened voxels of ``t``, or None when it is not one number.

    ``is_contiguous()`` ignores the strides of size-1 axes, so a "contiguous" tensor with W = 1
    may still step through its voxels by ``stride(3)``: read the strides of the axes longer than 1.
    """
    step, span = None, 1
    for size, stride in zip(reversed(t.shape[2:]), reversed(t.stride()[2:])):
        if size > 1:
            step = stride if step is None else step
            if stride != step * span:
                return None
        span *= size
    return 1 if step is None else step


def _spatial_view(t: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """(B, C, D, H, W) and strides (batch, channel, voxel) of its flattened voxels, copying only odd layouts."""
    dense = t.is_contiguous() or t.is_contiguous(memory_format=torch.channels_last_3d)
    if not dense or _voxel_stride(t) is None:
        t = t.contiguous()
    return t, (t.stride(0), t.stride(1), _voxel_stride(t))


def _block_sizes(channels: int) -> tuple[int, int]:
    """[BLOCK_C, BLOCK_N] tiles of about 2048 elements: 8 per thread with 8 warps (no spills, checked with ptxas).

    The interpreter uses 32-voxel tiles so that small test volumes span several tiles and programs
    (three per sample, see ``_programs_per_sample``).
    """
    block_c = next_power_of_2(channels)
    return block_c, 32 if interpreting() else max(2048 // block_c, 64)


def _programs_per_sample(batch: int, voxels: int, block_n: int, device: torch.device) -> int:
    target = 3 * batch if interpreting() else 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(cdiv(voxels, block_n), cdiv(target, batch)))


def _launch_args(logits, target, mask):
    """Common kernel arguments: flattened tensors, strides and the constexpr flags of the inputs."""
    logits, (s_b, s_c, s_n) = _spatial_view(logits)
    batch, channels = logits.shape[:2]
    voxels = logits[0, 0].numel()
    if channels * voxels > MAX_SAMPLE_ELEMENTS:
        raise ValueError(f"loss: one sample has {channels} x {voxels} logits, more than the kernels' "
                         f"int32 limit {MAX_SAMPLE_ELEMENTS}")
    labels = target.ndim == 4
    if labels:
        target = target.reshape(batch, voxels)
        target = target.view(torch.uint8) if target.dtype == torch.bool else target
        t_strides = (target.stride(0), 0, target.stride(1))
    else:
        target, t_strides = _spatial_view(target.view(torch.uint8) if target.dtype == torch.bool else target)
    if mask is not None:
        mask = mask.reshape(batch, voxels)
        mask = (mask if mask.dtype == torch.bool else mask != 0).contiguous().view(torch.uint8)
    args = (logits, target, logits if mask is None else mask)
    return args, (s_b, s_c, s_n, *t_strides), dict(LABELS=labels, HAS_MASK=mask is not None), voxels


def loss_partials(logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                  spec: LossSpec) -> torch.Tensor:
    """Per-program partial sums (B, P, 3C + 3) of the first forward pass (layout in ``_loss_forward_kernel``).

    Args:
        logits: (B, C, D, H, W) fp32/fp16/bf16, contiguous or channels-last.
        target: (B, D, H, W) integer labels, or (B, C, D, H, W) one-hot / soft targets.
        mask: (B, D, H, W) region mask (nonzero = inside) or None.
    """
    (logits, target, mask_arg), strides, flags, voxels = _launch_args(logits, target, mask)
    batch, channels = logits.shape[:2]
    block_c, block_n = _block_sizes(channels)
    programs = _programs_per_sample(batch, voxels, block_n, logits.device)
    part = torch.empty((batch, programs, 3 * channels + 3), dtype=torch.float32, device=logits.device)
    options = dict(SIGMOID=spec.sigmoid, TERM=spec.term, HAS_ALPHA=spec.alpha is not None,
                   TERM_FIRST_CLASS=spec.term_first_class, BLOCK_C=block_c, BLOCK_N=block_n, **flags)
    alpha = 0.0 if spec.alpha is None else float(spec.alpha)
    _loss_forward_kernel[(programs, batch)](logits, target, mask_arg, part, voxels, channels, *strides,
                                            float(spec.gamma), alpha, num_warps=8, **options)
    return part


def loss_finalize(part: torch.Tensor, spec: LossSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss from partial sums (B, P, 3C + 3) of any number of programs, and what backward needs.

    Returns: out = (loss, term scale) and coef (B, 2, C), fp32 (see ``_loss_finalize_kernel``).
    """
    batch, programs, width = part.shape
    channels = (width - 3) // 3
    block_c = next_power_of_2(channels)
    out = torch.empty(2, dtype=torch.float32, device=part.device)
    coef = torch.empty((batch, 2, channels), dtype=torch.float32, device=part.device)
    term_channels = channels - spec.term_first_class if spec.term == TERM_FOCAL else 1
    block_b = next_power_of_2(batch)
    # the interpreter adds two rows at a time, so that small tests run the loop more than once
    block_p = 2 if interpreting() else min(next_power_of_2(programs), max(4096 // (block_b * block_c), 1))
    _loss_finalize_kernel[(1,)](part.contiguous(), out, coef, batch, programs, channels, float(spec.smooth_nr),
                                float(spec.smooth_dr), float(spec.lambda_dice), float(spec.lambda_term),
                                term_channels, DICE_FIRST_CLASS=spec.dice_first_class, BATCH_DICE=spec.batch_dice,
                                BLOCK_B=block_b, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=4)
    return out, coef


def loss_backward(grad_loss: torch.Tensor, logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None,
                  out: torch.Tensor, coef: torch.Tensor, spec: LossSpec) -> torch.Tensor:
    """dL/dlogits (logits' dtype and layout) for the upstream gradient ``grad_loss`` (0-d tensor on the device)."""
    (logits, target, mask_arg), strides, flags, voxels = _launch_args(logits, target, mask)
    batch, channels = logits.shape[:2]
    block_c, block_n = _block_sizes(channels)
    programs = _programs_per_sample(batch, voxels, block_n, logits.device)
    grad = torch.empty_strided(logits.shape, logits.stride(), dtype=logits.dtype, device=logits.device)
    alpha = 0.0 if spec.alpha is None else float(spec.alpha)
    _loss_backward_kernel[(programs, batch)](logits, target, mask_arg, coef, out,
                                             grad_loss.to(device=logits.device, dtype=torch.float32), grad,
                                             voxels, channels, *strides, float(spec.gamma), alpha,
                                             SIGMOID=spec.sigmoid, TERM=spec.term, HAS_ALPHA=spec.alpha is not None,
                                             TERM_FIRST_CLASS=spec.term_first_class, BLOCK_C=block_c,
                                             BLOCK_N=block_n, num_warps=8, **flags)
    return grad
