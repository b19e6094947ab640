"""The fused block and loss modules: same parameters as the unfused layers, same values as MONAI."""
import monai
import pytest
import torch
from torch import nn

from c2w_fast.nn import DiceCELoss, DiceFocalLoss, FusedConvNormAct, deep_supervision_weights


def test_fused_block_state_dict_loads_into_the_unfused_layers_and_back():
    fused = FusedConvNormAct(4, 8, (1, 3, 3), stride=(1, 2, 2), groups=2)
    unfused = nn.Sequential()
    unfused.conv = nn.Conv3d(4, 8, (1, 3, 3), (1, 2, 2), (0, 1, 1), groups=2, bias=False)
    unfused.norm = nn.InstanceNorm3d(8, affine=True)
    unfused.act = nn.LeakyReLU(0.01)
    with torch.no_grad():
        fused.norm.weight.uniform_(0.5, 1.5)
        fused.norm.bias.uniform_(-0.5, 0.5)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 5, 9, 11)
    torch.testing.assert_close(fused(x), unfused(x))
    assert list(fused.state_dict()) == ["conv.weight", "norm.weight", "norm.bias"]


@pytest.mark.parametrize("include_background", [True, False])
@pytest.mark.parametrize("batch_dice", [False, True])
def test_losses_match_monai_without_mask(include_background, batch_dice):
    logits = torch.randn(2, 3, 5, 6, 7, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 1, 5, 6, 7))
    options = dict(include_background=include_background)
    ours_focal = DiceFocalLoss(**options, batch_dice=batch_dice)(logits, target)
    ours_ce = DiceCELoss(**options, batch_dice=batch_dice)(logits, target)
    peer_focal = monai.losses.DiceFocalLoss(to_onehot_y=True, softmax=True, batch=batch_dice, **options)(logits, target)
    peer_ce = monai.losses.DiceCELoss(to_onehot_y=True, softmax=True, batch=batch_dice, **options)(logits, target)
    torch.testing.assert_close(ours_focal.double(), peer_focal, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours_ce.double(), peer_ce, rtol=1e-5, atol=1e-6)


def test_deep_supervision_weights_follow_nnunet():
    assert deep_supervision_weights(1) == [1.0]
    assert deep_supervision_weights(3) == pytest.approx([2 / 3, 1 / 3, 0.0])


@pytest.mark.parametrize("size", [(9, 20, 6), (5, 7, 16), (1, 3, 12)])
def test_deep_supervision_targets_sit_where_the_strided_outputs_do(size):
    """The targets of a deep-supervision output are the labels at the input voxels its voxels are
    centred on: found here by running the labels through the network's own strided convolutions
    (3x3x3, stride 2, padding 1, weight a centre delta, so each output copies its centre voxel)."""
    from c2w_fast.nn import _resize_labels

    labels = torch.randperm(int(torch.tensor(size).prod())).view(1, *size)
    echo = nn.Conv3d(1, 1, 3, stride=2, padding=1, bias=False)
    with torch.no_grad():
        echo.weight.zero_()[0, 0, 1, 1, 1] = 1.0
        level = labels[:, None].double()
        for _ in range(3):  # outputs of strides 2, 4, 8 (9 -> 5 -> 3 -> 2 voxels: 9 -> 3 is stride 4, not 3)
            level = echo.double()(level)
            assert torch.equal(_resize_labels(labels, level.shape[2:]), level[:, 0].long())


@pytest.mark.parametrize("arguments, error, message", [
    (dict(kernel_size=5), ValueError, r"kernel sizes must be 1 or 3 and strides 1 or 2, got \(5, 5, 5\)"),
    (dict(stride=(1, 3, 1)), ValueError, r"strides 1 or 2, got \(3, 3, 3\) and \(1, 3, 1\)"),
    (dict(kernel_size=2.0), ValueError, "kernel_size must be an int or 3 ints"),
])
def test_fused_block_refuses_what_the_kernels_cannot_run_when_built(arguments, error, message):
    """At construction, not at the first forward pass (the kernels run kernels 1 and 3, strides 1 and 2)."""
    with pytest.raises(error, match=message):
        FusedConvNormAct(4, 4, **{"kernel_size": 3, **arguments})
    assert "negative_slope=0.01" in repr(FusedConvNormAct(4, 4))


@pytest.mark.parametrize("build, error, message", [
    (lambda: DiceCELoss(include_backgroud=False), TypeError, "DiceCELoss: .*'include_backgroud'"),
    (lambda: DiceCELoss(gamma=2.0), TypeError, "DiceCELoss: .*'gamma'"),  # a focal option
    (lambda: DiceFocalLoss(False), TypeError, "weights must be a sequence of numbers .*, got False"),
    (lambda: DiceFocalLoss([]), ValueError, r"at least one > 0, got \[\]"),
    (lambda: DiceFocalLoss([1.0, -0.5]), ValueError, "must be >= 0"),
])
def test_loss_modules_refuse_bad_options_when_built(build, error, message):
    with pytest.raises(error, match=message):
        build()


# --- from the mutation audit of c2w_fast.nn: the block's own eps, slope and backend; weights; resizing --------

def test_fused_block_uses_its_own_eps_slope_and_backend():
    """Non-default ``eps`` and ``negative_slope`` reach the op (as the unfused layers with the same settings);
    ``backend`` too: a backend the op does not have is refused at the forward pass."""
    from c2w_fast.ops import BackendUnavailableError

    torch.manual_seed(0)
    fused = FusedConvNormAct(3, 4, 3, eps=0.5, negative_slope=0.2).double()
    unfused = nn.Sequential()
    unfused.conv = nn.Conv3d(3, 4, 3, 1, 1, bias=False)
    unfused.norm = nn.InstanceNorm3d(4, eps=0.5, affine=True)
    unfused.act = nn.LeakyReLU(0.2)
    unfused.load_state_dict(fused.state_dict())
    x = torch.randn(2, 3, 4, 5, 6, dtype=torch.float64)
    torch.testing.assert_close(fused(x), unfused.double()(x))
    unfused.norm.eps, unfused.act.negative_slope = 1e-5, 0.01  # the defaults give something else
    assert not torch.allclose(fused(x), unfused(x))
    with pytest.raises(BackendUnavailableError, match="no 'cuda' backend"):
        FusedConvNormAct(3, 4, backend="cuda")(x.float())


def test_deep_supervision_weights_of_two_and_four_outputs():
    """1/2^i, the lowest resolution's weight 0, normalised: (1, 0) for two outputs, (8, 4, 2, 0) / 14 for four."""
    assert deep_supervision_weights(2) == [1.0, 0.0]
    assert deep_supervision_weights(4) == pytest.approx([8 / 14, 4 / 14, 2 / 14, 0.0])


@pytest.mark.parametrize("weights, error, message", [
    ([1.0, 0.5, 0.25], ValueError, "got 2 outputs but 3 deep-supervision weights"),
    ([True, False], TypeError, "weights must be a sequence of numbers"),
    (b"\x01\x01", TypeError, "weights must be a sequence of numbers"),
])
def test_loss_modules_refuse_weights_that_do_not_fit(weights, error, message):
    logits = [torch.randn(1, 2, 2, 4, 4), torch.randn(1, 2, 1, 2, 2)]
    with pytest.raises(error, match=message):
        DiceCELoss(weights=weights)(logits, torch.zeros(1, 2, 4, 4, dtype=torch.long))


@pytest.mark.parametrize("channel_axis", [False, True])
def test_labels_at_a_size_no_stride_reaches_are_resized_nearest_exact(channel_axis):
    """5 -> 4 voxels (no stride s has ceil(5 / s) = 4): nearest-exact picks voxels floor((i + 0.5) * 5 / 4) =
    0, 1, 3, 4 per axis, for (B, D, H, W) and (B, 1, D, H, W) labels alike, keeping their dtype."""
    from c2w_fast.nn import _resize_labels

    labels = torch.randperm(125).view(1, 5, 5, 5)
    labels = labels[:, None] if channel_axis else labels
    resized = _resize_labels(labels, (4, 4, 4))
    index = torch.tensor([0, 1, 3, 4])
    expected = labels[..., index, :, :][..., index, :][..., index]
    assert resized.dtype == labels.dtype and torch.equal(resized, expected)


def test_an_unknown_backend_is_refused_when_the_block_is_built():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', .*got 'bogus'"):
        FusedConvNormAct(2, 2, backend="bogus")


@pytest.mark.parametrize("flag", ["include_background", "batch_dice", "across_processes"])
def test_loss_flags_must_be_bools(flag):
    logits, target = torch.randn(1, 2, 4, 4, 4), torch.zeros(1, 4, 4, 4, dtype=torch.long)
    for loss in (DiceCELoss, DiceFocalLoss):
        with pytest.raises(ValueError, match=f"{flag} must be True or False, got 'no'"):
            loss(**{flag: "no"})(logits, target)
