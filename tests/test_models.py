"""Models: the seeds' architectures from one builder, checked against the papers' own numbers."""
import pytest
import torch
from torch import nn

from c2w_fast.models import ARCHITECTURES, build_model, build_spec, count_parameters
from c2w_fast.models.__main__ import main as summary_main
from c2w_fast.nn import FusedConvNormAct

# issue 6's benchmarked stage shapes of the C2W network for a 44x256x256 ROI: (C, D, H, W), groups
C2W_STAGES = [((64, 44, 128, 128), 16), ((128, 22, 64, 64), 32), ((256, 11, 32, 32), 32), ((512, 11, 16, 16), 32)]


def _grouped_conv_shapes(model, x):
    """(output shape without batch, groups) of every grouped 3x3x3 conv in a forward pass."""
    seen = []
    hooks = [m.register_forward_hook(lambda m, i, o: seen.append((tuple(o.shape[1:]), m.conv.groups)))
             for m in model.modules() if isinstance(m, FusedConvNormAct) and m.conv.groups > 1]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return seen


def test_c2w_network_has_the_papers_stages_and_issue6_shapes():
    with torch.device("meta"):
        model = build_model("c2w_resnext", 1, 2, init="torch")
    assert model.spec.features == (32, 64, 128, 256, 512, 512, 512)
    assert all(k == (3, 3, 3) for k in model.spec.kernels)
    shapes = _grouped_conv_shapes(model, torch.empty(4, 1, 44, 256, 256, device="meta"))
    for shape, groups in C2W_STAGES:
        assert (shape, groups) in shapes
    # four channels per group everywhere (ResNeXt cardinality min(32, width / 4))
    assert all(shape[0] // groups == 4 or groups == 32 for shape, groups in shapes)


@pytest.mark.parametrize("name, features, classes, paper_millions", [
    ("mbas_stage2", None, 4, 140.0),                          # Table 19/23: ResEnc stage 2, 140M
    ("mbas_stage1", None, 2, 11.3),                           # Table 12: feature dim 96 -> 11.3M
    ("mbas_stage1", (32, 64, 128, 128, 128, 128), 2, 23.1),   # Table 12: feature dim 128 (A.6's list)
    ("mbas_stage1", (32, 64, 128, 256, 320, 320), 2, 102.0),  # Tables 8/12: 320 features -> 102M
])
def test_mbas_parameter_counts_match_the_paper(name, features, classes, paper_millions):
    """The tables are partly elided; completed with nnU-Net's ResEnc conventions the networks
    have the parameter counts the paper reports (to its 3 significant digits)."""
    overrides = {} if features is None else {"features": features}
    with torch.device("meta"):
        model = build_model(name, 1, classes, deep_supervision=True, init="torch", **overrides)
    assert count_parameters(model) / 1e6 == pytest.approx(paper_millions, rel=0.006)


def test_table28_reading_with_eight_features_would_not_match():
    """Table 28 lists 8 feature sizes for 7 stages; its first 7 give far fewer than 140M parameters."""
    with torch.device("meta"):
        model = build_model("mbas_stage2", 1, 4, features=(32, 32, 64, 128, 256, 320, 320), init="torch")
    assert count_parameters(model) < 0.8 * 140e6


@pytest.mark.parametrize("block", ["conv", "residual", "resnext"])
@pytest.mark.parametrize("deep_supervision", [False, True])
def test_forward_backward_on_odd_sizes_with_every_block(block, deep_supervision, rng):
    torch.manual_seed(int(rng.integers(1 << 31)))
    model = build_model("c2w_resnext", 2, 3, deep_supervision=deep_supervision, block=block,
                        features=(4, 8, 8), strides=(1, (1, 2, 2), 2), kernels=((1, 3, 3), 3, 3),
                        blocks_per_stage=(1, 2, 1), decoder_convs=(1, 2), groups=(1, 2, 4))
    x = torch.randn(2, 2, 5, 11, 9, requires_grad=True)
    out = model(x)
    outs = out if deep_supervision else [out]
    assert [tuple(o.shape) for o in outs][0] == (2, 3, 5, 11, 9)
    if deep_supervision:
        assert tuple(outs[1].shape) == (2, 3, 5, 6, 5)
    sum(o.sum() for o in outs).backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_residual_block_equals_unfused_definition(rng):
    """BasicBlockD: act(norm(conv2(act(norm(conv1(x))))) + norm(conv1x1(avgpool(x))))."""
    torch.manual_seed(int(rng.integers(1 << 31)))
    from c2w_fast.models.blocks import ResidualBlock

    block = ResidualBlock(3, 5, 3, (1, 2, 2))
    for p in block.parameters():
        nn.init.normal_(p, 0.5, 0.3)
    x = torch.randn(2, 3, 4, 8, 8, dtype=torch.float64)
    block = block.double()

    def cna(m, t, act=True):
        y = nn.functional.instance_norm(nn.functional.conv3d(t, m.conv.weight, None, m.conv.stride, m.conv.padding),
                                        weight=m.norm.weight, bias=m.norm.bias, eps=1e-5)
        return nn.functional.leaky_relu(y, 0.01) if act else y

    skip = cna(block.shortcut.project, nn.functional.avg_pool3d(x, (1, 2, 2), (1, 2, 2), ceil_mode=True), act=False)
    expected = nn.functional.leaky_relu(cna(block.conv2, cna(block.conv1, x), act=False) + skip, 0.01)
    torch.testing.assert_close(block(x), expected)


def test_every_block_takes_a_strided_axis_of_one_voxel():
    """Stride 2 over a single voxel gives one output voxel; the residual shortcut pools what it has."""
    from c2w_fast.models.blocks import ResidualBlock, ResNeXtBlock

    x = torch.randn(1, 4, 1, 5, 5)
    for block in (ResidualBlock(4, 8, 3, 2), ResNeXtBlock(4, 8, 3, 2, groups=4)):
        assert tuple(block(x).shape) == (1, 8, 1, 3, 3), type(block).__name__


def test_spec_errors_name_the_field():
    with pytest.raises(ValueError, match="strides needs one entry per stage"):
        build_spec("c2w_resnext", strides=(1, 2))
    with pytest.raises(ValueError, match="unknown architecture fields"):
        build_spec("c2w_resnext", width=3)
    with pytest.raises(ValueError, match="model architecture must be one of"):
        build_spec("vnet")
    with pytest.raises(ValueError, match=r"kernels must be 1 or 3 and strides 1 or 2 .* strides \(\(1, 1, 1\), \(3, 3, 3\)"):
        build_spec("mbas_stage1", features=(8, 16), strides=(1, 3), kernels=(3, 3), blocks_per_stage=(1, 1),
                   decoder_convs=(1,))
    with pytest.raises(ValueError, match=r"kernels must be 1 or 3 .*got kernels \(\(5, 5, 5\)"):
        build_spec("mbas_stage1", features=(8, 16), strides=(1, 2), kernels=(5, 3), blocks_per_stage=(1, 1),
                   decoder_convs=(1,))
    with pytest.raises(ValueError, match="not divisible by groups"):
        build_model("c2w_resnext", features=(4, 6, 8), strides=(1, 2, 2), kernels=(3, 3, 3),
                    blocks_per_stage=(0, 1, 1), decoder_convs=(1, 1), groups=(1, 4, 4))


@pytest.mark.parametrize("arguments, message", [
    (["--classes", "0"], "--classes counts the background too, so it must be >= 2, got 0"),
    (["--classes", "1"], "--classes counts the background too, so it must be >= 2, got 1"),
    (["--input", "0", "1", "44", "256", "256"], "--input sizes must be >= 1, got 0 1 44 256 256"),
])
def test_summary_cli_refuses_impossible_sizes(arguments, message, capsys):
    """A usage error (exit 2) naming the option, not a traceback or a silent default."""
    with pytest.raises(SystemExit) as exit_info:
        summary_main(["--summary", "c2w_resnext", *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_summary_cli_prints_every_preset(capsys):
    for name in ARCHITECTURES:
        summary_main(["--summary", name])
        out = capsys.readouterr().out
        total = int(out.strip().splitlines()[-1].split()[-1].replace(",", ""))
        classes = 4 if name == "mbas_stage2" else 2  # background, wall, RA, LA
        with torch.device("meta"):
            assert total == count_parameters(build_model(name, 1, classes, init="torch"))
