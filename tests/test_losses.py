"""Dice-Focal and Dice-CE losses: the triton backend vs the float64 reference and MONAI; masked-loss rules."""
import monai
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from c2w_fast.nn import DiceCELoss, DiceFocalLoss
from c2w_fast.ops import dice_ce_loss, dice_focal_loss
from c2w_fast.ops._dispatch import backend_problem
from c2w_fast.ops.losses import GRAD_TOLERANCES, VALUE_TOLERANCES

pytestmark = pytest.mark.gpu  # runs its kernels on a GPU when there is one

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
needs_triton = pytest.mark.skipif(backend_problem("triton", DEVICE) is not None,
                                  reason=f"triton backend unavailable: {backend_problem('triton', DEVICE)}")
LOSSES = {"focal": dice_focal_loss, "ce": dice_ce_loss}


def make_inputs(rng, batch=2, classes=3, size=(3, 5, 7), mask="random", absent_class=None):
    """Logits (float64), integer labels and a boolean mask of kind ``mask``.

    Kinds: None, "zeros", "ones", "random" (60 % inside), "first_empty" (random, sample 0 empty).
    """
    logits = torch.from_numpy(rng.standard_normal((batch, classes, *size)) * 2)
    labels = torch.from_numpy(rng.integers(0, classes, (batch, *size)))
    if absent_class is not None:
        labels[labels == absent_class] = (absent_class + 1) % classes
    region = {None: None, "zeros": np.zeros((batch, *size), bool), "ones": np.ones((batch, *size), bool),
              "random": rng.random((batch, *size)) < 0.6, "first_empty": rng.random((batch, *size)) < 0.6}[mask]
    if mask == "first_empty":
        region[0] = False
    return logits, labels, None if region is None else torch.from_numpy(region)


def value_and_grad(loss_fn, logits, target, mask, backend, dtype=torch.float64, **options):
    """The loss and dL/dlogits (float64 on the CPU); triton runs on DEVICE in ``dtype``."""
    device = "cpu" if backend == "reference" else DEVICE
    z = logits.to(device=device, dtype=dtype).requires_grad_()
    mask = None if mask is None else mask.to(device)
    loss = loss_fn(z, target.to(device), mask, backend=backend, **options)
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach().double().cpu(), grad.double().cpu()


def assert_matches_reference(loss_fn, logits, target, mask, dtype=torch.float32, **options):
    rounded = logits.to(dtype).double()  # the reference sees exactly the values the kernel reads
    ours = value_and_grad(loss_fn, rounded, target, mask, "triton", dtype, **options)
    ref = value_and_grad(loss_fn, rounded, target, mask, "reference", **options)
    assert VALUE_TOLERANCES[dtype].violations(ours[0], ref[0]) == 0, (ours[0], ref[0])
    assert GRAD_TOLERANCES[dtype].violations(ours[1], ref[1]) == 0, (ours[1] - ref[1]).abs().max()
    return ours, ref


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
@pytest.mark.parametrize("mask", [None, "zeros", "ones", "random", "first_empty"])
@pytest.mark.parametrize("include_background, batch_dice", [(True, False), (False, True), (False, False)])
def test_triton_matches_reference_for_every_mask_kind(term, mask, include_background, batch_dice, rng):
    logits, labels, region = make_inputs(rng, mask=mask)
    assert_matches_reference(LOSSES[term], logits, labels, region, include_background=include_background,
                             batch_dice=batch_dice)


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
@pytest.mark.parametrize("options", [
    dict(activation="sigmoid"),
    dict(activation="sigmoid", include_background=False, batch_dice=True),
    dict(smooth_nr=0.0, smooth_dr=1e-3, lambda_dice=0.3),
    dict(smooth_nr=1.0, smooth_dr=0.25),  # large and different: each one moves the loss beyond the tolerance
])
def test_triton_matches_reference_with_options(term, options, rng):
    logits, labels, region = make_inputs(rng, batch=3, classes=4, size=(2, 3, 11))
    extra = dict(lambda_focal=2.0) if term == "focal" else dict(lambda_ce=2.0)
    assert_matches_reference(LOSSES[term], logits, labels, region, **options, **extra)


@needs_triton
@pytest.mark.parametrize("gamma, alpha", [(0.0, None), (1.5, 0.25), (2.0, 0.8)])
def test_triton_focal_gamma_and_alpha(gamma, alpha, rng):
    logits, labels, region = make_inputs(rng, classes=2, size=(4, 4, 5))
    assert_matches_reference(dice_focal_loss, logits, labels, region, gamma=gamma, alpha=alpha,
                             include_background=False)


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
def test_triton_accepts_every_target_form_and_channels_last_logits(term, rng):
    logits, labels, region = make_inputs(rng)
    onehot = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3)
    ours, _ = assert_matches_reference(LOSSES[term], logits, labels, region)
    for target in (labels[:, None], labels.int(), labels.to(torch.uint8), onehot.float(), onehot.bool()):
        again = value_and_grad(LOSSES[term], logits.float().double(), target, region, "triton", torch.float32)
        torch.testing.assert_close(again, ours, rtol=1e-6, atol=1e-9)
    z = logits.float().to(DEVICE).to(memory_format=torch.channels_last_3d).requires_grad_()
    loss = LOSSES[term](z, labels.to(DEVICE), region.to(DEVICE), backend="triton")
    (grad,) = torch.autograd.grad(loss, z)
    assert grad.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close((loss.double().cpu(), grad.double().cpu()), ours, rtol=1e-6, atol=1e-9)


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
def test_triton_matches_reference_with_soft_targets(term, rng):
    """Soft (B, C, ...) targets whose class sums differ from 1 (independent probabilities per class)."""
    logits, _, region = make_inputs(rng)
    soft = torch.from_numpy(rng.random(logits.shape)).float()
    assert not torch.allclose(soft.sum(1), torch.ones(()))
    assert_matches_reference(LOSSES[term], logits, soft, region)


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_triton_half_precision_logits(term, dtype, rng):
    logits, labels, region = make_inputs(rng, size=(2, 7, 9))
    assert_matches_reference(LOSSES[term], logits, labels, region, dtype=dtype)


@needs_triton
@pytest.mark.parametrize("term", LOSSES)
def test_triton_with_a_class_absent_from_the_batch(term, rng):
    logits, labels, region = make_inputs(rng, classes=4, absent_class=2)
    assert not (labels == 2).any()
    assert_matches_reference(LOSSES[term], logits, labels, region, batch_dice=True)


@needs_triton
@pytest.mark.parametrize("offset", [1e4, 1e5])
def test_triton_cross_entropy_keeps_its_tolerance_for_large_logits(offset):
    """Logits near 1e4 or 1e5 (float32 spacing 0.001, 0.008): max + log-sum-exp minus the target's
    logit would cancel (1e-3 and 5e-3 relative error here; the tolerance is 2.1e-5)."""
    logits = offset + torch.tensor([[0.0, 0.5], [0.5, 0.0]], dtype=torch.float64).T.reshape(1, 2, 1, 1, 2)
    assert_matches_reference(dice_ce_loss, logits, torch.tensor([[[[1, 0]]]]), None, lambda_dice=0.0)


@needs_triton
@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
def test_triton_confident_logits_keep_every_element_accurate(activation, rng):
    """Logits of +-20 on the right class: each element's focal loss is about 1e-26, where
    log(1 + exp(-20)) rounds to 0 in float32 unless computed as a log1p, and its gradient about
    1e-26, where sigmoid(20) - 1 does unless computed as -sigmoid(-20); likewise the sigmoid Dice
    gradient's sigmoid(z) (1 - sigmoid(z)). Each gradient element is held to its own size. (The Dice
    value, 1 - a ratio within 1e-8 of 1, is 0 in float32 here, in MONAI's too.)"""
    _, labels, region = make_inputs(rng)
    logits = 20.0 * (2.0 * F.one_hot(labels, 3).movedim(-1, 1).double() - 1.0)
    inside = region[:, None].expand_as(logits)
    terms = [dict(lambda_dice=0.0)] + ([dict(lambda_focal=0.0)] if activation == "sigmoid" else [])
    for term in terms:
        ours = value_and_grad(dice_focal_loss, logits, labels, region, "triton", torch.float32,
                              activation=activation, **term)
        ref = value_and_grad(dice_focal_loss, logits, labels, region, "reference", activation=activation, **term)
        if "lambda_dice" in term:
            assert VALUE_TOLERANCES[torch.float32].violations(ours[0], ref[0]) == 0, (ours[0], ref[0])
        assert ref[1][inside].abs().min() > 0 and (ours[1][~inside] == 0).all()
        torch.testing.assert_close(ours[1][inside], ref[1][inside], rtol=1e-4, atol=0, msg=str(term))


@needs_triton
@pytest.mark.parametrize("options", [dict(), dict(activation="sigmoid", include_background=False),
                                     dict(batch_dice=True)])
def test_triton_matches_monai_without_mask(options, rng):
    logits, labels, _ = make_inputs(rng, mask=None)
    peer_options = dict(include_background=options.get("include_background", True),
                        batch=options.get("batch_dice", False))
    activation = options.get("activation", "softmax")
    peer_options[activation] = True
    for ours_fn, peer in ((dice_focal_loss, monai.losses.DiceFocalLoss(to_onehot_y=True, **peer_options)),
                          (dice_ce_loss, monai.losses.DiceCELoss(to_onehot_y=True, **peer_options))):
        z = logits.float().double().requires_grad_()
        peer_value = peer(z, labels[:, None])
        (peer_grad,) = torch.autograd.grad(peer_value, z)
        ours = value_and_grad(ours_fn, logits.float().double(), labels, None, "triton", torch.float32, **options)
        assert VALUE_TOLERANCES[torch.float32].violations(ours[0], peer_value) == 0
        assert GRAD_TOLERANCES[torch.float32].violations(ours[1], peer_grad) == 0


@pytest.mark.parametrize("term", LOSSES)
def test_reference_all_one_mask_equals_no_mask(term, rng):
    logits, labels, ones = make_inputs(rng, mask="ones")
    with_mask = value_and_grad(LOSSES[term], logits, labels, ones, "reference")
    without = value_and_grad(LOSSES[term], logits, labels, None, "reference")
    torch.testing.assert_close(with_mask, without, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("backend", ["reference", pytest.param("triton", marks=needs_triton)])
@pytest.mark.parametrize("term", LOSSES)
def test_all_zero_mask_gives_zero_loss_and_zero_gradient(backend, term, rng):
    logits, labels, zeros = make_inputs(rng, mask="zeros")
    loss, grad = value_and_grad(LOSSES[term], logits.float().double(), labels, zeros, backend, torch.float32,
                                smooth_nr=0.0)  # exactly 0 even when the smoothing terms differ
    assert loss.item() == 0.0 and not grad.any()


@pytest.mark.parametrize("batch_dice", [False, True])
@pytest.mark.parametrize("term", LOSSES)
def test_reference_gradient_is_finite_without_smoothing_when_a_sample_has_no_region(term, batch_dice, rng):
    """smooth_dr = 0 makes the dropped entries 0/0; that must not leak NaN into the gradient."""
    logits, labels, region = make_inputs(rng, mask="first_empty")
    loss, grad = value_and_grad(LOSSES[term], logits, labels, region, "reference", smooth_nr=0.0, smooth_dr=0.0,
                                batch_dice=batch_dice)
    assert torch.isfinite(loss) and torch.isfinite(grad).all()
    assert not grad[0].any() and grad[1].any()


@pytest.mark.parametrize("term", LOSSES)
def test_reference_sample_with_empty_mask_drops_out(term, rng):
    """Per-sample Dice: a sample with no voxel in the mask changes neither the loss nor the others' gradient."""
    logits, labels, region = make_inputs(rng, batch=2)
    region[0] = False
    both = value_and_grad(LOSSES[term], logits, labels, region, "reference")
    alone = value_and_grad(LOSSES[term], logits[1:], labels[1:], region[1:], "reference")
    torch.testing.assert_close(both[0], alone[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(both[1][1:], alone[1], rtol=1e-12, atol=1e-14)
    assert not both[1][0].any()


@pytest.mark.parametrize("term", LOSSES)
def test_reference_mask_restricts_every_term_to_the_region(term, rng):
    """Masked loss = the loss of the voxels inside the mask alone (gathered into one row per sample)."""
    logits, labels, region = make_inputs(rng, batch=1, size=(2, 4, 6))
    inside = region[0].flatten()
    kept_logits = logits.flatten(2)[..., inside][..., None, None]
    kept_labels = labels.flatten(1)[:, inside][..., None, None]
    masked = value_and_grad(LOSSES[term], logits, labels, region, "reference")
    gathered = value_and_grad(LOSSES[term], kept_logits, kept_labels, None, "reference")
    torch.testing.assert_close(masked[0], gathered[0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(masked[1].flatten(2)[..., inside], gathered[1][..., 0, 0], rtol=1e-12, atol=1e-14)


def test_reference_rejects_labels_out_of_range(rng):
    logits, labels, _ = make_inputs(rng, mask=None)
    labels[0, 0, 0, 0] = 3
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 3\)"):
        dice_ce_loss(logits, labels, backend="reference")


@needs_triton
@pytest.mark.parametrize("layout", ["channels_last_of_a_2d_output", "transposed"])
def test_triton_reads_layouts_whose_last_axis_has_size_one(layout, rng):
    """is_contiguous() ignores the stride of a size-1 axis: the voxel stride must come from the others."""
    logits, labels, region = make_inputs(rng, size=(4, 5, 1))
    z = logits.float()
    if layout == "channels_last_of_a_2d_output":
        z = z[..., 0].to(memory_format=torch.channels_last).unsqueeze(-1)  # strides (60, 1, 15, 3, 1)
    else:
        z = torch.empty(2, 3, 4, 1, 5).transpose(3, 4).copy_(z)  # strides (60, 20, 5, 1, 5), "contiguous"
    assert z.is_contiguous() or z.is_contiguous(memory_format=torch.channels_last_3d)
    z = z.to(DEVICE).requires_grad_()
    loss = dice_focal_loss(z, labels.to(DEVICE), region.to(DEVICE), backend="triton")
    (grad,) = torch.autograd.grad(loss, z)
    ref = value_and_grad(dice_focal_loss, logits.float().double(), labels, region, "reference")
    assert VALUE_TOLERANCES[torch.float32].violations(loss.detach().cpu(), ref[0]) == 0
    assert GRAD_TOLERANCES[torch.float32].violations(grad.cpu(), ref[1]) == 0


@needs_triton
def test_triton_refuses_a_target_that_requires_grad_and_auto_runs_the_reference(rng):
    logits, labels, _ = make_inputs(rng, mask=None)
    soft = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).double().softmax(1).requires_grad_()
    with pytest.raises(ValueError, match="no gradient to the target"):
        dice_ce_loss(logits.float().to(DEVICE), soft.float().to(DEVICE), backend="triton")
    dice_ce_loss(logits, soft).backward()  # auto: the reference, which gives the target its gradient
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    with torch.no_grad():  # no graph, no gradient to lose
        dice_ce_loss(logits.float().to(DEVICE), soft.float().to(DEVICE), backend="triton")


@needs_triton
def test_triton_labels_out_of_range_make_the_loss_nan(rng):
    logits, labels, region = make_inputs(rng)
    for bad in (-1, 3, 2**32 + 1):  # 3 = C, one past the last class; 2**32 + 1 is class 1 once narrowed to int32
        labels[1, 2, 3, 4] = bad
        z = logits.float().to(DEVICE).requires_grad_()
        loss = dice_focal_loss(z, labels.to(DEVICE), region.to(DEVICE), backend="triton")
        loss.backward()
        assert torch.isnan(loss) and torch.isnan(z.grad).all(), bad  # so GradScaler and clipping guards stop the step


@needs_triton
def test_triton_backward_refuses_double_backward(rng):
    logits, labels, _ = make_inputs(rng, mask=None)
    z = logits.float().to(DEVICE).requires_grad_()
    loss = dice_ce_loss(z, labels.to(DEVICE), backend="triton")
    with pytest.raises(RuntimeError, match="first-order only"):
        torch.autograd.grad(loss, z, create_graph=True)
    (grad,) = torch.autograd.grad(loss, z)  # the graph is still there for the first-order gradient
    assert torch.isfinite(grad).all()


@pytest.mark.parametrize("kwargs, message", [
    (dict(logits=torch.randn(2, 1, 3, 4, 5)), "at least 2 channels"),
    (dict(target=torch.zeros(2, 4, 4, 5, dtype=torch.long)), "target must be labels"),
    (dict(mask=torch.ones(2, 3, 4, 4, dtype=torch.bool)), "mask must be \\(B, D, H, W\\)"),
    (dict(activation="relu"), "activation must be one of"),
    (dict(logits=torch.randn(2, 3, 4, 5)), "logits must be floating-point \\(B, C, D, H, W\\)"),
])
def test_bad_arguments_raise_clear_errors(kwargs, message):
    args = dict(logits=torch.randn(2, 3, 3, 4, 5), target=torch.zeros(2, 3, 4, 5, dtype=torch.long), mask=None)
    options = {k: kwargs.pop(k) for k in list(kwargs) if k not in args}
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        dice_focal_loss(args["logits"], args["target"], args["mask"], **options, backend="reference")


@pytest.mark.parametrize("term", LOSSES)
def test_float_label_targets_and_non_binary_float_masks_are_refused(term, rng):
    """A float label target was truncated (1.5 -> 1) and a NaN in a float mask counted as inside."""
    logits, labels, region = make_inputs(rng)
    for target in (labels.double(), labels[:, None].float() + 0.5):
        with pytest.raises(ValueError, match="target labels .* must be an integer or bool tensor, got torch.float"):
            LOSSES[term](logits, target, backend="reference")
    for bad in (float("nan"), 0.5):
        mask = region.double()
        mask[0, 1, 2, 3] = bad
        with pytest.raises(ValueError, match="mask must be bool, integer or a float holding only 0 and 1"):
            LOSSES[term](logits, labels, mask, backend="reference")
    onehot = F.one_hot(labels, 3).permute(0, 4, 1, 2, 3).double()  # float one-hot and 0/1 float masks still work
    torch.testing.assert_close(LOSSES[term](logits, onehot, region.double(), backend="reference"),
                               LOSSES[term](logits, labels, region, backend="reference"))


@pytest.mark.parametrize("term, options, message", [
    ("focal", dict(alpha=1.5), r"alpha must be None or a number in \[0, 1\], got 1.5"),
    ("focal", dict(alpha=-0.1), "alpha must be None or a number in"),
    ("focal", dict(gamma=-1.0), "gamma must be a finite number >= 0, got -1.0"),
    ("focal", dict(gamma=float("nan")), "gamma must be a finite number >= 0"),
    ("focal", dict(smooth_dr=-1e-5), "smooth_dr must be a finite number >= 0"),
    ("ce", dict(smooth_nr=-1.0), "smooth_nr must be a finite number >= 0"),
    ("ce", dict(lambda_ce=-1.0), "lambda_ce must be a finite number >= 0"),
])
def test_out_of_range_loss_options_are_refused(term, options, message):
    with pytest.raises(ValueError, match=message):
        LOSSES[term](torch.randn(1, 2, 2, 3, 4), torch.zeros(1, 2, 3, 4, dtype=torch.long), **options,
                     backend="reference")


def test_inputs_that_are_not_tensors_are_refused_by_name():
    logits, target = torch.randn(1, 2, 2, 3, 4), torch.zeros(1, 2, 3, 4, dtype=torch.long)
    for arguments, name in (((logits.numpy(), target), "logits"), ((logits, target.numpy()), "target"),
                            ((logits, target, np.ones((1, 2, 3, 4), bool)), "mask")):
        with pytest.raises(TypeError, match=f"{name} must be a torch tensor .*, got ndarray"):
            dice_ce_loss(*arguments, backend="reference")
    with pytest.raises(ValueError, match=r"mask must be \(B, D, H, W\) = \(1, 2, 3, 4\) or \(1, 1, 2, 3, 4\)"):
        dice_focal_loss(logits, target, torch.ones(1, 3, 4, dtype=torch.bool), backend="reference")


def test_triton_refuses_float64_logits():
    with pytest.raises(ValueError, match="float64"):
        dice_ce_loss(torch.randn(1, 2, 2, 3, 4, dtype=torch.float64), torch.zeros(1, 2, 3, 4, dtype=torch.long),
                     backend="triton")


@needs_triton
def test_deep_supervision_module_sums_weighted_outputs_with_resized_targets_and_masks(rng):
    logits, labels, region = make_inputs(rng, size=(5, 6, 7))  # odd sizes: 5 -> 3 keeps voxels 0, 2, 4
    low = torch.from_numpy(rng.standard_normal((2, 3, 3, 3, 4))).float()
    outputs = [logits.float().to(DEVICE), low.to(DEVICE)]
    module = DiceCELoss(weights=[0.75, 0.25], backend="triton")
    total = module(outputs, labels.to(DEVICE), region.to(DEVICE))
    low_labels, low_region = labels[:, ::2, ::2, ::2], region[:, ::2, ::2, ::2]  # where a stride-2 conv's outputs sit
    expected = (0.75 * dice_ce_loss(logits.double(), labels, region, backend="reference")
                + 0.25 * dice_ce_loss(low.double(), low_labels, low_region, backend="reference"))
    assert VALUE_TOLERANCES[torch.float32].violations(total.cpu(), expected) == 0
    assert DiceFocalLoss(backend="triton")(outputs[0], labels.to(DEVICE)).shape == ()


@pytest.mark.parametrize("outputs, weights, message", [
    (0, None, "at least one output"),
    (2, [0.0, 0.0], "at least one > 0"),
    (2, [1.0, -0.5], "must be >= 0"),
    (2, [1.0], "2 outputs but 1"),
])
def test_deep_supervision_module_rejects_empty_outputs_and_bad_weights(outputs, weights, message):
    logits = [torch.randn(1, 2, 2, 3, 4)] * outputs
    with pytest.raises(ValueError, match=message):
        DiceCELoss(weights=weights)(logits, torch.zeros(1, 2, 3, 4, dtype=torch.long))


# ------------------------------------------------------------------------------------------------
# Full-size checks on a GPU (skipped without one): the loss shapes.
# ------------------------------------------------------------------------------------------------
@pytest.mark.cuda
@pytest.mark.parametrize("shape", [(4, 2, 44, 256, 256), (2, 4, 20, 256, 256)])
@pytest.mark.parametrize("term", LOSSES)
def test_full_size_losses_match_the_reference_on_gpu(shape, term, rng):
    logits = torch.from_numpy(rng.standard_normal(shape).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, shape[1], (shape[0], *shape[2:])).astype(np.uint8))
    region = torch.from_numpy(rng.random((shape[0], *shape[2:])) < 0.7)
    for dtype in (torch.float32, torch.bfloat16):
        assert_matches_reference(LOSSES[term], logits.double(), labels, region, dtype=dtype)



def test_the_reference_loss_compiles_as_one_graph():
    """bench/run_train_step.py's torch.compile baseline uses the reference loss: a host sync in it (the
    label range check) would break the graph and slow the peer, flattering ours. Outside compile the
    check still refuses a label out of range."""
    logits = torch.randn(2, 3, 4, 5, 6, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 5, 6))
    explained = torch._dynamo.explain(lambda x, t: dice_focal_loss(x, t, backend="reference"))(logits, target)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    with pytest.raises(ValueError, match=r"target labels must lie in \[0, 3\) for 3 classes, got values in \[3, 3\]"):
        dice_focal_loss(logits, torch.full_like(target, 3), backend="reference")
