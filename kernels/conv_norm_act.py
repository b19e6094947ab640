"""Fused grouped conv3d + InstanceNorm + LeakyReLU: Triton kernels and their launchers.

Every activation is channels-last inside: (B, D, H, W, C) contiguous, spatial axes (z, y, x).
The weight keeps PyTorch's (Cout, Cin / groups, kz, ky, kx) layout. Kernel sizes are 1 or 3 and
strides 1 or 2 per axis; padding is kernel // 2.

Forward (three or four launches): ``_conv_kernel`` computes the convolution tile by tile (a tile is
BLOCK_V output voxels x BLOCK_N output channels, one tensor-core dot per tap) and, in its
epilogue, per-(sample, channel) partial moments (mean and centred sum of squares over
STAT_ROWS voxels, fp32); ``_combine_partials_kernel`` (one or two launches) merges them exactly;
``_normalize_kernel`` applies normalise + affine (+ residual) + LeakyReLU in place.

Backward (nothing but x, the weight and the (mean, rstd) pairs kept from the forward; five or
six launches per piece, a piece being some whole conv groups of some samples, see
``backward_pieces``): ``_conv_kernel`` recomputes the piece's pre-norm output and, in its
epilogue, the partial sums of dL/dz and dL/dz * y_hat; ``_combine_partials_kernel`` sums them;
``_normalize_backward_kernel`` turns the pre-norm buffer in place into dL/d(conv output)
(and writes the residual gradient); ``_conv_kernel`` in transposed mode gives the input
gradient and ``_weight_grad_kernel`` per-split weight-gradient partials. The kernels take
voxel-row strides, so a piece reads and writes channel slices of the full tensors in place.

Grouped convolutions with few channels per group (4-16) are packed block-diagonally: one
program computes BLOCK_N >= 16 output channels spanning several groups against the input
channels of those groups, so every ``tl.dot`` has M, N, K >= 16 (tensor cores) and the
weights of other groups are masked to zero.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from c2w_fast.kernels import cdiv, interpreting, next_power_of_2

STAT_ROWS_GPU = 64  # voxels per partial-statistics row on a GPU; every BLOCK_V is a multiple
MAX_SAMPLE_ELEMENTS = 2**31 - 1  # offsets inside one sample are int32
MAX_CHANNEL_BLOCK = 32
BACKWARD_BUFFER_SHARE = 4  # the backward's transient buffer: at most 1/4 of the block output (groups, samples allowing)


# --------------------------------------------------------------------------------------------
# Triton device helpers
# --------------------------------------------------------------------------------------------
@triton.jit
def _source_index(c, d, S: tl.constexpr, P: tl.constexpr, n_src, TRANSPOSED: tl.constexpr):
    """Index along one axis of the gathered tensor for destination index ``c`` and tap ``d``, and whether it exists.

    Forward: the input voxel read by output voxel ``c`` is ``c * S + d - P``. Transposed
    (input gradient): the output voxel that read input voxel ``c`` through tap ``d`` is
    ``(c + P - d) / S`` when that division is exact.
    """
    if TRANSPOSED:
        num = c + P - d
        idx = num // S
        ok = (num >= 0) & (idx < n_src)
        if S > 1:
            ok = ok & (num % S == 0)
    else:
        idx = c * S + d - P
        ok = (idx >= 0) & (idx < n_src)
    return idx, ok


@triton.jit
def _weight_offsets(k, n, CG_SRC, CG_DST, KVOL: tl.constexpr, TRANSPOSED: tl.constexpr):
    """Offsets (tap 0) into the (Cout, Cin/groups, kz, ky, kx) weight for a [k, n] tile, and which exist.

    ``k`` runs over the gathered channels and ``n`` over the computed ones: (input, output)
    channels in the forward, (output, input) in the transposed pass. Pairs from different
    groups do not exist (block-diagonal packing).
    """
    if TRANSPOSED:
        co = k[:, None]
        ci = n[None, :]
        cg_out = CG_SRC
        cg_in = CG_DST
    else:
        co = n[None, :]
        ci = k[:, None]
        cg_out = CG_DST
        cg_in = CG_SRC
    group = co // cg_out
    same_group = (ci // cg_in) == group
    return (co * cg_in + ci - group * cg_in) * KVOL, same_group


@triton.jit
def _activation_grad(y_hat, g, res, gamma, beta, negative_slope,
                     HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr):
    """dL/dz from dL/dy = ``g`` where z = gamma * y_hat + beta (+ res) and y = LeakyReLU(z)."""
    if ACTIVATION:
        z = y_hat * gamma[None, :] + beta[None, :]
        if HAS_RESIDUAL:
            z += res
        return tl.where(z > 0, g, g * negative_slope)
    return g


@triton.jit
def _row_sums(values, BLOCK_V: tl.constexpr, BLOCK_N: tl.constexpr, STAT_ROWS: tl.constexpr):
    """Sums of [BLOCK_V, BLOCK_N] ``values`` over consecutive groups of STAT_ROWS voxels: [BLOCK_V // STAT_ROWS, BLOCK_N]."""
    return tl.sum(tl.reshape(values, (BLOCK_V // STAT_ROWS, STAT_ROWS, BLOCK_N)), axis=1)


@triton.jit
def _store_partials(part_ptr, b, pid_v, n_vox, C, n, n_ok, first, second,
                    BLOCK_V: tl.constexpr, STAT_ROWS: tl.constexpr):
    """Write the two [BLOCK_V // STAT_ROWS, BLOCK_N] partial rows of this tile into part (B, rows, 2, C)."""
    R: tl.constexpr = BLOCK_V // STAT_ROWS
    n_rows = tl.cdiv(n_vox, STAT_ROWS)
    row = pid_v * R + tl.arange(0, R)
    offs = (b.to(tl.int64) * n_rows + row[:, None]) * 2 * C + n[None, :]
    ok = (row[:, None] < n_rows) & n_ok[None, :]
    tl.store(part_ptr + offs, first, mask=ok)
    tl.store(part_ptr + offs + C, second, mask=ok)


@triton.jit
def _tile_offsets(b, v, c, n_vox, row_stride):
    """Offsets of the tile's elements in a (B, V, channels) tensor whose voxel rows are ``row_stride`` apart."""
    return b.to(tl.int64) * n_vox * row_stride + v[:, None] * row_stride + c[None, :]


# --------------------------------------------------------------------------------------------
# Kernels
# --------------------------------------------------------------------------------------------
EPILOGUE_STORE = 0  # write the result (input gradient)
EPILOGUE_MOMENTS = 1  # write the pre-norm output and partial (mean, centred sum of squares)
EPILOGUE_GRAD_SUMS = 2  # write the pre-norm output and partial (sum dz, sum dz * y_hat)


@triton.jit
def _conv_kernel(src_ptr, w_ptr, dst_ptr, part_ptr,
                 grad_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr,
                 SRC_D, SRC_H, SRC_W, DST_D, DST_H, DST_W,
                 SRC_C, DST_C, CG_SRC, CG_DST, SRC_STRIDE, DST_STRIDE, AUX_STRIDE, TABLE_C, negative_slope,
                 KZ: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
                 SZ: tl.constexpr, SY: tl.constexpr, SX: tl.constexpr,
                 TRANSPOSED: tl.constexpr, EPILOGUE: tl.constexpr,
                 HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, EVEN_K: tl.constexpr,
                 DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr, STAT_ROWS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """One [BLOCK_V voxels, BLOCK_N channels] tile of a grouped 3D convolution of sample program_id(2).

    Activations are (B, V, channels) with a voxel-row stride of their own (SRC_STRIDE,
    DST_STRIDE; AUX_STRIDE for grad and residual), so that the backward can run on a slice of
    the channels; ``stats`` is a (B, 2, TABLE_C) table read from channel 0 of its pointer.
    """
    pid_v = tl.program_id(0)
    pid_n = tl.program_id(1)
    b = tl.program_id(2)
    n_vox = DST_D * DST_H * DST_W
    v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = v < n_vox
    cz = v // (DST_H * DST_W)
    cy = (v // DST_W) % DST_H
    cx = v % DST_W
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < DST_C
    # gathered channels of the groups this channel block touches
    n_last = tl.minimum(pid_n * BLOCK_N + BLOCK_N, DST_C) - 1
    k_lo = (pid_n * BLOCK_N // CG_DST) * CG_SRC
    k_hi = (n_last // CG_DST + 1) * CG_SRC
    src = src_ptr + b.to(tl.int64) * SRC_D * SRC_H * SRC_W * SRC_STRIDE

    acc = tl.zeros((BLOCK_V, BLOCK_N), dtype=tl.float32)
    for k_start in range(k_lo, k_hi, BLOCK_K):
        k_base = k_start
        if EVEN_K:
            k_base = tl.multiple_of(k_start, BLOCK_K)
        k = k_base + tl.arange(0, BLOCK_K)
        k_ok = k < k_hi
        w_off, w_ok = _weight_offsets(k, n, CG_SRC, CG_DST, KZ * KY * KX, TRANSPOSED)
        w_ok = w_ok & k_ok[:, None] & n_ok[None, :]
        for tap in range(KZ * KY * KX):
            # scalar tap decomposition; a runtime loop keeps one tap's tiles in registers at a time
            dz = tap // (KY * KX)
            dy = (tap // KX) % KY
            dx = tap % KX
            sz, ok_z = _source_index(cz, dz, SZ, KZ // 2, SRC_D, TRANSPOSED)
            sy, ok_y = _source_index(cy, dy, SY, KY // 2, SRC_H, TRANSPOSED)
            sx, ok_x = _source_index(cx, dx, SX, KX // 2, SRC_W, TRANSPOSED)
            row = ((sz * SRC_H + sy) * SRC_W + sx) * SRC_STRIDE
            row_ok = v_ok & ok_z & ok_y & ok_x
            if EVEN_K:
                a_ok = row_ok[:, None]
            else:
                a_ok = row_ok[:, None] & k_ok[None, :]
            a = tl.load(src + row[:, None] + k[None, :], mask=a_ok, other=0.0)
            w = tl.load(w_ptr + w_off + tap, mask=w_ok, other=0.0)
            acc = tl.dot(a.to(DOT_DTYPE), w.to(DOT_DTYPE), acc, input_precision=DOT_PRECISION)

    tile_ok = v_ok[:, None] & n_ok[None, :]
    dst_offs = _tile_offsets(b, v, n, n_vox, DST_STRIDE)
    stored = acc.to(dst_ptr.dtype.element_ty)
    tl.store(dst_ptr + dst_offs, stored, mask=tile_ok)
    # The statistics see exactly the stored (rounded) values the other passes read back, so the
    # forward and every backward pass agree on each voxel's normalised value and LeakyReLU side.
    acc = stored.to(tl.float32)
    if EPILOGUE == 1:  # partial moments of the conv output for the instance norm
        R: tl.constexpr = BLOCK_V // STAT_ROWS
        row_start = pid_v * BLOCK_V + tl.arange(0, R) * STAT_ROWS
        count = tl.maximum(tl.minimum(n_vox - row_start, STAT_ROWS), 1).to(tl.float32)
        mean = _row_sums(tl.where(tile_ok, acc, 0.0), BLOCK_V, BLOCK_N, STAT_ROWS) / count[:, None]
        mean_per_voxel = tl.reshape(tl.broadcast_to(mean[:, None, :], (R, STAT_ROWS, BLOCK_N)), (BLOCK_V, BLOCK_N))
        dev = tl.where(tile_ok, acc - mean_per_voxel, 0.0)
        m2 = _row_sums(dev * dev, BLOCK_V, BLOCK_N, STAT_ROWS)
        _store_partials(part_ptr, b, pid_v, n_vox, DST_C, n, n_ok, mean, m2, BLOCK_V, STAT_ROWS)
    if EPILOGUE == 2:  # partial sums of dL/dz and dL/dz * y_hat for the norm backward
        stats = stats_ptr + b * 2 * TABLE_C + n
        mean = tl.load(stats, mask=n_ok, other=0.0)
        rstd = tl.load(stats + TABLE_C, mask=n_ok, other=0.0)
        gamma = tl.load(gamma_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        beta = tl.load(beta_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
        y_hat = (acc - mean[None, :]) * rstd[None, :]
        aux_offs = _tile_offsets(b, v, n, n_vox, AUX_STRIDE)
        g = tl.load(grad_ptr + aux_offs, mask=tile_ok, other=0.0).to(tl.float32)
        res = 0.0
        if HAS_RESIDUAL:
            res = tl.load(res_ptr + aux_offs, mask=tile_ok, other=0.0).to(tl.float32)
        dz = tl.where(tile_ok, _activation_grad(y_hat, g, res, gamma, beta, negative_slope,
                                                HAS_RESIDUAL, ACTIVATION), 0.0)
        _store_partials(part_ptr, b, pid_v, n_vox, DST_C, n, n_ok,
                        _row_sums(dz, BLOCK_V, BLOCK_N, STAT_ROWS),
                        _row_sums(dz * y_hat, BLOCK_V, BLOCK_N, STAT_ROWS), BLOCK_V, STAT_ROWS)


@triton.jit
def _combine_partials_kernel(part_ptr, out_ptr, n_vox, n_rows, row_voxels, rows_per_program, C, TABLE_C, eps,
                             MOMENTS: tl.constexpr, FINAL: tl.constexpr,
                             BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """Merge rows [g * rows_per_program, ...) of sample program_id(2) of part (B, n_rows, 2, C), g = program_id(0).

    Row r covers min(row_voxels, n_vox - r * row_voxels) voxels. MOMENTS: rows hold (mean,
    centred sum of squares) and merge exactly (pooled mean, then sum of M2 + n (mean_r - mean)^2);
    otherwise rows hold two plain sums. Not FINAL: writes the merged row g of out (B, groups, 2, C),
    so a second launch merges the groups. FINAL (one group): writes channels [0, C) of the table
    out (B, 2, TABLE_C) = (mean, rstd) with InstanceNorm's biased variance, or the two totals.
    """
    g = tl.program_id(0)
    b = tl.program_id(2)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    r_lo = g * rows_per_program
    r_hi = tl.minimum(r_lo + rows_per_program, n_rows)
    base = part_ptr + b.to(tl.int64) * n_rows * 2 * C
    first = tl.zeros((BLOCK_C,), dtype=tl.float32)
    second = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        ok = (r[:, None] < r_hi) & c_ok[None, :]
        offs = r[:, None] * 2 * C + c[None, :]
        a = tl.load(base + offs, mask=ok, other=0.0)
        if MOMENTS:
            count = tl.minimum(n_vox - r * row_voxels, row_voxels).to(tl.float32)
            a = a * count[:, None]
        else:
            second += tl.sum(tl.load(base + offs + C, mask=ok, other=0.0), axis=0)
        first += tl.sum(a, axis=0)
    group_voxels = (tl.minimum(n_vox, r_hi * row_voxels) - r_lo * row_voxels).to(tl.float32)
    if MOMENTS:
        mean = first / group_voxels
        for r0 in range(r_lo, r_hi, BLOCK_R):
            r = r0 + tl.arange(0, BLOCK_R)
            ok = (r[:, None] < r_hi) & c_ok[None, :]
            offs = r[:, None] * 2 * C + c[None, :]
            count = tl.minimum(n_vox - r * row_voxels, row_voxels).to(tl.float32)
            dev = tl.load(base + offs, mask=ok, other=0.0) - mean[None, :]
            m2 = tl.load(base + offs + C, mask=ok, other=0.0)
            second += tl.sum(tl.where(ok, m2 + count[:, None] * dev * dev, 0.0), axis=0)
        first = mean
        if FINAL:
            second = 1.0 / tl.sqrt(second / group_voxels + eps)
    if FINAL:
        out = out_ptr + b * 2 * TABLE_C + c
        tl.store(out, first, mask=c_ok)
        tl.store(out + TABLE_C, second, mask=c_ok)
    else:
        out = out_ptr + (b.to(tl.int64) * tl.num_programs(0) + g) * 2 * C + c
        tl.store(out, first, mask=c_ok)
        tl.store(out + C, second, mask=c_ok)


@triton.jit
def _pointwise_tile(n_vox, C, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's [BLOCK_V, BLOCK_C] tile of (B, V, C) tensors: sample, voxels, channels and masks."""
    b = tl.program_id(2)
    v = tl.program_id(0) * BLOCK_V + tl.arange(0, BLOCK_V)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    ok = (v[:, None] < n_vox) & c_ok[None, :]
    return b, v, c, c_ok, ok


@triton.jit
def _normalize_kernel(y_ptr, res_ptr, stats_ptr, gamma_ptr, beta_ptr, n_vox, C, negative_slope,
                      HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr,
                      BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """In place on the (B, V, C) pre-norm output: y = LeakyReLU((y - mean) * rstd * gamma + beta [+ res])."""
    b, v, c, c_ok, ok = _pointwise_tile(n_vox, C, BLOCK_V, BLOCK_C)
    offs = _tile_offsets(b, v, c, n_vox, C)
    stats = stats_ptr + b * 2 * C + c
    mean = tl.load(stats, mask=c_ok, other=0.0)
    scale = tl.load(stats + C, mask=c_ok, other=0.0) * tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    # centred before scaling: y * scale + (beta - mean * scale) cancels when |mean| >> std
    z = (tl.load(y_ptr + offs, mask=ok, other=0.0).to(tl.float32) - mean[None, :]) * scale[None, :] + beta[None, :]
    if HAS_RESIDUAL:
        z += tl.load(res_ptr + offs, mask=ok, other=0.0).to(tl.float32)
    if ACTIVATION:
        z = tl.where(z > 0, z, z * negative_slope)
    tl.store(y_ptr + offs, z.to(y_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _normalize_backward_kernel(buf_ptr, grad_ptr, res_ptr, dres_ptr, stats_ptr, sums_ptr, gamma_ptr, beta_ptr,
                               n_vox, C, AUX_STRIDE, TABLE_C, negative_slope,
                               HAS_RESIDUAL: tl.constexpr, ACTIVATION: tl.constexpr, WRITE_DRES: tl.constexpr,
                               BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    """In place on the (B, V, C) pre-norm output: dL/dy_raw = gamma * rstd * (dz - mean(dz) - y_hat * mean(dz * y_hat)).

    Also writes dL/dz (the residual's gradient) to ``dres_ptr`` when WRITE_DRES. grad, residual
    and dres have voxel rows AUX_STRIDE apart; stats and sums are (B, 2, TABLE_C) tables.
    """
    b, v, c, c_ok, ok = _pointwise_tile(n_vox, C, BLOCK_V, BLOCK_C)
    offs = _tile_offsets(b, v, c, n_vox, C)
    aux_offs = _tile_offsets(b, v, c, n_vox, AUX_STRIDE)
    stats = stats_ptr + b * 2 * TABLE_C + c
    mean = tl.load(stats, mask=c_ok, other=0.0)
    rstd = tl.load(stats + TABLE_C, mask=c_ok, other=0.0)
    sums = sums_ptr + b * 2 * TABLE_C + c
    mean_dz = tl.load(sums, mask=c_ok, other=0.0) / n_vox
    mean_dz_y = tl.load(sums + TABLE_C, mask=c_ok, other=0.0) / n_vox
    gamma = tl.load(gamma_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + c, mask=c_ok, other=0.0).to(tl.float32)
    y_hat = (tl.load(buf_ptr + offs, mask=ok, other=0.0).to(tl.float32) - mean[None, :]) * rstd[None, :]
    g = tl.load(grad_ptr + aux_offs, mask=ok, other=0.0).to(tl.float32)
    res = 0.0
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + aux_offs, mask=ok, other=0.0).to(tl.float32)
    dz = _activation_grad(y_hat, g, res, gamma, beta, negative_slope, HAS_RESIDUAL, ACTIVATION)
    if WRITE_DRES:
        tl.store(dres_ptr + aux_offs, dz.to(dres_ptr.dtype.element_ty), mask=ok)
    grad_raw = (gamma * rstd)[None, :] * (dz - mean_dz[None, :] - y_hat * mean_dz_y[None, :])
    tl.store(buf_ptr + offs, grad_raw.to(buf_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _weight_grad_kernel(x_ptr, g_ptr, part_ptr, n_samples,
                        D, H, W, OD, OH, OW, C_IN, C_OUT, CG_IN, CG_OUT, X_STRIDE, K_CHUNKS,
                        KZ: tl.constexpr, KY: tl.constexpr, KX: tl.constexpr,
                        SZ: tl.constexpr, SY: tl.constexpr, SX: tl.constexpr,
                        EVEN_K: tl.constexpr, DOT_DTYPE: tl.constexpr, DOT_PRECISION: tl.constexpr,
                        BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr):
    """Partial weight gradient of split program_id(2) for taps (dz, dy) = divmod(program_id(0), KY), all dx.

    dW[co, ci, tap] = sum over (b, v) of G[b, v, co] * x[b, v * S + tap - P, ci], over the voxel
    tiles j = split, split + n_splits, ... of all samples; written to part (splits, Cout, Cin/groups, kz, ky, kx).
    G is (B, V', C_OUT) contiguous; x's voxel rows are X_STRIDE apart (a channel slice in the backward).
    """
    dz = tl.program_id(0) // KY
    dy = tl.program_id(0) % KY
    pid_n = tl.program_id(1) // K_CHUNKS
    pid_k = tl.program_id(1) % K_CHUNKS
    split = tl.program_id(2)
    n_splits = tl.num_programs(2)
    n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    n_ok = n < C_OUT
    n_last = tl.minimum(pid_n * BLOCK_N + BLOCK_N, C_OUT) - 1
    k_lo = (pid_n * BLOCK_N // CG_OUT) * CG_IN
    k_hi = (n_last // CG_OUT + 1) * CG_IN
    k_start = k_lo + pid_k * BLOCK_K
    if k_start >= k_hi:
        return  # a block narrower than the widest has fewer chunks; EVEN_K's loads would read past its window
    if EVEN_K:
        k_start = tl.multiple_of(k_start, BLOCK_K)
    k = k_start + tl.arange(0, BLOCK_K)
    k_ok = k < k_hi
    n_vox = OD * OH * OW
    n_tiles = tl.cdiv(n_vox, BLOCK_V)
    acc0 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    acc2 = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for j in range(split, n_samples * n_tiles, n_splits):
        b = j // n_tiles
        v = (j % n_tiles) * BLOCK_V + tl.arange(0, BLOCK_V)
        v_ok = v < n_vox
        oz = v // (OH * OW)
        oy = (v // OW) % OH
        ox = v % OW
        g = tl.load(g_ptr + b.to(tl.int64) * n_vox * C_OUT + v[:, None] * C_OUT + n[None, :],
                    mask=v_ok[:, None] & n_ok[None, :], other=0.0).to(DOT_DTYPE)
        iz, ok_z = _source_index(oz, dz, SZ, KZ // 2, D, False)
        iy, ok_y = _source_index(oy, dy, SY, KY // 2, H, False)
        x = x_ptr + b.to(tl.int64) * D * H * W * X_STRIDE
        for dx in tl.static_range(KX):
            ix, ok_x = _source_index(ox, dx, SX, KX // 2, W, False)
            row_ok = v_ok & ok_z & ok_y & ok_x
            if EVEN_K:
                a_ok = row_ok[:, None]
            else:
                a_ok = row_ok[:, None] & k_ok[None, :]
            a = tl.load(x + ((iz * H + iy) * W + ix)[:, None] * X_STRIDE + k[None, :], mask=a_ok, other=0.0)
            a = tl.trans(a.to(DOT_DTYPE))
            if dx == 0:
                acc0 = tl.dot(a, g, acc0, input_precision=DOT_PRECISION)
            elif dx == 1:
                acc1 = tl.dot(a, g, acc1, input_precision=DOT_PRECISION)
            else:
                acc2 = tl.dot(a, g, acc2, input_precision=DOT_PRECISION)
    kvol: tl.constexpr = KZ * KY * KX
    w_off, w_ok = _weight_offsets(k, n, CG_IN, CG_OUT, kvol, False)
    w_ok = w_ok & k_ok[:, None] & n_ok[None, :]
    part = part_ptr + split.to(tl.int64) * C_OUT * CG_IN * kvol + w_off + (dz * KY + dy) * KX
    tl.store(part, acc0, mask=w_ok)
    if KX > 1:
        tl.store(part + 1, acc1, mask=w_ok)
        tl.store(part + 2, acc2, mask=w_ok)


# --------------------------------------------------------------------------------------------
# Launch configuration
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ChannelTiling:
    """How the computed channels are blocked and which gathered channels each block reads.

    ``block_n`` computed channels per program; ``block_k`` gathered channels per dot;
    ``k_chunks`` dots per tap for the widest block; ``even_k`` when every block's gathered
    window starts and ends on a multiple of ``block_k`` (no channel masks, vector loads).
    """

    block_n: int
    block_k: int
    k_chunks: int
    even_k: bool


@functools.cache
def channel_tiling(c_dst: int, cg_dst: int, cg_src: int) -> ChannelTiling:
    """Tiling of ``c_dst`` computed channels in groups of ``cg_dst``, each reading ``cg_src`` gathered channels.

    Blocks are 16 or 32 channels: 16 is the smallest tensor-core dot, and at 64 the weight-gradient
    accumulators and the conv tiles no longer fit in registers (ptxas spills).
    """
    block_n = min(max(16, next_power_of_2(cg_dst)), MAX_CHANNEL_BLOCK)
    windows = []
    for n0 in range(0, c_dst, block_n):
        lo = (n0 // cg_dst) * cg_src
        hi = ((min(n0 + block_n, c_dst) - 1) // cg_dst + 1) * cg_src
        windows.append((lo, hi))
    widest = max(hi - lo for lo, hi in windows)
    block_k = min(max(16, next_power_of_2(widest)), MAX_CHANNEL_BLOCK)
    even = all(lo % block_k == 0 and (hi - lo) % block_k == 0 for lo, hi in windows)
    return ChannelTiling(block_n, block_k, cdiv(widest, block_k), even)


# Autotune candidates on a GPU: (BLOCK_V, num_warps, num_stages). Three or more stages prefetch
# the next tap's gathered tile with cp.async while the current one is in the tensor cores (two
# stages do not overlap them). A candidate is kept for a launch only when its widest
# [BLOCK_V, channels] tile holds at most 16 elements per thread. Checked with ptxas for sm_80/86/89/90
# (bf16, 16-channel blocks: 56-80 registers, no spills; larger tiles need 160-255 or spill).
_CONV_CONFIGS = [(64, 2, 3), (64, 4, 3), (128, 4, 3), (128, 4, 4), (128, 8, 3), (256, 8, 3), (128, 4, 1)]
_WGRAD_CONFIGS = [(32, 2, 3), (32, 4, 3), (64, 4, 3), (64, 8, 3), (128, 8, 3), (64, 4, 2)]
_MAX_TILE_PER_THREAD = 16
_INTERPRETER_BLOCK_V = 32  # the interpreter runs fixed small tiles (two statistics rows each); no autotuning
_INTERPRETER_STAT_ROWS = 16
_ROWS_PER_GROUP_GPU = 256  # partial rows merged per program in the first combine level
_INTERPRETER_ROWS_PER_GROUP = 4  # small, so that small test volumes take the two-level path


def _small_enough(configs, named_args, **kwargs):
    """Autotune pruning: keep configs whose [BLOCK_V, max(BLOCK_N, BLOCK_K)] tiles fit the per-thread budget;
    with ``C2W_AUTOTUNE=0`` (the GPU session's tests: one compile per launch shape, not one per candidate)
    the first of those only."""
    widest = max(kwargs["BLOCK_N"], kwargs["BLOCK_K"])
    kept = [c for c in configs if c.kwargs["BLOCK_V"] * widest <= _MAX_TILE_PER_THREAD * 32 * c.num_warps]
    kept = kept or configs[:1]
    return kept if os.environ.get("C2W_AUTOTUNE", "1") != "0" else kept[:1]


def _dot_precision(dtype: torch.dtype) -> str:
    # fp32 inputs: three TF32 products recover ~fp32 accuracy; the conv is memory-bound anyway.
    return "tf32x3" if dtype == torch.float32 else "tf32"


def _dot_dtype(dtype: torch.dtype):
    if interpreting() and dtype == torch.bfloat16:
        # The interpreter's numpy matmul reads bf16 as raw uint16; exact bf16 values upcast to
        # fp32 give the same products (tensor cores also accumulate bf16 products in fp32).
        return tl.float32
    return {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}[dtype]


def _autotuned(kernel, table, key):
    configs = [triton.Config({"BLOCK_V": bv}, num_warps=w, num_stages=st) for bv, w, st in table]
    return triton.autotune(configs=configs, key=key, prune_configs_by={"early_config_prune": _small_enough})(kernel)


@functools.cache
def _tuned_conv(device_index: int):
    """The conv kernel with its own autotuning cache for one device (each GPU model tunes for itself)."""
    key = ["SRC_C", "DST_C", "CG_SRC", "CG_DST", "DST_D", "DST_H", "DST_W", "SRC_D", "SRC_H", "SRC_W",
           "KZ", "KY", "KX", "SZ", "SY", "SX", "TRANSPOSED", "EPILOGUE"]
    return _autotuned(_conv_kernel, _CONV_CONFIGS, key)


@functools.cache
def _tuned_weight_grad(device_index: int):
    """The weight-gradient kernel with its own autotuning cache for one device."""
    key = ["C_IN", "C_OUT", "CG_IN", "CG_OUT", "OD", "OH", "OW", "KZ", "KY", "KX", "SZ", "SY", "SX"]
    return _autotuned(_weight_grad_kernel, _WGRAD_CONFIGS, key)


def _stat_rows() -> int:
    return _INTERPRETER_STAT_ROWS if interpreting() else STAT_ROWS_GPU


def _rows_per_group() -> int:
    return _INTERPRETER_ROWS_PER_GROUP if interpreting() else _ROWS_PER_GROUP_GPU


def _launch(tuned, kernel, grid, *args, **meta):
    """Launch the autotuned kernel on a GPU, or ``kernel`` with the interpreter's fixed tile."""
    if interpreting():
        kernel[grid({"BLOCK_V": _INTERPRETER_BLOCK_V})](*args, BLOCK_V=_INTERPRETER_BLOCK_V, **meta)
    else:
        tuned[grid](*args, **meta)


# --------------------------------------------------------------------------------------------
# Launchers
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ConvGeometry:
    """Sizes of one grouped conv: input (B, D, H, W, Cin) -> output (B, OD, OH, OW, Cout)."""

    batch: int
    in_size: tuple[int, int, int]
    out_size: tuple[int, int, int]
    c_in: int
    c_out: int
    groups: int
    kernel: tuple[int, int, int]
    stride: tuple[int, int, int]

    @property
    def cg_in(self) -> int:
        return self.c_in // self.groups

    @property
    def cg_out(self) -> int:
        return self.c_out // self.groups

    @property
    def out_voxels(self) -> int:
        return self.out_size[0] * self.out_size[1] * self.out_size[2]

    def constexprs(self) -> dict:
        (kz, ky, kx), (sz, sy, sx) = self.kernel, self.stride
        return dict(KZ=kz, KY=ky, KX=kx, SZ=sz, SY=sy, SX=sx)


def conv_geometry(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int, int], groups: int) -> ConvGeometry:
    """Geometry of ``x`` (B, D, H, W, Cin) channels-last convolved with ``weight`` (Cout, Cin/groups, kz, ky, kx)."""
    batch, *in_size, c_in = x.shape
    kernel = tuple(weight.shape[2:])
    out_size = tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(in_size, kernel, stride))
    geometry = ConvGeometry(batch, tuple(in_size), out_size, c_in, weight.shape[0], groups, kernel, tuple(stride))
    for name, size, channels in (("input", in_size, c_in), ("output", out_size, weight.shape[0])):
        if size[0] * size[1] * size[2] * channels > MAX_SAMPLE_ELEMENTS:
            raise ValueError(f"conv_norm_act: one sample's {name} has {size} x {channels} elements, "
                             f"more than the kernels' int32 limit {MAX_SAMPLE_ELEMENTS}")
    return geometry


def _row_stride(t: torch.Tensor) -> int:
    """Distance between voxel rows of a contiguous (B, D, H, W, C) tensor or of a :func:`_channel_slice` of one."""
    if t.is_contiguous():
        return t.shape[-1]
    _, d, h, w, c = t.shape
    r = t.stride(3)
    if t.stride() != (d * h * w * r, h * w * r, w * r, r, 1) or r < c:
        raise ValueError(f"expected a contiguous (B, D, H, W, C) tensor or a channel slice of one, "
                         f"got shape {tuple(t.shape)} and strides {t.stride()}")
    return r


def _channel_slice(t: torch.Tensor | None, samples: slice, channels: slice) -> torch.Tensor | None:
    """View of samples x channels of a contiguous (B, D, H, W, C) tensor, with every stride spelled out
    (a contiguous tensor may carry any stride on an axis of size 1)."""
    if t is None:
        return None
    if not t.is_contiguous():
        raise ValueError(f"expected a contiguous (B, D, H, W, C) tensor, got strides {t.stride()}")
    _, d, h, w, c = t.shape
    size = (samples.stop - samples.start, d, h, w, channels.stop - channels.start)
    offset = t.storage_offset() + samples.start * d * h * w * c + channels.start
    return t.as_strided(size, (d * h * w * c, h * w * c, w * c, c, 1), offset)


def _table_stride(table: torch.Tensor) -> int:
    """Channel stride of a (B, 2, C) statistics table or a channel slice of one."""
    if table.stride(2) != 1 or table.stride(0) != 2 * table.stride(1):
        raise ValueError(f"expected a (B, 2, C) table or a channel slice of one, got strides {table.stride()}")
    return table.stride(1)


def _conv(src, weight, dst, part, geometry: ConvGeometry, *, transposed: bool, epilogue: int,
          grad=None, residual=None, stats=None, gamma=None, beta=None, negative_slope: float = 0.0,
          activation: bool = False) -> None:
    """Run ``_conv_kernel`` over all of ``dst``: the forward conv, its recompute, or the input gradient.

    ``src``, ``dst``, ``grad`` and ``residual`` may be channel slices of larger channels-last tensors.
    """
    if transposed:
        src_size, dst_size = geometry.out_size, geometry.in_size
        src_c, dst_c, cg_src, cg_dst = geometry.c_out, geometry.c_in, geometry.cg_out, geometry.cg_in
    else:
        src_size, dst_size = geometry.in_size, geometry.out_size
        src_c, dst_c, cg_src, cg_dst = geometry.c_in, geometry.c_out, geometry.cg_in, geometry.cg_out
    tiling = channel_tiling(dst_c, cg_dst, cg_src)
    n_vox = dst_size[0] * dst_size[1] * dst_size[2]
    aux_stride = dst_c if grad is None else _row_stride(grad)
    if residual is not None and _row_stride(residual) != aux_stride:
        raise ValueError("conv_norm_act: grad and residual must share one layout")
    table_c = dst_c if stats is None else _table_stride(stats)
    dummy = dst
    grid = lambda meta: (cdiv(n_vox, meta["BLOCK_V"]), cdiv(dst_c, tiling.block_n), geometry.batch)  # noqa: E731
    _launch(_tuned_conv(src.device.index) if not interpreting() else None, _conv_kernel, grid,
            src, weight, dst, dummy if part is None else part,
            dummy if grad is None else grad, dummy if residual is None else residual,
            dummy if stats is None else stats, dummy if gamma is None else gamma, dummy if beta is None else beta,
            *src_size, *dst_size, src_c, dst_c, cg_src, cg_dst, _row_stride(src), _row_stride(dst), aux_stride,
            table_c, negative_slope,
            **geometry.constexprs(), TRANSPOSED=transposed, EPILOGUE=epilogue,
            HAS_RESIDUAL=residual is not None, ACTIVATION=activation, EVEN_K=tiling.even_k,
            DOT_DTYPE=_dot_dtype(src.dtype), DOT_PRECISION=_dot_precision(src.dtype), STAT_ROWS=_stat_rows(),
            BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k)


def _partials(geometry: ConvGeometry, device) -> torch.Tensor:
    rows = cdiv(geometry.out_voxels, _stat_rows())
    return torch.empty((geometry.batch, rows, 2, geometry.c_out), dtype=torch.float32, device=device)


def _combine(part: torch.Tensor, geometry: ConvGeometry, out: torch.Tensor, *, moments: bool, eps: float = 0.0) -> None:
    """Fill the (B, 2, Cout) fp32 table ``out`` (or channel slice of one) from the conv epilogue's partial rows:
    (mean, rstd) or the two sums.

    Two launches when a sample has many rows, so that the first spreads over the GPU
    (B x groups x channel blocks programs) and the second merges a few rows per channel.
    """
    batch, channels, n_vox = geometry.batch, geometry.c_out, geometry.out_voxels
    block_c = min(next_power_of_2(channels), 32)
    rows, row_voxels = part.shape[1], _stat_rows()
    meta = dict(MOMENTS=moments, BLOCK_R=32, BLOCK_C=block_c, num_warps=4)
    per_group = _rows_per_group()
    if rows > per_group:
        groups = cdiv(rows, per_group)
        merged = torch.empty((batch, groups, 2, channels), dtype=torch.float32, device=part.device)
        _combine_partials_kernel[(groups, cdiv(channels, block_c), batch)](
            part, merged, n_vox, rows, row_voxels, per_group, channels, channels, eps, FINAL=False, **meta)
        part, rows, row_voxels = merged, groups, row_voxels * per_group
    _combine_partials_kernel[(1, cdiv(channels, block_c), batch)](
        part, out, n_vox, rows, row_voxels, rows, channels, _table_stride(out), eps, FINAL=True, **meta)


def _pointwise_grid(geometry: ConvGeometry) -> tuple[tuple[int, int, int], dict]:
    """Grid and tile of the normalisation kernels: 2048-element tiles, 16 elements per thread."""
    block_c = min(next_power_of_2(geometry.c_out), 32)
    block_v = 2048 // block_c
    grid = (cdiv(geometry.out_voxels, block_v), cdiv(geometry.c_out, block_c), geometry.batch)
    return grid, dict(BLOCK_V=block_v, BLOCK_C=block_c, num_warps=4)


def conv_norm_forward(x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                      residual: torch.Tensor | None, stride: tuple[int, int, int], groups: int, eps: float,
                      negative_slope: float, activation: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Fused forward on channels-last tensors.

    Args:
        x: (B, D, H, W, Cin) contiguous, fp32/fp16/bf16. weight: (Cout, Cin/groups, kz, ky, kx) contiguous.
        gamma, beta: (Cout,). residual: (B, OD, OH, OW, Cout) contiguous or None.
    Returns:
        y (B, OD, OH, OW, Cout) in x's dtype and stats (B, 2, Cout) fp32 = (mean, 1/sqrt(var + eps))
        of the conv output per sample and channel.
    """
    geometry = conv_geometry(x, weight, stride, groups)
    y = torch.empty((geometry.batch, *geometry.out_size, geometry.c_out), dtype=x.dtype, device=x.device)
    part = _partials(geometry, x.device)
    _conv(x, weight, y, part, geometry, transposed=False, epilogue=EPILOGUE_MOMENTS)
    stats = torch.empty((geometry.batch, 2, geometry.c_out), dtype=torch.float32, device=x.device)
    _combine(part, geometry, stats, moments=True, eps=eps)
    grid, meta = _pointwise_grid(geometry)
    _normalize_kernel[grid](y, y if residual is None else residual, stats, gamma, beta, geometry.out_voxels,
                            geometry.c_out, negative_slope, HAS_RESIDUAL=residual is not None,
                            ACTIVATION=activation, **meta)
    return y, stats


def _weight_grad(x: torch.Tensor, grad_raw: torch.Tensor, weight: torch.Tensor, geometry: ConvGeometry,
                 out: torch.Tensor, accumulate: bool) -> None:
    """Write (or add) into the fp32 ``out`` the weight gradient from x (B, D, H, W, Cin), possibly a channel
    slice, and dL/d(conv output) (B, OD, OH, OW, Cout) contiguous."""
    tiling = channel_tiling(geometry.c_out, geometry.cg_out, geometry.cg_in)
    kz, ky, _ = geometry.kernel
    programs = kz * ky * cdiv(geometry.c_out, tiling.block_n) * tiling.k_chunks
    if interpreting():
        target = programs * 2
    else:
        target = 4 * torch.cuda.get_device_properties(x.device).multi_processor_count
    tiles = geometry.batch * cdiv(geometry.out_voxels, _INTERPRETER_BLOCK_V if interpreting() else 32)
    splits = max(1, min(cdiv(target, programs), tiles))
    part = torch.empty((splits, *weight.shape), dtype=torch.float32, device=x.device)
    grid = lambda meta: (kz * ky, programs // (kz * ky), splits)  # noqa: E731
    _launch(None if interpreting() else _tuned_weight_grad(x.device.index), _weight_grad_kernel, grid,
            x, grad_raw, part, geometry.batch, *geometry.in_size, *geometry.out_size, geometry.c_in, geometry.c_out,
            geometry.cg_in, geometry.cg_out, _row_stride(x), tiling.k_chunks, **geometry.constexprs(),
            EVEN_K=tiling.even_k, DOT_DTYPE=_dot_dtype(x.dtype), DOT_PRECISION=_dot_precision(x.dtype),
            BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k)
    if accumulate:
        out += part.sum(0)
    else:
        torch.sum(part, 0, out=out)


@dataclass(frozen=True)
class BackwardPieces:
    """How the backward splits a block of ``batch`` samples and ``total_groups`` conv groups:
    ``samples`` and ``groups`` per piece (the last ones may hold fewer)."""

    batch: int
    total_groups: int
    samples: int
    groups: int

    def pieces(self):
        """(sample slice, group range) of every piece, in order."""
        for s0 in range(0, self.batch, self.samples):
            for g0 in range(0, self.total_groups, self.groups):
                yield slice(s0, min(s0 + self.samples, self.batch)), (g0, min(g0 + self.groups, self.total_groups))


def backward_pieces(geometry: ConvGeometry, share: int) -> BackwardPieces:
    """Pieces whose transient buffer holds at most 1/``share`` of the block's output, split by groups first.

    Conv groups are independent, so a piece can take whole groups (keeping at least 16 output
    channels, one tensor-core block); samples are independent through the instance norm, so it
    can take fewer samples. Channel pieces come first because they keep every sample's voxels
    in one launch. A dense conv of one sample cannot be split (its buffer is the whole output).
    """
    channel_pieces = max(1, min(share, geometry.groups, geometry.c_out // 16))
    groups_per_piece = cdiv(geometry.groups, channel_pieces)
    channel_pieces = cdiv(geometry.groups, groups_per_piece)
    sample_pieces = min(cdiv(share, channel_pieces), geometry.batch)
    return BackwardPieces(geometry.batch, geometry.groups, samples=cdiv(geometry.batch, sample_pieces),
                          groups=groups_per_piece)


def conv_norm_backward(grad_y: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, gamma: torch.Tensor,
                       beta: torch.Tensor, residual: torch.Tensor | None, stats: torch.Tensor,
                       stride: tuple[int, int, int], groups: int, negative_slope: float, activation: bool,
                       need_input_grad: bool, need_residual_grad: bool, need_weight_grad: bool = True):
    """Fused backward on channels-last tensors; recomputes the conv output instead of storing it.

    Args: as :func:`conv_norm_forward`, plus ``grad_y`` (B, OD, OH, OW, Cout) contiguous and the
    forward's ``stats``. ``residual`` is only read when ``activation`` (for the LeakyReLU's sign).
    Returns:
        (grad_x or None, grad_weight fp32 or None, grad_gamma fp32, grad_beta fp32, grad_residual or None);
        grad_x and grad_residual in x's dtype, channels-last; each optional one only when asked for.

    The only activation-sized transient is the buffer holding the recomputed conv output (turned in
    place into its gradient). The backward runs in pieces of whole conv groups and samples (see
    :func:`backward_pieces`) so that this buffer holds at most 1/``BACKWARD_BUFFER_SHARE`` of the output.
    """
    geometry = conv_geometry(x, weight, stride, groups)
    batch, cg_in, cg_out = geometry.batch, geometry.cg_in, geometry.cg_out
    plan = backward_pieces(geometry, BACKWARD_BUFFER_SHARE)
    grad_x = (torch.empty((batch, *geometry.in_size, geometry.c_in), dtype=x.dtype, device=x.device)
              if need_input_grad else None)
    write_dres = need_residual_grad and activation
    dres = torch.empty_like(grad_y, dtype=x.dtype) if write_dres else None
    if need_residual_grad and not activation:
        dres = grad_y.to(x.dtype)  # no activation: the residual's gradient is the output's
    residual = residual if activation else None
    buf = torch.empty(plan.samples * geometry.out_voxels * plan.groups * cg_out, dtype=x.dtype, device=x.device)
    sums = torch.empty((batch, 2, geometry.c_out), dtype=torch.float32, device=x.device)  # sum dz, sum dz * y_hat
    grad_weight = torch.empty(weight.shape, dtype=torch.float32, device=x.device) if need_weight_grad else None
    for samples, (g0, g1) in plan.pieces():
        ci, co = slice(g0 * cg_in, g1 * cg_in), slice(g0 * cg_out, g1 * cg_out)
        n_samples = samples.stop - samples.start
        piece_buf = buf[:n_samples * geometry.out_voxels * (co.stop - co.start)].view(
            n_samples, *geometry.out_size, co.stop - co.start)
        _backward_piece(piece_buf, _channel_slice(grad_y, samples, co), _channel_slice(x, samples, ci), weight[co],
                        gamma[co], beta[co], _channel_slice(residual, samples, co), stats[samples, :, co],
                        sums[samples, :, co], _channel_slice(grad_x, samples, ci),
                        _channel_slice(dres if write_dres else None, samples, co),
                        None if grad_weight is None else grad_weight[co],
                        samples.start > 0, stride, g1 - g0, negative_slope, activation)
    return grad_x, grad_weight, sums[:, 1].sum(0), sums[:, 0].sum(0), dres


def _backward_piece(buf, grad_y, x, weight, gamma, beta, residual, stats, sums, grad_x, dres, grad_weight,
                    accumulate_weight, stride, groups, negative_slope, activation):
    """Backward of one piece (channel slices of x, grad_y, ... and their stats): fills sums and, when
    given, grad_x, dres and grad_weight (added to it when ``accumulate_weight``)."""
    geometry = conv_geometry(x, weight, stride, groups)
    part = _partials(geometry, x.device)
    _conv(x, weight, buf, part, geometry, transposed=False, epilogue=EPILOGUE_GRAD_SUMS, grad=grad_y,
          residual=residual, stats=stats, gamma=gamma, beta=beta, negative_slope=negative_slope,
          activation=activation)
    _combine(part, geometry, sums, moments=False)
    del part
    grid, meta = _pointwise_grid(geometry)
    _normalize_backward_kernel[grid](buf, grad_y, buf if residual is None else residual, buf if dres is None else dres,
                                     stats, sums, gamma, beta, geometry.out_voxels, geometry.c_out,
                                     _row_stride(grad_y), _table_stride(stats), negative_slope,
                                     HAS_RESIDUAL=residual is not None, ACTIVATION=activation,
                                     WRITE_DRES=dres is not None, **meta)
    if grad_x is not None:
        _conv(buf, weight, grad_x, None, geometry, transposed=True, epilogue=EPILOGUE_STORE)
    if grad_weight is not None:
        _weight_grad(x, buf, weight, geometry, grad_weight, accumulate_weight)
