"""The fused conv + InstanceNorm + LeakyReLU block: triton backend vs a float64 reference, forward and backward.

The reference runs in float64 on the same dtype-rounded inputs, with its conv output rounded
to the dtype the way the kernels store it (``round_conv_output``), so the comparison isolates
the kernels' own arithmetic (see ``c2w_fast.ops.conv_norm_act.TOLERANCES``).
"""
import pytest
import torch
from torch import nn

from c2w_fast.nn import FusedConvNormAct
from c2w_fast.ops import BackendUnavailableError, conv_norm_act
from c2w_fast.ops._dispatch import backend_problem, triton_interpreter_enabled
from c2w_fast.ops.conv_norm_act import TOLERANCES, reference_conv_norm_act

pytestmark = pytest.mark.gpu  # runs its kernels on a GPU when there is one

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(backend_problem("triton", DEVICE) is not None,
                                  reason=f"triton backend unavailable: {backend_problem('triton', DEVICE)}")


def _truncate_to_bf16(t: torch.Tensor) -> torch.Tensor:
    """fp32 -> bf16 by dropping the low 16 bits, as the Triton interpreter's casts do (a GPU rounds to nearest)."""
    return (t.float().view(torch.int32) & -65536).view(torch.float32).double()


def conv_output_rounding(dtype: torch.dtype):
    """How the kernels round the stored conv output of a ``dtype`` input, for the reference."""
    if dtype == torch.bfloat16 and triton_interpreter_enabled():
        return _truncate_to_bf16
    return lambda t: t.to(dtype).double()


def make_case(rng, batch, c_in, c_out, groups, size, kernel, stride, dtype, residual):
    """Random inputs (already rounded to ``dtype``), affine parameters and an upstream gradient."""
    def randn(*shape, scale=1.0):
        return torch.from_numpy(rng.standard_normal(shape) * scale).to(dtype)

    fan_in = c_in // groups * kernel[0] * kernel[1] * kernel[2]
    out = tuple((n - 1) // s + 1 for n, s in zip(size, stride))
    return dict(
        x=randn(batch, c_in, *size),
        weight=randn(c_out, c_in // groups, *kernel, scale=fan_in**-0.5),
        norm_weight=torch.from_numpy(rng.uniform(0.5, 1.5, c_out)).float(),
        norm_bias=torch.from_numpy(rng.uniform(-0.5, 0.5, c_out)).float(),
        residual=randn(batch, c_out, *out) if residual else None,
        grad=randn(batch, c_out, *out),
    )


def run(case, backend, *, dtype, stride, groups, activation, round_conv_output=None, **options):
    """Output and gradients of every input (float64 on the CPU), through the op or the rounded reference;
    ``options`` (eps, negative_slope) go to both."""
    names = ["x", "weight", "norm_weight", "norm_bias"] + (["residual"] if case["residual"] is not None else [])
    if backend == "reference":
        inputs = {k: case[k].double().to(DEVICE).requires_grad_() for k in names}
        y = reference_conv_norm_act(**inputs, stride=stride, groups=groups, activation=activation,
                                    round_conv_output=round_conv_output, **options)
    else:
        inputs = {k: case[k].to(DEVICE).requires_grad_() for k in names}
        y = conv_norm_act(**inputs, stride=stride, groups=groups, activation=activation, backend=backend, **options)
        assert y.dtype == dtype
    grads = torch.autograd.grad(y, list(inputs.values()), case["grad"].to(device=y.device, dtype=y.dtype))
    return {"y": y.double().cpu(), **{f"d{k}": g.double().cpu() for k, g in zip(names, grads)}}


CASES = {
    # name: batch, c_in, c_out, groups, size (z, y, x), kernel, stride, dtype, residual, activation
    "3x3x3_groups4_odd": (2, 16, 16, 4, (3, 5, 7), (3, 3, 3), (1, 1, 1), torch.float32, False, True),
    "1x3x3_stride122_residual": (2, 8, 16, 2, (2, 5, 7), (1, 3, 3), (1, 2, 2), torch.float32, True, True),
    "1x1x1_stride2_no_activation": (1, 3, 20, 1, (4, 5, 3), (1, 1, 1), (2, 2, 2), torch.float32, True, False),
    "3x3x3_stride212_dense": (1, 4, 8, 1, (3, 4, 5), (3, 3, 3), (2, 1, 2), torch.float32, False, True),
    "bf16_3x3x3_groups4": (2, 16, 16, 4, (2, 4, 5), (3, 3, 3), (1, 1, 1), torch.bfloat16, False, True),
    "fp16_1x3x3_residual": (2, 16, 16, 4, (2, 5, 6), (1, 3, 3), (1, 1, 1), torch.float16, True, True),
    # blocks of 16 output channels read 64 and 32 input channels: the narrower has one 32-channel chunk
    # of the widest's two (its second would lie past its window: conftest's bounds check)
    "1x1x1_unequal_channel_windows": (1, 64, 24, 2, (2, 3, 3), (1, 1, 1), (1, 1, 1), torch.float32, False, True),
}


@needs_triton
@pytest.mark.parametrize("name", list(CASES))
def test_triton_matches_float64_reference_forward_and_backward(name, rng):
    batch, c_in, c_out, groups, size, kernel, stride, dtype, residual, activation = CASES[name]
    case = make_case(rng, batch, c_in, c_out, groups, size, kernel, stride, dtype, residual)
    options = dict(dtype=dtype, stride=stride, groups=groups, activation=activation)
    ours = run(case, "triton", **options)
    ref = run(case, "reference", round_conv_output=conv_output_rounding(dtype), **options)
    tolerance = TOLERANCES[dtype]
    for key in ref:
        assert ours[key].shape == ref[key].shape, key
        assert tolerance.violations(ours[key], ref[key]) == 0, (
            f"{key}: max error {(ours[key] - ref[key]).abs().max():.3g}, max |ref| {ref[key].abs().max():.3g}")


@needs_triton
def test_triton_matches_reference_with_custom_eps_and_slope_and_a_low_variance_channel(rng):
    """eps and negative_slope reach the kernels, forward and backward; one output channel varies
    far less than eps (weights scaled by 1e-3), so eps sets its scale."""
    case = make_case(rng, 2, 8, 16, 2, (2, 4, 5), (1, 3, 3), (1, 1, 1), torch.float32, True)
    case["weight"][0] *= 1e-3
    options = dict(dtype=torch.float32, stride=(1, 1, 1), groups=2, activation=True, eps=1e-3, negative_slope=0.2)
    ours = run(case, "triton", **options)
    ref = run(case, "reference", round_conv_output=conv_output_rounding(torch.float32), **options)
    for key in ref:
        assert TOLERANCES[torch.float32].violations(ours[key], ref[key]) == 0, (
            f"{key}: max error {(ours[key] - ref[key]).abs().max():.3g}, max |ref| {ref[key].abs().max():.3g}")


@needs_triton
def test_triton_output_is_channels_last_and_independent_of_input_layout(rng):
    case = make_case(rng, 2, 8, 8, 2, (2, 3, 5), (1, 3, 3), (1, 1, 1), torch.float32, False)
    args = (case["weight"].to(DEVICE), case["norm_weight"].to(DEVICE), case["norm_bias"].to(DEVICE))
    x = case["x"].to(DEVICE)
    first = conv_norm_act(x, *args, groups=2, backend="triton")
    last = conv_norm_act(x.to(memory_format=torch.channels_last_3d), *args, groups=2, backend="triton")
    assert last.is_contiguous(memory_format=torch.channels_last_3d)
    assert torch.equal(first, last)


@needs_triton
def test_triton_backward_saves_only_the_input_and_per_channel_statistics(rng):
    """The memory design: no activation-sized tensor besides x is kept for the backward."""
    case = make_case(rng, 2, 8, 8, 2, (2, 3, 5), (1, 3, 3), (1, 1, 1), torch.float32, False)
    x = case["x"].to(DEVICE).to(memory_format=torch.channels_last_3d).requires_grad_()
    params = [case[k].to(DEVICE).requires_grad_() for k in ("weight", "norm_weight", "norm_bias")]
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        conv_norm_act(x, *params, groups=2, backend="triton")
    activation_sized = [t for t in saved if t.numel() >= x.numel()]
    assert len(activation_sized) == 1 and activation_sized[0].data_ptr() == x.data_ptr()
    assert sum(t.numel() for t in saved) == x.numel() + sum(p.numel() for p in params) + 2 * 2 * 8


@needs_triton
def test_frozen_weight_gets_no_gradient_and_the_others_are_unchanged(rng):
    case = make_case(rng, 1, 8, 8, 2, (2, 3, 5), (1, 3, 3), (1, 1, 1), torch.float32, False)
    x, weight, gamma, beta = (case[k].to(DEVICE).requires_grad_() for k in ("x", "weight", "norm_weight", "norm_bias"))
    grad = case["grad"].to(DEVICE)
    full = torch.autograd.grad(conv_norm_act(x, weight, gamma, beta, groups=2, backend="triton"), [x, gamma, beta], grad)
    weight.requires_grad_(False)
    frozen = torch.autograd.grad(conv_norm_act(x, weight, gamma, beta, groups=2, backend="triton"), [x, gamma, beta],
                                 grad)
    for a, b in zip(full, frozen):
        assert torch.equal(a, b)


@needs_triton
@pytest.mark.parametrize("c_in, stride, residual, activation", [
    (32, (1, 1, 1), True, True), (32, (1, 1, 1), True, False), (16, (1, 2, 2), False, True)])
def test_backward_in_pieces_equals_the_whole_batch_backward(rng, monkeypatch, c_in, stride, residual, activation):
    """Pieces of 2 of 4 groups x 2 of 3 samples (an uneven last piece) give the one-piece backward's results."""
    from c2w_fast.kernels import conv_norm_act as kernels

    case = make_case(rng, 3, c_in, 32, 4, (2, 3, 5), (1, 3, 3), stride, torch.float32, residual)
    options = dict(dtype=torch.float32, stride=stride, groups=4, activation=activation)
    monkeypatch.setattr(kernels, "BACKWARD_BUFFER_SHARE", 1)
    whole = run(case, "triton", **options)
    monkeypatch.setattr(kernels, "BACKWARD_BUFFER_SHARE", 4)
    pieces = run(case, "triton", **options)
    ref = run(case, "reference", round_conv_output=conv_output_rounding(torch.float32), **options)
    for key in whole:
        torch.testing.assert_close(pieces[key], whole[key], rtol=1e-6, atol=1e-6)
        assert TOLERANCES[torch.float32].violations(pieces[key], ref[key]) == 0, key


@needs_triton
def test_backward_allocates_no_activation_sized_buffer_beyond_a_quarter_of_the_output(rng):
    """The memory design of the backward: besides its results, every allocation is at most 1/4 of the output,
    but for the weight-gradient partials (splits x a piece's weights: they do not grow with the volume). A
    first backward has run, so autotuning's own buffers (on a GPU) are not counted."""
    from unittest import mock

    from c2w_fast.kernels import conv_norm_act as kernels

    case = make_case(rng, 2, 64, 64, 16, (2, 4, 6), (1, 3, 3), (1, 1, 1), torch.float32, False)
    x, weight, gamma, beta = (case[k].to(DEVICE).requires_grad_() for k in ("x", "weight", "norm_weight", "norm_bias"))
    y = conv_norm_act(x, weight, gamma, beta, groups=16, backend="triton")
    torch.autograd.grad(y, [x, weight, gamma, beta], case["grad"].to(DEVICE), retain_graph=True)  # tunes
    shapes = []
    real_empty = torch.empty

    def recording_empty(*shape, **kwargs):
        out = real_empty(*shape, **kwargs)
        shapes.append(out.shape)
        return out

    with mock.patch.object(kernels.torch, "empty", recording_empty):
        torch.autograd.grad(y, [x, weight, gamma, beta], case["grad"].to(DEVICE))
    partials = [s for s in shapes if len(s) == weight.ndim + 1 and s[2:] == weight.shape[1:]]
    sizes = [s.numel() for s in shapes if s not in partials]
    for result in (x.numel(), weight.numel()):  # grad_x and grad_weight
        sizes.remove(result)
    assert partials and max(sizes) * 4 <= y.numel(), shapes


@needs_triton
def test_autotuning_keeps_the_candidates_that_fit_or_with_c2w_autotune_0_the_first_of_them(monkeypatch):
    import triton

    from c2w_fast.kernels import conv_norm_act as kernels

    monkeypatch.delenv("C2W_AUTOTUNE", raising=False)  # the GPU session's tests run with it set

    configs = [triton.Config({"BLOCK_V": bv}, num_warps=w, num_stages=st) for bv, w, st in kernels._CONV_CONFIGS]
    fits = kernels._small_enough(configs, {}, BLOCK_N=32, BLOCK_K=16)
    assert fits and all(c.kwargs["BLOCK_V"] * 32 <= 16 * 32 * c.num_warps for c in fits) and len(fits) < len(configs)
    monkeypatch.setenv("C2W_AUTOTUNE", "0")
    assert kernels._small_enough(configs, {}, BLOCK_N=32, BLOCK_K=16) == fits[:1]


def _geometry(batch, c_out, groups, size=(4, 8, 8)):
    from c2w_fast.kernels.conv_norm_act import ConvGeometry

    return ConvGeometry(batch, size, size, c_out, c_out, groups, (3, 3, 3), (1, 1, 1))


@needs_triton
@pytest.mark.parametrize("batch, c_out, groups, share, expected", [
    (2, 64, 16, 4, (2, 4)),    # seed stage 1: four pieces of 16 channels, both samples each
    (2, 512, 32, 4, (2, 8)),   # seed stage 4: four pieces of 8 groups
    (4, 64, 16, 1, (4, 16)),   # share 1: one piece
    (4, 32, 8, 4, (2, 4)),     # 16-channel minimum: two channel pieces, then two sample pieces
    (3, 32, 1, 4, (1, 1)),     # dense conv: samples only
    (1, 32, 1, 4, (1, 1)),     # dense, one sample: cannot be split
])
def test_backward_pieces_keep_the_buffer_within_its_share(batch, c_out, groups, share, expected):
    from c2w_fast.kernels.conv_norm_act import backward_pieces

    plan = backward_pieces(_geometry(batch, c_out, groups), share)
    assert (plan.samples, plan.groups) == expected
    pieces = list(plan.pieces())
    covered = sorted((s, g) for samples, (g0, g1) in pieces for s in range(samples.start, samples.stop)
                     for g in range(g0, g1))
    assert covered == [(s, g) for s in range(batch) for g in range(groups)]  # each (sample, group) once


@needs_triton
def test_fused_module_runs_triton_with_the_unfused_state_dict(rng):
    fused = FusedConvNormAct(8, 16, (1, 3, 3), stride=(1, 2, 2), groups=4, backend="triton").to(DEVICE)
    unfused = nn.Sequential()
    unfused.conv = nn.Conv3d(8, 16, (1, 3, 3), (1, 2, 2), (0, 1, 1), groups=4, bias=False)
    unfused.norm = nn.InstanceNorm3d(16, affine=True)
    unfused.act = nn.LeakyReLU(0.01)
    unfused.load_state_dict(fused.state_dict())
    x = torch.from_numpy(rng.standard_normal((2, 8, 3, 5, 6))).float()
    torch.testing.assert_close(fused(x.to(DEVICE)).cpu(), unfused.to(DEVICE)(x.to(DEVICE)).cpu(),
                               rtol=TOLERANCES[torch.float32].rtol, atol=TOLERANCES[torch.float32].atol)


@needs_triton
def test_triton_runs_in_the_autocast_dtype(rng):
    case = make_case(rng, 1, 16, 16, 4, (2, 3, 4), (1, 3, 3), (1, 1, 1), torch.float32, False)
    args = [case[k].to(DEVICE) for k in ("x", "weight", "norm_weight", "norm_bias")]
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = conv_norm_act(*args, groups=4, backend="triton")
    assert y.dtype == torch.bfloat16
    reference = reference_conv_norm_act(*[a.double() for a in args], groups=4)
    assert TOLERANCES[torch.bfloat16].violations(y, reference) == 0


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
def test_a_float32_residual_under_autocast_is_added_in_the_blocks_dtype(backend, rng):
    case = make_case(rng, 1, 16, 16, 4, (2, 3, 4), (1, 3, 3), (1, 1, 1), torch.float32, False)
    args = [case[k].to(DEVICE) for k in ("x", "weight", "norm_weight", "norm_bias")]
    residual = torch.randn(1, 16, 2, 3, 4, device=DEVICE)
    with torch.autocast(DEVICE, dtype=torch.bfloat16):
        y = conv_norm_act(*args, groups=4, residual=residual, backend=backend)
    assert y.dtype == torch.bfloat16  # the same model gives the same dtype on CPU (reference) and GPU


def _base_args():
    return torch.randn(1, 4, 3, 4, 5), torch.randn(8, 2, 3, 3, 3), torch.ones(8), torch.zeros(8)


@pytest.mark.parametrize("change, message", [
    (dict(weight=torch.randn(8, 2, 5, 3, 3)), "kernel sizes must be 1 or 3"),
    (dict(stride=3), "strides 1 or 2"),
    (dict(groups=3), "channels do not fit groups=3"),
    (dict(norm_weight=torch.ones(4)), "norm_weight must have shape \\(8,\\)"),
    (dict(residual=torch.randn(1, 8, 3, 4, 4)), "residual must have the output's shape \\(1, 8, 3, 4, 5\\)"),
    (dict(x=torch.randn(1, 4, 1, 1, 1)), "more than one output voxel"),
    (dict(x=torch.randn(4, 3, 4, 5)), "x must be \\(B, C, D, H, W\\)"),
    (dict(stride=2.0), "stride must be an int or 3 ints \\(z, y, x\\), got 2.0"),
    (dict(stride=(1, 2.5, 1)), "stride must be an int or 3 ints"),
    (dict(groups=2.0), "groups must be a positive int, got 2.0"),
    (dict(groups=0), "groups must be a positive int, got 0"),
    (dict(eps=-1.0), "eps must be a finite number > 0, got -1.0"),
    (dict(eps=0.0), "eps must be a finite number > 0"),
])
def test_bad_arguments_raise_clear_errors(change, message):
    x, weight, norm_weight, norm_bias = _base_args()
    kwargs = dict(x=x, weight=weight, norm_weight=norm_weight, norm_bias=norm_bias, groups=2)
    kwargs.update(change)
    with pytest.raises(ValueError, match=message):
        conv_norm_act(kwargs.pop("x"), kwargs.pop("weight"), kwargs.pop("norm_weight"), kwargs.pop("norm_bias"),
                      **kwargs, backend="reference")


def test_non_tensor_inputs_raise_a_type_error():
    x, weight, norm_weight, norm_bias = _base_args()
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got ndarray"):
        conv_norm_act(x.numpy(), weight, norm_weight, norm_bias, groups=2, backend="reference")
    with pytest.raises(TypeError, match="norm_bias must be a torch.Tensor, got list"):
        conv_norm_act(x, weight, norm_weight, [0.0] * 8, groups=2, backend="reference")


@pytest.mark.parametrize("change, message", [
    (dict(weight=torch.randn(8, 2, 3, 3, 3, dtype=torch.float16)), "but weight torch.float16"),
    (dict(residual=torch.randn(1, 8, 3, 4, 5, dtype=torch.float64)), "but residual torch.float64"),
    (dict(norm_bias=torch.zeros(8, dtype=torch.float64)), "but norm_bias torch.float64"),
])
def test_mixed_dtypes_outside_autocast_raise_on_every_backend(change, message):
    x, weight, norm_weight, norm_bias = _base_args()
    kwargs = {"weight": weight, "norm_weight": norm_weight, "norm_bias": norm_bias, **change}
    for backend in ("reference", "auto"):
        with pytest.raises(ValueError, match=message):
            conv_norm_act(x, kwargs["weight"], kwargs["norm_weight"], kwargs["norm_bias"],
                          residual=kwargs.get("residual"), groups=2, backend=backend)


def test_reference_takes_float32_norm_parameters_with_a_bf16_input():
    x, weight, norm_weight, norm_bias = _base_args()
    y = conv_norm_act(x.bfloat16(), weight.bfloat16(), norm_weight, norm_bias, groups=2, backend="reference")
    expected = reference_conv_norm_act(x.bfloat16().double(), weight.bfloat16().double(), norm_weight.double(),
                                       norm_bias.double(), groups=2)
    assert y.dtype == torch.bfloat16
    assert TOLERANCES[torch.bfloat16].violations(y, expected) == 0


@needs_triton
def test_triton_backward_refuses_double_backward(rng):
    case = make_case(rng, 1, 4, 4, 1, (2, 3, 4), (3, 3, 3), (1, 1, 1), torch.float32, False)
    x = case["x"].to(DEVICE).requires_grad_()
    y = conv_norm_act(x, *(case[k].to(DEVICE) for k in ("weight", "norm_weight", "norm_bias")), backend="triton")
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(y.pow(2).sum(), x, create_graph=True)


def test_float64_runs_the_reference_under_auto_and_is_refused_by_triton():
    x, weight, norm_weight, norm_bias = (t.double() for t in _base_args())
    y = conv_norm_act(x, weight, norm_weight, norm_bias, groups=2)  # auto: reference, no fallback warning
    assert y.dtype == torch.float64
    with pytest.raises((ValueError, BackendUnavailableError), match="float64|unavailable"):
        conv_norm_act(x, weight, norm_weight, norm_bias, groups=2, backend="triton")


# ------------------------------------------------------------------------------------------------
# Full-size checks on a GPU (skipped without one): the seed's stage shapes at batch 2.
# ------------------------------------------------------------------------------------------------
SEED_STAGES = [(64, (44, 128, 128), 16), (128, (22, 64, 64), 32), (256, (11, 32, 32), 32), (512, (11, 16, 16), 32)]


KINK = 1e-3  # |pre-activation| below which a rounding-level difference may pick LeakyReLU's other slope


def without_gradient_at_the_kink(case, reference_y, negative_slope=0.01):
    """``case`` with its upstream gradient zero where the reference's pre-activation (LeakyReLU undone) is
    within KINK of 0: among tens of millions of voxels a few lie closer to 0 than fp32 and float64 agree,
    and there the two take different slopes, a gradient difference of ~|g| that is no error of the kernels."""
    pre = torch.where(reference_y >= 0, reference_y, reference_y / negative_slope)
    grad = case["grad"].clone()
    grad[pre.abs() < KINK] = 0
    return {**case, "grad": grad}


@pytest.mark.cuda
@pytest.mark.parametrize("channels, size, groups", SEED_STAGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_seed_stage_shapes_match_the_reference_on_gpu(channels, size, groups, dtype, rng):
    case = make_case(rng, 2, channels, channels, groups, size, (3, 3, 3), (1, 1, 1), dtype, True)
    options = dict(dtype=dtype, stride=(1, 1, 1), groups=groups, activation=True)
    round_conv_output = conv_output_rounding(dtype)
    case = without_gradient_at_the_kink(case, run(case, "reference", round_conv_output=round_conv_output,
                                                  **options)["y"])
    ours = run(case, "triton", **options)
    ref = run(case, "reference", round_conv_output=round_conv_output, **options)
    for key in ref:
        assert TOLERANCES[dtype].violations(ours[key], ref[key]) == 0, key
