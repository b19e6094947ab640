"""Fused 3D convolution + InstanceNorm (affine) + LeakyReLU, the block every U-Net here is built of.

``y = leaky_relu(instance_norm(conv3d(x, w)) * gamma + beta [+ residual])`` with padding
``kernel // 2`` per axis and no conv bias (the norm removes it). The residual variant adds
``residual`` after the norm and before the activation (ResNeXt / residual-encoder blocks).

Backends: ``reference`` (PyTorch's conv3d, instance_norm, leaky_relu) and ``triton`` (the
kernels of :mod:`c2w_fast.kernels.conv_norm_act`, channels-last inside). The triton backend
keeps only the block's input and two fp32 numbers per (sample, channel) for the backward and
recomputes the convolution there, so a network of fused blocks stores one activation per block
where the unfused layers store three. Its output is a (B, C, D, H, W) tensor in channels-last
memory (``torch.channels_last_3d``); feeding channels-last inputs avoids any layout copy.

Accuracy (``TOLERANCES``): the triton backend stores the conv output in the input dtype (as
cuDNN does) and accumulates in fp32. It is compared with the float64 reference evaluated on
the same dtype-rounded inputs with its conv output rounded the same way (``round_conv_output``):
``|ours - ref| <= atol * max|ref| + rtol * |ref|`` for the output and every gradient.
A NaN or infinity in ``x`` (or in the backward's incoming gradient) makes the triton
backend's output non-finite in every channel of the same 16- or 32-channel block, not only in
its own group: small groups are packed into one matrix product with the others' weights zero,
and ``0 * inf`` is NaN (PyTorch keeps it in the group's channels). Such an input spoils
training either way; the trainer stops on a non-finite loss.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable

import torch
import torch.nn.functional as F

from c2w_fast.ops._arrays import is_int
from c2w_fast.ops._dispatch import Op, first_order_backward, reference_only
from c2w_fast.ops._tolerance import Tolerance

KERNEL_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


# Per input dtype, for the output and the gradients of x, weight, gamma, beta and residual.
# bf16 leaves room for the Triton interpreter, whose fp32 -> bf16 casts truncate (a GPU rounds
# to nearest, halving the error); fp32 covers the GPU's tf32x3 dots.
TOLERANCES = {
    torch.float32: Tolerance(rtol=1e-4, atol=1e-4),
    torch.float16: Tolerance(rtol=4e-3, atol=4e-3),
    torch.bfloat16: Tolerance(rtol=3e-2, atol=3e-2),
}


KERNEL_SIZES, STRIDES = (1, 3), (1, 2)  # per axis: the convolutions the kernels run (padding kernel // 2)


def runs_geometry(kernel, stride) -> bool:
    """Whether the kernels run a convolution of these per-axis kernel sizes and strides."""
    return all(k in KERNEL_SIZES for k in kernel) and all(s in STRIDES for s in stride)


def check_geometry(kernel, stride) -> None:
    """A ValueError unless :func:`runs_geometry` (the fused op, and its module when built)."""
    if not runs_geometry(kernel, stride):
        raise ValueError(f"kernel sizes must be 1 or 3 and strides 1 or 2, got {tuple(kernel)} and {tuple(stride)}")


def _triple(value, name: str) -> tuple[int, int, int]:
    try:
        values = (value,) * 3 if is_int(value) else tuple(value)
    except TypeError:  # neither an int nor iterable, e.g. 2.0
        values = ()
    if len(values) != 3 or not all(is_int(v) for v in values):
        raise ValueError(f"{name} must be an int or 3 ints (z, y, x), got {value!r}")
    return tuple(int(v) for v in values)


def reference_conv_norm_act(x, weight, norm_weight, norm_bias, stride=1, groups=1, eps=1e-5, negative_slope=0.01,
                            activation=True, residual=None,
                            round_conv_output: Callable[[torch.Tensor], torch.Tensor] | None = None):
    """The block in plain PyTorch; ``round_conv_output`` (tests) rounds the conv output straight-through.

    With ``round_conv_output`` the conv output's value is replaced by the rounded one while its
    gradient passes unchanged, which models a kernel that stores the conv output in a low
    precision dtype and normalises what it stored.
    """
    padding = tuple(k // 2 for k in weight.shape[2:])
    y = F.conv3d(x, weight, None, _triple(stride, "stride"), padding, 1, groups)
    if round_conv_output is not None:
        y = y + (round_conv_output(y.detach()) - y.detach())
    if norm_weight.dtype != y.dtype and _autocast_dtype(y.device.type) is None:
        # outside autocast PyTorch's CPU kernels refuse fp32 parameters with a bf16 y: normalise in
        # the wider dtype; under autocast run exactly what nn.InstanceNorm3d would (the benchmark peer)
        wide = torch.promote_types(y.dtype, norm_weight.dtype)
        y = F.instance_norm(y.to(wide), weight=norm_weight.to(wide), bias=norm_bias.to(wide), eps=eps).to(y.dtype)
    else:
        y = F.instance_norm(y, weight=norm_weight, bias=norm_bias, eps=eps)
    if residual is not None:
        y = y + residual.to(y.dtype)  # in the block's dtype on every backend (an fp32 one under autocast too)
    return F.leaky_relu(y, negative_slope) if activation else y


def _reference(x, weight, norm_weight, norm_bias, stride, groups, eps, negative_slope, activation, residual):
    return reference_conv_norm_act(x, weight, norm_weight, norm_bias, stride, groups, eps, negative_slope,
                                   activation, residual)


def _channels_last(t: torch.Tensor) -> torch.Tensor:
    """(B, C, D, H, W) -> contiguous (B, D, H, W, C); free when ``t`` is already channels_last_3d."""
    return t.permute(0, 2, 3, 4, 1).contiguous()


class _FusedConvNormAct(torch.autograd.Function):
    """Autograd of the triton backend: saves x, the weight, the affine and (mean, rstd); recomputes the conv.

    The backward is first-order only: ``create_graph=True`` raises instead of dropping second-order terms.
    """

    @staticmethod
    def forward(ctx, x, weight, norm_weight, norm_bias, residual, stride, groups, eps, negative_slope, activation):
        from c2w_fast.kernels.conv_norm_act import conv_norm_forward

        x_cl = _channels_last(x)
        weight = weight.contiguous()
        gamma, beta = norm_weight.contiguous(), norm_bias.contiguous()
        residual_cl = None if residual is None else _channels_last(residual.to(x.dtype))
        y, stats = conv_norm_forward(x_cl, weight, gamma, beta, residual_cl, stride, groups, eps,
                                     negative_slope, activation)
        ctx.save_for_backward(x_cl, weight, gamma, beta, residual_cl if activation else None, stats)
        ctx.options = (stride, groups, negative_slope, activation, residual is not None)
        return y.permute(0, 4, 1, 2, 3)

    @staticmethod
    @first_order_backward
    def backward(ctx, grad_y):
        from c2w_fast.kernels.conv_norm_act import conv_norm_backward

        x_cl, weight, gamma, beta, residual_cl, stats = ctx.saved_tensors
        stride, groups, negative_slope, activation, has_residual = ctx.options
        grad_x, grad_w, grad_gamma, grad_beta, grad_res = conv_norm_backward(
            _channels_last(grad_y.to(x_cl.dtype)), x_cl, weight, gamma, beta, residual_cl, stats, stride, groups,
            negative_slope, activation, need_input_grad=ctx.needs_input_grad[0],
            need_residual_grad=has_residual and ctx.needs_input_grad[4], need_weight_grad=ctx.needs_input_grad[1])
        to_first = lambda t: None if t is None else t.permute(0, 4, 1, 2, 3)  # noqa: E731
        grad_w = None if grad_w is None else grad_w.to(weight.dtype)  # frozen weights: no weight-gradient pass
        return (to_first(grad_x), grad_w, grad_gamma.to(gamma.dtype), grad_beta.to(beta.dtype),
                to_first(grad_res), None, None, None, None, None)


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None (also for devices without autocast, e.g. meta)."""
    try:
        enabled = torch.is_autocast_enabled(device_type)
    except TypeError:  # torch < 2.4 knows only the CUDA autocast here
        return torch.get_autocast_gpu_dtype() if device_type == "cuda" and torch.is_autocast_enabled() else None
    except RuntimeError:  # a device type autocast does not know
        return None
    return torch.get_autocast_dtype(device_type) if enabled else None


def _triton(x, weight, norm_weight, norm_bias, stride, groups, eps, negative_slope, activation, residual):
    dtype = _autocast_dtype(x.device.type)
    if dtype is not None:  # run in the autocast dtype, as F.conv3d would
        x = x.to(dtype)
    return _FusedConvNormAct.apply(x, weight, norm_weight, norm_bias, residual, stride, groups, float(eps),
                                   float(negative_slope), bool(activation))


CONV_NORM_ACT = Op("conv_norm_act", {"reference": _reference, "triton": _triton}, preferred={"cuda": ("triton",)})


def _validate(x, weight, norm_weight, norm_bias, stride, groups, eps, residual) -> None:
    for name, t in (("x", x), ("weight", weight), ("norm_weight", norm_weight), ("norm_bias", norm_bias),
                    ("residual", residual)):
        if not isinstance(t, torch.Tensor) and (t is not None or name != "residual"):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if not is_int(groups) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real) or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if x.ndim != 5 or weight.ndim != 5:
        raise ValueError(f"x must be (B, C, D, H, W) and weight (Cout, Cin/groups, kz, ky, kx), "
                         f"got {tuple(x.shape)} and {tuple(weight.shape)}")
    check_geometry(weight.shape[2:], stride)
    if groups < 1 or x.shape[1] != weight.shape[1] * groups or weight.shape[0] % groups:
        raise ValueError(f"channels do not fit groups={groups}: x has {x.shape[1]}, weight {tuple(weight.shape[:2])}")
    if not x.is_floating_point() or x.numel() == 0:
        raise ValueError(f"x must be a non-empty floating-point tensor, got {x.dtype} {tuple(x.shape)}")
    for name, param in (("norm_weight", norm_weight), ("norm_bias", norm_bias)):
        if tuple(param.shape) != (weight.shape[0],):
            raise ValueError(f"{name} must have shape ({weight.shape[0]},) (one per output channel), "
                             f"got {tuple(param.shape)}")
    out = tuple((n + 2 * (k // 2) - k) // s + 1 for n, k, s in zip(x.shape[2:], weight.shape[2:], stride))
    if out[0] * out[1] * out[2] < 2:
        raise ValueError(f"instance norm needs more than one output voxel per channel, got output size {out} "
                         f"from x {tuple(x.shape[2:])} and stride {stride}")
    if residual is not None:
        expected = (x.shape[0], weight.shape[0], *out)
        if tuple(residual.shape) != expected:
            raise ValueError(f"residual must have the output's shape {expected}, got {tuple(residual.shape)}")
    devices = {t.device for t in (x, weight, norm_weight, norm_bias, residual) if t is not None}
    if len(devices) > 1:
        raise ValueError(f"x, weight, norm parameters and residual must be on one device, got "
                         f"{sorted(map(str, devices))}")
    if _autocast_dtype(x.device.type) is None:
        _check_dtypes(x, weight, norm_weight, norm_bias, residual)


def _check_dtypes(x, weight, norm_weight, norm_bias, residual) -> None:
    """Outside autocast: weight and residual in x's dtype; the norm parameters in x's dtype or float32."""
    mismatched = [f"{name} {t.dtype}" for name, t in (("weight", weight), ("residual", residual))
                  if t is not None and t.dtype != x.dtype]
    mismatched += [f"{name} {t.dtype}" for name, t in (("norm_weight", norm_weight), ("norm_bias", norm_bias))
                   if t.dtype not in (x.dtype, torch.float32)]
    if mismatched:
        raise ValueError(f"x is {x.dtype} but {', '.join(mismatched)}: outside autocast the weight and residual "
                         "must have x's dtype and the norm parameters x's dtype or float32; cast the module "
                         "(module.to(dtype)) or run under torch.autocast")


def conv_norm_act(x: torch.Tensor, weight: torch.Tensor, norm_weight: torch.Tensor, norm_bias: torch.Tensor, *,
                  stride=1, groups: int = 1, eps: float = 1e-5, negative_slope: float = 0.01,
                  activation: bool = True, residual: torch.Tensor | None = None,
                  backend: str = "auto") -> torch.Tensor:
    """Grouped conv3d → InstanceNorm3d(affine) → (+ residual) → LeakyReLU, differentiable.

    Args:
        x: (B, Cin, D, H, W) float32/float16/bfloat16 (float64 runs the reference); channels-last
            memory (``x.to(memory_format=torch.channels_last_3d)``) saves the triton backend a copy.
        weight: (Cout, Cin / groups, kz, ky, kx), kernel sizes 1 or 3 per axis; padding kernel // 2.
        norm_weight, norm_bias: (Cout,) affine parameters of the instance norm.
        stride: 1 or 2, one int for all axes or 3 ints, one per axis (z, y, x).
        groups: grouped convolution, a positive int; Cin and Cout must be multiples of it.
        eps: added to the (biased) variance, as ``nn.InstanceNorm3d``; > 0.
        negative_slope: LeakyReLU slope for negative inputs.
        activation: False skips the LeakyReLU.
        residual: optional (B, Cout, D', H', W') added after the norm, before the activation, in
            the output's dtype.
        backend: ``auto`` (triton on CUDA, reference elsewhere), ``reference`` or ``triton``.
    Returns: (B, Cout, D', H', W') in ``x``'s dtype (or the autocast dtype), D' = (D - 1) // sz + 1.
    Under autocast the triton backend runs in the autocast dtype, like ``F.conv3d``.
    """
    stride = _triple(stride, "stride")
    _validate(x, weight, norm_weight, norm_bias, stride, groups, eps, residual)
    if x.dtype not in KERNEL_DTYPES:
        backend = reference_only(backend, f"the triton backend takes x in {[str(d) for d in KERNEL_DTYPES]}, "
                                          f"got {x.dtype}")
    return CONV_NORM_ACT.select(backend, x.device)(x, weight, norm_weight, norm_bias, stride, groups, eps,
                                                   negative_slope, activation, residual)
